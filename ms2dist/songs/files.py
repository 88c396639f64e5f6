"""Song files: which inputs are songs, which reader reads them, and their phrases.

``load_song`` reads one LPD ``.npz`` or MIDI file as an LPD-5 :class:`~ms2dist.songs.Song`;
``collect_inputs`` finds the song files under folders; ``file_phrases`` cuts one file into
the phrases of the default layout (what ``sample --input`` and song-folder evaluation use).
"""

from __future__ import annotations

import errno
import os
import stat
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
    """Files named directly, plus what under folders is named like a song the format reads.

    Sorted by path, duplicates removed. A named file is always an input (and rejected
    later if unreadable); inside folders other files (manifest.csv, ...) are ignored.
    Nothing named like a song vanishes from the count, so a folder named ``x.npz`` is an
    input too (and searched); links to folders are followed, except a link back to a
    folder it is in (a loop), which is an input whatever its name, as is an unreadable
    folder. :func:`load_song` rejects each of these with the reason.
    """
    found: set[Path] = set()
    suffixes = _suffixes_for(fmt)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            _walk(p, suffixes, found, (os.path.realpath(p),))
        elif p.exists():
            found.add(p)
        else:
            raise InputError(f"input not found: {p}")
    return sorted(found, key=lambda q: str(q))


def _walk(folder: Path, suffixes: tuple[str, ...], found: set[Path],
          above: tuple[str, ...]) -> None:
    """Add the inputs under ``folder``; ``above``: the real paths of the folders walked
    into so far (``above[-1]`` is ``folder``'s), so a link back to one of them ends there."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        found.add(folder)  # unreadable: an input, rejected with the reason
        return
    for e in entries:
        path = Path(e.path)
        song_name = e.name.lower().endswith(suffixes)
        try:
            is_dir = e.is_dir()  # follows links
        except OSError:
            is_dir = False
        if not is_dir:
            if song_name:  # a file, a broken link, a link loop to itself, ...
                found.add(path)
            continue
        link = e.is_symlink()
        real = os.path.realpath(e.path) if link else os.path.join(above[-1], e.name)
        if real in above:
            found.add(path)  # a loop
            continue
        if song_name:
            found.add(path)
        _walk(path, suffixes, found, above + (real,))


def _not_a_file(path: Path) -> str:
    """Why ``path``, which is no regular file, is not a song (the reject reason)."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "not a file (symlink loop)"
        return "not a file (broken symlink)" if path.is_symlink() else "not a file"
    if not stat.S_ISDIR(st.st_mode):
        return "not a file (a special file)"
    if path.is_symlink():
        target, parent = os.path.realpath(path), os.path.realpath(path.parent)
        if parent == target or parent.startswith(target.rstrip(os.sep) + os.sep):
            return f"symlink loop (a link to {target}, a folder it is in)"
        return "a link to a folder, not a file"
    try:
        with os.scandir(path):
            pass
    except OSError as e:
        return f"unreadable folder ({e.strerror})"
    return "a folder, not a file"


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
        raise RejectError(_not_a_file(path))
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
