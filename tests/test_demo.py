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
    code = ("from ms2dist.modelio import load_model\n"
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
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["model"] == "models:/midi-sandwich2@champion"


def test_demo_fails_loudly_on_a_bad_step(tmp_path: Path) -> None:
    proc = run_ms2dist(["demo", "--quick", "--out", tmp_path / "d", "--data", tmp_path / "none"],
                       check=False, timeout=300)
    assert proc.returncode != 0
    assert "demo step 'pack' failed" in (proc.stderr + proc.stdout)
