"""Pianoroll pictures: one PNG per roll, tracks stacked, bar and beat lines (matplotlib Agg)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike

import numpy as np

from ms2dist import TRACKS
from ms2dist.music.rolls import as_song

__all__ = ["plot_pianoroll"]

_COLORS = {
    "Drums": "#4d4d4d",
    "Piano": "#1f5fbf",
    "Guitar": "#d9822b",
    "Bass": "#2f9e44",
    "Strings": "#b5179e",
}


def plot_pianoroll(
    roll: np.ndarray,
    path: str | PathLike,
    title: str | None = None,
    *,
    tracks: Sequence[str] = TRACKS,
    steps_per_beat: int = 12,
    beats_per_bar: int = 4,
    lowest_pitch: int = 24,
    dpi: int = 100,
) -> None:
    """Save a PNG with the tracks stacked top to bottom, bar lines and beat lines.

    Parameters
    ----------
    roll : np.ndarray
        ``(T, pitch, tracks)``, ``(bars, time, pitch, tracks)`` or
        ``(N, bars, time, pitch, tracks)`` (phrases concatenated).
    path : str or PathLike
        The ``.png`` to write.
    title : str, optional
        Figure title.
    tracks : sequence of str
        Names of the tracks (row labels), in the order of the last axis.
    steps_per_beat, beats_per_bar : int
        Grid of the beat lines (thin) and bar lines (thick, numbered on the x axis).
    lowest_pitch : int
        MIDI pitch of pitch index 0 (the y axis is labelled with MIDI C notes).
    dpi : int
        Resolution; the figure is ``min(max(8, 2 * bars), 40)`` inches wide and
        ``1.5 * tracks + 0.8`` inches high.

    Notes
    -----
    Uses matplotlib's object API with the Agg canvas: it neither needs a display nor
    changes pyplot's global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    x = as_song(roll)
    n_steps, n_pitch, n_tracks = x.shape
    tracks = tuple(tracks)
    if len(tracks) != n_tracks:
        raise ValueError(f"{n_tracks} tracks in the roll, {len(tracks)} names given")
    steps_per_bar = steps_per_beat * beats_per_bar
    n_bars = max(1, math.ceil(n_steps / steps_per_bar))
    width = min(max(8.0, 2.0 * n_bars), 40.0)
    fig = Figure(figsize=(width, 1.5 * n_tracks + 0.8), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_tracks, 1, sharex=True, squeeze=False)[:, 0]
    lo, hi = lowest_pitch - 0.5, lowest_pitch + n_pitch - 0.5
    c_notes = [p for p in range(lowest_pitch, lowest_pitch + n_pitch) if p % 12 == 0]
    for k, ax in enumerate(axes):
        name = tracks[k]
        cmap = ListedColormap(["white", _COLORS.get(name, "black")])
        ax.imshow(
            x[:, :, k].T,
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            cmap=cmap,
            vmin=0,
            vmax=1,
            extent=(0, max(n_steps, 1), lo, hi),
        )
        if n_bars <= 64:
            for s in range(steps_per_beat, n_steps, steps_per_beat):
                if s % steps_per_bar:
                    ax.axvline(s, color="0.8", linewidth=0.4)
        for s in range(steps_per_bar, n_steps, steps_per_bar):
            ax.axvline(s, color="black", linewidth=0.9)
        ax.set_ylabel(name)
        ax.set_yticks(c_notes)
        ax.set_yticklabels([f"C{p // 12 - 1}" for p in c_notes], fontsize=6)
    step_ticks = range(0, n_steps, steps_per_bar)
    if len(step_ticks) > 32:
        step_ticks = step_ticks[:: math.ceil(len(step_ticks) / 32)]
    axes[-1].set_xticks(list(step_ticks))
    axes[-1].set_xticklabels([str(s // steps_per_bar + 1) for s in step_ticks], fontsize=7)
    axes[-1].set_xlabel("bar")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(str(path), format="png", dpi=dpi)
