"""Cut LPD-5 songs into 4-bar phrases of the phrase layout (pure numpy, no I/O).

A phrase is a bool array ``(bars, steps_per_bar, pitches, tracks)`` = ``(4, 48, 84, 5)``
with the defaults: binarised (velocity > 0), 24 -> 12 steps per beat (a step is on if
either source step is on), MIDI pitches 24..107, non-overlapping 4-bar windows from the
first bar line; a window is dropped only when all 5 tracks are empty.

The layout itself (shape, pitch window, bit packing) is :mod:`ms2dist.layout`;
:class:`PhraseConfig` is the layout plus how a song is cut into it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from ms2dist import TRACKS
from ms2dist.layout import PhraseLayout

__all__ = [
    "DEFAULT_PHRASE_CONFIG",
    "PhraseConfig",
    "notes_phrases",
    "phrases_of_song",
    "roll_phrases",
]


@dataclass(frozen=True)
class PhraseConfig:
    """How songs are cut into phrases (recorded in every manifest as ``phrase_config``)."""

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
    def layout(self) -> PhraseLayout:
        """The phrase layout these settings cut into."""
        return PhraseLayout(n_bars=self.bars_per_phrase, steps_per_beat=self.steps_per_beat,
                            beats_per_bar=self.beats_per_bar, n_pitches=self.n_pitches,
                            lowest_pitch=self.lowest_pitch, n_tracks=len(TRACKS))

    @property
    def factor(self) -> int:
        return self.source_resolution // self.steps_per_beat

    @property
    def steps_per_bar(self) -> int:
        return self.steps_per_beat * self.beats_per_bar

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.layout.shape

    @property
    def n_bytes(self) -> int:
        return self.layout.n_bytes

    @property
    def source_steps_per_phrase(self) -> int:
        return self.source_resolution * self.beats_per_bar * self.bars_per_phrase

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_PHRASE_CONFIG = PhraseConfig()


def roll_phrases(
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
    """Same result as :func:`roll_phrases` from sparse active cells (velocity > 0 only).

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
    """:func:`notes_phrases` for an ``ms2dist.songs.Song`` (duck-typed; no I/O here).

    A song on another grid than ``cfg.source_resolution`` (e.g. a sample ``.npz`` written by
    ``ms2dist sample``, 12 steps per beat) is cut on its own grid, when the phrase grid
    divides it; otherwise it is refused, naming both."""
    res = int(getattr(song, "resolution", cfg.source_resolution) or cfg.source_resolution)
    if res != cfg.source_resolution:
        if res % cfg.steps_per_beat:
            raise ValueError(f"the song has {res} steps per beat; phrases need a multiple of "
                             f"{cfg.steps_per_beat} (write it at {cfg.source_resolution})")
        cfg = replace(cfg, source_resolution=res)
    return notes_phrases(
        song.times, song.pitches, song.tracks, song.n_steps, cfg, start=song.first_downbeat
    )
