"""``ms2dist sample`` where it used to fail: many samples (batches), stage-1 models,
damaged model files.

Real parts throughout: the shipped ``pretrained:lpd5`` model (tiny, CPU), the real CLI,
real files on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ms2dist import TRACKS
from ms2dist.inference.modelio import PRETRAINED_DIR, WEIGHTS_FILE, load_model

PRETRAINED = "pretrained:lpd5"


def _sample(out: Path, *args: str | Path, model: str | Path = PRETRAINED) -> int:
    from ms2dist.cli import main

    return main(["sample", "--model", str(model), "--out", str(out), "--device", "cpu",
                 *map(str, args)])


def _files(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(out.iterdir())
            if f.suffix in (".mid", ".npz", ".png")}


def _rolls(out: Path, prefix: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    notes, probs = [], []
    for i in range(n):
        with np.load(out / f"{prefix}_{i:03d}.npz") as z:
            notes.append(z["pianoroll"])
            probs.append(z["probabilities"])
    return np.stack(notes), np.stack(probs)


# ------------------------------------------------------------------ batches


def test_batches_give_the_files_of_one_batch(tmp_path):
    """n=7 in batches of 3 (3 + 3 + 1) = in one batch = one call of ``model.generate``."""
    for name, bs in (("small", 3), ("one", 64)):
        assert _sample(tmp_path / name, "--n", 7, "--seed", 11, "--batch-size", bs,
                       "--no-png") == 0
    small, one = _files(tmp_path / "small"), _files(tmp_path / "one")
    assert sorted(small) == [f"generate_{i:03d}.{s}" for i in range(7) for s in ("mid", "npz")]
    assert small == one  # byte for byte: pianorolls, probabilities, MIDI

    notes, probs = _rolls(tmp_path / "small", "generate", 7)
    assert notes.any(), "the shipped model should play notes"
    # ... and what the model itself gives for the same seed in one call (the old output).
    from ms2dist.inference.calibration import rule_for_model

    model = load_model(PRETRAINED)
    want = model.generate(7, seed=11)
    rule = rule_for_model(model.ms2dist_meta)
    np.testing.assert_array_equal(notes, rule.apply(want).numpy())
    np.testing.assert_array_equal(probs, want.numpy().astype(np.float16))

    for name in ("small", "one"):
        out = tmp_path / name
        text = (out / "generate_index.json").read_text()
        index = json.loads(text)
        assert text == json.dumps(index, indent=1)  # the format of one json.dumps
        assert [Path(e["npz"]).name for e in index] == [f"generate_{i:03d}.npz"
                                                         for i in range(7)]
        assert [e["notes_on"] for e in index] == [int(r.sum()) for r in notes]
        summary_text = (out / "summary.json").read_text()
        summary = json.loads(summary_text)
        assert summary_text == json.dumps(summary, indent=1)
        assert summary["n"] == 7 and summary["files"] == index
        assert not [f.name for f in out.iterdir() if f.name.startswith(".")]  # no leftovers


def test_later_noise_blocks_do_not_depend_on_the_batch_size(tmp_path, monkeypatch):
    """Past the first noise block too: blocks of 4, n=10, batches of 3 (crossing every block
    boundary) vs one batch; block 0 is ``model.generate(4)``, block 1 differs from it."""
    from ms2dist.commands import sample_plans

    monkeypatch.setattr(sample_plans, "NOISE_BLOCK", 4)
    for name, bs in (("small", 3), ("one", 64)):
        assert _sample(tmp_path / name, "--mode", "generate", "--n", 10, "--seed", 2,
                       "--batch-size", bs, "--no-png", "--threshold", "0.2") == 0
    assert _files(tmp_path / "small") == _files(tmp_path / "one")
    _, probs = _rolls(tmp_path / "one", "generate", 10)
    want = load_model(PRETRAINED).generate(4, seed=2).numpy().astype(np.float16)
    np.testing.assert_array_equal(probs[:4], want)
    assert not np.array_equal(probs[4:8], want)  # block 1 has its own seed


def test_restore_in_batches_matches_one_batch(tmp_path):
    """Modes with input write the input phrases beside, numbered the same way."""
    song = _write_song(tmp_path / "song.mid")
    for name, bs in (("small", 2), ("one", 64)):
        assert _sample(tmp_path / name, "--mode", "restore", "--input", song, "--n", 3,
                       "--batch-size", bs, "--no-png", "--seed", 4) == 0
    small = _files(tmp_path / "small")
    assert small == _files(tmp_path / "one")
    assert {n for n in small if n.startswith("input_")} == {
        f"input_{i:03d}.{s}" for i in range(3) for s in ("mid", "npz")}
    index = json.loads((tmp_path / "small" / "input_index.json").read_text())
    assert [Path(e["midi"]).name for e in index] == [f"input_{i:03d}.mid" for i in range(3)]


def test_an_interrupted_run_leaves_usable_files(tmp_path):
    """SIGINT mid-run: exit 130; every file named in the (partial) index is whole."""
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ms2dist", "sample", "--model", PRETRAINED, "--out", str(out),
         "--n", "2000", "--batch-size", "4", "--no-png", "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    part = out / ".generate_index.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if part.is_file() and len(part.read_text().splitlines()) >= 8:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    index = json.loads((out / "generate_index.json").read_text())
    assert summary["interrupted"] is True and summary["files"] == index
    assert 8 <= summary["n"] == len(index) < 2000
    for i, entry in enumerate(index):
        assert Path(entry["npz"]).name == f"generate_{i:03d}.npz"
        with np.load(entry["npz"]) as z:
            assert int(z["pianoroll"].sum()) == entry["notes_on"]
    assert not part.exists() and not list(out.glob(".*.part.*"))
    # The listening page shows the finished samples, no more.
    assert (out / "index.html").read_text().count('<article class="sample"') == summary["n"]


# ----------------------------------------------------------- stage-1 models


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory) -> Path:
    from ms2dist.configs import get_preset
    from ms2dist.inference.modelio import save_model
    from ms2dist.models import MidiSandwich2

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    out = tmp_path_factory.mktemp("s1") / "model"
    save_model(MidiSandwich2(cfg).eval(), cfg, out,
               meta={"stage": "stage1", "trained_tracks": list(TRACKS)})
    return out


@pytest.mark.parametrize("mode", ["generate", "restore", "interpolate", "complete"])
def test_stage1_model_is_refused_outside_no_fusion(stage1_dir, tmp_path, capsys, mode):
    args = ["--mode", mode] + ([] if mode == "generate" else
                               ["--input", _write_song(tmp_path / "song.mid")])
    assert _sample(tmp_path / "x", *args, "--threshold", "0.5", model=stage1_dir) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    assert "stage-1 model" in err and "--mode no-fusion" in err
    assert f"ms2dist train stage2 --stage1 {stage1_dir}" in err
    assert not (tmp_path / "x").exists()


def test_stage1_model_still_samples_no_fusion(stage1_dir, tmp_path):
    assert _sample(tmp_path / "nf", "--mode", "no-fusion", "--n", 2, "--no-png",
                   "--threshold", "0.5", model=stage1_dir) == 0
    assert json.loads((tmp_path / "nf" / "summary.json").read_text())["n"] == 2


# ---------------------------------------------------------- damaged models


def _damaged_copy(tmp_path: Path, name: str, keep: float) -> Path:
    d = tmp_path / "lpd5"
    shutil.copytree(PRETRAINED_DIR / "lpd5", d)
    f = d / name
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])
    return d


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0])
def test_truncated_weights_name_the_file(tmp_path, capsys, keep):
    d = _damaged_copy(tmp_path, WEIGHTS_FILE, keep)
    assert _sample(tmp_path / "x", "--n", 1, "--no-png", model=d) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("ms2dist sample: error: --model: ")
    assert str(d / WEIGHTS_FILE) in err and "truncated or corrupt" in err
    assert "re-download or re-export" in err
    if keep > 0:
        assert "incomplete metadata" in err  # safetensors' own cause, kept
    with pytest.raises(ValueError, match="model.safetensors is truncated or corrupt"):
        load_model(d)


def test_truncated_config_names_the_file(tmp_path, capsys):
    d = _damaged_copy(tmp_path, "config.json", 0.5)
    assert _sample(tmp_path / "x", "--n", 1, "--no-png", model=d) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(d / "config.json") in err
    assert "truncated or corrupt (not JSON" in err


def test_weights_of_another_model_are_named(tmp_path):
    from ms2dist.configs import get_preset
    from ms2dist.inference.modelio import save_model
    from ms2dist.models import MidiSandwich2

    cfg = get_preset("tiny")
    d = save_model(MidiSandwich2(cfg), cfg, tmp_path / "tiny")
    shutil.copy(PRETRAINED_DIR / "lpd5" / WEIGHTS_FILE, d / WEIGHTS_FILE)
    with pytest.raises(ValueError) as e:
        load_model(d)
    msg = str(e.value)
    assert "\n" not in msg and str(d / WEIGHTS_FILE) in msg and "size mismatch" in msg
    assert "different models" in msg


# ------------------------------------------------------------------ helpers


def _write_song(path: Path) -> Path:
    """A 4/4, 16-bar MIDI song (4 phrases) with piano and bass notes in every bar."""
    from ms2dist.music.midi import write_midi

    roll = np.zeros((16 * 48, 84, 5), dtype=bool)
    piano, bass = TRACKS.index("Piano"), TRACKS.index("Bass")
    for beat in range(16 * 4):
        roll[beat * 12:beat * 12 + 10, 36 + (beat * 5) % 12, piano] = True
        roll[beat * 12:beat * 12 + 6, 12 + beat % 3, bass] = True
    write_midi(roll, path, tempo_bpm=96.0)
    return path
