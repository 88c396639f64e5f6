"""Cut LPD-5 songs into MuseGAN-layout 4-bar phrases (pure numpy, no I/O).

A phrase is a bool array ``(bars, steps_per_bar, pitches, tracks)`` = ``(4, 48, 84, 5)``
with the defaults: binarised (velocity > 0), 24 -> 12 steps per beat (a step is on if
either source step is on), MIDI pitches 24..107, non-overlapping 4-bar windows from the
first bar line; a window is dropped only when all 5 tracks are empty.

Packed form: ``np.packbits(phrase.reshape(-1))`` (C order, big bit order) = 10,080 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ms2dist import TRACKS

__all__ = [
    "DEFAULT_PHRASE_CONFIG",
    "PhraseConfig",
    "assign_split",
    "pack_bits",
    "parse_split",
    "notes_phrases",
    "phrases_of_song",
    "song_phrases",
    "unpack_bits",
]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PhraseConfig:
    """Phrase settings (recorded in every manifest)."""

    source_resolution: int = 24  # steps per beat of the input rolls
    steps_per_beat: int = 12  # after downsampling (must divide source_resolution)
    beats_per_bar: int = 4
    bars_per_phrase: int = 4
    lowest_pitch: int = 24  # MIDI pitch of pitch index 0
    n_pitches: int = 84
    drop_empty: bool = True  # drop windows where all tracks are empty

    def __post_init__(self) -> None:
        if self.source_resolution % self.steps_per_beat:
            raise ValueError("steps_per_beat must divide source_resolution")
        if not (0 <= self.lowest_pitch and self.lowest_pitch + self.n_pitches <= 128):
            raise ValueError("pitch range must lie within 0..127")
        if min(self.steps_per_beat, self.beats_per_bar, self.bars_per_phrase, self.n_pitches) < 1:
            raise ValueError("phrase dimensions must be positive")

    @property
    def factor(self) -> int:
        return self.source_resolution // self.steps_per_beat

    @property
    def steps_per_bar(self) -> int:
        return self.steps_per_beat * self.beats_per_bar

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.bars_per_phrase, self.steps_per_bar, self.n_pitches, len(TRACKS))

    @property
    def n_bits(self) -> int:
        return int(np.prod(self.shape))

    @property
    def n_bytes(self) -> int:
        return (self.n_bits + 7) // 8

    @property
    def source_steps_per_phrase(self) -> int:
        return self.source_resolution * self.beats_per_bar * self.bars_per_phrase

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_PHRASE_CONFIG = PhraseConfig()


def song_phrases(
    roll: np.ndarray, cfg: PhraseConfig = PhraseConfig(), *, start: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phrases of one song.

    ``roll``: ``(T, 128, 5)`` velocities (any dtype; > 0 means on) at
    ``cfg.source_resolution`` steps per beat; ``start``: step of the first bar line.
    Returns ``(phrases bool (N, *cfg.shape), window_index int64 (N,), nonempty bool (N, 5))``
    where ``window_index`` is the 4-bar window number (bar = 4 * index) before dropping.
    """
    if roll.ndim != 3 or roll.shape[1] != 128:
        raise ValueError(f"roll must be (T, 128, tracks), got {roll.shape}")
    n_tracks = roll.shape[2]
    span = cfg.source_steps_per_phrase
    n_win = max(0, (roll.shape[0] - start) // span)
    shape = cfg.shape[:3] + (n_tracks,)
    if n_win == 0:
        return (
            np.zeros((0,) + shape, bool),
            np.zeros(0, np.int64),
            np.zeros((0, n_tracks), bool),
        )
    lo, hi = cfg.lowest_pitch, cfg.lowest_pitch + cfg.n_pitches
    x = roll[start : start + n_win * span, lo:hi, :]
    f = cfg.factor
    if f > 1:
        x = x.reshape(-1, f, cfg.n_pitches, n_tracks)
        acc = x[:, 0].copy()
        for j in range(1, f):
            np.maximum(acc, x[:, j], out=acc)
        x = acc
    on = x > 0
    phrases = on.reshape((n_win,) + shape)
    # phrases.any(axis=(1, 2, 3)) is ~20x slower than locating the (sparse) on-bits
    flat = np.flatnonzero(on)
    per = on.size // n_win
    nonempty = np.zeros((n_win, n_tracks), bool)
    nonempty[flat // per, flat % n_tracks] = True
    index = np.arange(n_win, dtype=np.int64)
    if cfg.drop_empty:
        keep = nonempty.any(axis=1)
        if not keep.all():
            phrases, index, nonempty = phrases[keep], index[keep], nonempty[keep]
    return phrases, index, nonempty


def notes_phrases(
    times: np.ndarray,
    pitches: np.ndarray,
    tracks: np.ndarray,
    n_steps: int,
    cfg: PhraseConfig = PhraseConfig(),
    *,
    start: int = 0,
    n_tracks: int = len(TRACKS),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same result as :func:`song_phrases` from sparse active cells (velocity > 0 only).

    O(number of notes) instead of O(T x 128 x 5): the fast path used by ``ms2dist pack``.
    """
    span = cfg.source_steps_per_phrase
    n_win = max(0, (int(n_steps) - start) // span)
    shape = cfg.shape[:3] + (n_tracks,)
    if n_win == 0:
        return (
            np.zeros((0,) + shape, bool),
            np.zeros(0, np.int64),
            np.zeros((0, n_tracks), bool),
        )
    t = np.asarray(times, np.intp) - start
    p = np.asarray(pitches, np.intp) - cfg.lowest_pitch
    k = np.asarray(tracks, np.intp)
    sel = (t >= 0) & (t < n_win * span) & (p >= 0) & (p < cfg.n_pitches)
    flat = ((t // cfg.factor) * cfg.n_pitches + p) * n_tracks + k  # bit index, C order
    flat = flat[sel]
    on = np.zeros((n_win,) + shape, bool)
    on.reshape(-1)[flat] = True
    per = int(np.prod(shape))
    nonempty = np.zeros((n_win, n_tracks), bool)
    nonempty.reshape(-1)[(flat // per) * n_tracks + flat % n_tracks] = True
    index = np.arange(n_win, dtype=np.int64)
    if cfg.drop_empty:
        keep = nonempty.any(axis=1)
        if not keep.all():
            on, index, nonempty = on[keep], index[keep], nonempty[keep]
    return on, index, nonempty


def phrases_of_song(song, cfg: PhraseConfig = PhraseConfig()):
    """:func:`notes_phrases` for an ``ms2dist.lpd.Song`` (duck-typed; no I/O here)."""
    return notes_phrases(
        song.times, song.pitches, song.tracks, song.n_steps, cfg, start=song.first_downbeat
    )


def pack_bits(phrases: np.ndarray) -> np.ndarray:
    """``(N, ...)`` bool -> ``(N, ceil(prod(...)/8))`` uint8 (C order, big bit order)."""
    phrases = np.asarray(phrases)
    return np.packbits(phrases.reshape(phrases.shape[0], -1), axis=1)


def unpack_bits(packed: np.ndarray, shape: Sequence[int] = PhraseConfig().shape) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``(N, n_bytes)`` uint8 -> ``(N, *shape)`` bool."""
    packed = np.asarray(packed, dtype=np.uint8)
    n_bits = int(np.prod(shape))
    bits = np.unpackbits(packed, axis=1, count=n_bits)
    return bits.reshape((packed.shape[0], *shape)).astype(bool)


def parse_split(spec: str | Sequence[float]) -> tuple[float, float, float]:
    """``"90,5,5"`` (percent or fractions, any scale) -> normalised train/val/test fractions."""
    parts = [float(p) for p in spec.split(",")] if isinstance(spec, str) else list(spec)
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"split must be three non-negative numbers, got {spec!r}")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def assign_split(song_id: str, fractions: Sequence[float] = (0.9, 0.05, 0.05)) -> str:
    """Stable split of a song: sha1(song id) mapped to [0, 1) against cumulative fractions."""
    h = int.from_bytes(hashlib.sha1(song_id.encode("utf-8")).digest()[:8], "big")
    u = h / 2.0**64
    acc = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        acc += frac
        if u < acc:
            return name
    for name, frac in reversed(list(zip(SPLITS, fractions, strict=True))):
        if frac > 0:
            return name
    return SPLITS[0]
