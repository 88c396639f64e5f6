"""Multi-track binary pianorolls to and from MIDI files (``write_midi`` / ``read_midi``).

Layout (``docs/architecture.md``): a roll is boolean ``(time, pitch, tracks)`` with
``steps_per_beat`` steps per beat (12), pitch index 0 = MIDI ``lowest_pitch`` (24) and
the tracks of ``ms2dist.TRACKS`` (Drums, Piano, Guitar, Bass, Strings). Batches of
phrases ``(N, bars, time, pitch, tracks)`` (or one phrase ``(bars, time, pitch, tracks)``)
are written one after the other as one song.

Note boundaries: a binary roll cannot tell one long note from two touching notes of the
same pitch, so a note is a maximal run of on-steps. :func:`write_midi` writes every run
as one note and :func:`read_midi` sets the steps ``[onset, offset)`` of every note, so
``read_midi(write_midi(roll))`` gives back exactly ``roll``. A MIDI file whose notes of
one pitch touch or overlap reads as one run (one note when written again).

The files are written with ``mido`` (pretty_midi's own dependency) rather than
pypianoroll or pretty_midi: pypianoroll 1.0.4 writes one (harmonic-mean) tempo and no
time signature, and pretty_midi has no public way to write tempo changes. Writing in
ticks (``ticks_per_step`` ticks per step) keeps every onset on the grid exactly.

What the field's readers need (``tests/test_midi.py`` checks them):

- The tempo and a 4/4 time signature are at tick 0, whatever plays.
- The file ends at the phrase's end, silent or not: end-of-track there, and the 4/4 time
  signature repeated there. pretty_midi (and ``pypianoroll.read``, built on it) ignores
  end-of-track and takes the length from the last event it keeps; a silent file would
  have no beats at all. Its beat tracker snaps a beat onto a time signature change, so the
  repeat also stops float error from adding a beat when the last event falls on a beat.
- A note-off is written one tick (1/40 step by default) after its step boundary, except
  at the phrase's end (and below 3 ticks per step, where a tick is not small next to a step).
  ``pypianoroll.read`` and ``PrettyMIDI.get_piano_roll`` floor note ends, and a note-off
  exactly on the boundary lands a float error below it at many tempos, cutting the note
  short by a step; :func:`read_midi` rounds to the nearest step.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import mido
import numpy as np

from ms2dist import TRACKS
from ms2dist.music.rolls import as_song
from ms2dist.songs.song import lpd5_track

__all__ = ["PROGRAMS", "DRUM_CHANNEL", "lpd5_track", "write_midi", "read_midi"]

#: General MIDI programs (0-based) of the LPD-5 tracks; drums go on the drum channel.
PROGRAMS: dict[str, int] = {"Drums": 0, "Piano": 0, "Guitar": 24, "Bass": 32, "Strings": 48}

#: 0-based MIDI channel of the drums (channel 10 counting from 1).
DRUM_CHANNEL = 9

def _runs(track: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pitch, onset, offset) of every run of on-steps in a (time, pitch) roll."""
    padded = np.zeros((track.shape[1], track.shape[0] + 2), dtype=np.int8)
    padded[:, 1:-1] = track.T
    d = np.diff(padded, axis=1)  # +1 at onsets, -1 at offsets (pitch-major order)
    pitch, onset = np.nonzero(d == 1)
    _, offset = np.nonzero(d == -1)
    return pitch, onset, offset


def _tempo_steps(tempo_bpm: float | np.ndarray, n_steps: int) -> list[tuple[int, int]]:
    """(step, microseconds per beat) at step 0 and wherever the tempo changes."""
    tempo = np.asarray(tempo_bpm, dtype=np.float64)
    if tempo.ndim == 0:
        tempo = np.full(max(n_steps, 1), float(tempo))
    elif tempo.shape != (n_steps,) or n_steps == 0:
        raise ValueError(f"per-step tempo must have shape ({n_steps},), got {tempo.shape}")
    if not np.all(np.isfinite(tempo)) or np.any(tempo <= 60e6 / 0xFFFFFF):
        raise ValueError("tempo must be finite and above 3.58 bpm (MIDI's slowest)")
    usec = np.rint(60e6 / tempo).astype(np.int64)
    change = np.flatnonzero(np.r_[True, usec[1:] != usec[:-1]])
    return [(int(s), int(usec[s])) for s in change]


def _to_track(events: list[tuple[int, int, mido.Message]], end_tick: int) -> mido.MidiTrack:
    """A track from (absolute tick, order, message) events plus end-of-track at end_tick."""
    track = mido.MidiTrack()
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=max(end_tick - now, 0)))
    return track


def write_midi(
    roll: np.ndarray,
    path: str | PathLike,
    tempo_bpm: float | np.ndarray = 100.0,
    steps_per_beat: int = 12,
    *,
    tracks: Sequence[str] = TRACKS,
    programs: Sequence[int] | None = None,
    drum_track: str = "Drums",
    lowest_pitch: int = 24,
    velocity: int = 100,
    ticks_per_step: int = 40,
) -> None:
    """Write a multi-track binary pianoroll as a type-1 MIDI file.

    Parameters
    ----------
    roll : np.ndarray
        ``(T, pitch, tracks)``, one phrase ``(bars, time, pitch, tracks)`` or a batch
        ``(N, bars, time, pitch, tracks)`` (phrases concatenated in order). Non-zero = on.
    path : str or PathLike
        The ``.mid`` file to write.
    tempo_bpm : float or np.ndarray of shape (T,)
        One tempo, or a tempo per step (a tempo event is written wherever it changes).
    steps_per_beat : int
        Steps per quarter note (12 in the MuseGAN layout).
    tracks : sequence of str
        Track names, in the order of the last axis; written as MIDI track names.
    programs : sequence of int, optional
        GM program (0-127) per track; default :data:`PROGRAMS` by track name.
    drum_track : str
        The track written on the drum channel (10, ``is_drum``).
    lowest_pitch : int
        MIDI pitch of pitch index 0.
    velocity : int
        Velocity of every note.
    ticks_per_step : int
        MIDI ticks per step; the file's resolution is ``steps_per_beat * ticks_per_step``
        ticks per beat (480 by default).

    Notes
    -----
    Every maximal run of on-steps of one pitch becomes one note (see the module notes).
    The file carries a 4/4 time signature and the tempo at tick 0, the tempo map, and ends
    at step ``T`` (end-of-track and the 4/4 repeated there) so :func:`read_midi`,
    pretty_midi and ``pypianoroll.read`` recover the length even when the last steps (or
    all of them) are empty.
    """
    x = as_song(roll)
    n_steps, n_pitch, n_tracks = x.shape
    tracks = tuple(tracks)
    if len(tracks) != n_tracks:
        raise ValueError(f"{n_tracks} tracks in the roll, {len(tracks)} names given")
    if programs is None:
        unknown = [t for t in tracks if t not in PROGRAMS]
        if unknown:
            raise ValueError(f"no default program for tracks {unknown}: pass programs=")
        programs = [PROGRAMS[t] for t in tracks]
    if len(programs) != n_tracks:
        raise ValueError(f"{len(programs)} programs for {n_tracks} tracks")
    if lowest_pitch < 0 or lowest_pitch + n_pitch > 128:
        raise ValueError(f"pitches {lowest_pitch}..{lowest_pitch + n_pitch - 1} exceed 0..127")
    if not 1 <= velocity <= 127:
        raise ValueError("velocity must be in 1..127")
    tpb = steps_per_beat * ticks_per_step
    if not 0 < tpb < 0x8000:
        raise ValueError(f"resolution {tpb} ticks per beat is outside 1..32767")
    end_tick = n_steps * ticks_per_step

    mid = mido.MidiFile(type=1, ticks_per_beat=tpb)
    conductor: list[tuple[int, int, mido.Message]] = [
        (0, 0, mido.MetaMessage("track_name", name="ms2dist")),
        (0, 1, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
    ]
    for step, usec in _tempo_steps(tempo_bpm, n_steps):
        conductor.append((step * ticks_per_step, 2, mido.MetaMessage("set_tempo", tempo=usec)))
    if end_tick > 0:  # the phrase's end, for readers that ignore end-of-track (module notes)
        conductor.append((end_tick, 3, mido.MetaMessage("time_signature", numerator=4,
                                                        denominator=4)))
    mid.tracks.append(_to_track(conductor, end_tick))

    late = 1 if ticks_per_step > 2 else 0  # a tick is under half a step: reads back the same
    melodic_channels = iter([c for c in range(16) if c != DRUM_CHANNEL])
    for k, name in enumerate(tracks):
        is_drum = name == drum_track
        try:
            channel = DRUM_CHANNEL if is_drum else next(melodic_channels)
        except StopIteration:
            raise ValueError("more than 15 melodic tracks do not fit in 16 channels") from None
        events: list[tuple[int, int, mido.Message]] = [
            (0, 0, mido.MetaMessage("track_name", name=name)),
            (0, 1, mido.Message("program_change", channel=channel, program=int(programs[k]))),
        ]
        pitch, onset, offset = _runs(x[:, :, k])
        midi_pitch = pitch + lowest_pitch
        for p, on, off in zip(midi_pitch.tolist(), onset.tolist(), offset.tolist(), strict=True):
            # At one tick, note-offs (order 2) go before note-ons (order 3).
            events.append(
                (
                    on * ticks_per_step,
                    3,
                    mido.Message("note_on", channel=channel, note=p, velocity=velocity),
                )
            )
            # One tick late (not at the phrase's end): flooring readers land on the step.
            off_tick = off * ticks_per_step + (late if off < n_steps else 0)
            events.append(
                (
                    off_tick,
                    2,
                    mido.Message("note_off", channel=channel, note=p, velocity=0),
                )
            )
        mid.tracks.append(_to_track(events, end_tick))
    mid.save(str(path))


def _tick_to_step(tick: int, steps_per_beat: int, tpb: int) -> int:
    """Nearest step (halves round up), in exact integer arithmetic."""
    return (2 * tick * steps_per_beat + tpb) // (2 * tpb)


def read_midi(
    path: str | PathLike,
    steps_per_beat: int = 12,
    *,
    n_steps: int | None = None,
    lowest_pitch: int = 24,
    n_pitches: int = 84,
    return_tempo: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Read a MIDI file into a binary LPD-5 pianoroll ``(T, n_pitches, 5)``.

    Parameters
    ----------
    path : str or PathLike
        A type-0 or type-1 MIDI file with a metrical (ticks per beat) time base.
    steps_per_beat : int
        Steps per quarter note of the roll; note times are rounded to the nearest step.
    n_steps : int, optional
        Length of the roll (notes beyond are cut). Default: the file's length (its last
        end-of-track or note-off, rounded up to a step).
    lowest_pitch, n_pitches : int
        Pitch window kept (MIDI 24..107 by default); notes outside it are dropped.
    return_tempo : bool
        Also return the tempo in bpm per step (120 before the first tempo event).

    Returns
    -------
    np.ndarray of bool, shape (T, n_pitches, 5)
        Tracks in ``ms2dist.TRACKS`` order; instruments are merged into them with the
        LPD-5 rule (:func:`lpd5_track`), the drum channel (10) being Drums. A note sets
        steps ``[onset, offset)``; one shorter than a step after rounding keeps one step.
    np.ndarray of float, shape (T,)
        Only with ``return_tempo``.
    """
    mid = mido.MidiFile(str(path))
    tpb = mid.ticks_per_beat
    if not tpb or tpb <= 0:
        raise ValueError(f"{path}: SMPTE time division is not supported")
    file_ticks = max((sum(msg.time for msg in trk) for trk in mid.tracks), default=0)

    program = [0] * 16
    open_notes: dict[tuple[int, int], list[tuple[int, int]]] = {}
    notes: list[tuple[int, int, int, int]] = []  # (track index, midi pitch, on tick, off tick)
    tempi: list[tuple[int, int]] = []  # (tick, microseconds per beat)
    now = 0
    for msg in mido.merge_tracks(mid.tracks):
        now += msg.time
        if msg.type == "set_tempo":
            tempi.append((now, msg.tempo))
        elif msg.type == "program_change":
            program[msg.channel] = msg.program
        elif msg.type == "note_on" and msg.velocity > 0:
            k = lpd5_track(program[msg.channel], msg.channel == DRUM_CHANNEL)
            open_notes.setdefault((msg.channel, msg.note), []).append((now, -1 if k is None else k))
        elif msg.type in ("note_on", "note_off"):
            started = open_notes.get((msg.channel, msg.note))
            if started:  # first in, first out
                on, k = started.pop(0)
                if k >= 0:
                    notes.append((k, msg.note, on, now))
    for (_, pitch), started in open_notes.items():  # never released: hold to the end
        notes.extend((k, pitch, on, max(now, file_ticks)) for on, k in started if k >= 0)

    last = max([file_ticks] + [n[3] for n in notes])
    if n_steps is None:
        n_steps = -(-last * steps_per_beat // tpb)  # ceil
    roll = np.zeros((n_steps, n_pitches, len(TRACKS)), dtype=bool)
    for k, pitch, on, off in notes:
        p = pitch - lowest_pitch
        if not 0 <= p < n_pitches:
            continue
        s = _tick_to_step(on, steps_per_beat, tpb)
        e = max(_tick_to_step(off, steps_per_beat, tpb), s + 1)
        roll[s:e, p, k] = True
    if not return_tempo:
        return roll
    tempo = np.full(n_steps, 120.0)
    for tick, usec in tempi:
        s = _tick_to_step(tick, steps_per_beat, tpb)
        tempo[s:] = 60e6 / usec
    return roll, tempo
