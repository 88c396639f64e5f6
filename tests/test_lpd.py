"""ms2dist.songs: LPD npz / MIDI readers and the LPD-5 merge rule, checked on real songs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pypianoroll
import pytest

from ms2dist.songs.files import detect_format, load_song
from ms2dist.songs.lpd import read_lpd_npz
from ms2dist.songs.song import RejectError, lpd5_track, merge_to_lpd5, song_id_for


def _songs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.npz"))


def _rel(p: Path, root: Path) -> str:
    return str(p.relative_to(root))


def test_lpd5_rule_table():
    assert lpd5_track(0, True) == 0 and lpd5_track(120, True) == 0
    assert [lpd5_track(p, False) for p in (0, 7)] == [1, 1]
    assert [lpd5_track(p, False) for p in (24, 31)] == [2, 2]
    assert [lpd5_track(p, False) for p in (32, 39)] == [3, 3]
    assert [lpd5_track(p, False) for p in (8, 23, 40, 48, 95, 104, 111)] == [4] * 7
    assert [lpd5_track(p, False) for p in (96, 103, 112, 127)] == [None] * 4


def test_merge_is_elementwise_max_and_drops():
    a = np.zeros((4, 128), np.uint8)
    b = np.zeros((6, 128), np.uint8)
    a[0, 60], b[0, 60], b[5, 61] = 50, 90, 10
    c = np.full((4, 128), 7, np.uint8)  # program 100: dropped
    out = merge_to_lpd5([a, b, c], [0, 5, 100], [False, False, False])
    assert out.shape == (6, 128, 5) and out.dtype == np.uint8
    assert out[0, 60, 1] == 90 and out[5, 61, 1] == 10
    assert out[..., [0, 2, 3, 4]].sum() == 0
    assert out[..., 1].sum() == 100


def test_lpd5_reader_matches_pypianoroll(lpd5_test_small):
    for f in _songs(lpd5_test_small)[:6]:
        song = read_lpd_npz(f, expect_lpd5=True)
        mt = pypianoroll.load(f)
        assert [t.name for t in mt.tracks] == ["Drums", "Piano", "Guitar", "Bass", "Strings"]
        expect = np.stack([t.pianoroll for t in mt.tracks], axis=-1)
        assert song.roll.shape == expect.shape
        assert np.array_equal(song.roll, expect)
        assert song.resolution == 24 and song.first_downbeat == 0
        assert song.tempo.shape == (expect.shape[0],)
        assert detect_format(f) == "lpd5"
        assert song.song_id == f.stem


def test_merge_cleansed_equals_lpd5_for_all_16_songs(lpd5_test_small, lpd_cleansed_test_small):
    lpd5 = {_rel(p, lpd5_test_small): p for p in _songs(lpd5_test_small)}
    orig = {_rel(p, lpd_cleansed_test_small): p for p in _songs(lpd_cleansed_test_small)}
    assert len(lpd5) == 16 and set(lpd5) == set(orig)
    for rel, p in sorted(orig.items()):
        merged = read_lpd_npz(p)  # lpd reader: merges with the rule
        assert detect_format(p) == "lpd"
        target = pypianoroll.load(lpd5[rel])
        target_roll = np.stack([t.pianoroll for t in target.tracks], axis=-1)
        assert np.array_equal(merged.roll, target_roll), rel
        # the pure function on independently loaded tracks gives the same answer
        mt = pypianoroll.load(p)
        pure = merge_to_lpd5(
            [t.pianoroll for t in mt.tracks],
            [t.program for t in mt.tracks],
            [t.is_drum for t in mt.tracks],
        )
        assert np.array_equal(pure, target_roll), rel


def test_bad_npz_inputs_raise_reject(tmp_path, lpd5_test_small):
    good = _songs(lpd5_test_small)[0]
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file")
    noinfo = tmp_path / "noinfo.npz"
    np.savez(noinfo, a=np.zeros(3))
    for p in (trunc, junk, noinfo):
        with pytest.raises(RejectError):
            load_song(p)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(RejectError, match="unsupported"):
        load_song(txt)
    with pytest.raises(RejectError, match="not an LPD-5"):
        load_song(_songs(lpd5_test_small.parent / "lpd_cleansed_test_small")[0], "lpd5")
    assert song_id_for("/a/b/c0ffee.npz") == "c0ffee"


def write_midi(path: Path, numerator: int = 4, bars: int = 8, bpm: float = 120.0) -> None:
    """A small MIDI file: piano C4 on every beat, bass C2 per bar, a kick on beat 1."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=bpm)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(numerator, 4, 0.0))
    beat = 60.0 / bpm
    piano = pretty_midi.Instrument(program=0)
    bass = pretty_midi.Instrument(program=33)
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    flute = pretty_midi.Instrument(program=73)  # Strings bucket (other program < 96)
    fx = pretty_midi.Instrument(program=98)  # dropped (96-103)
    for b in range(bars * numerator):
        piano.notes.append(pretty_midi.Note(100, 60, b * beat, (b + 0.5) * beat))
    for bar in range(bars):
        t0 = bar * numerator * beat
        bass.notes.append(pretty_midi.Note(90, 36, t0, t0 + beat))
        drums.notes.append(pretty_midi.Note(110, 36, t0, t0 + 0.25 * beat))
        flute.notes.append(pretty_midi.Note(80, 72, t0, t0 + 2 * beat))
        fx.notes.append(pretty_midi.Note(80, 80, t0, t0 + beat))
    pm.instruments += [piano, bass, drums, flute, fx]
    pm.write(str(path))


def test_midi_4_4_read_and_3_4_rejected(tmp_path):
    ok = tmp_path / "song44.mid"
    write_midi(ok, 4)
    assert detect_format(ok) == "midi"
    song = load_song(ok)
    assert song.song_id == "song44" and song.resolution == 24 and song.first_downbeat == 0
    roll = song.roll
    assert roll.shape[1:] == (128, 5)
    assert roll.shape[0] >= 8 * 96 - 24
    assert roll[0:12, 60, 1].all() and not roll[12:24, 60, 1].any()  # half-beat piano notes
    assert roll[96:120, 36, 3].all()  # bass (program 33) one beat per bar
    assert roll[0, 36, 0] > 0  # kick
    assert roll[0:48, 72, 4].all()  # flute -> Strings
    assert not roll[:, 80, :].any()  # program 98 dropped
    assert abs(song.bpm - 120.0) < 1e-6
    bad = tmp_path / "waltz.mid"
    write_midi(bad, 3)
    with pytest.raises(RejectError, match="not 4/4"):
        load_song(bad)
