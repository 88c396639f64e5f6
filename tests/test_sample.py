"""``ms2dist sample`` end to end: every mode writes MIDI + npz + PNG that agree.

The model is ``tiny`` trained for a few seconds on a handful of real phrases (so it
plays notes); it is built once per session by :func:`tiny_model_dir`, which
``tests/test_evaluate.py`` reuses.
"""

from __future__ import annotations

import json
from pathlib import Path

import mido
import numpy as np
import pytest
import torch
from conftest import run_ms2dist

from ms2dist import TRACKS
from ms2dist.music.midi import DRUM_CHANNEL, PROGRAMS, read_midi

pytestmark = pytest.mark.data

# Threads: the CI machine is small and shared; one thread per process avoids oversubscription.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
THRESHOLD = "0.3"  # a few seconds of training leave the note probabilities low
PHRASE = (4, 48, 84, 5)

_MODELS: dict[bool, Path] = {}


def _songs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.npz"))


def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, lpd5_test_small: Path,
                   shared: bool = False) -> Path:
    """A saved ``tiny`` model (``shared_bvae`` if ``shared``), trained briefly; cached."""
    if shared in _MODELS:
        return _MODELS[shared]
    from ms2dist.configs import get_preset
    from ms2dist.inference.modelio import save_model
    from ms2dist.models import MidiSandwich2
    from ms2dist.models.losses import stage1_loss, stage2_loss
    from ms2dist.songs.files import file_phrases

    x = np.concatenate([file_phrases(f)[0][:2] for f in _songs(lpd5_test_small)[:4]])
    x = torch.as_tensor(x, dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(1 if shared else 0)
        cfg = get_preset("tiny")
        cfg.shared_bvae = shared
        model = MidiSandwich2(cfg)
        opt = torch.optim.Adam(model.bvaes.parameters(), lr=1e-2)
        for _ in range(60):
            loss = sum(stage1_loss(model, x, t, phase="vrae", kl_weight=1e-3)[0]
                       for t in range(len(TRACKS)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        opt = torch.optim.Adam(model.mfg.parameters(), lr=3e-3)
        for _ in range(40):
            loss, _ = stage2_loss(model, x, kl_weight=1e-3)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("model") / ("shared" if shared else "tiny")
    save_model(model.eval(), cfg, out, meta={"stage": "stage2", "trained_tracks": list(TRACKS)})
    _MODELS[shared] = out
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, lpd5_test_small) -> Path:
    return tiny_model_dir(tmp_path_factory, lpd5_test_small)


@pytest.fixture(scope="module")
def songs(lpd5_test_small) -> list[Path]:
    return _songs(lpd5_test_small)[:2]


# ------------------------------------------------------------------------ checks


def _bpm_of(path: Path) -> float:
    from ms2dist.songs.files import load_song

    return load_song(path).bpm


def check_midi(path: Path, bpm: float) -> None:
    """GM programs, drums on channel 10, 4/4 and one tempo; pretty_midi agrees."""
    import pretty_midi

    mid = mido.MidiFile(str(path))
    msgs = [m for t in mid.tracks for m in t]
    # 4/4 at tick 0, repeated at the phrase's end (it pins pretty_midi's last beat there).
    sigs = [(m.numerator, m.denominator) for m in msgs if m.type == "time_signature"]
    assert sigs and set(sigs) == {(4, 4)} and mid.tracks[0][0].time == 0, path
    tempi = [m.tempo for m in msgs if m.type == "set_tempo"]
    assert len(tempi) == 1 and mido.tempo2bpm(tempi[0]) == pytest.approx(bpm, rel=1e-5), path
    tracks = {t.name: t for t in mid.tracks[1:]}
    assert list(tracks) == list(TRACKS)
    for name, trk in tracks.items():
        prog = [m for m in trk if m.type == "program_change"]
        assert len(prog) == 1, name
        channels = {m.channel for m in trk if m.type in ("note_on", "note_off")} | {prog[0].channel}
        if name == "Drums":
            assert channels == {DRUM_CHANNEL}
        else:
            assert prog[0].program == PROGRAMS[name] and DRUM_CHANNEL not in channels
            assert len(channels) == 1
    assert PROGRAMS == {"Drums": 0, "Piano": 0, "Guitar": 24, "Bass": 32, "Strings": 48}

    pm = pretty_midi.PrettyMIDI(str(path))
    assert {(s.numerator, s.denominator) for s in pm.time_signature_changes} == {(4, 4)}
    assert pm.time_signature_changes[0].time == 0
    assert pm.get_tempo_changes()[1] == pytest.approx([bpm], rel=1e-5)
    for inst in pm.instruments:
        assert inst.is_drum == (inst.name == "Drums")
        if not inst.is_drum:
            assert inst.program == PROGRAMS[inst.name]


def check_outputs(out: Path, mode: str, n: int, bpm: float) -> list[np.ndarray]:
    """summary.json, and the files of every sample (see :func:`check_files`)."""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == mode and summary["n"] == n == len(summary["files"])
    assert summary["tempo_bpm"] == pytest.approx(bpm)
    assert summary["files"] == json.loads((out / f"{mode}_index.json").read_text())
    page = (out / "index.html").read_text()  # the listening page: every sample, no audio
    assert all(f'id="{Path(e["midi"]).stem}"' in page for e in summary["files"])
    assert "<audio" not in page and f"<th>mode</th><td>{mode}</td>" in page
    return check_files(out, mode, summary["files"], bpm)


def check_files(out: Path, prefix: str, index: list[dict], bpm: float) -> list[np.ndarray]:
    """Every sample has .mid/.npz/.png; MIDI reads back as the npz's pianoroll."""
    rolls = []
    for i, entry in enumerate(index):
        stem = out / f"{prefix}_{i:03d}"
        for suffix in (".mid", ".npz", ".png"):
            f = stem.with_suffix(suffix)
            assert f.is_file() and f.stat().st_size > 0, f
            assert entry[{".mid": "midi"}.get(suffix, suffix[1:])] == str(f)
        assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with np.load(stem.with_suffix(".npz")) as z:
            roll, probs = z["pianoroll"], z["probabilities"]
            assert list(z["tracks"]) == list(TRACKS)
            assert int(z["lowest_pitch"]) == 24 and int(z["steps_per_beat"]) == 12
        assert roll.dtype == np.bool_ and roll.shape == PHRASE and probs.shape == PHRASE
        assert entry["notes_on"] == int(roll.sum())
        check_midi(stem.with_suffix(".mid"), bpm)
        back = read_midi(stem.with_suffix(".mid"))  # length from the file's end-of-track
        np.testing.assert_array_equal(back, roll.reshape(-1, 84, 5), err_msg=str(stem))
        rolls.append(roll)
    return rolls


def _sample(model_dir: Path, out: Path, *args: str | Path) -> Path:
    run_ms2dist(["sample", "--model", model_dir, "--out", out, "--threshold", THRESHOLD,
                 *args], env=ENV, timeout=300)
    return out


def _sample_inproc(model_dir: Path, out: Path, *args: str | Path) -> int:
    from ms2dist.cli import main

    rule = [] if "--binarize" in args else ["--threshold", THRESHOLD]
    return main(["sample", "--model", str(model_dir), "--out", str(out), *rule,
                 "--device", "cpu", *map(str, args)])


# ------------------------------------------------------------------------- modes


def test_generate(model_dir, tmp_path):
    out = _sample(model_dir, tmp_path / "g", "--mode", "generate", "--n", "2", "--seed", "3")
    rolls = check_outputs(out, "generate", 2, 100.0)
    assert sum(int(r.sum()) for r in rolls) > 0, "the test model should play some notes"


def test_no_fusion(model_dir, tmp_path):
    out = _sample(model_dir, tmp_path / "nf", "--mode", "no-fusion", "--n", "2")
    check_outputs(out, "no-fusion", 2, 100.0)


def test_restore_keeps_the_input_tempo(model_dir, songs, tmp_path):
    from ms2dist.songs.files import file_phrases

    out = _sample(model_dir, tmp_path / "r", "--mode", "restore", "--input", songs[0],
                  "--n", "2")
    bpm = _bpm_of(songs[0])
    assert bpm != pytest.approx(100.0)  # so the check below can tell input tempo from default
    rolls = check_outputs(out, "restore", 2, bpm)
    assert sum(int(r.sum()) for r in rolls) > 0
    # The input phrases are written beside, the same way.
    inputs = check_files(out, "input", json.loads((out / "input_index.json").read_text()), bpm)
    np.testing.assert_array_equal(np.stack(inputs), file_phrases(songs[0])[0][:2])


def test_a_written_sample_is_an_input_again(model_dir, tmp_path):
    """Our .npz (a pypianoroll file at 12 steps per beat) and .mid read back as songs: the
    phrase cut from them is the phrase written, bit for bit, at the sample's tempo."""
    from ms2dist.songs.files import file_phrases

    g = _sample(model_dir, tmp_path / "g", "--mode", "generate", "--n", "1", "--seed", "3",
                "--tempo", "123")
    with np.load(g / "generate_000.npz") as z:
        written = z["pianoroll"]
    assert written.any()
    for suffix in (".npz", ".mid"):
        phrases, bpm = file_phrases(g / f"generate_000{suffix}")
        assert bpm == pytest.approx(123.0, rel=1e-4), suffix
        np.testing.assert_array_equal(phrases[0], written, err_msg=suffix)
    out = _sample(model_dir, tmp_path / "r", "--mode", "restore", "--input",
                  g / "generate_000.npz")
    with np.load(out / "input_000.npz") as z:
        np.testing.assert_array_equal(z["pianoroll"], written)


def test_interpolate_two_songs(model_dir, songs, tmp_path):
    out = _sample(model_dir, tmp_path / "i", "--mode", "interpolate", "--input", *songs,
                  "--n", "3")
    check_outputs(out, "interpolate", 3, _bpm_of(songs[0]))


def test_complete_keeps_the_given_track_bit_for_bit(model_dir, songs, tmp_path):
    from ms2dist.songs.files import file_phrases

    out = _sample(model_dir, tmp_path / "c", "--mode", "complete", "--input", songs[0],
                  "--keep", "Piano", "--n", "2", "--seed", "1")
    rolls = check_outputs(out, "complete", 2, _bpm_of(songs[0]))
    phrases = file_phrases(songs[0])[0][:2]
    piano = TRACKS.index("Piano")
    assert phrases[..., piano].any()
    for i, roll in enumerate(rolls):
        np.testing.assert_array_equal(roll[..., piano], phrases[i][..., piano])
        with np.load(out / f"input_{i:03d}.npz") as z:
            np.testing.assert_array_equal(z["pianoroll"], phrases[i])
    assert json.loads((out / "summary.json").read_text())["keep"] == ["Piano"]


def test_same_seed_same_files_other_seed_other_music(model_dir, tmp_path):
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        assert _sample_inproc(model_dir, tmp_path / name, "--mode", "generate", "--n", "2",
                              "--seed", seed) == 0
        runs[name] = {f.name: f.read_bytes() for f in sorted((tmp_path / name).iterdir())
                      if f.suffix in (".mid", ".npz", ".png")}
    assert len(runs["a"]) == 6 and runs["a"] == runs["b"]  # byte-identical, PNGs included

    def rolls(name: str) -> np.ndarray:
        return np.stack([np.load(tmp_path / name / f"generate_{i:03d}.npz")["pianoroll"]
                         for i in range(2)])

    assert rolls("a").any() and not np.array_equal(rolls("a"), rolls("c"))


def test_bernoulli_binarize_is_seeded(model_dir, tmp_path):
    for name in ("a", "b"):
        assert _sample_inproc(model_dir, tmp_path / name, "--mode", "generate", "--n", "1",
                              "--binarize", "bernoulli", "--no-png") == 0
    a, b = (np.load(tmp_path / n / "generate_000.npz")["pianoroll"] for n in ("a", "b"))
    np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "a" / "generate_000.png").exists()


# ------------------------------------------------------------------------ errors


def test_restore_without_input_is_a_clear_error(model_dir, tmp_path, capsys):
    assert _sample_inproc(model_dir, tmp_path / "x", "--mode", "restore") == 2
    err = capsys.readouterr().err
    assert "--mode restore needs --input" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_unknown_keep_track_is_a_clear_error(model_dir, songs, tmp_path, capsys):
    assert _sample_inproc(model_dir, tmp_path / "x", "--mode", "complete", "--input",
                          songs[0], "--keep", "Piano,Flute") == 2
    err = capsys.readouterr().err
    assert "--keep" in err and "Flute" in err and "Strings" in err


def _write_3_4_midi(path: Path) -> Path:
    mid = mido.MidiFile(ticks_per_beat=480)
    trk = mido.MidiTrack()
    trk.append(mido.MetaMessage("time_signature", numerator=3, denominator=4))
    trk.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(90)))
    for bar in range(12):
        trk.append(mido.Message("note_on", note=60 + bar % 5, velocity=90, time=0))
        trk.append(mido.Message("note_off", note=60 + bar % 5, velocity=0, time=3 * 480))
    mid.tracks.append(trk)
    mid.save(str(path))
    return path


def test_non_4_4_midi_input_names_the_file(model_dir, tmp_path, capsys):
    bad = _write_3_4_midi(tmp_path / "waltz.mid")
    assert _sample_inproc(model_dir, tmp_path / "x", "--mode", "restore", "--input", bad) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "4/4" in err and "3/4" in err and "Traceback" not in err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert _sample_inproc(tmp_path / "nope", tmp_path / "x", "--mode", "generate") == 2
    err = capsys.readouterr().err
    assert "--model" in err and str(tmp_path / "nope") in err
