"""Attribute vectors (MusicVAE, Roberts et al. 2018): directions in the MFG latent that
raise one musical attribute of one track, fitted on data after training.

For every segment of the data (a bar for bar-level BVAEs, else a phrase) we take the
MFG posterior mean and the attributes of its notes. The direction of ``Track.attr`` is
half the difference between the mean latent of the segments in the attribute's top
quartile and that of its bottom quartile, so ``--attribute Piano.density=+1`` moves a
latent from the middle of the data about as far as the top quartile's centre.

Attributes (per track; Drums only ``density``), each of a segment's notes:

- ``density``: notes started per bar;
- ``polyphony``: mean pitches sounding per step that sounds (undefined when silent);
- ``range``: highest minus lowest pitch played, in semitones (undefined when silent).

They are stored beside the model as ``attributes.safetensors`` (the directions, ``(A, Z)``
float32) plus ``meta.attributes`` in its ``config.json`` (names, the data's statistics),
so they travel with the model into MLflow (``modelio.save_attributes`` /
``load_attributes``; ``load_model`` sets ``model.ms2dist_attributes``).
:func:`fit_attributes_dir` reads the data and writes the files; the rest does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ms2dist import TRACKS
from ms2dist.metrics.rolls import onsets

__all__ = ["KINDS", "MAX_PHRASES", "attribute_names", "segment_attributes",
           "fit_attributes", "fit_attributes_dir", "parse_attribute", "shift_vector"]

#: Data phrases read to fit the directions (each gives n_segments latents).
MAX_PHRASES = 2000
#: Fewest segments that must play a track for its attributes to get a direction.
MIN_SEGMENTS = 8

KINDS = ("density", "polyphony", "range")
_MAX_ATTRIBUTE_SCALE = 10.0


def attribute_names(tracks: Iterable[str] = TRACKS) -> list[str]:
    """``Drums.density``, then ``<track>.density/polyphony/range`` for the other tracks."""
    return [f"{t}.{k}" for t in tracks for k in (("density",) if t == "Drums" else KINDS)]


def segment_attributes(rolls: np.ndarray, n_segments: int,
                       tracks: Iterable[str] = TRACKS) -> dict[str, np.ndarray]:
    """Each attribute of every segment of ``rolls`` ``(N, bars, T, P, tracks)`` (bool):
    name -> ``(N * n_segments,)`` float64, NaN where undefined (a silent track)."""
    x = np.asarray(rolls) > 0
    n, bars = x.shape[:2]
    seg = x.reshape(n * n_segments, -1, *x.shape[-2:])  # (segments, steps, P, tracks)
    bars_per_seg = bars // n_segments
    out: dict[str, np.ndarray] = {}
    pitches = np.arange(x.shape[-2])
    for k, t in enumerate(tracks):
        roll = seg[..., k]  # (segments, steps, P)
        out[f"{t}.density"] = onsets(roll[:, None]).sum((1, 2, 3)) / bars_per_seg
        if t == "Drums":
            continue
        sounding = roll.sum(2)  # pitches per step
        steps_on = (sounding > 0).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{t}.polyphony"] = np.where(steps_on > 0, sounding.sum(1) / steps_on, np.nan)
        played = roll.any(1)  # (segments, P)
        hi = np.where(played, pitches, -1).max(1)
        lo = np.where(played, pitches, x.shape[-2]).min(1)
        out[f"{t}.range"] = np.where(played.any(1), hi - lo, np.nan).astype(np.float64)
    return out


def fit_attributes(model: Any, phrases: np.ndarray, batch_size: int = 64
                   ) -> tuple[list[str], torch.Tensor, dict[str, Any]]:
    """Attribute directions of ``model`` from data ``phrases`` ``(N, bars, T, P, tracks)``.

    Returns the names, the directions ``(A, Z)`` (float32, CPU) and the JSON statistics
    (per attribute: segments used, the data's mean, std and quartiles, and the latent
    distance between the quartile centres; under ``"skipped"``, each attribute left out
    and why: too few segments play its track, or it never varies).
    """
    tracks = TRACKS[: phrases.shape[-1]]
    mus = []
    with torch.no_grad():
        for a in range(0, len(phrases), batch_size):
            x = torch.as_tensor(phrases[a:a + batch_size], dtype=torch.float32,
                                device=model.device)
            mus.append(model.encode(x)[0].float().cpu())
    mu = torch.cat(mus).double()  # (N * S, Z)
    values = segment_attributes(phrases, model.n_segments, tracks)
    names, dirs, stats, skipped = [], [], {}, {}
    for name in attribute_names(tracks):
        v = values[name]
        ok = ~np.isnan(v)
        vv = v[ok]
        if len(vv) < MIN_SEGMENTS:
            skipped[name] = f"{len(vv)} segments play it (fewer than {MIN_SEGMENTS})"
            continue
        q25, q75 = np.quantile(vv, [0.25, 0.75])
        top = vv >= q75 if q75 > q25 else vv > q25
        bottom = vv <= q25
        if not top.any():
            skipped[name] = f"it never varies in the data (always {q25:g})"
            continue
        m = mu[torch.as_tensor(ok)]
        d = (m[torch.as_tensor(top)].mean(0) - m[torch.as_tensor(bottom)].mean(0)) / 2
        names.append(name)
        dirs.append(d.float())
        stats[name] = {"segments": int(len(vv)), "mean": float(vv.mean()),
                       "std": float(vv.std()), "q25": float(q25), "q75": float(q75),
                       "direction_norm": float(d.norm())}
    if not names:
        raise ValueError("no attribute varies in the data given (too few or silent phrases)")
    if skipped:
        stats["skipped"] = skipped
    return names, torch.stack(dirs), stats


def fit_attributes_dir(model_dir: str | Path, model: Any, data: str | Path,
                       max_phrases: int = MAX_PHRASES, batch_size: int = 64
                       ) -> dict[str, Any]:
    """Fit ``model``'s attribute vectors on up to ``max_phrases`` phrases of ``data`` (a
    packed split or a folder of songs: the *training* data) and store them in
    ``model_dir``; returns the ``meta.attributes`` block written."""
    from ms2dist.dataset.load import split_phrases
    from ms2dist.inference.modelio import save_attributes

    phrases = split_phrases(Path(data), max_phrases)
    names, dirs, stats = fit_attributes(model, phrases, batch_size)
    return save_attributes(model_dir, names, dirs, stats,
                           f"{data} ({len(phrases)} phrases)")


def parse_attribute(spec: str, available: Mapping[str, Any] | None) -> tuple[str, float]:
    """``"Drums.density=+1.5"`` -> ``("Drums.density", 1.5)``, checked against the model's
    attributes (``available``; None: the model has none)."""
    name, sep, value = str(spec).partition("=")
    name = name.strip()
    if not sep:
        raise ValueError(f"--attribute {spec!r}: expected TRACK.ATTRIBUTE=SCALE, e.g. "
                         f"Drums.density=+1.5")
    if available is None:
        raise ValueError(f"--attribute {spec!r}: this model has no attribute vectors; fit "
                         f"them with `ms2dist attributes --model DIR --data TRAIN_SPLIT`")
    if name not in available:
        raise ValueError(f"--attribute {spec!r}: unknown attribute {name!r}; this model has "
                         f"{', '.join(available)}")
    try:
        scale = float(value)
    except ValueError:
        raise ValueError(f"--attribute {spec!r}: the scale {value!r} is not a number") from None
    if not abs(scale) <= _MAX_ATTRIBUTE_SCALE:
        raise ValueError(f"--attribute {spec!r}: the scale must lie in "
                         f"-{_MAX_ATTRIBUTE_SCALE:g}..{_MAX_ATTRIBUTE_SCALE:g}")
    return name, scale


def shift_vector(available: Mapping[str, torch.Tensor],
                 scales: Mapping[str, float]) -> torch.Tensor | None:
    """The latent shift ``sum(scale * direction)`` (None when no attribute is asked)."""
    if not scales:
        return None
    return sum(float(s) * available[n].float() for n, s in scales.items())  # type: ignore[return-value]
