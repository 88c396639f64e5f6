"""Read MIDI files as a Song (through pypianoroll); bars come from the time signatures.

pypianoroll 1.0.4's ``downbeat`` is unreliable, so the bars are computed here from the
MIDI time signatures, and non-4/4 songs are rejected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ms2dist.songs.song import RejectError, Song, merge_to_lpd5, song_id_for

__all__ = ["read_midi_song"]


def read_midi_song(path: str | Path, *, resolution: int = 24) -> Song:
    """Read a MIDI file with pypianoroll, merge to LPD-5; non-4/4 songs are rejected."""
    import pretty_midi
    import pypianoroll

    path = Path(path)
    try:
        pm = pretty_midi.PrettyMIDI(str(path))
    except Exception as e:  # noqa: BLE001
        raise RejectError(f"unreadable MIDI ({type(e).__name__}: {e})") from None
    sigs = pm.time_signature_changes
    for ts in sigs:
        if (ts.numerator, ts.denominator) != (4, 4):
            raise RejectError(
                f"not 4/4 (time signature {ts.numerator}/{ts.denominator} at {ts.time:.2f} s)"
            )
    try:
        mt = pypianoroll.from_pretty_midi(pm, resolution=resolution)
    except Exception as e:  # noqa: BLE001
        raise RejectError(f"MIDI conversion failed ({type(e).__name__}: {e})") from None
    rolls = [np.asarray(t.pianoroll) for t in mt.tracks]
    roll = merge_to_lpd5(rolls, [t.program for t in mt.tracks], [t.is_drum for t in mt.tracks])
    # Bars: the first 4/4 signature (none means 4/4 from time 0 per the MIDI spec). Steps
    # follow MIDI ticks: step = tick * resolution / ticks_per_beat.
    first = 0
    if sigs:
        tick = pm.time_to_tick(sigs[0].time)
        first = int(round(tick * resolution / pm.resolution))
    n_steps = roll.shape[0]
    tempo = np.full(n_steps, 120.0)
    _, tempi = pm.get_tempo_changes()
    if len(tempi):
        tempo[:] = float(tempi[0])
    return Song.from_roll(
        song_id_for(path),
        roll,
        resolution,
        tempo,
        first_downbeat=first,
        source=str(path),
        source_format="midi",
    )
