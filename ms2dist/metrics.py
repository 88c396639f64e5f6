"""Objective metrics for multi-track pianorolls (MuseGAN's set, with the chroma bug fixed).

Every function is pure numpy and vectorised over a batch of phrases. A single-track
batch is a boolean array ``(N, bars, time, pitch)``; :func:`compute_all` takes the
multi-track layout ``(N, bars, time, pitch, tracks)`` of ``docs/architecture.md``
(4 bars, 48 steps per bar, 84 pitches from MIDI 24, tracks in ``ms2dist.TRACKS`` order).
Non-boolean input is binarised with ``!= 0`` (threshold model outputs yourself first).

Conventions (the published tables rarely state them; these are ours):

* **Notes.** In a binary roll a note is a maximal run of consecutive on-steps of one
  pitch, counted over the whole phrase (``bars * time`` steps): a note held across a
  bar line is one note. Its *onset* is the first step of the run. A note cut by the end
  of the phrase has its observed length.
* **Pooling.** Every rate is pooled over the whole batch: total numerator over total
  denominator (every bar, note, beat or step weighs the same), not a mean of
  per-phrase rates. A metric with an empty denominator is ``nan``.
* **EB** (empty-bar rate): share of bars with no on-step.
* **UPC** (used pitch classes): number of pitch classes (0-12) sounding in a bar,
  averaged over the *non-empty* bars only, so UPC does not double-count EB.
* **QN** (qualified-note rate): share of notes at least ``min_length`` steps long.
  MuseGAN's threshold is 3 steps at 96 steps per bar (a 32nd note); at 48 steps per bar
  a 32nd note is 1.5 steps, so the default is ``min_length=2`` (only one-step notes,
  1/48 of a bar, are unqualified).
* **DP** (drum-pattern rate): share of drum onsets on a 16th-note grid (every
  ``grid=3`` steps at 12 steps per beat, counted from the bar start), optionally with a
  tolerance in steps. The 8th-note grid is a subset of the 16th-note grid, so "on an
  8- or 16-beat grid" is "on the 16th-note grid". MuseGAN's soft filter is not used.
  On real LPD-5 data strict DP is only about 0.5: LPD's drum onsets straddle the grid,
  about half of them one 24th-of-a-beat step early (the 24 -> 12 downsampling keeps
  that), so compare a model's DP with the dataset's, never with 1.0.
* **SR** (scale ratio): share of note *onsets* (each note counted once, whatever its
  length) whose pitch class is in a major scale. By default each phrase picks its own
  best-fitting major scale (the one of 12 holding the most onsets; ties go to the lowest
  tonic, C first); the 12 major scales also cover the 12 natural-minor scales. A fixed
  tonic can be passed instead (``key=0`` is C major). :func:`compute_all` picks one key
  per phrase from the onsets of all pitched tracks together and scores each track
  against it.
* **TD** (tonal distance, Harte, Sandler & Gasser 2006): per beat (``steps_per_beat``
  steps), the chroma of each track is the number of on-steps per pitch class (summed
  over the beat's steps and over octaves), L1-normalised and projected on the 6-D tonal
  centroid (circle of fifths r=1, minor thirds r=1, major thirds r=0.5). TD is the
  Euclidean distance between the two tracks' centroids, averaged over the beats where
  both tracks are non-empty.
* **NPB** (notes per bar): onsets per bar, over every bar (empty bars count as 0).
* **Polyphony**: mean number of pitches on per *active* step (a step with at least one
  pitch on).

Chroma: the 84 pitches starting at MIDI 24 (a C) fold as ``(..., 7, 12).sum(-2)``
(octave-major). Public implementations fold as ``(12, 7)`` and sum the last axis, which
groups neighbouring semitones; :func:`chroma` does it right and handles any lowest pitch.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from ms2dist import TRACKS

__all__ = [
    "MAJOR_SCALE",
    "chroma",
    "onsets",
    "empty_bar_rate",
    "used_pitch_classes",
    "qualified_note_rate",
    "drum_pattern_rate",
    "best_major_key",
    "scale_ratio",
    "tonal_centroid",
    "tonal_distance",
    "polyphony",
    "notes_per_bar",
    "compute_all",
]

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


# --------------------------------------------------------------------------- helpers


def _as_rolls(rolls: np.ndarray, ndim: int = 4) -> np.ndarray:
    """Return a boolean array with ``ndim`` axes (a missing batch axis is added)."""
    x = np.asarray(rolls)
    if x.ndim == ndim - 1:
        x = x[None]
    if x.ndim != ndim:
        raise ValueError(f"expected an array with {ndim} axes (or {ndim - 1}), got {x.shape}")
    return x if x.dtype == np.bool_ else x != 0


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


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


def _pc_presence(x: np.ndarray, lowest_pitch: int) -> np.ndarray:
    """Boolean pitch-class presence of a boolean ``x`` (..., pitch) -> (..., 12)."""
    offset = lowest_pitch % 12
    pad_hi = (-(offset + x.shape[-1])) % 12
    if offset or pad_hi:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(offset, pad_hi)])
    return x.reshape(*x.shape[:-1], x.shape[-1] // 12, 12).any(-2)


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
    x = _as_rolls(rolls)
    n, b, t, p = x.shape
    flat = x.reshape(n, b * t, p)
    on = flat.copy()
    on[:, 1:] &= ~flat[:, :-1]
    return on.reshape(x.shape)


# ------------------------------------------------------- (numerator, denominator) parts


def _eb_counts(x: np.ndarray) -> tuple[int, int]:
    n, b, t, p = x.shape
    nonempty = x.reshape(n, b, t * p).any(-1)
    return int(nonempty.size - np.count_nonzero(nonempty)), int(nonempty.size)


def _upc_counts(x: np.ndarray, lowest_pitch: int) -> tuple[int, int]:
    pcs = _pc_presence(x.any(axis=2), lowest_pitch)  # (N, bars, 12)
    used = np.count_nonzero(pcs, axis=-1)
    return int(used.sum()), int(np.count_nonzero(used))


def _qn_counts(x: np.ndarray, on: np.ndarray, min_length: int) -> tuple[int, int]:
    n, b, t, p = x.shape
    flat = x.reshape(n, b * t, p)
    q = on.reshape(n, b * t, p).copy()
    s = b * t
    for k in range(1, min_length):
        if k >= s:
            q[:] = False
            break
        q[:, : s - k] &= flat[:, k:]
        q[:, s - k :] = False
    return int(np.count_nonzero(q)), int(np.count_nonzero(on))


def _grid_mask(n_time: int, grid: int, tolerance: int) -> np.ndarray:
    r = np.arange(n_time) % grid
    return np.minimum(r, grid - r) <= tolerance


def _check_grid(grid: int, tolerance: int) -> None:
    if grid < 1 or tolerance < 0 or (tolerance > 0 and 2 * tolerance + 1 >= grid):
        raise ValueError(
            f"grid={grid}, tolerance={tolerance}: every step would be on the grid "
            "(need grid >= 1, tolerance >= 0 and 2 * tolerance + 1 < grid)"
        )


def _dp_counts(on: np.ndarray, grid: int, tolerance: int) -> tuple[int, int]:
    mask = _grid_mask(on.shape[2], grid, tolerance)
    per_step = np.count_nonzero(on, axis=(0, 1, 3))  # (time,)
    return int(per_step[mask].sum()), int(per_step.sum())


def _onset_pc_counts(on: np.ndarray, lowest_pitch: int) -> np.ndarray:
    """(N, 12) number of onsets per pitch class and phrase."""
    n, b, t, p = on.shape
    per_pitch = np.count_nonzero(on.reshape(n, b * t, p), axis=1)  # (N, pitch)
    return chroma(per_pitch, lowest_pitch)


def _sr_counts(pc_counts: np.ndarray, key: np.ndarray) -> tuple[int, int]:
    in_key = (pc_counts * _KEY_MASKS[key]).sum()
    return int(in_key), int(pc_counts.sum())


def _beat_chroma(x: np.ndarray, steps_per_beat: int, lowest_pitch: int) -> np.ndarray:
    """(N, beats, 12) on-step counts per pitch class and beat."""
    n, b, t, p = x.shape
    if t % steps_per_beat:
        raise ValueError(f"time axis {t} is not a multiple of steps_per_beat={steps_per_beat}")
    per_pitch = np.count_nonzero(
        x.reshape(n, b * t // steps_per_beat, steps_per_beat, p), axis=2
    )  # (N, beats, pitch)
    return chroma(per_pitch, lowest_pitch)


def _td_counts(ca: np.ndarray, cb: np.ndarray) -> tuple[float, int]:
    both = (ca.sum(-1) > 0) & (cb.sum(-1) > 0)
    if not both.any():
        return 0.0, 0
    za = tonal_centroid(ca[both])
    zb = tonal_centroid(cb[both])
    return float(np.linalg.norm(za - zb, axis=-1).sum()), int(both.sum())


def _npb_counts(on: np.ndarray) -> tuple[int, int]:
    """(onsets, bars): notes per bar over every bar, empty ones included."""
    return int(on.sum()), int(np.prod(on.shape[:2]))


def _poly_counts(x: np.ndarray) -> tuple[int, int]:
    per_step = x.view(np.uint8).sum(-1, dtype=np.uint16)  # pitches on per step
    return int(per_step.sum(dtype=np.int64)), int(np.count_nonzero(per_step))


# ------------------------------------------------------------------- public metrics


def empty_bar_rate(rolls: np.ndarray) -> float:
    """Share of bars with no on-step (EB).

    Parameters
    ----------
    rolls : np.ndarray, shape (N, bars, time, pitch)

    Returns
    -------
    float
        In [0, 1]; ``nan`` when there are no bars.
    """
    return _ratio(*_eb_counts(_as_rolls(rolls)))


def used_pitch_classes(rolls: np.ndarray, lowest_pitch: int = 24) -> float:
    """Mean number of pitch classes used per non-empty bar (UPC, 1-12).

    Empty bars are left out (they are what EB measures); ``nan`` when every bar is empty.
    """
    return _ratio(*_upc_counts(_as_rolls(rolls), lowest_pitch))


def qualified_note_rate(rolls: np.ndarray, min_length: int = 2) -> float:
    """Share of notes at least ``min_length`` steps long (QN).

    ``min_length=2`` at 48 steps per bar stands for MuseGAN's 3 steps at 96 steps per
    bar (a 32nd note = 1.5 steps here). ``nan`` when there are no notes.
    """
    if min_length < 1:
        raise ValueError("min_length must be >= 1")
    x = _as_rolls(rolls)
    return _ratio(*_qn_counts(x, onsets(x), min_length))


def drum_pattern_rate(rolls: np.ndarray, grid: int = 3, tolerance: int = 0) -> float:
    """Share of drum onsets on the 16th-note grid (DP).

    Parameters
    ----------
    rolls : np.ndarray, shape (N, bars, time, pitch)
        The drum track.
    grid : int
        Grid spacing in steps from each bar start: 3 = 16th notes at 12 steps per beat.
    tolerance : int
        Onsets up to this many steps from a grid point also count (0 = exactly on it).
        Must leave some step off the grid: ``2 * tolerance + 1 < grid``.
    """
    _check_grid(grid, tolerance)
    return _ratio(*_dp_counts(onsets(rolls), grid, tolerance))


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
    x = _as_rolls(rolls)
    pc = _onset_pc_counts(onsets(x), lowest_pitch)
    k = best_major_key(pc) if key is None else np.broadcast_to(np.asarray(key) % 12, len(pc))
    return _ratio(*_sr_counts(pc, k))


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
    ca = _beat_chroma(_as_rolls(rolls_a), steps_per_beat, lowest_pitch)
    cb = _beat_chroma(_as_rolls(rolls_b), steps_per_beat, lowest_pitch)
    if ca.shape != cb.shape:
        raise ValueError(f"track shapes differ: {ca.shape} vs {cb.shape}")
    return _ratio(*_td_counts(ca, cb))


def notes_per_bar(rolls: np.ndarray) -> float:
    """Mean number of notes (onsets) per bar, over every bar (empty bars count as 0)."""
    return _ratio(*_npb_counts(onsets(_as_rolls(rolls))))


def polyphony(rolls: np.ndarray) -> float:
    """Mean number of pitches on per active step (a step with at least one pitch on)."""
    return _ratio(*_poly_counts(_as_rolls(rolls)))


# ----------------------------------------------------------------------- all at once


def compute_all(
    phrases: np.ndarray,
    tracks: Sequence[str] = TRACKS,
    *,
    drum_track: str = "Drums",
    steps_per_beat: int = 12,
    lowest_pitch: int = 24,
    qn_min_length: int = 2,
    dp_grid: int = 3,
    dp_tolerance: int = 0,
    batch_size: int = 256,
) -> dict[str, float]:
    """Every metric for a batch of multi-track phrases, as one flat dict.

    Parameters
    ----------
    phrases : np.ndarray, shape (N, bars, time, pitch, tracks)
        Or one phrase ``(bars, time, pitch, tracks)``. ``N`` may be 0.
    tracks : sequence of str
        Track names, in the order of the last axis.
    drum_track : str
        Name of the drum track: it gets ``EB``, ``polyphony`` and ``DP``; the other
        (pitched) tracks get ``EB``, ``UPC``, ``QN``, ``SR``, ``polyphony`` and ``TD``
        for every pair.
    batch_size : int
        Phrases processed at a time (bounds the working memory to a few copies of one
        chunk); results are exact sums, independent of it.

    Returns
    -------
    dict[str, float]
        Keys ``EB/<track>``, ``UPC/<track>``, ``QN/<track>``, ``SR/<track>``,
        ``polyphony/<track>``, ``NPB/<track>`` (notes per bar), ``DP`` and ``TD/<a>-<b>``
        (pairs of pitched tracks in
        track order). A metric with nothing to measure is ``nan``; the keys never change.
    """
    x = np.asarray(phrases)
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5:
        raise ValueError(f"expected (N, bars, time, pitch, tracks), got {x.shape}")
    tracks = tuple(tracks)
    if x.shape[-1] != len(tracks):
        raise ValueError(f"{x.shape[-1]} tracks in the array, {len(tracks)} names given")
    if x.shape[2] % steps_per_beat:
        raise ValueError(f"time axis {x.shape[2]} is not a multiple of {steps_per_beat}")
    _check_grid(dp_grid, dp_tolerance)
    pitched = [i for i, t in enumerate(tracks) if t != drum_track]
    drums = [i for i, t in enumerate(tracks) if t == drum_track]
    pairs = list(combinations(pitched, 2))

    keys: list[str] = []
    for i, t in enumerate(tracks):
        keys.append(f"EB/{t}")
        if i in pitched:
            keys += [f"UPC/{t}", f"QN/{t}", f"SR/{t}"]
        keys += [f"polyphony/{t}", f"NPB/{t}"]
    if drums:
        keys.append("DP")
    keys += [f"TD/{tracks[a]}-{tracks[b]}" for a, b in pairs]
    acc = {k: [0.0, 0] for k in keys}

    def add(key: str, part: tuple[float, int]) -> None:
        acc[key][0] += part[0]
        acc[key][1] += part[1]

    for start in range(0, x.shape[0], max(1, batch_size)):
        chunk = x[start : start + batch_size]
        # Tracks first, each contiguous: (tracks, n, bars, time, pitch).
        chunk = np.ascontiguousarray(np.moveaxis(chunk, -1, 0))
        if chunk.dtype != np.bool_:
            chunk = chunk != 0
        beat_chroma: dict[int, np.ndarray] = {}
        pc_counts: dict[int, np.ndarray] = {}
        for i in range(len(tracks)):
            name = tracks[i]
            roll = chunk[i]
            add(f"EB/{name}", _eb_counts(roll))
            add(f"polyphony/{name}", _poly_counts(roll))
            on = onsets(roll)
            add(f"NPB/{name}", _npb_counts(on))
            if i in drums:
                add("DP", _dp_counts(on, dp_grid, dp_tolerance))
                continue
            add(f"UPC/{name}", _upc_counts(roll, lowest_pitch))
            add(f"QN/{name}", _qn_counts(roll, on, qn_min_length))
            pc_counts[i] = _onset_pc_counts(on, lowest_pitch)
            beat_chroma[i] = _beat_chroma(roll, steps_per_beat, lowest_pitch)
        if pitched:
            key = best_major_key(sum(pc_counts.values()))  # one key per phrase
            for i in pitched:
                add(f"SR/{tracks[i]}", _sr_counts(pc_counts[i], key))
        for a, b in pairs:
            add(f"TD/{tracks[a]}-{tracks[b]}", _td_counts(beat_chroma[a], beat_chroma[b]))

    return {k: _ratio(num, den) for k, (num, den) in acc.items()}
