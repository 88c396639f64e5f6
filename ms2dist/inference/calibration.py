"""Which notes are played: binarisation rules, and per-track thresholds fitted on data.

The model outputs note *probabilities*. LPD-5 phrases are ~2% ones, so a model that is
uncertain where a note goes spreads its mass thinly and a fixed 0.5 threshold turns most
of its music into silence. The default rule is therefore **calibrated**: one threshold
per track, fitted so that phrases generated from noise have, cell for cell, the note
density of the held-out data (:func:`fit_thresholds`). The thresholds live in the
model's ``config.json`` (``meta.calibration``) and travel with it everywhere (MLflow
registry, pyfunc, the shipped pretrained model).

Rules (:class:`BinarizeRule`):

- ``calibrated``: a bar of a track plays only if its most probable cell exceeds the track's
  *bar gate* ``g[track]``, and then every cell with ``p > t[track]`` is a note. The gate is
  fitted so that generated phrases have the data's empty-bar rate, the threshold so that
  they have its note density (a separate pair for the no-refine MSG1 output, whose
  probabilities are scaled differently). Without the gate, the faint probability a model
  leaves in bars that should be silent passes a low density-matched threshold as scattered
  short notes: every bar plays;
- ``threshold``: ``p > x`` for one value ``x`` on every track (``--threshold X``);
- ``bernoulli``: every note drawn with its probability (seeded).

A track the data never plays (the bundled corpus has no drums) gets threshold 1.0: it
stays silent, as it should.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ms2dist import TRACKS
from ms2dist.dataset.load import split_phrases
from ms2dist.inference.modelio import update_model_meta
from ms2dist.metrics import empty_bar_rate

__all__ = ["BinarizeRule", "RULES", "fit_thresholds", "rule_for_model", "CalibrationError",
           "track_density", "calibrate_dir"]

RULES = ("calibrated", "threshold", "bernoulli")
DEFAULT_THRESHOLD = 0.5


class CalibrationError(ValueError):
    """A rule that cannot be applied (e.g. ``calibrated`` on a model that has none)."""


@dataclass(frozen=True)
class BinarizeRule:
    """How probabilities ``(..., tracks)`` become notes; ``describe()`` names it in outputs."""

    rule: str = "threshold"
    thresholds: tuple[float, ...] = (DEFAULT_THRESHOLD,) * len(TRACKS)
    thresholds_no_refine: tuple[float, ...] | None = None
    gates: tuple[float, ...] | None = None  # bar gates (calibrated), per track
    gates_no_refine: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise CalibrationError(f"binarize rule {self.rule!r} is not one of {RULES}")

    def cutoffs(self, refine: bool = True) -> tuple[float, ...]:
        if not refine and self.thresholds_no_refine is not None:
            return self.thresholds_no_refine
        return self.thresholds

    def bar_gates(self, refine: bool = True) -> tuple[float, ...] | None:
        if not refine and self.gates_no_refine is not None:
            return self.gates_no_refine
        return self.gates

    def apply(self, probs: torch.Tensor, *, refine: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Boolean notes of the same shape as ``probs`` ``(..., bars, T, P, tracks)``."""
        if self.rule == "bernoulli":
            return torch.bernoulli(probs.float(), generator=generator) > 0.5
        p = probs.float()
        t = torch.tensor(self.cutoffs(refine), dtype=torch.float32, device=probs.device)
        notes = p > t
        gates = self.bar_gates(refine)
        if gates is not None and p.dim() >= 4:
            g = torch.tensor(gates, dtype=torch.float32, device=probs.device)
            notes &= p.amax(dim=(-3, -2), keepdim=True) > g
        return notes

    def short(self) -> str:
        """A few words for picture titles (``describe`` has the numbers)."""
        return {"calibrated": "calibrated per-track thresholds", "bernoulli": "bernoulli draws"
                }.get(self.rule, f"threshold {self.thresholds[0]:g}")

    def describe(self, refine: bool = True) -> str:
        if self.rule == "bernoulli":
            return "bernoulli draws"
        if self.rule == "threshold":
            return f"threshold {self.thresholds[0]:g}"
        ts = ", ".join(f"{n[0]} {t:.3f}" for n, t in zip(TRACKS, self.cutoffs(refine),
                                                           strict=True))
        gates = self.bar_gates(refine)
        gs = "" if gates is None else "; bar gates " + ", ".join(
            f"{n[0]} {g:.3f}" for n, g in zip(TRACKS, gates, strict=True))
        return f"calibrated thresholds ({ts}{gs})"

    def to_json(self, refine: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "description": self.describe(refine)}
        if self.rule != "bernoulli":
            out["thresholds"] = dict(zip(TRACKS, self.cutoffs(refine), strict=True))
        if self.bar_gates(refine) is not None:
            out["bar_gates"] = dict(zip(TRACKS, self.bar_gates(refine), strict=True))
        return out


def rule_for_model(meta: Mapping[str, Any], binarize: str | None = None,
                   threshold: float | None = None, label: str = "the model") -> BinarizeRule:
    """The rule a command uses: an explicit ``--threshold``/``--binarize`` wins, then the
    model's calibrated thresholds, then (old, uncalibrated models) threshold 0.5."""
    if threshold is not None:
        if binarize not in (None, "threshold"):
            raise CalibrationError(f"--threshold {threshold} goes with --binarize threshold, "
                                   f"not {binarize!r}")
        if not 0.0 <= threshold < 1.0:
            raise CalibrationError(f"--threshold must be in [0, 1), got {threshold}")
        return BinarizeRule("threshold", (float(threshold),) * len(TRACKS))
    if binarize == "bernoulli":
        return BinarizeRule("bernoulli")
    if binarize == "threshold":
        return BinarizeRule("threshold")
    cal = meta.get("calibration")
    if binarize not in (None, "calibrated"):
        raise CalibrationError(f"--binarize {binarize!r}: choose one of {', '.join(RULES)}")
    if not cal:
        if binarize == "calibrated":
            raise CalibrationError(
                f"{label} has no calibrated thresholds; fit them with `ms2dist calibrate "
                f"--model DIR --data shards/<name>/val` or pass --threshold X")
        return BinarizeRule("threshold")
    def per_track(key: str) -> tuple[float, ...] | None:
        block = cal.get(key)
        return tuple(float(block[t]) for t in TRACKS) if block else None

    return BinarizeRule("calibrated", per_track("thresholds"), per_track("thresholds_no_refine"),
                        per_track("bar_gates"), per_track("bar_gates_no_refine"))


def track_density(phrases: np.ndarray) -> np.ndarray:
    """Share of on-cells per track of ``(N, bars, T, P, tracks)`` phrases."""
    x = np.asarray(phrases) != 0
    return x.reshape(-1, x.shape[-1]).mean(0)


def track_empty_bar_rate(phrases: np.ndarray) -> np.ndarray:
    """Empty-bar rate (:func:`ms2dist.metrics.empty_bar_rate`) per track of
    ``(N, bars, T, P, tracks)`` phrases."""
    x = np.asarray(phrases)
    return np.array([empty_bar_rate(x[..., t]) for t in range(x.shape[-1])])


def _quantile_threshold(p: torch.Tensor, density: float) -> float:
    """The cut ``t`` with ``mean(p > t) ~= density`` (1.0 = silence for an empty track).

    Never below 1e-6: a model whose probabilities are all ~0 stays silent."""
    if density <= 0.0:
        return 1.0
    if density >= 1.0:
        return 1e-6
    flat = p.flatten().float()
    k = int(round((1.0 - density) * flat.numel()))
    k = min(max(k, 1), flat.numel())
    t = float(torch.kthvalue(flat, k).values)
    # Ties (a saturated model's many exact 1.0s): "p > t" drops every cell equal to t; the
    # next lower value keeps them. Take whichever of the two cuts lands nearer the density.
    lower = flat[flat < t]
    if lower.numel():
        t2 = float(lower.max())
        if abs(float((flat > t2).float().mean()) - density) < abs(
                float((flat > t).float().mean()) - density):
            t = t2
    return float(min(max(t, 1e-6), 1.0 - 1e-6))


def _fit_track(probs: torch.Tensor, density: float, empty_rate: float) -> tuple[float, float]:
    """(bar gate, note threshold) of one track; ``probs`` is ``(N, bars, T, P)``.

    The gate is the ``empty_rate`` quantile of each bar's largest probability; the threshold
    then matches the note density over the gated probabilities (a closed bar plays nothing).
    """
    if density <= 0.0:
        return 1.0, 1.0
    bar_max = probs.amax(dim=(-2, -1))
    gate = _quantile_threshold(bar_max, 1.0 - empty_rate) if empty_rate > 0 else 0.0
    gated = probs * (bar_max > gate)[..., None, None]
    return gate, _quantile_threshold(gated, density)


@torch.no_grad()
def fit_thresholds(model: Any, phrases: np.ndarray, *, n_samples: int = 256, seed: int = 0,
                   batch_size: int = 64, temperature: float = 1.0) -> dict[str, Any]:
    """Per-track thresholds so that generated phrases have the note density of ``phrases``.

    ``phrases`` are held-out data (the val split); ``n_samples`` phrases are generated from
    noise (seeded) with and without the refine net, and each track's threshold is the
    ``1 - density`` quantile of its generated probabilities. Returns the JSON block stored
    as ``meta.calibration``.
    """
    target = track_density(phrases)
    empty = track_empty_bar_rate(phrases)
    out: dict[str, Any] = {"rule": "per-track bar gates (empty-bar rate) and note thresholds "
                                   "(note density) matched to held-out data",
                           "target_density": dict(zip(TRACKS, map(float, target), strict=True)),
                           "target_empty_bar_rate": dict(zip(TRACKS, map(float, empty),
                                                             strict=True)),
                           "n_data_phrases": int(len(phrases)), "n_samples": int(n_samples),
                           "seed": int(seed), "temperature": float(temperature)}
    for suffix, refine in (("", True), ("_no_refine", False)):
        chunks = []
        for i in range(0, n_samples, batch_size):
            k = min(batch_size, n_samples - i)
            chunks.append(model.generate(k, temperature=temperature, seed=seed + i,
                                         refine=refine).float().cpu())
        probs = torch.cat(chunks)
        fits = [_fit_track(probs[..., t], float(target[t]), float(empty[t]))
                for t in range(probs.shape[-1])]
        out["bar_gates" + suffix] = dict(zip(TRACKS, (f[0] for f in fits), strict=True))
        out["thresholds" + suffix] = dict(zip(TRACKS, (f[1] for f in fits), strict=True))
        if refine:
            flat = probs.reshape(-1, probs.shape[-1])
            out["density_at_0.5"] = dict(zip(
                TRACKS, map(float, (flat > 0.5).float().mean(0).tolist()), strict=True))
    return out


def calibrate_dir(model_dir: Path, model: torch.nn.Module, split: Path, *, n_samples: int = 256,
                  max_phrases: int = 2000, seed: int = 0) -> dict:
    """Fit on ``split`` and store the result in ``model_dir/config.json``; returns it."""
    data = split_phrases(split, max_phrases)
    was_training = model.training
    model.eval()
    cal = fit_thresholds(model, data, n_samples=n_samples, seed=seed)
    model.train(was_training)
    cal["fitted_on"] = str(split)
    update_model_meta(model_dir, {"calibration": cal})
    return cal
