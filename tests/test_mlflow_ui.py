"""The MLflow UI on a real training pipeline (issue 14): headless Chromium against a real
``mlflow ui`` over the sqlite store a tiny stage-1 -> stage-2 -> ``evaluate`` pipeline wrote.

What a person opening the UI must see: the experiment's training runs (not MLflow's GenAI
trace overview), its description, and under a stage-1 run's artifacts the pictures, MIDI and
audio of real samples. Screenshots are kept under ``screenshot_dir()``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ms2dist.music import audio
from tests.browser import browser_page, screenshot_dir
from tests.test_tracking import TINY, _clean_env, _free_port, _stop_server, cli, wait_until_up

pytestmark = [pytest.mark.data, pytest.mark.slow]


class Pipeline:
    db: Path
    uri: str
    cwd: Path
    eval_cwd: Path
    eval_out: Path
    stderr: str


@pytest.fixture(scope="module")
def pipeline(packed_small: Path, tmp_path_factory) -> Pipeline:
    """stage 1 -> stage 2 -> evaluate, one process each, into ``<base>/db/mlflow.db``; each
    command runs in a working directory of its own, away from the database."""
    p = Pipeline()
    base = tmp_path_factory.mktemp("ui-pipeline")
    p.db = base / "db" / "mlflow.db"
    p.db.parent.mkdir()
    p.uri = f"sqlite:///{p.db}"
    p.cwd, p.eval_cwd = base / "cwd", base / "eval-cwd"
    p.cwd.mkdir()
    p.eval_cwd.mkdir()
    env = _clean_env()
    # Stage 1 previews every 3 of its 6 steps too (on their own clock, not eval_every's).
    s1 = cli(["train", "stage1", *TINY, "--data", packed_small, "--out", base / "s1",
              "--tracking-uri", p.uri, "--tracking.sample_every=3"], env, p.cwd)
    s2 = cli(["train", "stage2", *TINY, "--data", packed_small, "--out", base / "s2",
              "--stage1", base / "s1" / "model", "--tracking-uri", p.uri], env, p.cwd)
    p.eval_out = base / "eval"
    ev = cli(["evaluate", "--model", base / "s2" / "model", "--data", packed_small / "test",
              "--out", p.eval_out, "--max-phrases", "16", "--tracking-uri", p.uri], env,
             p.eval_cwd)
    p.stderr = s1.stderr + s2.stderr + ev.stderr
    return p


@pytest.fixture(scope="module")
def ui(pipeline: Pipeline):
    """A real ``mlflow ui`` over the pipeline's store (as the README starts it)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(pipeline.db.parent.parent / "ui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                             pipeline.uri, "--host", "127.0.0.1", "--port", str(port)],
                            cwd=pipeline.cwd, env=_clean_env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_until_up(proc, base + "/health", pipeline.db.parent.parent / "ui.log", "mlflow ui")
    try:
        yield base
    finally:
        _stop_server(proc)


def _client(pipeline: Pipeline):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=pipeline.uri)


def _runs(pipeline: Pipeline) -> dict[str, object]:
    """The pipeline's runs by ``ms2dist.stage`` (one each)."""
    client = _client(pipeline)
    exp = client.get_experiment_by_name("ms2dist")
    runs = client.search_runs([exp.experiment_id])
    by_stage = {r.data.tags["ms2dist.stage"]: r for r in runs}
    assert sorted(by_stage) == ["evaluate", "stage1", "stage2"], [r.info.run_name for r in runs]
    return by_stage


def _files(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path):
        out.extend(_files(client, run_id, a.path) if a.is_dir else [a.path])
    return out


# ---- the store: tags, previews, Table I in the pipeline -------------------------------

def test_experiment_tagged_and_described_as_model_training(pipeline, tmp_path) -> None:
    from ms2dist.tracking.connect import EXPERIMENT_KIND_TAG, connect, get_or_create_experiment

    exp = _client(pipeline).get_experiment_by_name("ms2dist")
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert exp.tags["mlflow.note.content"].startswith("**MIDI-Sandwich2 training runs**")
    assert "workflowType=machine_learning" in exp.tags["mlflow.note.content"]
    assert exp.artifact_location == str(pipeline.db.parent / "mlruns")
    # An experiment made before (untagged) gets the tags; an edited description stays.
    uri = f"sqlite:///{tmp_path / 'old.db'}"
    mlflow = connect(uri)
    old = mlflow.create_experiment("ms2dist", tags={"mlflow.note.content": "ours"})
    got = get_or_create_experiment(mlflow, "ms2dist", uri)
    assert got.experiment_id == old
    tags = mlflow.MlflowClient(uri).get_experiment(old).tags
    assert tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert tags["mlflow.note.content"] == "ours"


def test_both_stages_log_samples_at_the_end(pipeline) -> None:
    client = _client(pipeline)
    runs = _runs(pipeline)
    expect = {"stage1": ("target", "recon", "prior"), "stage2": ("target", "recon", "generated")}
    for stage, prefixes in expect.items():
        files = [f for f in _files(client, runs[stage].info.run_id) if f.startswith("samples/")]
        steps = {f.split("/")[1] for f in files}
        last = "step_000000006" if stage == "stage1" else "step_000000004"
        assert steps == ({"step_000000003", last} if stage == "stage1" else {last}), files
        # Audio is logged with the samples wherever FluidSynth is (CI installs it).
        with_audio = audio.available() or os.environ.get("CI") == "true"
        exts = ("png", "mid", "npz", *(("flac",) if with_audio else ()))
        for step in steps:
            names = {f.rsplit("/", 1)[1] for f in files if f.split("/")[1] == step}
            for prefix in prefixes:
                for i in (0, 1):
                    for ext in exts:
                        assert f"{prefix}_{i:03d}.{ext}" in names, (stage, step, names)
    # The pictures are real samples: the stage-1 prior samples play notes.
    import numpy as np

    d = client.download_artifacts(runs["stage1"].info.run_id, "samples/step_000000006",
                                  str(pipeline.eval_out.parent / "dl"))
    with np.load(Path(d) / "prior_000.npz", allow_pickle=False) as prior:
        roll = prior["pianoroll"]
    assert roll.shape == (4, 48, 84, 5)
    assert int(roll.sum()) > 0


def test_table_i_in_the_pipeline_with_artifacts_beside_the_store(pipeline) -> None:
    client = _client(pipeline)
    runs = _runs(pipeline)
    ev, s2 = runs["evaluate"], runs["stage2"]
    pid = runs["stage1"].data.tags["ms2dist.pipeline_id"]
    assert ev.data.tags["ms2dist.pipeline_id"] == pid == s2.data.tags["ms2dist.pipeline_id"]
    assert ev.data.tags["ms2dist.model_run_id"] == s2.info.run_id
    assert ev.info.run_name == f"table-i-{pid}" and ev.info.status == "FINISHED"
    assert any(k.startswith("MSR/") for k in ev.data.metrics), sorted(ev.data.metrics)
    files = _files(client, ev.info.run_id)
    for f in ("table_i.md", "table_i.csv", "table_i.json"):
        assert f in files, files
    assert any(f.startswith("figures/") and f.endswith(".png") for f in files), files
    md = client.download_artifacts(ev.info.run_id, "table_i.md", str(pipeline.eval_out.parent /
                                                                      "dl-eval"))
    assert Path(md).read_text() == (pipeline.eval_out / "table_i.md").read_text()
    assert ev.info.artifact_uri.startswith(str(pipeline.db.parent / "mlruns"))
    # nothing of MLflow's under the working directories (no ./mlruns, no ./mlflow.db)
    assert sorted(p.name for p in pipeline.eval_cwd.iterdir()) == []
    assert sorted(p.name for p in pipeline.cwd.iterdir()) == []


# ---- the UI, in a browser -------------------------------------------------------------

def test_ui_link_opens_on_the_training_runs(pipeline, ui) -> None:
    from ms2dist.tracking.connect import ui_url

    runs = _runs(pipeline)
    exp_id = runs["stage1"].info.experiment_id
    pid = runs["stage1"].data.tags["ms2dist.pipeline_id"]
    # The link training printed is the one opened (for `mlflow ui`'s default address).
    printed = re.findall(rf"MLflow run stage1-{pid}: (\S+)", pipeline.stderr)
    assert printed == [ui_url(pipeline.uri, exp_id, runs["stage1"].info.run_id)]
    assert printed[0].startswith("http://127.0.0.1:5000/#/experiments/")
    t0 = time.time()
    with browser_page() as (page, _errors):
        page.goto(ui_url(ui, exp_id))
        page.get_by_role("link", name=f"stage1-{pid}").wait_for(timeout=45_000)
        for name in (f"stage2-{pid}", f"table-i-{pid}"):
            page.get_by_role("link", name=name).wait_for(timeout=10_000)
        page.get_by_text("MIDI-Sandwich2 training runs").first.wait_for(timeout=10_000)
        page.screenshot(path=str(screenshot_dir() / "mlflow_ui_training_runs.png"))
        assert "/runs" in page.url.split("?")[0], page.url
        body = page.inner_text("body")
        assert "No data available" not in body and "Token Usage" not in body, body[:2000]
        assert "3 matching runs" in body, body[:2000]
    assert time.time() - t0 < 60


def test_ui_shows_stage1_samples(pipeline, ui) -> None:
    from ms2dist.tracking.connect import ui_url

    s1 = _runs(pipeline)["stage1"]
    url = ui_url(ui, s1.info.experiment_id, s1.info.run_id).replace(
        "?", "/artifacts?", 1)
    t0 = time.time()
    with browser_page() as (page, _errors):
        page.goto(url)
        page.get_by_text("samples", exact=True).first.wait_for(timeout=45_000)
        page.get_by_text("samples", exact=True).first.click()
        page.get_by_text("step_000000006", exact=True).first.click()
        for name in ("recon_000.png", "recon_000.mid", "prior_000.png", "prior_001.mid",
                     "target_000.png"):
            page.get_by_text(name, exact=True).first.wait_for(timeout=10_000)
        page.get_by_text("prior_000.png", exact=True).first.click()
        # the picture itself is served and decoded (a blob image of the PNG's width)
        page.wait_for_function(
            "() => [...document.images].some(i => i.src.startsWith('blob:') && "
            "i.complete && i.naturalWidth >= 400)", timeout=15_000)
        assert page.get_by_text("samples/step_000000006/prior_000.png").count() >= 1
        page.screenshot(path=str(screenshot_dir() / "mlflow_ui_stage1_samples.png"))
    assert time.time() - t0 < 60
