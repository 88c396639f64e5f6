"""A sample's ``.npz``: a pypianoroll ``Multitrack`` file with our arrays alongside.

``pypianoroll.load(path)`` opens it as a :class:`pypianoroll.Multitrack` (the layout its
``save`` writes in version 1.0.4, which is also LPD's): ``info.json`` (resolution, name,
and per track its name, GM program and ``is_drum``), ``tempo`` and ``downbeat`` (one value
per step) and each track's ``(steps, 128)`` pianoroll as the parts of a sparse CSC matrix
(``pianoroll_<i>_csc_data`` / ``_indices`` / ``_indptr`` / ``_shape``). The tracks are
``ms2dist.TRACKS`` with the programs and drum flag of the MIDI files
(:data:`ms2dist.music.midi.PROGRAMS`), the resolution is the phrase's steps per beat and the
notes sit at their MIDI pitches.

Our own readers keep their arrays in the same file (members pypianoroll ignores):

- ``pianoroll``: bool ``(bars, steps_per_bar, pitches, tracks)``, the notes played in the
  phrase layout (the same notes as the tracks above);
- ``probabilities``: float16, same shape: the model's note probabilities;
- ``tracks`` (names), ``lowest_pitch``, ``steps_per_beat``, ``tempo_bpm``.

The CSC parts are computed with numpy (no scipy import) in scipy's order, and every zip
member has a fixed timestamp: the same phrase always gives the same bytes.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np

from ms2dist import TRACKS
from ms2dist.layout import DEFAULT_LAYOUT, PhraseLayout
from ms2dist.music.midi import PROGRAMS

__all__ = ["write_sample_npz", "multitrack_members", "csc_parts", "DRUM_TRACK"]

#: The track pypianoroll marks ``is_drum`` (the one on MIDI's drum channel).
DRUM_TRACK = "Drums"

# What the zip members of a sample are stamped with (see ms2dist.npyio.save_npz).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def csc_parts(roll: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """The ``scipy.sparse.csc_matrix`` parts of a 2-D bool roll, named as pypianoroll names
    them (``<name>_csc_data``, ``_indices``, ``_indptr``, ``_shape``).

    Parameters
    ----------
    roll : np.ndarray
        ``(steps, 128)``; non-zero = on.
    name : str
        Member prefix, e.g. ``pianoroll_0``.

    Returns
    -------
    dict of str to np.ndarray
        Data (bool, all True), row indices and column pointers (int32, column-major order
        as scipy keeps them) and the shape (int64).
    """
    x = np.asarray(roll) != 0
    cols, rows = np.nonzero(x.T)  # column-major, rows ascending within a column
    indptr = np.zeros(x.shape[1] + 1, dtype=np.int32)
    np.cumsum(np.bincount(cols, minlength=x.shape[1]), out=indptr[1:])
    return {f"{name}_csc_data": np.ones(len(rows), dtype=bool),
            f"{name}_csc_indices": rows.astype(np.int32),
            f"{name}_csc_indptr": indptr,
            f"{name}_csc_shape": np.array(x.shape, dtype=np.int64)}


def multitrack_members(binary: np.ndarray, bpm: float, layout: PhraseLayout = DEFAULT_LAYOUT,
                       *, name: str = "", tracks: Sequence[str] = TRACKS
                       ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``info.json`` and the arrays of a pypianoroll Multitrack holding one phrase.

    Parameters
    ----------
    binary : np.ndarray
        The notes played, ``(bars, steps_per_bar, pitches, tracks)`` or ``(steps, pitches,
        tracks)``; non-zero = on.
    bpm : float
        Tempo (quarter notes per minute), written for every step.
    layout : PhraseLayout
        Steps per beat (the Multitrack's resolution), steps per bar (its downbeats) and the
        MIDI pitch of pitch index 0.
    name : str
        The Multitrack's name.
    tracks : sequence of str
        Track names in the order of the last axis; each must have a GM program in
        :data:`ms2dist.music.midi.PROGRAMS`.

    Returns
    -------
    info : dict
        What pypianoroll keeps in ``info.json``.
    arrays : dict of str to np.ndarray
        ``tempo``, ``downbeat`` and the CSC parts of every track's ``(steps, 128)`` roll.
    """
    x = np.asarray(binary) != 0
    x = x.reshape(-1, *x.shape[-2:])  # (steps, pitches, tracks)
    n_steps, n_pitches, n_tracks = x.shape
    if len(tracks) != n_tracks:
        raise ValueError(f"{n_tracks} tracks in the roll, {len(tracks)} names given")
    unknown = [t for t in tracks if t not in PROGRAMS]
    if unknown:
        raise ValueError(f"no GM program for tracks {unknown} (known: {', '.join(PROGRAMS)})")
    low = layout.lowest_pitch
    if low < 0 or low + n_pitches > 128:
        raise ValueError(f"pitches {low}..{low + n_pitches - 1} exceed MIDI 0..127")
    if not (np.isfinite(bpm) and bpm > 0):
        raise ValueError(f"tempo must be a positive number of bpm, got {bpm!r}")
    info: dict[str, Any] = {"resolution": int(layout.steps_per_beat), "name": str(name)}
    downbeat = np.zeros(n_steps, dtype=bool)
    downbeat[:: layout.steps_per_bar] = True
    arrays: dict[str, np.ndarray] = {"tempo": np.full(n_steps, float(bpm)),
                                     "downbeat": downbeat}
    full = np.zeros((n_steps, 128), dtype=bool)
    for k, track in enumerate(tracks):
        full[:, low : low + n_pitches] = x[:, :, k]
        arrays.update(csc_parts(full, f"pianoroll_{k}"))
        info[str(k)] = {"program": int(PROGRAMS[track]), "is_drum": track == DRUM_TRACK,
                        "name": str(track)}
    return info, arrays


def write_sample_npz(path: str | PathLike, binary: np.ndarray, probabilities: np.ndarray,
                     bpm: float, layout: PhraseLayout = DEFAULT_LAYOUT, *,
                     name: str = "") -> None:
    """Write one phrase as a pypianoroll Multitrack ``.npz`` with our arrays alongside.

    Parameters
    ----------
    path : str or PathLike
        The ``.npz`` to write.
    binary : np.ndarray
        The notes played, ``(bars, steps_per_bar, pitches, tracks)``; non-zero = on.
    probabilities : np.ndarray
        Note probabilities of the same shape (stored as float16).
    bpm : float
        Tempo of the phrase.
    layout : PhraseLayout
        Grid and pitch window of the phrase.
    name : str
        The Multitrack's name (e.g. the file's stem).

    Notes
    -----
    The members and what reads them are in the module notes. Same inputs -> same bytes.
    """
    binary = np.asarray(binary) != 0
    probabilities = np.asarray(probabilities)
    if probabilities.shape != binary.shape:
        raise ValueError(f"probabilities {probabilities.shape} and notes {binary.shape} "
                         f"differ in shape")
    info, arrays = multitrack_members(binary, bpm, layout, name=name)
    arrays.update(pianoroll=binary, probabilities=probabilities.astype(np.float16),
                  tracks=np.array(TRACKS), lowest_pitch=np.int64(layout.lowest_pitch),
                  steps_per_beat=np.int64(layout.steps_per_beat),
                  tempo_bpm=np.float64(bpm))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()  # as numpy's savez writes a member (0-d arrays stay 0-d)
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            _add(zf, f"{key}.npy", buf.getvalue())
        # Not a .npy: np.load hands it over as bytes, which is what pypianoroll.load reads.
        _add(zf, "info.json", json.dumps(info).encode())


def _add(zf: zipfile.ZipFile, member: str, data: bytes) -> None:
    info = zipfile.ZipInfo(member, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)

