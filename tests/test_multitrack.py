"""A sample's ``.npz`` is a pypianoroll Multitrack file: ``pypianoroll.load`` opens it with
our tracks, programs, drum flag, resolution and tempo, its notes at their MIDI pitches, and
our own arrays (the phrase, the probabilities) are still in it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pypianoroll
import pytest
import scipy.sparse

from ms2dist import TRACKS
from ms2dist.layout import PhraseLayout
from ms2dist.music.files import write_outputs
from ms2dist.music.midi import PROGRAMS
from ms2dist.music.multitrack import csc_parts, write_sample_npz


def _phrases(n: int, seed: int, shape: tuple[int, ...] = (4, 48, 84, 5)) -> tuple:
    rng = np.random.default_rng(seed)
    probs = rng.random((n, *shape)).astype(np.float32)
    binary = probs > 0.98
    binary[0, ..., 4] = False  # a silent track (Strings) in the first phrase
    return probs, binary


def test_pypianoroll_load_gives_our_phrase(tmp_path: Path) -> None:
    probs, binary = _phrases(2, 0)
    entries = write_outputs(probs, binary, tmp_path, "generate", bpm=93.0, pictures=False)
    for i, entry in enumerate(entries):
        mt = pypianoroll.load(entry["npz"])
        mt.validate()  # pypianoroll's own checks of every attribute
        assert mt.name == f"generate_{i:03d}" and mt.resolution == 12
        assert [t.name for t in mt.tracks] == list(TRACKS)
        assert [t.program for t in mt.tracks] == [PROGRAMS[t] for t in TRACKS]
        assert [t.is_drum for t in mt.tracks] == [True, False, False, False, False]
        assert mt.tempo.shape == (192,) and np.all(mt.tempo == 93.0)
        assert np.flatnonzero(mt.downbeat).tolist() == [0, 48, 96, 144]
        roll = binary[i].reshape(192, 84, 5)
        for k, t in enumerate(mt.tracks):
            assert isinstance(t, pypianoroll.BinaryTrack) and t.pianoroll.shape == (192, 128)
            assert np.array_equal(t.pianoroll[:, 24:108], roll[:, :, k])
            assert not t.pianoroll[:, :24].any() and not t.pianoroll[:, 108:].any()
        if i == 0:  # the silent Strings track is still there, empty
            assert not mt.tracks[4].pianoroll.any()
        # Our own arrays, alongside (pypianoroll ignores them).
        with np.load(entry["npz"]) as z:
            assert np.array_equal(z["pianoroll"], binary[i]) and z["pianoroll"].dtype == bool
            assert z["probabilities"].dtype == np.float16
            assert np.array_equal(z["probabilities"], probs[i].astype(np.float16))
            assert z["tracks"].tolist() == list(TRACKS)
            assert (int(z["lowest_pitch"]), int(z["steps_per_beat"]), float(z["tempo_bpm"])) \
                == (24, 12, 93.0)


def test_same_phrase_same_bytes_and_the_midi_agrees(tmp_path: Path) -> None:
    probs, binary = _phrases(1, 1)
    a = write_outputs(probs, binary, tmp_path / "a", "s", pictures=False)[0]
    b = write_outputs(probs, binary, tmp_path / "b", "s", pictures=False)[0]
    assert Path(a["npz"]).read_bytes() == Path(b["npz"]).read_bytes()
    # pypianoroll reads the MIDI file to the npz's notes (drums: onsets only, as it reads
    # drums; the last step is left out: pypianoroll.read floors note ends there).
    from_npz = pypianoroll.load(a["npz"])
    from_mid = pypianoroll.read(a["midi"], resolution=12)
    by_name = {t.name: t for t in from_mid.tracks}
    for t in from_npz.tracks:
        x = t.pianoroll
        if t.is_drum:
            x = x & ~np.r_[np.zeros((1, 128), bool), x[:-1]]
        if not x.any():
            assert t.name not in by_name
            continue
        assert np.array_equal(by_name[t.name].pianoroll[:-1] > 0, x[:-1]), t.name


def test_another_layout(tmp_path: Path) -> None:
    layout = PhraseLayout(n_bars=2, steps_per_beat=6, beats_per_bar=3, n_pitches=48,
                          lowest_pitch=36)
    probs, binary = _phrases(1, 2, layout.shape)
    path = tmp_path / "x.npz"
    write_sample_npz(path, binary[0], probs[0], 120.0, layout, name="x")
    mt = pypianoroll.load(path)
    assert mt.resolution == 6 and mt.tempo.shape == (36,)
    assert np.flatnonzero(mt.downbeat).tolist() == [0, 18]
    for k, t in enumerate(mt.tracks):
        assert np.array_equal(t.pianoroll[:, 36:84], binary[0].reshape(36, 48, 5)[:, :, k])
    with pytest.raises(ValueError, match="differ in shape"):
        write_sample_npz(path, binary[0], probs[0, :1], 120.0, layout)
    with pytest.raises(ValueError, match="positive"):
        write_sample_npz(path, binary[0], probs[0], 0.0, layout)


def test_csc_parts_are_scipy_s() -> None:
    x = np.random.default_rng(3).random((70, 128)) < 0.05
    x[:, 5] = False  # an empty column
    ours = csc_parts(x, "p")
    ref = scipy.sparse.csc_matrix(x)
    for part in ("data", "indices", "indptr"):
        got, want = ours[f"p_csc_{part}"], getattr(ref, part)
        assert got.dtype == want.dtype and np.array_equal(got, want), part
    assert ours["p_csc_shape"].tolist() == [70, 128]
