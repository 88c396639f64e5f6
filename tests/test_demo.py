"""The main job end to end (``ms2dist demo``) on the embedded default data, in CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mido
import pytest

from tests.conftest import run_ms2dist

pytestmark = pytest.mark.slow


def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    clean = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "ms2dist", "demo", "--quick", "--out", str(out),
                           "--max-pieces", "48"], cwd=tmp_path, env={**clean, **env},
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    # every input piece is accounted for: packed or listed as rejected
    manifests = [json.loads((out / "shards" / s / "manifest.json").read_text())
                 for s in ("train", "val", "test")]
    rejects = (out / "shards" / "rejects.jsonl").read_text().splitlines()
    n_midi = len(list((out / "corpus_midi").glob("*.mid")))
    assert sum(m["n_songs"] for m in manifests) + len(rejects) == n_midi
    # MIDI files parse and hold notes
    mids = sorted((out / "samples").rglob("*.mid"))
    assert len(mids) >= 4
    for m in mids:
        mido.MidiFile(str(m))
    # the registered model loads in a fresh process, given only the tracking URI
    uri = f"sqlite:///{out / 'mlflow.db'}"
    code = ("from ms2dist.inference.modelio import load_model\n"
            "m = load_model('models:/midi-sandwich2@champion')\n"
            "x = m.generate(1, seed=0)\nassert tuple(x.shape) == (1, 4, 48, 84, 5)\n")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    p = subprocess.run([sys.executable, "-c", code], cwd=fresh,
                       env={**clean, "MLFLOW_TRACKING_URI": uri}, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    # Table I has every row
    table = (out / "eval" / "table_i.md").read_text()
    for row in ("Dataset", "MSG1", "MSG2", "MSR", "no-fusion"):
        assert f"| {row} |" in table
    # The verdict: a line per sample with its notes per track, and the corpus has no drums.
    assert "generate_003.mid: Drums 0, Piano " in proc.stdout
    assert "the training data never plays Drums" in proc.stdout
    music = json.loads((out / "demo_summary.json").read_text())["music"]
    assert "Drums" not in music["played_tracks"] and "Piano" in music["played_tracks"]
    assert len(music["notes_per_track"]) == 4
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["model"] == "models:/midi-sandwich2@champion"


def test_demo_fails_loudly_on_a_bad_step(tmp_path: Path) -> None:
    proc = run_ms2dist(["demo", "--quick", "--out", tmp_path / "d", "--data", tmp_path / "none"],
                       check=False, timeout=300)
    assert proc.returncode != 0
    assert "demo step 'pack' failed" in (proc.stderr + proc.stdout)


@pytest.mark.data
def test_music_check_fails_a_silent_model(packed_small: Path, tmp_path: Path) -> None:
    """The demo's verdict on a model that plays nothing: every generated sample is named,
    and the restore F1 floor fails; the same check passes the real data itself."""
    import torch

    from ms2dist import TRACKS
    from ms2dist.commands.demo import check_music
    from ms2dist.configs import get_preset
    from ms2dist.dataset.load import split_phrases
    from ms2dist.inference.calibration import fit_thresholds
    from ms2dist.inference.modelio import save_model
    from ms2dist.models import MidiSandwich2

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    model = MidiSandwich2(cfg).eval()
    with torch.no_grad():
        for b in model.bvaes:  # every probability underflows to exactly 0
            b.refine.head[1].bias.fill_(-1000.0)
    val = split_phrases(packed_small / "val", 64)
    cal = fit_thresholds(model, val, n_samples=8)
    assert all(t >= 1e-6 for t in cal["thresholds"].values())  # no cut below "never"
    silent = tmp_path / "silent"
    save_model(model, cfg, silent, meta={"stage": "stage2", "trained_tracks": list(TRACKS),
                                         "calibration": cal})
    out = tmp_path / "out"
    run_ms2dist(["sample", "--model", silent, "--n", "2", "--out", out / "generate",
                 "--no-png"], env={"OMP_NUM_THREADS": "1"})
    run_ms2dist(["evaluate", "--model", silent, "--data", packed_small / "test", "--out",
                 out / "eval", "--max-phrases", "8", "--no-mlflow"], env={"OMP_NUM_THREADS": "1"})
    verdict = check_music(out / "generate", packed_small / "train", out / "eval" / "table_i.json",
                          0.5)
    played = verdict["played_tracks"]
    assert played == list(TRACKS)  # the LPD-5 test songs play all five tracks
    assert len(verdict["problems"]) == 3, verdict["problems"]
    for i, problem in enumerate(verdict["problems"][:2]):
        assert problem == f"generate_{i:03d}.mid has no notes in {', '.join(played)}"
    assert "mean restore F1 0.000 is below 0.50" in verdict["problems"][2]
    assert any("generate_001.mid: Drums 0, Piano 0" in ln for ln in verdict["lines"])
    from ms2dist.commands.demo import enforce_verdict

    with pytest.raises(SystemExit, match="the model does not play music: generate_000.mid "
                                         "has no notes in Drums"):
        enforce_verdict(verdict)
    enforce_verdict(verdict, enforce=False)  # --quick: reported only

    # A model that plays: the real phrases themselves written as "samples" pass.
    import json

    from ms2dist.music.files import write_outputs

    full = val[val.any(axis=(1, 2, 3)).all(-1)][:2]  # phrases playing all five tracks
    assert len(full) == 2
    real = tmp_path / "real"
    write_outputs(full.astype("float32"), full, real, "generate", pictures=False)
    table = json.loads((out / "eval" / "table_i.json").read_text())
    table["rows"]["MSR"].update({f"F1/{t}": 0.7 for t in TRACKS})
    (tmp_path / "t.json").write_text(json.dumps(table))
    ok = check_music(real, packed_small / "train", tmp_path / "t.json", 0.5)
    assert ok["problems"] == [] and ok["restore_f1_mean"] == pytest.approx(0.7)
