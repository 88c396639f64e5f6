"""Sample previews during training: PNG + MIDI of validation restores (and, in stage 2,
phrases generated from noise), logged as run artifacts under ``samples/step_<step>``."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ms2dist.dataset.batch import unpack_phrases
from ms2dist.dataset.eval_stream import eval_loader
from ms2dist.inference.calibration import BinarizeRule
from ms2dist.layout import PhraseLayout
from ms2dist.music.files import write_outputs

__all__ = ["log_previews", "due"]


def due(step: int, every: int, final: bool) -> bool:
    """Previews every ``every`` steps (0: never) and once at the end (``final``)."""
    return final or bool(every and step % every == 0)


def _first_val_phrases(val_dir: Path, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    for batch in eval_loader(val_dir, n, rank=0, world_size=1):
        return unpack_phrases(batch["phrases"], torch.device("cpu"), shape=shape)[:n]
    raise ValueError(f"{val_dir}: empty split")


def log_previews(tracker: Any, model: Any, stage: Any, step: int, val_dir: Path,
                 layout: PhraseLayout, n: int = 2, rule: BinarizeRule | None = None) -> None:
    """Write ``stage.previews`` of the first val phrases into a temporary folder and hand
    it to ``tracker.log_artifacts``.

    Never raises: a picture must never kill a training run (the failure is printed).
    """
    if not tracker.enabled:
        return
    rule = rule or BinarizeRule()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), \
                tempfile.TemporaryDirectory() as tmp:
            x = _first_val_phrases(val_dir, n, layout.shape).to(device)
            for prefix, probs in stage.previews(model, x, step).items():
                notes = x > 0.5 if prefix == "target" else rule.apply(probs)
                titles = None if prefix == "target" else [
                    f"{'reconstruction' if prefix == 'recon' else prefix} {i} @ step {step}, "
                    f"{rule.short()}" for i in range(n)]
                write_outputs(probs.float().cpu().numpy(), notes.cpu().numpy(), Path(tmp),
                              prefix, titles=titles, layout=layout)
            tracker.log_artifacts(tmp, f"samples/step_{step:09d}")
    except Exception as e:  # noqa: BLE001 - pictures must never kill a training run
        print(f"[ms2dist] warning: could not log samples at step {step}: {e}", file=sys.stderr)
    finally:
        model.train(was_training)
