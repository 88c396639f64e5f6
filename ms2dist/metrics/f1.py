"""Note precision, recall and F1: the one implementation (numpy, no torch).

A *note* here is one on-cell ``(step, pitch)`` of a track, compared cell by cell with the
target. Counts are pooled over everything but the track axis (every cell weighs the same).

Convention for empty cases, everywhere in ms2dist (validation, Table I, losses' logs):
precision is 1 when nothing is predicted, recall is 1 when there is nothing to find, so a
track that is silent in both the target and the prediction scores F1 = 1 (nothing to find,
nothing wrongly played) and one that plays where the target is silent scores F1 = 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["prf_from_counts", "note_counts", "note_prf"]


def prf_from_counts(tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1) from true-positive, false-positive and false-negative counts
    (scalars or arrays of the same shape), with the empty-case convention above."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    npred, ntrue = tp + fp, tp + fn
    precision = np.where(npred > 0, tp / np.maximum(npred, 1), 1.0)
    recall = np.where(ntrue > 0, tp / np.maximum(ntrue, 1), 1.0)
    denom = npred + ntrue
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    return precision, recall, f1


def note_counts(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(tracks, 3)`` int64 counts tp, fp, fn of boolean ``(..., tracks)`` arrays."""
    p, y = np.asarray(pred) != 0, np.asarray(target) != 0
    if p.shape != y.shape:
        raise ValueError(f"prediction {p.shape} and target {y.shape} differ in shape")
    axes = tuple(range(p.ndim - 1))
    tp = np.count_nonzero(p & y, axis=axes)
    fp = np.count_nonzero(p & ~y, axis=axes)
    fn = np.count_nonzero(~p & y, axis=axes)
    return np.stack([tp, fp, fn], -1).astype(np.int64)


def note_prf(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-track (last axis) precision, recall and F1 of boolean notes against a target."""
    c = note_counts(pred, target)
    return prf_from_counts(c[..., 0], c[..., 1], c[..., 2])
