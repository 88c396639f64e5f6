"""Model outputs as files: one MIDI, pianoroll ``.npz`` and PNG picture per phrase.

Used by ``ms2dist sample``, by training (sample artifacts in MLflow) and by
``ms2dist evaluate``. Binarising is explicit: probabilities and the notes played (chosen
by a :class:`ms2dist.inference.calibration.BinarizeRule`) both go in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ms2dist import TRACKS
from ms2dist.layout import DEFAULT_LAYOUT, PhraseLayout
from ms2dist.music.midi import write_midi
from ms2dist.music.pianoroll import plot_pianoroll
from ms2dist.npyio import save_npz

__all__ = ["write_outputs", "notes_per_track", "DEFAULT_BPM"]

DEFAULT_BPM = 100.0


def notes_per_track(roll: np.ndarray) -> dict[str, int]:
    """Notes (maximal runs of on-steps of one pitch, as in MIDI) per track of one phrase
    ``(bars, T, P, tracks)``: what a listener hears, not the count of on-cells."""
    x = np.asarray(roll) != 0
    x = x.reshape(-1, *x.shape[-2:])  # (time, pitch, tracks)
    starts = x & ~np.concatenate([np.zeros_like(x[:1]), x[:-1]], axis=0)
    return {t: int(n) for t, n in zip(TRACKS, starts.sum((0, 1)).tolist(), strict=True)}


def write_outputs(probs: np.ndarray, binary: np.ndarray, out: Path, prefix: str,
                  bpm: float = DEFAULT_BPM, titles: list[str] | None = None,
                  pictures: bool = True, layout: PhraseLayout = DEFAULT_LAYOUT
                  ) -> list[dict[str, Any]]:
    """One ``.mid``, ``.npz`` and ``.png`` per phrase; returns an index of the files.

    ``probs``: note probabilities ``(N, bars, T, P, tracks)`` (stored as float16);
    ``binary``: the notes played, same shape (non-zero = on; stored as bool). The MIDI
    file holds exactly the npz's ``pianoroll`` (``ms2dist.music.midi.read_midi`` gives it back).
    Same inputs -> byte-identical files. ``layout``: pitch window and grid of the phrases.
    """
    out = Path(out)
    binary = np.asarray(binary) != 0
    probs = np.asarray(probs)
    if probs.shape != binary.shape:
        raise ValueError(f"probabilities {probs.shape} and notes {binary.shape} differ in shape")
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for i in range(len(binary)):
        stem = out / f"{prefix}_{i:03d}"
        roll = binary[i].reshape(-1, *binary.shape[-2:])  # (bars * steps, pitches, tracks)
        write_midi(roll, stem.with_suffix(".mid"), tempo_bpm=bpm,
                   steps_per_beat=layout.steps_per_beat, lowest_pitch=layout.lowest_pitch)
        save_npz(stem.with_suffix(".npz"), pianoroll=binary[i],
                 probabilities=probs[i].astype(np.float16), tracks=np.array(TRACKS),
                 lowest_pitch=np.int64(layout.lowest_pitch),
                 steps_per_beat=np.int64(layout.steps_per_beat), tempo_bpm=np.float64(bpm))
        entry = {"midi": str(stem.with_suffix(".mid")), "npz": str(stem.with_suffix(".npz")),
                 "notes_on": int(binary[i].sum()), "notes_per_track": notes_per_track(binary[i])}
        if pictures:
            title = titles[i] if titles else f"{prefix} {i}"
            plot_pianoroll(roll, stem.with_suffix(".png"), title=title,
                           steps_per_beat=layout.steps_per_beat,
                           beats_per_bar=layout.beats_per_bar, lowest_pitch=layout.lowest_pitch)
            entry["png"] = str(stem.with_suffix(".png"))
        index.append(entry)
    (out / f"{prefix}_index.json").write_text(json.dumps(index, indent=1))
    return index
