"""Sample previews during training: PNG + MIDI (+ audio, when FluidSynth is installed) of
real samples, logged as run artifacts under ``samples/step_<step>``.

Stage 1: validation phrases rebuilt by each track's BVAE (``recon_*``) and phrases whose
tracks are drawn from each BVAE's prior (``prior_*``), next to the phrases themselves
(``target_*``). Stage 2: restores through the whole model and phrases generated from noise
(``generated_*``). Both stages log them every ``tracking.sample_every`` steps and once at
the end.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ms2dist import TRACKS
from ms2dist.dataset.batch import unpack_phrases
from ms2dist.dataset.eval_stream import eval_loader
from ms2dist.inference.calibration import BinarizeRule
from ms2dist.layout import PhraseLayout
from ms2dist.music import audio
from ms2dist.music.files import write_outputs

__all__ = ["log_previews", "due", "density_rule", "PREVIEW_AUDIO"]

PREVIEW_AUDIO = "flac"  # the audio format of previews (lossless and small)
_NAMES = {"recon": "reconstruction", "prior": "BVAE priors", "generated": "generated"}


def due(step: int, every: int, final: bool) -> bool:
    """Previews every ``every`` steps (0: never) and once at the end (``final``)."""
    return final or bool(every and step % every == 0)


def _first_val_phrases(val_dir: Path, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    for batch in eval_loader(val_dir, n, rank=0, world_size=1):
        return unpack_phrases(batch["phrases"], torch.device("cpu"), shape=shape)[:n]
    raise ValueError(f"{val_dir}: empty split")


def density_rule(x: torch.Tensor, outputs: list[torch.Tensor]) -> BinarizeRule:
    """Per-track thresholds under which ``outputs`` play as many notes as the phrases ``x``.

    What calibration does for a full model (:mod:`ms2dist.inference.calibration`), here for
    a model without one (stage 1): a fixed 0.5 shows an early model's samples as empty
    pictures, while matching the note density shows what it has learnt so far. A track
    silent in ``x`` gets threshold 1 (nothing is played).
    """
    thresholds = []
    for t in range(len(TRACKS)):
        density = float(x[..., t].float().mean())
        probs = torch.cat([o[..., t].reshape(-1).float().cpu() for o in outputs])
        if density <= 0.0 or probs.numel() == 0:
            thresholds.append(1.0)
            continue
        q = torch.quantile(probs, min(max(1.0 - density, 0.0), 1.0)).item()
        thresholds.append(float(min(max(q, 1e-6), 1.0)))
    return BinarizeRule(thresholds=tuple(thresholds))


def _audio_format() -> str | None:
    """``"flac"`` when FluidSynth and a SoundFont are installed; else none (the previews
    still hold pictures and MIDI: a missing synthesiser never fails training)."""
    try:
        return PREVIEW_AUDIO if audio.available() else None
    except Exception:  # noqa: BLE001 - a broken audio setup costs the audio only
        return None


def _write(probs: Any, notes: Any, out: Path, prefix: str, titles: list[str],
           layout: PhraseLayout, fmt: str | None) -> None:
    """``write_outputs``, with audio if it renders; without it if FluidSynth fails."""
    if fmt is not None:
        try:
            write_outputs(probs, notes, out, prefix, titles=titles, layout=layout, audio=fmt)
            return
        except (audio.AudioUnavailable, audio.RenderError, OSError) as e:
            print(f"[ms2dist] warning: no audio for the {prefix} previews ({e})",
                  file=sys.stderr)
    write_outputs(probs, notes, out, prefix, titles=titles, layout=layout)


def log_previews(tracker: Any, model: Any, stage: Any, step: int, val_dir: Path,
                 layout: PhraseLayout, n: int = 2, rule: BinarizeRule | None = None,
                 tracks: list[str] | None = None) -> None:
    """Write ``stage.previews`` of the first val phrases into a temporary folder and hand
    it to ``tracker.log_artifacts``.

    Parameters
    ----------
    tracker, model, stage
        The run's :class:`~ms2dist.tracking.runs.RunTracker`, the model, its stage.
    step
        The global step (names the artifact folder and seeds the samples).
    val_dir, layout
        The validation split the phrases come from and their layout.
    n
        Phrases per kind.
    rule
        Which notes are played; ``None``: the model's calibration if the stage has one,
        else per-track thresholds matching the val phrases' note density (:func:`density_rule`).
    tracks
        The tracks the job trains (``None``: all); the others are left silent.

    Never raises: a picture must never kill a training run (the failure is printed).
    """
    if not tracker.enabled:
        return
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    track_ids = None if tracks is None else [TRACKS.index(t) for t in tracks]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), \
                tempfile.TemporaryDirectory() as tmp:
            x = _first_val_phrases(val_dir, n, layout.shape).to(device)
            outputs = stage.previews(model, x, step, track_ids)
            how = rule.short() if rule is not None else ""
            if rule is None and stage.calibrates():
                rule, how = BinarizeRule(), "threshold 0.5"
            elif rule is None:
                rule = density_rule(x, [p for k, p in outputs.items() if k != "target"])
                how = "thresholds matching the val note density"
            fmt = _audio_format()
            for prefix, probs in outputs.items():
                notes = x > 0.5 if prefix == "target" else rule.apply(probs)
                titles = [f"val phrase {i}" for i in range(len(probs))] \
                    if prefix == "target" else [
                    f"{_NAMES.get(prefix, prefix)} {i} @ step {step}, {how}"
                    for i in range(len(probs))]
                _write(probs.float().cpu().numpy(), notes.cpu().numpy(), Path(tmp), prefix,
                       titles, layout, fmt)
            tracker.log_artifacts(tmp, f"samples/step_{step:09d}")
    except Exception as e:  # noqa: BLE001 - pictures must never kill a training run
        print(f"[ms2dist] warning: could not log samples at step {step}: {e}", file=sys.stderr)
    finally:
        model.train(was_training)
