"""The shipped model ``pretrained:lpd5``: music right after install, no training, no network."""

from __future__ import annotations

import json
import os

import mido
import numpy as np
import pytest
import torch

from ms2dist import TRACKS
from ms2dist.inference.modelio import PRETRAINED_DIR, load_model
from tests.conftest import run_ms2dist

MODEL = PRETRAINED_DIR / "lpd5"
ENV = {"TQDM_DISABLE": "1"}


def test_shipped_files_and_card():
    files = sorted(p.name for p in MODEL.iterdir())
    assert {"config.json", "model.safetensors", "MODEL_CARD.md"} <= set(files)
    assert sum(p.stat().st_size for p in MODEL.iterdir()) <= 20 * 2**20
    card = (MODEL / "MODEL_CARD.md").read_text()
    for words in ("CC BY 4.0", "Hao-Wen Dong", "Colin Raffel", "scripts/train_pretrained.sh",
                  "lpd5_test_small", "Restore (MSR"):
        assert words in card, words
    meta = json.loads((MODEL / "config.json").read_text())["meta"]
    assert meta["stage"] == "stage2" and meta["trained_tracks"] == list(TRACKS)
    assert set(meta["calibration"]["thresholds"]) == set(TRACKS)


def test_sample_makes_music_in_every_track(tmp_path):
    out = tmp_path / "out"
    proc = run_ms2dist(["sample", "--model", "pretrained:lpd5", "--mode", "generate", "--n", "4",
                        "--out", out], env=ENV, timeout=120)
    mids = sorted(out.glob("generate_*.mid"))
    assert len(mids) == 4
    for m in mids:
        per_channel: dict[int, int] = {}
        for track in mido.MidiFile(str(m)).tracks:
            for msg in track:
                if msg.type == "note_on" and msg.velocity > 0:
                    per_channel[msg.channel] = per_channel.get(msg.channel, 0) + 1
        assert 9 in per_channel, f"{m.name}: no drums on channel 10"
        assert len(per_channel) == 5, (m.name, per_channel)
        assert f"{m.name}: Drums " in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["binarize"]["rule"] == "calibrated"
    assert all(min(e["notes_per_track"].values()) > 0 for e in summary["files"])


@pytest.mark.data
def test_restores_unseen_songs(lpd5_test_small):
    from ms2dist.dataset.load import split_phrases
    from ms2dist.inference.calibration import rule_for_model
    from ms2dist.inference.evaluation import evaluate_model, table_rows

    model = load_model("pretrained:lpd5")
    data = split_phrases(lpd5_test_small, 96)
    rows = table_rows(evaluate_model(model, data, seed=0, bs=48,
                                     rule=rule_for_model(model.ms2dist_meta)), data)
    f1 = [rows["MSR"][f"F1/{t}"] for t in TRACKS]
    assert np.mean(f1) > 0.45 and min(f1) > 0.3, f1


def test_registry_import_makes_champion(tmp_path):
    before = (MODEL / "config.json").read_bytes()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**ENV, "MLFLOW_TRACKING_URI": uri}
    proc = run_ms2dist(["registry", "import", "pretrained:lpd5"], env=env, cwd=tmp_path,
                       timeout=300)
    assert "models:/midi-sandwich2@champion now points to it" in proc.stdout
    assert (MODEL / "config.json").read_bytes() == before  # the package is never written
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        champion = load_model("models:/midi-sandwich2@champion")
    finally:
        if old is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    shipped = load_model("pretrained:lpd5")
    assert champion.ms2dist_meta["calibration"] == shipped.ms2dist_meta["calibration"]
    # The attribute vectors travel with the model through the registry.
    assert champion.ms2dist_attributes.keys() == shipped.ms2dist_attributes.keys()
    assert all(torch.equal(champion.ms2dist_attributes[k], v)
               for k, v in shipped.ms2dist_attributes.items())
    with torch.no_grad():
        assert torch.equal(champion.generate(2, seed=3), shipped.generate(2, seed=3))


def test_unknown_pretrained_name_is_a_clear_error(tmp_path):
    proc = run_ms2dist(["sample", "--model", "pretrained:nope", "--out", tmp_path / "x"],
                       check=False)
    assert proc.returncode == 2
    assert "no pretrained model 'nope'; shipped: lpd5" in proc.stderr
    assert "Traceback" not in proc.stderr
