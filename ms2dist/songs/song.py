"""A song merged to LPD-5: :class:`Song`, the LPD-5 track rule and song ids (no I/O).

Every reader of :mod:`ms2dist.songs` returns a :class:`Song` whose tracks are in
``ms2dist.TRACKS`` order (Drums, Piano, Guitar, Bass, Strings); any multi-track input is
merged with LPD-5's rule (element-wise max, see :func:`lpd5_track`). Anything unreadable
raises :class:`RejectError` with a short human reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ms2dist import TRACKS

__all__ = ["N_PITCHES", "RejectError", "Song", "lpd5_track", "merge_to_lpd5", "song_id_for"]

N_PITCHES = 128


class RejectError(Exception):
    """An input that cannot become a song; ``str(e)`` is the reason recorded in rejects."""


@dataclass
class Song:
    """One song merged to LPD-5.

    The notes are kept sparse (``times``, ``pitches``, ``tracks``, ``velocities``: one entry
    per active (step, pitch, track) cell, velocity > 0, duplicates allowed and merged by
    max); ``roll`` builds the dense ``(T, 128, 5)`` uint8 array on demand.
    ``resolution``: time steps per beat (24 for LPD); ``tempo``: float64 BPM per step;
    ``first_downbeat``: time step of the first bar line (bars are 4 beats, 4/4).
    """

    song_id: str
    n_steps: int
    resolution: int
    tempo: np.ndarray
    times: np.ndarray
    pitches: np.ndarray
    tracks: np.ndarray
    velocities: np.ndarray
    first_downbeat: int = 0
    source: str = ""
    source_format: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def roll(self) -> np.ndarray:
        """Dense ``(T, 128, 5)`` uint8 velocities (element-wise max over merged tracks)."""
        out = np.zeros((self.n_steps, N_PITCHES, len(TRACKS)), np.uint8)
        np.maximum.at(out, (self.times, self.pitches, self.tracks), self.velocities)
        return out

    @property
    def bpm(self) -> float:
        """Median tempo in beats per minute (120 when unknown)."""
        return float(np.median(self.tempo)) if self.tempo.size else 120.0

    def content_hashes(self, head_bars: int = 16) -> tuple[str, str]:
        """sha1 of the song's note onsets, and of those in its first ``head_bars`` 4-beat
        bars (a near-duplicate signature); times count from the first onset.

        An onset is an on-cell of the binarised, merged roll whose previous step (same pitch
        and track) is off. Onsets, not every cell: a copy under another name, LPD subset,
        compression, velocities or leading silence keeps them, and so does a MIDI round trip
        at a constant tempo, which can shorten a note by a step (it can also drop a note of
        a single step: such a copy is missed).
        """
        row = self.tracks.astype(np.int64) * N_PITCHES + self.pitches  # one row per (track, pitch)
        stride = int(self.times.max()) + 2 if self.times.size else 1
        key = row * stride + self.times  # sorted = (row, time) order; LPD files come sorted
        if key.size > 1 and not (np.diff(key) > 0).all():
            key = np.unique(key)
        on = key[np.r_[True, np.diff(key) != 1]] if key.size else key  # previous step off
        row, t = np.divmod(on, stride)
        if t.size:
            t -= t.min()
        canon = (row << 32) | t  # still sorted: canonical whatever the song's length
        head = canon[t < head_bars * 4 * self.resolution]
        out = []
        for keys in (canon, head):
            h = hashlib.sha1(f"onsets/{self.resolution}:".encode())
            h.update(keys.astype("<i8").tobytes())
            out.append(h.hexdigest())
        return out[0], out[1]

    def nonempty_tracks(self) -> np.ndarray:
        out = np.zeros(len(TRACKS), bool)
        out[np.unique(self.tracks)] = True
        return out

    @classmethod
    def from_roll(cls, song_id: str, roll: np.ndarray, resolution: int, tempo: np.ndarray,
                  **kw) -> Song:
        t, p, k = np.nonzero(roll)
        return cls(song_id=song_id, n_steps=int(roll.shape[0]), resolution=resolution,
                   tempo=tempo, times=t, pitches=p, tracks=k,
                   velocities=roll[t, p, k].astype(np.uint8), **kw)


def lpd5_track(program: int, is_drum: bool) -> int | None:
    """LPD-5 target track index for a source track, or None when the track is dropped.

    Drums = is_drum; Piano = 0-7; Guitar = 24-31; Bass = 32-39; Strings = every other
    program < 96 or 104-111; programs 96-103 and 112-127 are dropped.
    """
    if is_drum:
        return 0
    program = int(program)
    if 0 <= program <= 7:
        return 1
    if 24 <= program <= 31:
        return 2
    if 32 <= program <= 39:
        return 3
    if program < 96 or 104 <= program <= 111:
        return 4
    return None


def merge_to_lpd5(
    rolls: Sequence[np.ndarray], programs: Sequence[int], is_drums: Sequence[bool]
) -> np.ndarray:
    """Merge dense source tracks ``(T_i, 128)`` into a ``(T, 128, 5)`` LPD-5 roll.

    Pure function: element-wise max of the tracks mapped to each LPD-5 track; tracks of
    different length are zero-padded to the longest. Output dtype is uint8 (velocities
    are clipped to 0..127 first for non-uint8 input).
    """
    if not (len(rolls) == len(programs) == len(is_drums)):
        raise ValueError("rolls, programs and is_drums must have the same length")
    n_steps = max((int(r.shape[0]) for r in rolls), default=0)
    out = np.zeros((n_steps, N_PITCHES, len(TRACKS)), np.uint8)
    for roll, program, is_drum in zip(rolls, programs, is_drums, strict=True):
        k = lpd5_track(program, is_drum)
        if k is None:
            continue
        if roll.ndim != 2 or roll.shape[1] != N_PITCHES:
            raise ValueError(f"expected a (T, 128) roll, got {roll.shape}")
        if roll.dtype == np.uint8:
            r = roll
        elif roll.dtype == np.bool_:
            r = roll.astype(np.uint8)
        else:
            r = np.clip(roll, 0, 127).astype(np.uint8)
        view = out[: r.shape[0], :, k]
        np.maximum(view, r, out=view)
    return out


def song_id_for(path: str | Path) -> str:
    """The song id of an input file: its file name without suffix (LPD: the MIDI md5)."""
    return Path(path).name.split(".")[0]
