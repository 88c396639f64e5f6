"""Phrases as one numpy array: of a packed split, or of a folder of song files.

For evaluation and calibration, which need the phrases themselves rather than a stream.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ms2dist.dataset.batch import unpack_phrases
from ms2dist.dataset.eval_stream import eval_loader
from ms2dist.dataset.manifest import read_split
from ms2dist.songs.files import collect_inputs, file_phrases

__all__ = ["split_phrases", "song_folder"]


def split_phrases(split: Path, limit: int) -> np.ndarray:
    """Up to ``limit`` phrases (bool) of a packed split folder, or of a folder of songs
    (LPD ``.npz`` / MIDI, e.g. ``lpd5_test_small``: every phrase of every song, in path
    order)."""
    split = Path(split)
    if split.is_dir() and not (split / "manifest.json").is_file():
        return _song_folder_phrases(split, limit)

    out, n = [], 0
    shape = read_split(split).layout.shape
    for batch in eval_loader(split, 256, rank=0, world_size=1):
        x = unpack_phrases(batch["phrases"], torch.device("cpu"), torch.float32, shape) > 0.5
        x = x[batch["valid"]]
        out.append(x.numpy())
        n += len(x)
        if n >= limit:
            break
    if not out or n == 0:
        raise ValueError(f"{split}: no phrases (is it a split folder written by `ms2dist pack`?)")
    return np.concatenate(out)[:limit]


def _song_folder_phrases(folder: Path, limit: int) -> np.ndarray:
    return np.concatenate(song_folder(folder, limit))[:limit]


def song_folder(folder: Path, limit: int | None = None) -> list[np.ndarray]:
    """The phrases of each song of a folder (``.npz`` / MIDI, in path order), one bool
    array ``(n, bars, T, P, tracks)`` per song, phrases in song order; songs are read
    until ``limit`` phrases (None: all). A song that cannot be used is left out with a
    warning naming it; a folder without any usable song is a ``ValueError``."""
    folder = Path(folder)
    paths = collect_inputs([folder])
    if not paths:
        raise ValueError(f"{folder}: neither a packed split (no manifest.json) nor a folder "
                         f"of .npz / .mid songs")
    out, n, skipped = [], 0, []
    for path in paths:
        try:
            phrases, _ = file_phrases(path)
        except ValueError as e:  # a rejected or empty song: said, not fatal
            skipped.append(str(e))
            continue
        out.append(phrases)
        n += len(phrases)
        if limit is not None and n >= limit:
            break
    if skipped:
        print(f"warning: {len(skipped)} song(s) of {folder} left out: {skipped[0]}"
              + (" ..." if len(skipped) > 1 else ""), file=sys.stderr)
    if not out:
        raise ValueError(f"{folder}: no usable song ({skipped[0] if skipped else 'none'})")
    return out
