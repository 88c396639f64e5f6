"""Shared pieces of the metrics: boolean batches, pooled ratios, note onsets (numpy)."""

from __future__ import annotations

import numpy as np

__all__ = ["as_rolls", "ratio", "onsets"]


def as_rolls(rolls: np.ndarray, ndim: int = 4) -> np.ndarray:
    """Return a boolean array with ``ndim`` axes (a missing batch axis is added)."""
    x = np.asarray(rolls)
    if x.ndim == ndim - 1:
        x = x[None]
    if x.ndim != ndim:
        raise ValueError(f"expected an array with {ndim} axes (or {ndim - 1}), got {x.shape}")
    return x if x.dtype == np.bool_ else x != 0


def ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def onsets(rolls: np.ndarray) -> np.ndarray:
    """Note onsets of a batch of phrases: True on the first step of every run of on-steps.

    Parameters
    ----------
    rolls : np.ndarray, shape (N, bars, time, pitch)

    Returns
    -------
    np.ndarray of bool, same shape
        Runs are followed across bar lines (the phrase is one timeline).
    """
    x = as_rolls(rolls)
    n, b, t, p = x.shape
    flat = x.reshape(n, b * t, p)
    on = flat.copy()
    on[:, 1:] &= ~flat[:, :-1]
    return on.reshape(x.shape)
