"""Turning model outputs into files: MIDI, pianoroll ``.npz`` and PNG pictures.

Used by ``ms2dist sample``, by training (sample artifacts in MLflow) and by
``ms2dist evaluate``. Binarising is explicit: probabilities go in, and
``binarize(..., mode)`` decides which notes are played.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ms2dist import TRACKS

__all__ = ["write_outputs", "notes_per_track", "save_npz", "song_phrases", "log_sample_artifacts",
           "DEFAULT_BPM"]

DEFAULT_BPM = 100.0


def song_phrases(path: str | Path, fmt: str = "auto") -> tuple[np.ndarray, float]:
    """All 4-bar phrases of one song file (N, 4, 48, 84, 5) bool, and its tempo in BPM."""
    from ms2dist.lpd import RejectError, load_song
    from ms2dist.phrases import phrases_of_song

    try:
        song = load_song(path, fmt)
    except RejectError as e:
        raise ValueError(f"{path}: cannot use this song: {e}") from None
    on, _, _ = phrases_of_song(song)
    if len(on) == 0:
        raise ValueError(f"{path}: no non-empty 4-bar phrase in this song")
    return on, song.bpm


def save_npz(path: Path, **arrays: Any) -> None:
    """``np.savez_compressed`` with fixed zip timestamps: same arrays -> same bytes.

    (numpy stamps every member with the current time, so two identical runs would
    otherwise write different files.)
    """
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def notes_per_track(roll: np.ndarray) -> dict[str, int]:
    """Notes (maximal runs of on-steps of one pitch, as in MIDI) per track of one phrase
    ``(bars, T, P, tracks)``: what a listener hears, not the count of on-cells."""
    x = np.asarray(roll) != 0
    x = x.reshape(-1, *x.shape[-2:])  # (time, pitch, tracks)
    starts = x & ~np.concatenate([np.zeros_like(x[:1]), x[:-1]], axis=0)
    return {t: int(n) for t, n in zip(TRACKS, starts.sum((0, 1)).tolist(), strict=True)}


def write_outputs(probs: np.ndarray, binary: np.ndarray, out: Path, prefix: str,
                  bpm: float = DEFAULT_BPM, titles: list[str] | None = None,
                  pictures: bool = True) -> list[dict[str, Any]]:
    """One ``.mid``, ``.npz`` and ``.png`` per phrase; returns an index of the files.

    ``probs``: note probabilities ``(N, bars, T, P, tracks)`` (stored as float16);
    ``binary``: the notes played, same shape (non-zero = on; stored as bool). The MIDI
    file holds exactly the npz's ``pianoroll`` (``ms2dist.midi.read_midi`` gives it back).
    Same inputs -> byte-identical files.
    """
    from ms2dist.midi import plot_pianoroll, write_midi

    out = Path(out)
    binary = np.asarray(binary) != 0
    probs = np.asarray(probs)
    if probs.shape != binary.shape:
        raise ValueError(f"probabilities {probs.shape} and notes {binary.shape} differ in shape")
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for i in range(len(binary)):
        stem = out / f"{prefix}_{i:03d}"
        roll = binary[i].reshape(-1, *binary.shape[-2:])  # (4*48, 84, 5)
        write_midi(roll, stem.with_suffix(".mid"), tempo_bpm=bpm)
        save_npz(stem.with_suffix(".npz"), pianoroll=binary[i],
                 probabilities=probs[i].astype(np.float16), tracks=np.array(TRACKS),
                 lowest_pitch=np.int64(24), steps_per_beat=np.int64(12),
                 tempo_bpm=np.float64(bpm))
        entry = {"midi": str(stem.with_suffix(".mid")), "npz": str(stem.with_suffix(".npz")),
                 "notes_on": int(binary[i].sum()), "notes_per_track": notes_per_track(binary[i])}
        if pictures:
            title = titles[i] if titles else f"{prefix} {i}"
            plot_pianoroll(roll, stem.with_suffix(".png"), title=title)
            entry["png"] = str(stem.with_suffix(".png"))
        index.append(entry)
    (out / f"{prefix}_index.json").write_text(json.dumps(index, indent=1))
    return index


def _first_val_phrases(val_dir: Path, n: int) -> torch.Tensor:
    from ms2dist.data import eval_loader, unpack_phrases

    for batch in eval_loader(val_dir, n, rank=0, world_size=1):
        return unpack_phrases(batch["phrases"], torch.device("cpu"))[:n]
    raise ValueError(f"{val_dir}: empty split")


def log_sample_artifacts(mlflow: Any, model: Any, stage: str, step: int, val_dir: Path,
                         n: int = 2, rule: Any = None) -> None:
    """PNG + MIDI of validation reconstructions (and generated samples in stage 2)."""
    import tempfile

    from ms2dist.calibration import BinarizeRule

    rule = rule or BinarizeRule()

    def binarize(p: torch.Tensor) -> torch.Tensor:
        return rule.apply(p).float()

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
            x = _first_val_phrases(val_dir, n).to(device)
            if stage == "stage1":
                rec = torch.stack([model.bvae(t)(x[..., t], sample=False)[0]
                                   for t in range(len(TRACKS))], -1)
            else:
                rec = model.restore(x, sample=False)
            rec_np = rec.float().cpu().numpy()
            write_outputs(rec_np, binarize(rec).cpu().numpy(), Path(tmp), "recon",
                          titles=[f"reconstruction {i} @ step {step}, {rule.short()}"
                                  for i in range(n)])
            write_outputs(x.cpu().numpy(), x.cpu().numpy() > 0.5, Path(tmp), "target")
            if stage == "stage2":
                gen = model.generate(n, seed=step)
                write_outputs(gen.float().cpu().numpy(), binarize(gen).cpu().numpy(), Path(tmp),
                              "generated", titles=[f"generated {i} @ step {step}, "
                                                   f"{rule.short()}" for i in range(n)])
            mlflow.log_artifacts(tmp, artifact_path=f"samples/step_{step:09d}")
    finally:
        model.train(was_training)
