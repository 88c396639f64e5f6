"""The song view of a roll shared by the MIDI writer and the pictures."""

from __future__ import annotations

import numpy as np

__all__ = ["as_song"]


def as_song(roll: np.ndarray) -> np.ndarray:
    """(time, pitch, tracks) boolean view of a song, a phrase or a batch of phrases."""
    x = np.asarray(roll)
    if x.ndim in (4, 5):  # (bars, time, pitch, tracks) or (N, bars, time, pitch, tracks)
        x = x.reshape(-1, *x.shape[-2:])
    elif x.ndim != 3:
        raise ValueError(
            f"expected (T, pitch, tracks) or (N, bars, time, pitch, tracks), got {x.shape}"
        )
    return x if x.dtype == np.bool_ else x != 0
