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

Chroma (and so UPC, SR and TD) go through :func:`ms2dist.metrics.tonal.chroma`, the one
pitch-class fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from ms2dist import TRACKS
from ms2dist.metrics.rolls import as_rolls, onsets, ratio
from ms2dist.metrics.tonal import (
    beat_chroma,
    best_major_key,
    onset_pc_counts,
    pc_presence,
    sr_counts,
    td_counts,
)

__all__ = [
    "empty_bar_rate",
    "used_pitch_classes",
    "qualified_note_rate",
    "drum_pattern_rate",
    "polyphony",
    "notes_per_bar",
    "compute_all",
]


# ------------------------------------------------------- (numerator, denominator) parts


def _eb_counts(x: np.ndarray) -> tuple[int, int]:
    n, b, t, p = x.shape
    nonempty = x.reshape(n, b, t * p).any(-1)
    return int(nonempty.size - np.count_nonzero(nonempty)), int(nonempty.size)


def _upc_counts(x: np.ndarray, lowest_pitch: int) -> tuple[int, int]:
    pcs = pc_presence(x.any(axis=2), lowest_pitch)  # (N, bars, 12)
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
    return ratio(*_eb_counts(as_rolls(rolls)))


def used_pitch_classes(rolls: np.ndarray, lowest_pitch: int = 24) -> float:
    """Mean number of pitch classes used per non-empty bar (UPC, 1-12).

    Empty bars are left out (they are what EB measures); ``nan`` when every bar is empty.
    """
    return ratio(*_upc_counts(as_rolls(rolls), lowest_pitch))


def qualified_note_rate(rolls: np.ndarray, min_length: int = 2) -> float:
    """Share of notes at least ``min_length`` steps long (QN).

    ``min_length=2`` at 48 steps per bar stands for MuseGAN's 3 steps at 96 steps per
    bar (a 32nd note = 1.5 steps here). ``nan`` when there are no notes.
    """
    if min_length < 1:
        raise ValueError("min_length must be >= 1")
    x = as_rolls(rolls)
    return ratio(*_qn_counts(x, onsets(x), min_length))


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
    return ratio(*_dp_counts(onsets(rolls), grid, tolerance))


def notes_per_bar(rolls: np.ndarray) -> float:
    """Mean number of notes (onsets) per bar, over every bar (empty bars count as 0)."""
    return ratio(*_npb_counts(onsets(as_rolls(rolls))))


def polyphony(rolls: np.ndarray) -> float:
    """Mean number of pitches on per active step (a step with at least one pitch on)."""
    return ratio(*_poly_counts(as_rolls(rolls)))


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
        chromas: dict[int, np.ndarray] = {}
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
            pc_counts[i] = onset_pc_counts(on, lowest_pitch)
            chromas[i] = beat_chroma(roll, steps_per_beat, lowest_pitch)
        if pitched:
            key = best_major_key(sum(pc_counts.values()))  # one key per phrase
            for i in pitched:
                add(f"SR/{tracks[i]}", sr_counts(pc_counts[i], key))
        for a, b in pairs:
            add(f"TD/{tracks[a]}-{tracks[b]}", td_counts(chromas[a], chromas[b]))

    return {k: ratio(num, den) for k, (num, den) in acc.items()}
