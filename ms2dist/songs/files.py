"""Song files: which inputs are songs, which reader reads them, and their phrases.

``load_song`` reads one LPD ``.npz`` or MIDI file as an LPD-5 :class:`~ms2dist.songs.Song`;
``collect_inputs`` finds the song files under folders; ``file_phrases`` cuts one file into
the phrases of the default layout (what ``sample --input`` and song-folder evaluation use).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ms2dist.songs.lpd import is_lpd5_npz, read_lpd_npz
from ms2dist.songs.midi import read_midi_song
from ms2dist.songs.phrases import phrases_of_song
from ms2dist.songs.song import RejectError, Song

__all__ = ["FORMATS", "MIDI_SUFFIXES", "InputError", "collect_inputs", "detect_format",
           "file_phrases", "load_song"]

FORMATS = ("auto", "lpd5", "lpd", "midi")
MIDI_SUFFIXES = (".mid", ".midi")


class InputError(Exception):
    """An input path that does not exist (raised before anything is read)."""


def _suffixes_for(fmt: str) -> tuple[str, ...]:
    return {"auto": (".npz",) + MIDI_SUFFIXES, "lpd5": (".npz",), "lpd": (".npz",),
            "midi": MIDI_SUFFIXES}[fmt]


def collect_inputs(inputs: Iterable[str | os.PathLike], fmt: str = "auto") -> list[Path]:
    """Files named directly, plus files under folders with a suffix the format reads.

    Sorted by path, duplicates removed. A named file is always an input (and rejected
    later if unreadable); inside folders other files (manifest.csv, ...) are ignored.
    """
    found: set[Path] = set()
    suffixes = _suffixes_for(fmt)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for root, _dirs, files in os.walk(p):
                for f in files:
                    if f.lower().endswith(suffixes):
                        found.add(Path(root) / f)
        elif p.exists():
            found.add(p)
        else:
            raise InputError(f"input not found: {p}")
    return sorted(found, key=lambda q: str(q))


def detect_format(path: str | Path) -> str:
    """``midi`` for .mid/.midi, ``lpd5`` for a 5-track LPD-5 npz, else ``lpd``."""
    p = Path(path)
    if p.suffix.lower() in MIDI_SUFFIXES:
        return "midi"
    if p.suffix.lower() == ".npz":
        return "lpd5" if is_lpd5_npz(p) else "lpd"
    raise RejectError(f"unsupported file type {p.suffix or '(no suffix)'!r}")


def load_song(path: str | Path, fmt: str = "auto") -> Song:
    """Read one input file as an LPD-5 :class:`Song` (``fmt``: auto|lpd5|lpd|midi)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    if not path.is_file():
        raise RejectError("not a file")
    if fmt == "auto":
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return read_lpd_npz(path)  # LPD-5 and other LPD files share one reader
        fmt = detect_format(path)
    if fmt == "midi":
        return read_midi_song(path)
    return read_lpd_npz(path, expect_lpd5=(fmt == "lpd5"))


def file_phrases(path: str | Path, fmt: str = "auto") -> tuple[np.ndarray, float]:
    """All phrases of one song file ``(N, 4, 48, 84, 5)`` bool, and its tempo in BPM."""
    try:
        song = load_song(path, fmt)
    except RejectError as e:
        raise ValueError(f"{path}: cannot use this song: {e}") from None
    on, _, _ = phrases_of_song(song)
    if len(on) == 0:
        raise ValueError(f"{path}: no non-empty 4-bar phrase in this song")
    return on, song.bpm
