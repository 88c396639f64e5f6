"""MLflow tracking and the model registry, end to end (issue 5).

Every test runs against two stores: the embedded sqlite database and a real
``mlflow server`` started here on 127.0.0.1 (proxied artifacts). One module fixture per
store trains a tiny pipeline with 2 real ranks (``accelerate launch``) and the tests
inspect what it left in MLflow:

stage 1 with ``--max-steps 2`` -> stage 1 resumed to the end (registers ``ms2-bvae``)
-> stage 2 from ``models:/ms2-bvae@candidate`` (registers ``midi-sandwich2``).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO

CPU_CONFIG = REPO / "launch_configs" / "cpu_multiprocess.yaml"
TINY = ["--config", "tiny", "--train.vrae_steps=4", "--train.refine_steps=2",
        "--train.stage2_steps=4", "--train.eval_every=100", "--train.log_every=2",
        "--train.checkpoint_every=2", "--data.num_workers=0", "--train.eval_at_start=false",
        "--data.batch_size=8"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any MLFLOW_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **extra})
    return env


def cli(args: list, env: dict[str, str], cwd: Path, check: bool = True,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m ms2dist ARGS`` with exactly ``env`` (conftest's run_ms2dist merges this
    process's environment, where mlflow.set_tracking_uri has set MLFLOW_TRACKING_URI)."""
    proc = subprocess.run([sys.executable, "-m", "ms2dist", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ms2dist {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def launch2(args: list, env: dict[str, str], cwd: Path, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
           "--num_processes", "2", "-m", "ms2dist", *map(str, args)]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}")
    return proc


# ---- stores ---------------------------------------------------------------------------

class Store:
    def __init__(self, kind: str, uri: str, root: Path, artifacts: Path | None = None):
        self.kind, self.uri, self.root, self.artifacts = kind, uri, root, artifacts

    def client(self):
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(self.uri)
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def local_path(self, artifact_uri: str) -> Path:
        """Where an artifact URI of this store lies on disk (to tamper with it)."""
        if artifact_uri.startswith("mlflow-artifacts:"):
            rest = artifact_uri.split(":", 1)[1].lstrip("/")
            if "://" in artifact_uri:  # mlflow-artifacts://host:port/path
                rest = rest.split("/", 1)[1]
            return self.artifacts / rest
        if artifact_uri.startswith("file:"):
            return Path(artifact_uri.split(":", 1)[1].replace("//", "/", 1) if
                        artifact_uri.startswith("file://") else artifact_uri[5:])
        return Path(artifact_uri)


def _start_server(root: Path, port: int | None = None) -> tuple[subprocess.Popen, Store]:
    """A real ``mlflow server`` over ``root`` (sqlite + artifacts); ``port`` restarts one."""
    port = port or _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'srv.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        cwd=root, env=_clean_env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    wait_until_up(proc, uri + "/health", root / "server.log", "mlflow server")
    return proc, Store("server", uri, root, root / "artifacts")


def wait_until_up(proc: subprocess.Popen, url: str, log: Path, what: str,
                  timeout_s: float = 120) -> None:
    """Poll ``url`` until it answers 200; stop ``proc`` and raise with its log's tail if it
    dies or ``timeout_s`` passes."""
    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            _stop_server(proc)
            raise RuntimeError(f"{what} did not come up:\n{log.read_text()[-6000:]}")
        time.sleep(0.5)


def _stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module", params=["sqlite", "server"])
def store(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"store-{request.param}")
    if request.param == "sqlite":
        yield Store("sqlite", f"sqlite:///{root / 'mlflow.db'}", root)
        return
    proc, st = _start_server(root)
    try:
        yield st
    finally:
        _stop_server(proc)


# ---- one trained pipeline per store --------------------------------------------------

class Trained:
    s1: Path
    s2: Path
    cwd: Path
    first_run_ids: list[str]
    stage2_stderr: str


@pytest.fixture(scope="module")
def trained(store: Store, packed_small: Path, tmp_path_factory) -> Trained:
    t = Trained()
    base = tmp_path_factory.mktemp(f"trained-{store.kind}")
    t.cwd = base / "cwd"  # training's working directory: nothing of MLflow's may land here
    t.cwd.mkdir()
    t.s1, t.s2 = base / "s1", base / "s2"
    env = _clean_env()  # the store comes from --tracking-uri only
    s1 = ["train", "stage1", *TINY, "--data", packed_small, "--out", t.s1,
          "--tracking-uri", store.uri, "--expect-world-size", "2"]
    launch2([*s1, "--max-steps", "2"], env, t.cwd)
    assert not (t.s1 / "model").exists()
    client = store.client()
    t.first_run_ids = [r.info.run_id for r in _runs(client, "stage1")]
    launch2(s1, env, t.cwd)
    # Stage 2 from the registry. MLFLOW_TRACKING_URI as well: the stage-1 URI is resolved
    # before tracking starts (see test_stage2_from_registry_with_only_the_tracking_uri_flag).
    proc = launch2(["train", "stage2", *TINY, "--data", packed_small, "--out", t.s2,
                    "--stage1", "models:/ms2-bvae@candidate", "--tracking-uri", store.uri,
                    "--expect-world-size", "2"], _clean_env(MLFLOW_TRACKING_URI=store.uri),
                   t.cwd)
    t.stage2_stderr = proc.stderr
    return t


@pytest.fixture(scope="module")
def champion(trained: Trained, store: Store) -> subprocess.CompletedProcess:
    version = store.client().get_model_version_by_alias("midi-sandwich2", "candidate").version
    return cli(["registry", "promote", "midi-sandwich2", version], cwd=trained.cwd,
               env=_clean_env(MLFLOW_TRACKING_URI=store.uri))


def _runs(client, stage: str) -> list:
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, filter_string=f"tags.`ms2dist.stage` = '{stage}'")


def _local_metrics(out: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for k, v in row.items():
            if k != "step":
                series.setdefault(k.replace("@", "_"), []).append((row["step"], v))
    return series


def _snapshot(out: Path) -> dict:
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    return json.loads((ckpts[-1] / "snapshot.json").read_text())


def _artifact_files(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path):
        out.extend(_artifact_files(client, run_id, a.path) if a.is_dir else [a.path])
    return out


# ---- 1. one run per stage, with params, tags, metrics and artifacts -------------------

@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_one_run_per_stage_with_config_tags_metrics_artifacts(trained, store, packed_small,
                                                              stage) -> None:
    from ms2dist import __version__
    from ms2dist.dataset.manifest import manifest_sha
    from ms2dist.tracking.runs import flatten

    client = store.client()
    runs = _runs(client, stage)
    assert len(runs) == 1, [r.info.run_id for r in runs]  # not one per rank
    run = runs[0]
    out = trained.s1 if stage == "stage1" else trained.s2
    snap = _snapshot(out)
    assert run.info.status == "FINISHED"
    # params: the full resolved config (+ stage 2's calibrated thresholds, as in the model)
    params = dict(run.data.params)
    if stage == "stage2":
        from ms2dist.inference.modelio import read_model_config

        cal = read_model_config(out / "model")[1]["calibration"]
        logged = {k: params.pop(f"calibration.threshold.{k}") for k in cal["thresholds"]}
        assert logged == {k: str(round(v, 5)) for k, v in cal["thresholds"].items()}
    assert params == {k: str(v)[:500] for k, v in flatten(snap["config"]).items()}
    tags = run.data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    assert tags["ms2dist.version"] == __version__
    assert tags["ms2dist.git_commit"] == (head or "unknown")
    assert tags["ms2dist.world_size"] == "2"
    assert "MULTI_CPU" in tags["ms2dist.distributed_type"]
    assert tags["ms2dist.stage"] == stage
    assert tags["ms2dist.tracks"] == "Drums,Piano,Guitar,Bass,Strings"
    assert tags["ms2dist.data_manifest_sha256"] == manifest_sha(packed_small)
    # both stages of one model share the pipeline id; stage 2 names its stage-1 version
    (s1_run,) = _runs(client, "stage1")
    assert tags["ms2dist.pipeline_id"] == s1_run.data.tags["ms2dist.pipeline_id"]
    if stage == "stage2":
        assert tags["ms2dist.stage1_version"] == "ms2-bvae/1"
        assert tags["ms2dist.stage1_source"] == "models:/ms2-bvae@candidate"
    # metrics: at step = global step, exactly the numbers in <out>/metrics.jsonl
    local = _local_metrics(out)
    assert set(run.data.metrics) == set(local)
    last = 6 if stage == "stage1" else 4
    for key, series in local.items():
        hist = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert [s for s, _ in hist] == [s for s, _ in series], key
        np.testing.assert_allclose([v for _, v in hist], [v for _, v in series], rtol=1e-6,
                                   err_msg=key)
    assert [s for s, _ in local["train/loss"]] == list(range(2, last + 1, 2))
    # artifacts: the config and the data manifests
    files = _artifact_files(client, run.info.run_id)
    for f in ("config.yaml", "data/train/manifest.json", "data/val/manifest.json",
              "data/test/manifest.json"):
        assert f in files, files
    # both stages end with pictures and MIDI of real samples (stage 1: BVAE reconstructions
    # and prior samples; stage 2: restores and generations), next to the phrases themselves
    kinds = ("recon", "prior") if stage == "stage1" else ("recon", "generated")
    for kind in ("target", *kinds):
        for ext in ("png", "mid"):
            assert f"samples/step_{last:09d}/{kind}_000.{ext}" in files, files
    local_cfg = Path(client.download_artifacts(run.info.run_id, "config.yaml",
                                               str(out.parent / f"dl-{stage}")))
    assert flatten(yaml.safe_load(local_cfg.read_text())) == flatten(snap["config"])
    man = Path(client.download_artifacts(run.info.run_id, "data/train/manifest.json",
                                         str(out.parent / f"dl-{stage}")))
    assert man.read_bytes() == (packed_small / "train" / "manifest.json").read_bytes()
    # nothing of MLflow's in the job's working directory (no stray ./mlruns, ./mlflow.db)
    assert sorted(p.name for p in trained.cwd.iterdir()) == []


# ---- 2. resume continues the same run ------------------------------------------------

def test_resume_reattaches_to_the_same_run(trained, store) -> None:
    client = store.client()
    runs = _runs(client, "stage1")
    assert len(trained.first_run_ids) == 1 and len(runs) == 1
    run = runs[0]
    assert run.info.run_id == trained.first_run_ids[0]
    ckpts = sorted((trained.s1 / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts][-1] == "step-000000006"
    for c in ckpts:  # the first job's and the resumed job's checkpoints
        assert json.loads((c / "snapshot.json").read_text())["mlflow_run_id"] == run.info.run_id
    assert run.data.tags.get("ms2dist.resumed") == "true"
    for key in ("train/loss", "val/f1_mean"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)  # nothing logged twice
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) \
        == [2, 4, 6]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/f1_mean")) \
        == [2, 6]


# ---- 3. registry: candidate on training, promote -> champion, list -------------------

def test_training_registers_candidates_and_promote_moves_champion(trained, store,
                                                                  champion) -> None:
    from ms2dist.tracking.registry import list_models

    client = store.client()
    s1_run, s2_run = _runs(client, "stage1")[0], _runs(client, "stage2")[0]
    mv1 = client.get_model_version("ms2-bvae", "1")
    mv2 = client.get_model_version("midi-sandwich2", "1")
    assert mv1.run_id == s1_run.info.run_id and mv2.run_id == s2_run.info.run_id
    assert mv1.tags["ms2dist.stage"] == "stage1" and mv2.tags["ms2dist.stage"] == "stage2"
    assert mv2.tags["ms2-bvae.version"] == "1"  # models:/ms2-bvae/1 is what it stands on
    assert "midi-sandwich2 version 1 is now @champion" in champion.stdout
    aliases = {n: {a: str(v) for a, v in client.get_registered_model(n).aliases.items()}
               for n in ("ms2-bvae", "midi-sandwich2")}
    assert aliases == {"ms2-bvae": {"candidate": "1"},
                       "midi-sandwich2": {"candidate": "1", "champion": "1"}}
    env = _clean_env(MLFLOW_TRACKING_URI=store.uri)
    listing = cli(["registry", "list"], cwd=trained.cwd, env=env).stdout
    row = [ln for ln in listing.splitlines() if ln.startswith("midi-sandwich2")]
    assert len(row) == 1 and "candidate,champion" in row[0], listing
    rows = list_models(store.uri)
    assert [(r["name"], r["version"], r["aliases"]) for r in rows] == [
        ("midi-sandwich2", "1", ["candidate", "champion"]), ("ms2-bvae", "1", ["candidate"])]
    # promoting a version that does not exist: one clear line, no traceback
    bad = cli(["registry", "promote", "midi-sandwich2", "99", "--tracking-uri", store.uri],
              cwd=trained.cwd, env=_clean_env(), check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert "midi-sandwich2" in bad.stderr and "99" in bad.stderr, bad.stderr


# ---- 6. pickles planted next to the registered model never run -------------------------

class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _logged_model_dir(store: Store, mv) -> Path:
    assert mv.source.startswith("models:/"), mv.source
    model_id = mv.source[len("models:/"):].split("/")[0]
    return store.local_path(store.client().get_logged_model(model_id).artifact_location)


@pytest.fixture(scope="module")
def planted(trained, store, champion, tmp_path_factory) -> Path:
    """Pickles whose loading would create a marker file, planted beside the champion
    (in its logged-model directory and in its run's artifacts); nothing else is edited."""
    client = store.client()
    mv = client.get_model_version_by_alias("midi-sandwich2", "champion")
    tmp = tmp_path_factory.mktemp(f"plant-{store.kind}")
    marker = tmp / "PWNED"
    evil = pickle.dumps(_Evil(marker))
    art = _logged_model_dir(store, mv)
    assert (art / "MLmodel").is_file(), art
    for rel in ("python_model.pkl", "model.pkl", "data/model/model.pkl",
                "data/model/python_model.pkl", "data/python_model.pkl"):
        (art / rel).write_bytes(evil)
    pkl = tmp / "python_model.pkl"
    pkl.write_bytes(evil)
    client.log_artifact(mv.run_id, str(pkl), "ms2dist-model")
    client.log_artifact(mv.run_id, str(pkl), "ms2dist-model/data/model")
    return marker


def test_mlmodel_uses_loader_module_and_the_plant_is_live(store, planted, tmp_path) -> None:
    mv = store.client().get_model_version_by_alias("midi-sandwich2", "champion")
    art = _logged_model_dir(store, mv)
    mlmodel = yaml.safe_load((art / "MLmodel").read_text())
    assert set(mlmodel["flavors"]) == {"python_function"}
    pf = mlmodel["flavors"]["python_function"]
    assert pf["loader_module"] == "ms2dist.pyfunc"
    assert "python_model" not in pf and "cloudpickle_version" not in pf
    assert "cloudpickle" not in (art / "requirements.txt").read_text()
    # the plant is a real exploit: unpickling the planted bytes does create the marker
    pickle.loads((art / "python_model.pkl").read_bytes())
    assert planted.exists()
    planted.unlink()


# ---- 4. load in a fresh process and directory (with the plant in place) ---------------

LOAD_SCRIPT = """
import sys, numpy as np, mlflow.pyfunc
from ms2dist.inference.modelio import load_model
uri = sys.argv[1]
pf = mlflow.pyfunc.load_model(uri)
out = pf.predict({"mode": "generate", "n": 2, "seed": 0, "output": "probabilities"})
np.save("pyfunc.npy", out)
from ms2dist.inference.requests import notes_to_roll
notes = pf.predict({"mode": "generate", "n": 2, "seed": 0})  # default output: notes
np.save("pyfunc_notes.npy", np.stack([notes_to_roll(a) for a in notes]))
np.save("modelio.npy", load_model(uri).generate(2, seed=0).numpy())
"""


def test_load_champion_in_fresh_process(trained, store, planted, tmp_path) -> None:
    import torch

    from ms2dist.inference.modelio import load_model

    uri = "models:/midi-sandwich2@champion"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    env = _clean_env(MLFLOW_TRACKING_URI=store.uri)  # all the fresh process is told
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, uri], cwd=fresh, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    with torch.no_grad():
        expected = load_model(trained.s2 / "model").generate(2, seed=0).numpy()
    assert expected.shape == (2, 4, 48, 84, 5)
    for name in ("pyfunc.npy", "modelio.npy"):
        np.testing.assert_allclose(np.load(fresh / name), expected, rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    # By default predict plays the notes the model's calibrated thresholds select.
    from ms2dist.inference.calibration import rule_for_model

    model = load_model(trained.s2 / "model")
    assert model.ms2dist_meta["calibration"]["thresholds"]
    notes = rule_for_model(model.ms2dist_meta).apply(torch.as_tensor(expected)).numpy()
    np.testing.assert_array_equal(np.load(fresh / "pyfunc_notes.npy"), notes)
    out = tmp_path / "samples"
    cli(["sample", "--model", uri, "--mode", "generate", "--n", "2", "--seed", "0", "--out",
         out, "--no-png"], cwd=fresh, env=env)
    assert len(list(out.rglob("*.mid"))) == 2
    assert not planted.exists(), "loading the model executed a planted pickle"
    assert sorted(p.name for p in fresh.iterdir()) == ["modelio.npy", "pyfunc.npy",
                                                       "pyfunc_notes.npy"]


# ---- 5. an unreachable server fails before any step ------------------------------------

def test_unreachable_server_fails_before_training(packed_small, tmp_path) -> None:
    uri = f"http://127.0.0.1:{_free_port()}"  # bound and released: nothing listens
    out = tmp_path / "down"
    t0 = time.time()
    proc = launch2(["train", "stage1", *TINY, "--data", packed_small, "--out", out,
                    "--tracking-uri", uri], _clean_env(), tmp_path, check=False)
    assert proc.returncode != 0
    # whichever rank torchrun reports, its one-line error names the URI and the cause
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ms2dist train stage1: e")]
    assert errors and all(uri in ln and "unreachable" in ln for ln in errors), proc.stderr
    assert not (out / "checkpoints").exists() and not (out / "model").exists()
    assert not (out / "metrics.jsonl").exists()  # not one step, not one evaluation
    assert time.time() - t0 < 120


def test_stage2_from_registry_with_only_the_tracking_uri_flag(trained, store, packed_small,
                                                              tmp_path) -> None:
    """``--stage1 models:/..`` resolves against ``--tracking-uri`` (no env variable)."""
    if store.kind != "sqlite":
        pytest.skip("one store shows it")
    proc = cli(["train", "stage2", *TINY, "--data", packed_small, "--out", tmp_path / "s2",
                "--stage1", "models:/ms2-bvae@candidate", "--tracking-uri", store.uri,
                "--max-steps", "1", "--tracking.enabled=false"], cwd=tmp_path,
               env=_clean_env(), check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "s2" / "checkpoints").is_dir()
    assert not (tmp_path / "mlflow.db").exists()  # the default store was never touched
