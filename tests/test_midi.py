"""MIDI round trips, programs/drum channel, tempo, what the field's readers (pretty_midi,
pypianoroll, music21) get from our files, and pianoroll pictures."""

from __future__ import annotations

import struct
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pypianoroll
import pytest

from ms2dist import TRACKS
from ms2dist.music.midi import DRUM_CHANNEL, PROGRAMS, read_midi, write_midi
from ms2dist.music.pianoroll import plot_pianoroll
from ms2dist.songs.song import lpd5_track

SPB = 12  # steps per beat
LOW = 24


def random_roll(n_steps: int, seed: int, density: float = 0.01) -> np.ndarray:
    """Sparse (T, 84, 5) roll made of notes of random lengths (many touch or overlap)."""
    rng = np.random.default_rng(seed)
    roll = np.zeros((n_steps, 84, 5), dtype=bool)
    n_notes = int(density * roll.size / 4)
    starts = rng.integers(0, n_steps, n_notes)
    lengths = rng.integers(1, 9, n_notes)
    pitches = rng.integers(0, 84, n_notes)
    tracks = rng.integers(0, 5, n_notes)
    for s, n, p, k in zip(starts, lengths, pitches, tracks, strict=True):
        roll[s : s + n, p, k] = True
    return roll


def n_runs(roll: np.ndarray) -> int:
    """Number of maximal runs of on-steps (notes) in a (T, ...) roll."""
    on = roll.copy()
    on[1:] &= ~roll[:-1]
    return int(on.sum())


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_random_sparse(tmp_path: Path, seed: int):
    roll = random_roll(4 * 48 * 3 + 7, seed)  # not a whole number of bars
    roll[-5:] = False  # trailing silence must survive (length from end-of-track)
    path = tmp_path / "r.mid"
    write_midi(roll, path)
    back = read_midi(path)
    assert back.dtype == np.bool_ and back.shape == roll.shape
    assert np.array_equal(back, roll)


@pytest.mark.parametrize("ticks_per_step", [1, 2, 3])
def test_round_trip_at_few_ticks_per_step(tmp_path: Path, ticks_per_step: int):
    """The late note-off (one tick) is only written where a tick is under half a step."""
    roll = random_roll(4 * 48, 11)
    write_midi(roll, tmp_path / "few.mid", ticks_per_step=ticks_per_step)
    assert np.array_equal(read_midi(tmp_path / "few.mid"), roll)


def test_round_trip_batch_of_phrases_is_concatenated(tmp_path: Path):
    phrases = random_roll(3 * 4 * 48, 5).reshape(3, 4, 48, 84, 5)
    write_midi(phrases, tmp_path / "b.mid")
    assert np.array_equal(read_midi(tmp_path / "b.mid"), phrases.reshape(-1, 84, 5))
    write_midi(phrases[1], tmp_path / "p.mid")  # one phrase (bars, time, pitch, tracks)
    assert np.array_equal(read_midi(tmp_path / "p.mid"), phrases[1].reshape(-1, 84, 5))


def test_note_boundaries(tmp_path: Path):
    roll = np.zeros((96, 84, 5), dtype=bool)
    roll[0:4, 36, 1] = True  # C4 steps 0-3
    roll[5:8, 36, 1] = True  # C4 again after a one-step rest: a second note
    roll[10:20, 40, 1] = True  # one long E4
    roll[95, 83, 4] = True  # one step at the very end, highest pitch
    roll[0, 0, 0] = True  # lowest pitch, first step (drums)
    path = tmp_path / "n.mid"
    write_midi(roll, path)
    pm = pretty_midi.PrettyMIDI(str(path))
    piano = next(i for i in pm.instruments if i.name == "Piano")
    notes = sorted((n.pitch, n.start, n.end) for n in piano.notes)
    step = 60.0 / (100.0 * SPB)
    expected = [(60, 0, 4), (60, 5, 8), (64, 10, 20)]
    assert len(notes) == 3
    for (p, s, e), (ep, es, ee) in zip(notes, expected, strict=True):
        # Note-offs one tick (1/40 step) after the boundary (midi.py's notes), starts on it.
        assert p == ep and s == pytest.approx(es * step)
        assert e == pytest.approx((ee + 1 / 40) * step)
    assert sum(len(i.notes) for i in pm.instruments) == n_runs(roll) == 5
    assert np.array_equal(read_midi(path), roll)


def test_touching_midi_notes_read_as_one_run(tmp_path: Path):
    """MIDI notes of one pitch that touch become one run; written again, one note."""
    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    trk = mido.MidiTrack()
    trk.append(mido.Message("program_change", channel=0, program=0))
    trk.append(mido.Message("note_on", note=60, velocity=90, time=0))
    trk.append(mido.Message("note_off", note=60, velocity=0, time=160))  # 4 steps
    trk.append(mido.Message("note_on", note=60, velocity=90, time=0))  # touches
    trk.append(mido.Message("note_on", note=60, velocity=0, time=160))  # vel-0 note-off
    mid.tracks.append(trk)
    path = tmp_path / "touch.mid"
    mid.save(str(path))
    roll = read_midi(path)
    assert roll.shape == (8, 84, 5)
    assert roll[:, 60 - LOW, 1].all() and roll.sum() == 8
    write_midi(roll, tmp_path / "again.mid")
    pm = pretty_midi.PrettyMIDI(str(tmp_path / "again.mid"))
    assert sum(len(i.notes) for i in pm.instruments) == 1


def test_read_foreign_file_quantises_and_merges_by_lpd5_rule(tmp_path: Path):
    """A pretty_midi file at 220 ticks per beat, programs outside the five written ones."""
    pm = pretty_midi.PrettyMIDI(resolution=220, initial_tempo=120.0)
    step = 60.0 / (120.0 * SPB)
    organ = pretty_midi.Instrument(program=16)  # -> Strings
    organ.notes.append(pretty_midi.Note(100, 50, 2 * step, 5 * step))
    organ.notes.append(pretty_midi.Note(100, 10, 0.0, step))  # MIDI 10 < 24: dropped
    synth = pretty_midi.Instrument(program=100)  # FX: dropped by LPD-5
    synth.notes.append(pretty_midi.Note(100, 60, 0.0, 4 * step))
    epiano = pretty_midi.Instrument(program=4)  # -> Piano
    epiano.notes.append(pretty_midi.Note(100, 62, 3 * step + 0.001, 3 * step + 0.002))
    kit = pretty_midi.Instrument(program=25, is_drum=True)  # drums, whatever the program
    kit.notes.append(pretty_midi.Note(100, 36, 0.0, step))
    pm.instruments += [organ, synth, epiano, kit]
    path = tmp_path / "foreign.mid"
    pm.write(str(path))
    roll = read_midi(path, n_steps=12)
    assert roll.shape == (12, 84, 5)
    assert np.flatnonzero(roll[:, 50 - LOW, 4]).tolist() == [2, 3, 4]
    assert np.flatnonzero(roll[:, 62 - LOW, 1]).tolist() == [3]  # too short: one step
    assert np.flatnonzero(roll[:, 36 - LOW, 0]).tolist() == [0]
    assert roll.sum() == 5


def test_lpd5_rule():
    assert lpd5_track(0, True) == 0 and lpd5_track(80, True) == 0
    assert [lpd5_track(p, False) for p in (0, 7, 24, 31, 32, 39)] == [1, 1, 2, 2, 3, 3]
    assert [lpd5_track(p, False) for p in (8, 23, 40, 48, 95, 104, 111)] == [4] * 7
    assert [lpd5_track(p, False) for p in (96, 103, 112, 127)] == [None] * 4


# ------------------------------------------------------- programs, channel, tempo


def test_programs_drum_channel_and_meta(tmp_path: Path):
    roll = np.zeros((192, 84, 5), dtype=bool)
    roll[0:6, 12, :] = True  # every track plays
    path = tmp_path / "p.mid"
    write_midi(roll, path, tempo_bpm=100.0)
    pm = pretty_midi.PrettyMIDI(str(path))
    by_name = {i.name: i for i in pm.instruments}
    assert set(by_name) == set(TRACKS)
    assert by_name["Drums"].is_drum
    for name in TRACKS[1:]:
        assert not by_name[name].is_drum
        assert by_name[name].program == PROGRAMS[name]
    assert [PROGRAMS[t] for t in TRACKS[1:]] == [0, 24, 32, 48]
    times, tempi = pm.get_tempo_changes()
    assert times.tolist() == [0.0] and tempi == pytest.approx([100.0])
    ts = pm.time_signature_changes  # 4/4 at 0, repeated at the phrase's end (16 beats)
    assert [(t.numerator, t.denominator) for t in ts] == [(4, 4), (4, 4)]
    assert [t.time for t in ts] == pytest.approx([0.0, 16 * 0.6])
    # Channel 10 (0-based 9) carries the drums and nothing else.
    mid = mido.MidiFile(str(path))
    channels = {
        trk.name: {m.channel for m in trk if m.type in ("note_on", "program_change")}
        for trk in mid.tracks[1:]
    }
    assert channels["Drums"] == {DRUM_CHANNEL}
    assert all(DRUM_CHANNEL not in channels[t] for t in TRACKS[1:])
    assert mid.ticks_per_beat == 480


def test_per_step_tempo(tmp_path: Path):
    roll = random_roll(4 * 48, 7)
    tempo = np.full(4 * 48, 100.0)
    tempo[96:] = 140.0  # bars 3-4 faster
    tempo[150:] = 123.4
    path = tmp_path / "t.mid"
    write_midi(roll, path, tempo_bpm=tempo)
    back, back_tempo = read_midi(path, return_tempo=True)
    assert np.array_equal(back, roll)
    assert back_tempo == pytest.approx(tempo, rel=1e-5)
    times, tempi = pretty_midi.PrettyMIDI(str(path)).get_tempo_changes()
    assert tempi == pytest.approx([100.0, 140.0, 123.4], rel=1e-5)
    step100, step140 = 60 / (100 * SPB), 60 / (140 * SPB)
    assert times == pytest.approx([0.0, 96 * step100, 96 * step100 + 54 * step140])
    with pytest.raises(ValueError):
        write_midi(roll, path, tempo_bpm=tempo[:-1])


# ------------------------------------------- what the field's readers get from our files


def _notes(track: np.ndarray) -> list[tuple[int, int, int]]:
    """(MIDI pitch, onset step, offset step) of every run of a (T, 84) roll, sorted."""
    padded = np.zeros((track.shape[0] + 2, track.shape[1]), np.int8)
    padded[1:-1] = track
    d = np.diff(padded, axis=0)
    out = []
    for p in range(track.shape[1]):
        ons, offs = np.flatnonzero(d[:, p] == 1), np.flatnonzero(d[:, p] == -1)
        out += [(p + LOW, int(a), int(b)) for a, b in zip(ons, offs, strict=True)]
    return sorted(out)


def _as_read(roll: np.ndarray, k: int) -> np.ndarray:
    """Track ``k`` as pypianoroll.read gives it: the notes, or for drums their onsets."""
    x = roll[:, :, k]
    return x & ~np.r_[np.zeros((1, x.shape[1]), bool), x[:-1]] if TRACKS[k] == "Drums" else x


def _tick0_meta(path: Path) -> tuple[set[str], int]:
    """Meta message types at tick 0 of the first track, and the file's length in ticks."""
    mid = mido.MidiFile(str(path))
    now, at0 = 0, set()
    for msg in mid.tracks[0]:
        now += msg.time
        if now == 0 and msg.is_meta:
            at0.add(msg.type)
    return at0, max(sum(m.time for m in trk) for trk in mid.tracks)


@pytest.mark.parametrize("case", ["silent", "ends_early", "to_the_end", "tempo_change"])
def test_beats_and_length_are_the_phrase_s(tmp_path: Path, case: str) -> None:
    """pretty_midi's beats and pypianoroll.read's length are the phrase's (16 beats), silent
    or not: pretty_midi ignores end-of-track, and float error must not add a beat."""
    roll = np.zeros((4 * 48, 84, 5), dtype=bool)
    tempo: float | np.ndarray = 90.0  # its beats do not add up exactly in floats
    if case == "ends_early":
        roll[0:12, 36, 1] = True  # one beat of piano, then 15 beats of silence
    elif case == "to_the_end":
        roll[180:192, 40, 3] = True  # the bass plays the last beat, and a drum hit
        roll[188:192, 12, 0] = True
    elif case == "tempo_change":
        roll[0:12, 36, 1] = True
        tempo = np.r_[np.full(96, 90.0), np.full(96, 131.0)]
    path = tmp_path / f"{case}.mid"
    write_midi(roll, path, tempo_bpm=tempo)
    at0, ticks = _tick0_meta(path)
    assert {"time_signature", "set_tempo"} <= at0
    assert ticks == 4 * 48 * 40  # end-of-track exactly at the phrase's end

    pm = pretty_midi.PrettyMIDI(str(path))
    bpm = np.broadcast_to(np.asarray(tempo, dtype=float), (192,))
    bounds = np.r_[0.0, np.cumsum(60.0 / bpm[::SPB])]  # the 16 beats' starts, and the end
    assert pm.get_beats() == pytest.approx(bounds[:16])
    assert pm.get_end_time() == pytest.approx(bounds[16])
    assert pm.get_downbeats() == pytest.approx(bounds[[0, 4, 8, 12]])

    mt = pypianoroll.read(path, resolution=SPB)
    assert mt.resolution == SPB and mt.downbeat.size == 192
    assert np.flatnonzero(mt.downbeat).tolist() == [0, 48, 96, 144]
    played = [t for k, t in enumerate(TRACKS) if roll[:, :, k].any()]
    assert [t.name for t in mt.tracks] == played  # pretty_midi keeps the tracks with notes
    # pypianoroll.read floors note ends, and a note-off at the phrase's end has no tick to
    # spare (midi.py's notes): at some tempos (90 among them) it loses the last step.
    last = 191 if case == "to_the_end" else 192
    for t in mt.tracks:
        assert t.pianoroll.shape == (192, 128)
        assert np.array_equal(t.pianoroll[:last, LOW : LOW + 84] > 0,
                              _as_read(roll, TRACKS.index(t.name))[:last])


@pytest.mark.parametrize("bpm", [90.0, 100.0, 123.4, 77.0])
def test_pretty_midi_and_pypianoroll_read_give_our_notes(tmp_path: Path, bpm: float) -> None:
    """Every note (track, pitch, onset, offset) as pretty_midi and pypianoroll.read see it."""
    roll = random_roll(4 * 48, int(bpm))
    # pypianoroll.read floors a note's end; at the phrase's end there is no tick to spare
    # (midi.py's notes), so the last step is silent here (the test above plays it).
    roll[-1] = False
    path = tmp_path / "notes.mid"
    write_midi(roll, path, tempo_bpm=bpm)
    step = 60.0 / (bpm * SPB)

    pm = pretty_midi.PrettyMIDI(str(path))
    assert len(pm.get_beats()) == 16 and pm.get_end_time() == pytest.approx(192 * step)
    by_name = {i.name: i for i in pm.instruments}
    for k, name in enumerate(TRACKS):
        want = _notes(roll[:, :, k])
        got = sorted((n.pitch, n.start, n.end) for n in by_name[name].notes)
        assert [(p, round(s / step), round(e / step)) for p, s, e in got] == want
        assert [s for _, s, _ in got] == pytest.approx([a * step for _, a, _ in want])
        # Ends one tick (1/40 step) after the boundary: flooring readers land on it.
        assert [e for _, _, e in got] == pytest.approx([(b + 1 / 40) * step for *_, b in want])
        assert (by_name[name].program, by_name[name].is_drum) == (PROGRAMS[name],
                                                                  name == "Drums")

    mt = pypianoroll.read(path, resolution=SPB)
    assert mt.downbeat.size == 192 and [t.name for t in mt.tracks] == list(TRACKS)
    for k, t in enumerate(mt.tracks):
        assert np.array_equal(t.pianoroll[:, LOW : LOW + 84] > 0, _as_read(roll, k)), t.name
        assert not t.pianoroll[:, :LOW].any() and not t.pianoroll[:, LOW + 84 :].any()
    # With more steps per beat than ours, every note still lands on its (finer) steps.
    fine = pypianoroll.read(path, resolution=2 * SPB)
    piano = np.repeat(roll[:, :, 1], 2, axis=0)
    assert np.array_equal(fine.tracks[1].pianoroll[:, LOW : LOW + 84] > 0, piano)


def test_music21_reads_notes_and_bars(tmp_path: Path) -> None:
    import music21  # a core dependency (the demo reads its corpus)
    roll = np.zeros((4 * 48, 84, 5), dtype=bool)
    roll[0:12, 36, 1] = True  # C4, one beat
    roll[12:36, 40, 1] = True  # E4, two beats
    roll[180:192, 19, 3] = True  # G2 on the bass, the last beat
    path = tmp_path / "m21.mid"
    write_midi(roll, path)
    score = music21.converter.parse(str(path))
    assert score.duration.quarterLength == 16.0
    parts = {p.partName: p for p in score.parts}
    assert set(parts) == {"Piano", "Bass"}
    piano = [(float(n.offset), n.pitch.midi, float(n.quarterLength))
             for n in parts["Piano"].flatten().notes]
    assert piano == [(0.0, 60, 1.0), (1.0, 64, 2.0)]
    bass = [(float(n.offset), n.pitch.midi) for n in parts["Bass"].flatten().notes]
    assert bass == [(15.0, 43)]
    assert len(parts["Bass"].getElementsByClass("Measure")) == 4


# ------------------------------------------------------------------ a real song


def _load_lpd5_song(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """LPD-5 .npz -> (binary roll (T/2, 84, 5) at 12 steps per beat, tempo per step)."""
    with np.load(path) as f:
        tracks = []
        for i in range(5):
            data = f[f"pianoroll_{i}_csc_data"]
            indices = f[f"pianoroll_{i}_csc_indices"]
            indptr = f[f"pianoroll_{i}_csc_indptr"]
            n_steps, n_pitch = f[f"pianoroll_{i}_csc_shape"]
            dense = np.zeros((n_steps, n_pitch), dtype=bool)
            cols = np.repeat(np.arange(n_pitch), np.diff(indptr))
            dense[indices, cols] = data > 0
            tracks.append(dense)
        tempo = f["tempo"]
    roll = np.stack(tracks, axis=-1)
    roll = roll[: roll.shape[0] // 2 * 2]
    roll = roll.reshape(-1, 2, *roll.shape[1:]).any(1)  # 24 -> 12 steps per beat (OR)
    return roll[:, 24:108], tempo[: roll.shape[0] * 2 : 2]


@pytest.mark.data
def test_round_trip_real_song(lpd5_test_small: Path, tmp_path: Path):
    song = sorted(lpd5_test_small.rglob("*.npz"))[0]
    roll, tempo = _load_lpd5_song(song)
    assert roll.shape[1:] == (84, 5) and roll.any(axis=(0, 1)).all()
    path = tmp_path / "song.mid"
    write_midi(roll, path, tempo_bpm=tempo)
    back, back_tempo = read_midi(path, return_tempo=True)
    assert np.array_equal(back, roll)
    assert back_tempo == pytest.approx(tempo, rel=1e-5)
    pm = pretty_midi.PrettyMIDI(str(path))
    assert sum(len(i.notes) for i in pm.instruments) == n_runs(roll)
    # One 4-bar phrase in MuseGAN's layout as well.
    phrase = roll[: 4 * 48].reshape(4, 48, 84, 5)
    write_midi(phrase, tmp_path / "phrase.mid")
    assert np.array_equal(read_midi(tmp_path / "phrase.mid"), roll[: 4 * 48])


# ------------------------------------------------------------------------ pictures


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_plot_pianoroll_phrase(tmp_path: Path):
    phrase = random_roll(4 * 48, 3).reshape(4, 48, 84, 5)
    path = tmp_path / "phrase.png"
    plot_pianoroll(phrase, path, title="a phrase")
    w, h = _png_size(path)
    assert 700 <= w <= 900 and 750 <= h <= 900  # 8 x 8.3 inches at 100 dpi
    assert path.stat().st_size > 10_000


def test_plot_pianoroll_batch_is_wider(tmp_path: Path):
    batch = random_roll(4 * 4 * 48, 4).reshape(4, 4, 48, 84, 5)  # 16 bars
    path = tmp_path / "batch.png"
    plot_pianoroll(batch, path, dpi=50)
    w, h = _png_size(path)
    assert 1500 <= w <= 1700 and 350 <= h <= 450  # 32 x 8.3 inches at 50 dpi
