"""The phrase layout: the one home of a phrase's shape, its pitch window and its bit packing.

A phrase is a boolean array ``(bars, steps_per_bar, pitches, tracks)``; with the defaults
(MuseGAN's layout) ``(4, 48, 84, 5)``: 12 steps per beat, 4 beats per bar, pitch index 0 =
MIDI pitch 24, tracks in :data:`ms2dist.TRACKS` order. Packed, it is
``np.packbits(phrase.reshape(-1))`` (C order, big bit order): 10,080 bytes.

``ms2dist pack`` writes the layout it cut into every split's ``manifest.json``
(``phrase_config``); readers take it from there (:meth:`PhraseLayout.from_manifest`), so
a pack made with ``--bars-per-phrase 2`` or ``--n-pitches 72`` is decoded as written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ms2dist import TRACKS

__all__ = ["PhraseLayout", "DEFAULT_LAYOUT", "pack_bits", "unpack_bits", "parse_tracks"]


@dataclass(frozen=True)
class PhraseLayout:
    """Shape and pitch window of a phrase (the defaults are MuseGAN's layout)."""

    n_bars: int = 4
    steps_per_beat: int = 12
    beats_per_bar: int = 4
    n_pitches: int = 84
    lowest_pitch: int = 24  # MIDI pitch of pitch index 0
    n_tracks: int = len(TRACKS)

    def __post_init__(self) -> None:
        dims = (self.n_bars, self.steps_per_beat, self.beats_per_bar, self.n_pitches,
                self.n_tracks)
        if min(dims) < 1:
            raise ValueError(f"phrase dimensions must be positive, got {self}")
        if not (0 <= self.lowest_pitch and self.lowest_pitch + self.n_pitches <= 128):
            top = self.lowest_pitch + self.n_pitches - 1
            raise ValueError(f"pitches {self.lowest_pitch}..{top} must lie within MIDI 0..127")

    @property
    def steps_per_bar(self) -> int:
        return self.steps_per_beat * self.beats_per_bar

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(bars, steps_per_bar, pitches, tracks)``."""
        return (self.n_bars, self.steps_per_bar, self.n_pitches, self.n_tracks)

    @property
    def n_bits(self) -> int:
        return int(np.prod(self.shape))

    @property
    def n_bytes(self) -> int:
        return (self.n_bits + 7) // 8

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> PhraseLayout:
        """The layout a split was packed with (its ``phrase_config``; older manifests
        without one are the default layout)."""
        pc = manifest.get("phrase_config") or {}
        d = cls()
        layout = cls(
            n_bars=int(pc.get("bars_per_phrase", d.n_bars)),
            steps_per_beat=int(pc.get("steps_per_beat", d.steps_per_beat)),
            beats_per_bar=int(pc.get("beats_per_bar", d.beats_per_bar)),
            n_pitches=int(pc.get("n_pitches", d.n_pitches)),
            lowest_pitch=int(pc.get("lowest_pitch", d.lowest_pitch)),
            n_tracks=len(manifest.get("tracks", TRACKS)),
        )
        shape = manifest.get("phrase_shape")
        if shape is not None and tuple(shape) != layout.shape:
            raise ValueError(f"manifest phrase_shape {tuple(shape)} contradicts its "
                             f"phrase_config {layout.shape}")
        return layout

    def model_dims(self) -> dict[str, int]:
        """The :class:`ms2dist.models.ModelConfig` fields this layout fixes."""
        return {"n_tracks": self.n_tracks, "n_bars": self.n_bars,
                "steps_per_bar": self.steps_per_bar, "n_pitches": self.n_pitches}


DEFAULT_LAYOUT = PhraseLayout()


def pack_bits(phrases: np.ndarray) -> np.ndarray:
    """``(N, ...)`` bool -> ``(N, ceil(prod(...)/8))`` uint8 (C order, big bit order)."""
    phrases = np.asarray(phrases)
    return np.packbits(phrases.reshape(phrases.shape[0], -1), axis=1)


def unpack_bits(packed: np.ndarray, shape: Sequence[int] = DEFAULT_LAYOUT.shape) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``(N, n_bytes)`` uint8 -> ``(N, *shape)`` bool."""
    packed = np.asarray(packed, dtype=np.uint8)
    n_bits = int(np.prod(shape))
    bits = np.unpackbits(packed, axis=1, count=n_bits)
    return bits.reshape((packed.shape[0], *shape)).astype(bool)


def parse_tracks(spec: str, option: str) -> list[str]:
    """``"Piano,Bass"`` -> ``["Piano", "Bass"]``; unknown or no tracks raise ValueError
    naming ``option`` and the valid names."""
    names = [t.strip() for t in spec.split(",") if t.strip()]
    bad = [t for t in names if t not in TRACKS]
    if bad or not names:
        raise ValueError(f"{option}: unknown track(s) {bad or [spec]}; give a comma-separated "
                         f"list of {', '.join(TRACKS)}")
    return names
