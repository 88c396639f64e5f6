"""``ms2dist sample --mode song|infill|vary`` and ``--attribute``, and the same through the
pyfunc model: the files hold the notes they should, runs are deterministic and batch-size
independent, and bad requests are refused with the reason. Shipped model, real songs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_audio import fluidsynth  # noqa: F401  (the real renderer; fails under CI if missing)

from ms2dist.music.midi import read_midi

PRETRAINED = "pretrained:lpd5"
pytestmark = pytest.mark.data


def _sample(out: Path, *args, model: str = PRETRAINED) -> int:
    from ms2dist.cli import main

    return main(["sample", "--model", model, "--out", str(out), "--device", "cpu",
                 *map(str, args)])


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["pianoroll"], z["probabilities"]


@pytest.fixture(scope="module")
def song_file(lpd5_test_small) -> Path:
    return sorted(lpd5_test_small.rglob("*.npz"))[0]


def test_song_is_one_midi_file_of_its_length_and_form(tmp_path):
    for name, bs in (("a", 1), ("b", 2)):
        assert _sample(tmp_path / name, "--mode", "song", "--bars", 16, "--form", "ABAB",
                       "--n", 2, "--seed", 5, "--batch-size", bs) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(2):  # the batch size changes nothing
        assert (a / f"song_{i:03d}.mid").read_bytes() == (b / f"song_{i:03d}.mid").read_bytes()
    roll, probs = _npz(a / "song_000.npz")
    assert roll.shape == probs.shape == (16, 48, 84, 5) and roll.sum() > 100
    back = read_midi(a / "song_000.mid", n_steps=16 * 48)
    np.testing.assert_array_equal(back, roll.reshape(-1, 84, 5))
    phrases = roll.reshape(4, 4, 48, 84, 5)  # ABAB over 4 phrases: A B A B
    assert (phrases[0] == phrases[2]).all() and (phrases[1] == phrases[3]).all()
    assert not (phrases[0] == phrases[1]).all()
    summary = json.loads((a / "summary.json").read_text())
    assert summary["mode"] == "song" and summary["bars"] == "16" and summary["form"] == "ABAB"
    other, _ = _npz(a / "song_001.npz")
    assert not (other == roll).all()


def test_infill_returns_the_kept_bars_bit_for_bit(tmp_path, song_file):
    out = tmp_path / "fill"
    assert _sample(out, "--mode", "infill", "--input", song_file, "--bars", "2-3",
                   "--tracks", "Piano,Bass", "--n", 3, "--seed", 1) == 0
    for i in range(3):
        got, _ = _npz(out / f"infill_{i:03d}.npz")
        given, _ = _npz(out / f"input_{i:03d}.npz")
        keep = np.ones((4, 5), dtype=bool)
        keep[1:3, [1, 3]] = False
        cells = np.broadcast_to(keep[:, None, None, :], got.shape)
        np.testing.assert_array_equal(got[cells], given[cells])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracks"] == "Piano,Bass" and summary["bars"] == "2-3"


def test_vary_and_attributes_change_what_they_say(tmp_path, song_file):
    from ms2dist.metrics.f1 import note_prf

    f1 = []
    for amount in (0.0, 1.0):
        out = tmp_path / f"vary{amount}"
        assert _sample(out, "--mode", "vary", "--input", song_file, "--amount", amount,
                       "--n", 8) == 0
        got = np.stack([_npz(out / f"vary_{i:03d}.npz")[0] for i in range(8)])
        given = np.stack([_npz(out / f"input_{i:03d}.npz")[0] for i in range(8)])
        f1.append(float(np.mean(note_prf(got, given)[2])))
    assert f1[0] > f1[1] + 0.2, f1
    drums = []
    for scale in ("-2", "+2"):
        out = tmp_path / f"attr{scale}"
        assert _sample(out, "--mode", "generate", "--attribute", f"Drums.density={scale}",
                       "--n", 8) == 0
        drums.append(sum(_npz(out / f"generate_{i:03d}.npz")[0][..., 0].sum()
                         for i in range(8)))
    assert drums[1] > 1.5 * drums[0], drums


@pytest.mark.parametrize("args, message", [
    (["--mode", "song", "--bars", "30"], "a song is a whole number of 4-bar phrases"),
    (["--mode", "song", "--bars", "12", "--form", "AB"], "must divide into the sections"),
    (["--mode", "infill", "--bars", "5", "--input", "SONG"], "bars must lie in 1..4"),
    (["--mode", "infill", "--input", "SONG"], "needs --bars"),
    (["--mode", "infill", "--bars", "1", "--tracks", "Flute", "--input", "SONG"],
     "unknown track"),
    (["--mode", "vary", "--input", "SONG"], "needs --amount"),
    (["--mode", "vary", "--amount", "1.5", "--input", "SONG"], "--amount must be in 0..1"),
    (["--mode", "generate", "--attribute", "Drums.range=1"], "unknown attribute 'Drums.range'"),
    (["--mode", "generate", "--tracks", "Piano"], "--tracks applies to --mode infill"),
    (["--mode", "song", "--link", "1.2"], "--link must be in [0, 1)"),
    (["--mode", "song", "--temperature", "0"], "--temperature must be in (0, 10]"),
    (["--attribute", "Drums.density=1", "--attribute", "Drums.density=2"],
     "--attribute Drums.density is given twice"),
    (["--mode", "infill", "--bars", "1", "--tracks", "", "--input", "SONG"], "--tracks"),
])
def test_bad_requests_are_refused_with_the_reason(tmp_path, capsys, song_file, args, message):
    args = [str(song_file) if a == "SONG" else a for a in args]
    assert _sample(tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_list_attributes_and_a_vector_measured_not_to_steer(tmp_path, capsys):
    assert _sample(tmp_path / "o", "--list-attributes") == 0
    text = capsys.readouterr().out
    assert "Drums.density" in text and "Strings.range" in text
    # The shipped model's measured responses (ms2dist attributes): Bass.density is a dud.
    assert "Bass.density" in text and text.count("does NOT steer") == 2
    assert _sample(tmp_path / "b", "--attribute", "Bass.density=1", "--n", 1) == 0
    err = capsys.readouterr().err
    assert "warning: Bass.density was measured not to steer this model" in err
    assert _sample(tmp_path / "d", "--attribute", "Drums.density=1", "--n", 1) == 0
    assert "measured not to steer" not in capsys.readouterr().err


def test_pyfunc_predicts_every_mode_deterministically(song_file):
    from ms2dist.pyfunc import _load_pyfunc
    from ms2dist.songs.files import file_phrases

    m = _load_pyfunc(str(Path(__file__).resolve().parents[1] / "ms2dist" / "pretrained"
                         / "lpd5"))
    x = file_phrases(song_file)[0][:2].astype(np.float32)
    song = m.predict({"mode": "song", "bars": 8, "form": "AA", "n": 1, "seed": 3})
    assert len(song) == 1 and song[0]["grid"]["bars"] == 8
    assert song == m.predict({"mode": "song", "bars": 8, "form": "AA", "n": 1, "seed": 3})
    from ms2dist.inference.requests import notes_to_roll

    roll = notes_to_roll(song[0])  # form AA: the second phrase repeats the first
    assert roll.shape == (8, 48, 84, 5) and roll.sum() > 0
    np.testing.assert_array_equal(roll[:4], roll[4:])
    fill = m.predict({"mode": "infill", "phrases": x, "bars": "4", "tracks": "Drums"},
                     params={"output": "probabilities"})
    np.testing.assert_array_equal(fill[:, :3], x[:, :3])
    np.testing.assert_array_equal(fill[:, 3, ..., 1:], x[:, 3, ..., 1:])
    vary = m.predict({"mode": "vary", "phrases": x, "amount": 0.25, "seed": 1,
                      "attributes": "Piano.density=1"})
    assert len(vary) == 2
    from mlflow.exceptions import MlflowException

    for bad, message in (({"mode": "vary", "phrases": x}, "needs amount"),
                         ({"mode": "song", "bars": 6}, "whole number of 4-bar phrases"),
                         ({"mode": "infill", "phrases": x, "bars": "0"}, "bars must lie"),
                         ({"mode": "song", "amount": 0.1}, "amount applies to mode vary"),
                         ({"mode": "generate", "attributes": "Bass.loud=1"},
                          "unknown attribute"),
                         ({"mode": "song", "n": 4, "bars": 128}, "at most 64 \\(256 bars\\)"),
                         ({"mode": "song", "form": "\u00dfA", "bars": 8}, "letters only"),
                         ([{"mode": "generate", "n": 64}] * 5, "320 phrases; one call"),
                         ([{"mode": "song", "bars": 8, "output": "probabilities"},
                           {"mode": "generate", "output": "probabilities"}],
                          "different lengths")):
        with pytest.raises(MlflowException, match=message):
            m.predict(bad)


def test_evaluate_measures_the_modes_and_logs_them(tmp_path, lpd5_test_small):
    import mlflow
    from conftest import run_ms2dist

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    out = tmp_path / "eval"
    run_ms2dist(["evaluate", "--model", PRETRAINED, "--data", lpd5_test_small, "--out", out,
                 "--max-phrases", "16", "--modes", "--mode-samples", "8"],
                env={"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri}, cwd=tmp_path,
                timeout=600)
    result = json.loads((out / "modes.json").read_text())
    assert set(result) == {"song", "infill bars 3-4 of all tracks",
                           "infill bars 3-4 of Piano and Bass", "attributes", "vary"}
    assert result["song"]["rows"]["real songs"]["pairs"] > 100  # the 16 songs, in order
    assert all(result[k]["kept_bit_for_bit"] for k in result if k.startswith("infill"))
    f1 = [r["note_f1"] for r in result["vary"]["rows"].values()]
    assert result["vary"]["passed"] == all(a > b for a, b in zip(f1, f1[1:], strict=False))
    text = (out / "modes.md").read_text()
    assert "## attributes" in text and "Drums.density" in text and "| amount 1 |" in text
    client = mlflow.MlflowClient(tracking_uri=uri)
    run, = client.search_runs([client.get_experiment_by_name("ms2dist-evaluate").experiment_id])
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("mode")}
    vary = sorted(v for k, v in logged.items() if "vary" in k and k.endswith("note_f1"))
    assert vary == sorted(f1)
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"modes.md", "modes.json"} <= arts


def test_a_song_is_heard_for_its_whole_length(fluidsynth, tmp_path):  # noqa: F811
    """``--mode song --audio``: FluidSynth renders the one MIDI file of the song, as long as
    its bars (plus the release tail), with sound in its first and last phrase."""
    from test_audio import PAD_MAX_S, _rms, _samples

    from ms2dist.music.audio import TAIL_S

    out = tmp_path / "s"
    assert _sample(out, "--mode", "song", "--bars", 8, "--n", 1, "--audio", "wav",
                   "--no-png", "--tempo", 120) == 0
    x = _samples(out / "song_000.wav")
    seconds = 8 * 4 * 60 / 120
    assert seconds + TAIL_S <= len(x) / 44100 <= seconds + TAIL_S + PAD_MAX_S
    assert _rms(x, 0, seconds / 2) > 0.003 and _rms(x, seconds / 2, seconds) > 0.003
