"""Pitch-class metrics: chroma, major keys, scale ratio (SR), tonal distance (TD); numpy.

Chroma: the 84 pitches starting at MIDI 24 (a C) fold as ``(..., 7, 12).sum(-2)``
(octave-major). Public implementations fold as ``(12, 7)`` and sum the last axis, which
groups neighbouring semitones; :func:`chroma` does it right and handles any lowest pitch.
It is the one fold every pitch-class metric goes through.
"""

from __future__ import annotations

import numpy as np

from ms2dist.metrics.rolls import as_rolls, onsets, ratio

__all__ = ["MAJOR_SCALE", "chroma", "pc_presence", "best_major_key", "scale_ratio",
           "tonal_centroid", "tonal_distance", "onset_pc_counts", "sr_counts", "beat_chroma",
           "td_counts"]

#: Pitch classes of C major (C D E F G A B), indexed from C.
MAJOR_SCALE = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], dtype=bool)

# Rows: 12 major scales (tonic C..B); columns: pitch class. _KEY_MASKS[k, p] = p in key k.
_KEY_MASKS = np.stack([np.roll(MAJOR_SCALE, k) for k in range(12)])

# Harte et al. (2006) tonal-centroid transform, shape (6, 12).
_L = np.arange(12)
_PHI = np.stack(
    [
        np.sin(_L * 7 * np.pi / 6),
        np.cos(_L * 7 * np.pi / 6),
        np.sin(_L * 3 * np.pi / 2),
        np.cos(_L * 3 * np.pi / 2),
        0.5 * np.sin(_L * 2 * np.pi / 3),
        0.5 * np.cos(_L * 2 * np.pi / 3),
    ]
)


def pc_presence(x: np.ndarray, lowest_pitch: int = 24) -> np.ndarray:
    """Boolean pitch-class presence of ``x`` (..., pitch) -> (..., 12)."""
    return chroma(x, lowest_pitch) > 0


def chroma(roll: np.ndarray, lowest_pitch: int = 24) -> np.ndarray:
    """Fold the last (pitch) axis of a roll into 12 pitch classes.

    Parameters
    ----------
    roll : np.ndarray, shape (..., pitch)
        Any array whose last axis is pitch, index 0 being MIDI ``lowest_pitch``.
    lowest_pitch : int
        MIDI pitch of index 0 (24 in the MuseGAN layout, a C).

    Returns
    -------
    np.ndarray, shape (..., 12)
        Per pitch class (index 0 = C) the sum over octaves (int64 for boolean input).
    """
    x = np.asarray(roll)
    if x.dtype == np.bool_:
        x = x.astype(np.int64)
    offset = lowest_pitch % 12
    n_pitch = x.shape[-1]
    pad_hi = (-(offset + n_pitch)) % 12
    if offset or pad_hi:
        pad = [(0, 0)] * (x.ndim - 1) + [(offset, pad_hi)]
        x = np.pad(x, pad)
    return x.reshape(*x.shape[:-1], x.shape[-1] // 12, 12).sum(-2)


def best_major_key(pc_counts: np.ndarray) -> np.ndarray:
    """Tonic (0 = C ... 11 = B) of the major scale holding the most of the given counts.

    Parameters
    ----------
    pc_counts : np.ndarray, shape (..., 12)
        Counts (or weights) per pitch class. Ties go to the lowest tonic.

    Returns
    -------
    np.ndarray of int, shape (...)
    """
    pc = np.asarray(pc_counts)
    return np.argmax(pc @ _KEY_MASKS.T.astype(pc.dtype), axis=-1)


def scale_ratio(
    rolls: np.ndarray, key: int | np.ndarray | None = None, lowest_pitch: int = 24
) -> float:
    """Share of note onsets inside a major scale (SR).

    Parameters
    ----------
    rolls : np.ndarray, shape (N, bars, time, pitch)
    key : int, array of shape (N,), or None
        Tonic of the major scale (0 = C). ``None`` picks, per phrase, the major scale
        that holds the most onsets of this roll (:func:`best_major_key`).
    lowest_pitch : int
        MIDI pitch of pitch index 0.
    """
    x = as_rolls(rolls)
    pc = onset_pc_counts(onsets(x), lowest_pitch)
    k = best_major_key(pc) if key is None else np.broadcast_to(np.asarray(key) % 12, len(pc))
    return ratio(*sr_counts(pc, k))


def tonal_centroid(chroma_vectors: np.ndarray) -> np.ndarray:
    """6-D tonal centroid (Harte et al. 2006) of chroma vectors.

    Parameters
    ----------
    chroma_vectors : np.ndarray, shape (..., 12)
        Non-negative chroma; each vector is L1-normalised first (all-zero vectors map to
        the origin).

    Returns
    -------
    np.ndarray, shape (..., 6)
    """
    c = np.asarray(chroma_vectors, dtype=np.float64)
    total = c.sum(-1, keepdims=True)
    c = np.divide(c, total, out=np.zeros_like(c), where=total > 0)
    return c @ _PHI.T


def tonal_distance(
    rolls_a: np.ndarray,
    rolls_b: np.ndarray,
    steps_per_beat: int = 12,
    lowest_pitch: int = 24,
) -> float:
    """Tonal distance between two tracks (TD), averaged over beats where both sound.

    Parameters
    ----------
    rolls_a, rolls_b : np.ndarray, shape (N, bars, time, pitch)
        Two tracks of the same phrases; ``time`` must be a multiple of ``steps_per_beat``.

    Returns
    -------
    float
        Mean Euclidean distance between per-beat tonal centroids; ``nan`` when no beat
        has both tracks non-empty.
    """
    ca = beat_chroma(as_rolls(rolls_a), steps_per_beat, lowest_pitch)
    cb = beat_chroma(as_rolls(rolls_b), steps_per_beat, lowest_pitch)
    if ca.shape != cb.shape:
        raise ValueError(f"track shapes differ: {ca.shape} vs {cb.shape}")
    return ratio(*td_counts(ca, cb))


def onset_pc_counts(on: np.ndarray, lowest_pitch: int) -> np.ndarray:
    """(N, 12) number of onsets per pitch class and phrase."""
    n, b, t, p = on.shape
    per_pitch = np.count_nonzero(on.reshape(n, b * t, p), axis=1)  # (N, pitch)
    return chroma(per_pitch, lowest_pitch)


def sr_counts(pc_counts: np.ndarray, key: np.ndarray) -> tuple[int, int]:
    in_key = (pc_counts * _KEY_MASKS[key]).sum()
    return int(in_key), int(pc_counts.sum())


def beat_chroma(x: np.ndarray, steps_per_beat: int, lowest_pitch: int) -> np.ndarray:
    """(N, beats, 12) on-step counts per pitch class and beat."""
    n, b, t, p = x.shape
    if t % steps_per_beat:
        raise ValueError(f"time axis {t} is not a multiple of steps_per_beat={steps_per_beat}")
    per_pitch = np.count_nonzero(
        x.reshape(n, b * t // steps_per_beat, steps_per_beat, p), axis=2
    )  # (N, beats, pitch)
    return chroma(per_pitch, lowest_pitch)


def td_counts(ca: np.ndarray, cb: np.ndarray) -> tuple[float, int]:
    both = (ca.sum(-1) > 0) & (cb.sum(-1) > 0)
    if not both.any():
        return 0.0, 0
    za = tonal_centroid(ca[both])
    zb = tonal_centroid(cb[both])
    return float(np.linalg.norm(za - zb, axis=-1).sum()), int(both.sum())
