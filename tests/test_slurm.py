"""The REAL slurm/*.sbatch scripts and slurm/pipeline.sh on a REAL local SLURM cluster
(slurm/local-cluster.sh: Debian's slurm-wlm + munge), running the real trainer with
launch_configs/cpu_multiprocess.yaml and the tiny preset. Nothing is mocked.

One pipeline is submitted (module fixture) and checked piece by piece:

    pipeline.sh: stage-1 array (5 tasks, one per track) -> assemble -> stage 2 (2 CPU
    processes, preempted once with `scancel --signal=USR1 --batch`, requeued, resumed)
    -> register (alias) -> sample from models:/midi-sandwich2@<alias>

then stage 2 once more with `sbatch -N2` on a second, two-node local cluster (two slurmd
on this host, one process each: one world of 2 over 127.0.0.1).

Cluster: started here when it is not up (`local-cluster.sh start` is idempotent; CI also
starts it before pytest). Without root/apt the module skips locally and FAILS under
CI=true. Accounting is off on the test cluster (no sacct): jobs are followed with
`scontrol show job` (finished jobs stay visible for MinJobAge=300 s) and `squeue`.
Measured: 128-154 s for the module on 2 cores (load 1-4), most of it the pipeline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ms2dist import TRACKS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "slurm" / "local-cluster.sh"
IN_CI = os.environ.get("CI", "").lower() == "true"
ALIAS = "slurmtest"

# Sizes: every job is dominated by interpreter start-up + MLflow, not by steps.
STAGE1_ARGS = ("--train.vrae_steps=6 --train.refine_steps=2 --train.eval_every=1000 "
               "--train.log_every=2 --train.checkpoint_every=4 --data.num_workers=0 "
               "--train.eval_at_start=false")
STAGE2_STEPS = 1500  # ~25 s at ~70 steps/s with 2 ranks: long enough to preempt mid-run
STAGE2_ARGS = (f"--train.stage2_steps={STAGE2_STEPS} --train.eval_every=100000 "
               "--train.log_every=10 --train.checkpoint_every=500 --data.num_workers=0 "
               "--train.eval_at_start=false")
MN_STEPS = 40
PIPELINE_TIMEOUT = 420  # seconds for the whole chain (normally ~3.5 min)


def _unavailable(msg: str) -> None:
    if IN_CI:
        pytest.fail(f"SLURM integration tests cannot run under CI=true: {msg}")
    pytest.skip(msg)


def _base_env() -> dict[str, str]:
    """The submitting environment (sbatch --export=ALL copies it into the jobs)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "ACCELERATE_", "MS2DIST_"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
              "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    # The interpreter running pytest (CI: .venv) and its accelerate, not whatever is on PATH.
    env["MS2DIST_PYTHON"] = sys.executable
    acc = Path(sys.executable).with_name("accelerate")
    if acc.exists():
        env["MS2DIST_ACCELERATE"] = str(acc)
    env["MS2DIST_REPO"] = str(REPO)
    env["MS2DIST_LAUNCH_CONFIG_FILE"] = "launch_configs/cpu_multiprocess.yaml"
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cluster_responding(conf: Path) -> bool:
    if not conf.is_file():
        return False
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True,
                           text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = r.stdout.split()
    return r.returncode == 0 and bool(states) and all(
        s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states)


def _start_cluster(env_extra: dict[str, str], timeout: int = 240) -> None:
    if shutil.which("slurmctld") is None and os.geteuid() != 0:
        _unavailable("SLURM is not installed and installing it needs root")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        _unavailable("SLURM is not installed and there is no apt-get")
    try:
        r = subprocess.run(["bash", str(CLUSTER), "start"], env={**os.environ, **env_extra},
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        _unavailable(f"local-cluster.sh start took more than {timeout} s")
    if r.returncode != 0:
        _unavailable(f"local-cluster.sh start failed:\n{r.stderr[-3000:]}")


@pytest.fixture(scope="module")
def slurm_conf() -> Path:
    """SLURM_CONF of the (single-node) local cluster, started if it is not up."""
    d = Path(os.environ.get("MS2DIST_SLURM_DIR", "/tmp/ms2dist-slurm"))
    conf = d / "etc" / "slurm.conf"
    if not _cluster_responding(conf):
        _start_cluster({})
    if not _cluster_responding(conf):
        _unavailable(f"the local cluster ({conf}) does not answer after start")
    return conf


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _free_cluster_ports() -> int:
    """Base port B for a two-node cluster: slurmctld B, slurmd B+11 and B+12 all free
    (local-cluster.sh: node i listens on SlurmdPort + 10 + i, SlurmdPort = B + 1)."""
    for base in range(6917, 7917, 20):
        if all(_port_free(base + d) for d in (0, 1, 11, 12)):
            return base
    _unavailable("no free ports for a second local cluster in 6917-7917")
    raise AssertionError  # unreachable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- job helpers --------------------------------------------------------------------
def _slurm(conf: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env={**os.environ, "SLURM_CONF": str(conf)},
                          capture_output=True, text=True, timeout=timeout)


def job_info(conf: Path, job: str) -> dict[str, str]:
    """`scontrol show job -o` as a dict ({} once the job is forgotten)."""
    r = _slurm(conf, "scontrol", "show", "job", "-o", job)
    if r.returncode != 0 or not r.stdout.strip():
        return {}
    line = r.stdout.strip().splitlines()[0]
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def array_states(conf: Path, job: str) -> list[dict[str, str]]:
    r = _slurm(conf, "scontrol", "show", "job", "-o", job)
    return [dict(kv.split("=", 1) for kv in ln.split() if "=" in kv)
            for ln in r.stdout.strip().splitlines() if ln.strip()]


DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
        "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def wait_jobs(conf: Path, jobs: list[str], deadline: float, logs: Path | None = None) -> None:
    """Until every job (and array task) has finished; fail with the logs on timeout."""
    while True:
        states = [s.get("JobState", "?") for j in jobs for s in array_states(conf, j)]
        if states and all(s in DONE for s in states):
            return
        if time.time() > deadline:
            _slurm(conf, "scancel", *jobs)
            pytest.fail(f"jobs {jobs} not done in time: {states}\n{_dump(conf, logs)}")
        time.sleep(2)


def _dump(conf: Path, logs: Path | None) -> str:
    out = [_slurm(conf, "squeue").stdout]
    if logs is not None and logs.is_dir():
        for f in sorted(logs.glob("*.out")):
            text = f.read_text(errors="replace").replace("\r", "\n")
            text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("stage"))
            out.append(f"--- {f.name}\n{text[-2500:]}")
    return "\n".join(out)


def _clean(text: str) -> str:
    """Log text without tqdm's carriage-return redraws."""
    return text.replace("\r", "\n")


def _train_steps(metrics: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()
            if ln.strip() and "train/loss" in ln]


# --- the pipeline -------------------------------------------------------------------
class Pipeline:
    def __init__(self, conf: Path, root: Path, data: Path) -> None:
        self.conf, self.root, self.data = conf, root, data
        self.run = root / "run"
        self.uri = f"sqlite:///{root / 'db' / 'mlflow.db'}"
        self.jobs: dict[str, str] = {}
        self.preempted_at = -1
        self.timings: dict[str, float] = {}

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    def log(self, prefix: str) -> str:
        files = sorted(self.logs.glob(f"{prefix}*.out"))
        assert files, f"no log {prefix}*.out in {self.logs}: {os.listdir(self.logs)}"
        return "".join(_clean(f.read_text(errors="replace")) for f in files)

    def submit(self) -> None:
        (self.root / "db").mkdir(parents=True, exist_ok=True)
        env = _base_env()
        env.update(SLURM_CONF=str(self.conf), MS2DIST_STAGE1_ARGS=STAGE1_ARGS,
                   MS2DIST_STAGE2_ARGS=STAGE2_ARGS,
                   # stage 1: one process per array task (two tasks share the 2 cores);
                   # stage 2: two processes forming one world
                   MS2DIST_STAGE1_PROCS_PER_NODE="1", MS2DIST_STAGE2_PROCS_PER_NODE="2")
        r = subprocess.run(
            ["bash", str(REPO / "slurm" / "pipeline.sh"), "--skip-pack", "--data", str(self.data),
             "--run", str(self.run), "--preset", "tiny", "--tracking-uri", self.uri,
             "--alias", ALIAS, "--n", "2", "--launch-config",
             "launch_configs/cpu_multiprocess.yaml"],
            env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert r.returncode == 0, r.stderr
        for name, job in re.findall(r"submitted ms2-(\w+): job (\d+)", r.stderr):
            self.jobs[name] = job
        assert set(self.jobs) >= {"stage1", "assemble", "stage2", "register", "sample"}, r.stderr

    def wait_and_preempt(self) -> None:
        t0 = time.time()
        deadline = t0 + PIPELINE_TIMEOUT
        s2 = self.jobs["stage2"]
        metrics = self.run / "stage2" / "metrics.jsonl"
        # 1. stage 2 running and past its first logged steps -> preempt it (USR1 to the
        #    batch shell, as `#SBATCH --signal=B:USR1@120` would before the time limit).
        while True:
            info = job_info(self.conf, s2)
            state = info.get("JobState", "?")
            if state in DONE:
                pytest.fail(f"stage 2 ended ({state}) before it could be preempted\n"
                            f"{_dump(self.conf, self.logs)}")
            if state == "RUNNING" and metrics.is_file():
                steps = _train_steps(metrics)
                if steps and steps[-1] >= 20:
                    break
            if time.time() > deadline:
                self.cancel()
                pytest.fail(f"stage 2 never got going ({state})\n{_dump(self.conf, self.logs)}")
            time.sleep(0.5)
        self.timings["until_stage2_running"] = time.time() - t0
        self.preempted_at = _train_steps(metrics)[-1]
        r = _slurm(self.conf, "scancel", "--signal=USR1", "--batch", s2)
        assert r.returncode == 0, r.stderr
        # 2. everything else (requeue, resume, register, sample) to the end.
        wait_jobs(self.conf, list(self.jobs.values()), deadline, self.logs)
        self.timings["pipeline"] = time.time() - t0

    def cancel(self) -> None:
        if self.jobs:
            _slurm(self.conf, "scancel", *self.jobs.values())


@pytest.fixture(scope="module")
def pipeline(slurm_conf: Path, packed_small: Path, tmp_path_factory) -> Pipeline:
    p = Pipeline(slurm_conf, tmp_path_factory.mktemp("slurm-pipeline"), packed_small)
    t0 = time.time()
    try:
        p.submit()
        p.wait_and_preempt()
    except BaseException:
        p.cancel()
        raise
    print(f"\n[test_slurm] pipeline done in {time.time() - t0:.0f} s {p.timings}")
    return p


def _mlflow(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow


def _runs(uri: str, stage: str) -> list:
    mlflow = _mlflow(uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.`ms2dist.stage` = '{stage}'")
    return runs


# --- tests ----------------------------------------------------------------------------
def test_pipeline_jobs_completed(pipeline: Pipeline):
    for name, job in pipeline.jobs.items():
        for task in array_states(pipeline.conf, job):
            assert task.get("JobState") == "COMPLETED", (
                f"{name} job {job}: {task.get('JobState')} exit {task.get('ExitCode')}\n"
                f"{_dump(pipeline.conf, pipeline.logs)}")


def test_stage1_array_tasks_trained_their_tracks(pipeline: Pipeline):
    array = pipeline.jobs["stage1"]
    tasks = array_states(pipeline.conf, array)
    assert sorted(int(t["ArrayTaskId"]) for t in tasks) == list(range(len(TRACKS)))
    for i, track in enumerate(TRACKS):
        log = pipeline.log(f"ms2-stage1-{array}_{i}")
        assert f"stage1 tracks={track} " in log, log[-2000:]
        assert "world=1" in log and "rank 0/1" in log
        cfg = json.loads((pipeline.run / "stage1" / track / "model" / "config.json").read_text())
        assert cfg["meta"]["trained_tracks"] == [track]
        assert cfg["meta"]["registered_version"].startswith("ms2-bvae/")
    # One MLflow run per array task, tagged with the task (from MS2DIST_JOB_ID/ARRAY_INDEX).
    runs = _runs(pipeline.uri, "stage1")
    tags = sorted((r.data.tags.get("ms2dist.tracks"), r.data.tags.get("slurm.job_id"),
                   r.data.tags.get("slurm.array_index")) for r in runs)
    assert tags == sorted((t, f"{array}_{i}", str(i)) for i, t in enumerate(TRACKS)), tags
    assert all(r.info.status == "FINISHED" for r in runs)
    # assemble merged them into one complete stage-1 model
    asm = json.loads((pipeline.run / "stage1" / "assembled" / "model" / "config.json").read_text())
    assert asm["meta"]["trained_tracks"] == list(TRACKS)
    assert set(asm["meta"]["assembled_from"]) == set(TRACKS)


def test_stage2_two_processes_one_world(pipeline: Pipeline):
    log = pipeline.log(f"ms2-stage2-{pipeline.jobs['stage2']}")
    assert re.search(r"\[preflight\] .*machines=1 procs_per_node=2 world=2 ", log), log[-3000:]
    assert "rank 0/2 " in log and "rank 1/2 " in log, log[-3000:]
    assert "distributed DistributedType.MULTI_CPU" in log
    (run,) = _runs(pipeline.uri, "stage2")
    assert run.data.tags["ms2dist.world_size"] == "2"
    assert run.data.tags["ms2dist.launch_config"] == "cpu_multiprocess.yaml"
    assert run.data.tags["slurm.job_id"] == pipeline.jobs["stage2"]
    assert "slurm.array_index" not in run.data.tags


def test_stage2_preempted_requeued_and_resumed(pipeline: Pipeline):
    job = pipeline.jobs["stage2"]
    info = job_info(pipeline.conf, job)
    assert int(info["Restarts"]) >= 1, info
    log = pipeline.log(f"ms2-stage2-{job}")
    m = re.search(r"preempted \(SIGUSR1\): checkpoint at step (\d+); exiting 75", log)
    assert m, log[-4000:]
    step = int(m.group(1))
    assert step >= pipeline.preempted_at > 0
    assert f"requeueing job {job}" in log
    assert "restart=1" in log
    assert re.search(rf"resumed from \S+/step-0*{step} at step {step}\b", log), log[-4000:]
    out = pipeline.run / "stage2"
    assert not (out / "PREEMPTED").exists()  # cleared by the resumed run
    # metrics.jsonl: every logged step once, up to the end (nothing replayed or lost)
    steps = _train_steps(out / "metrics.jsonl")
    assert steps == sorted(set(steps)) and steps[-1] == STAGE2_STEPS, steps
    # MLflow: ONE stage-2 run, re-attached after the requeue and finished
    (run,) = _runs(pipeline.uri, "stage2")
    assert run.info.status == "FINISHED"
    assert run.data.tags.get("ms2dist.resumed") == "true"
    from mlflow import MlflowClient

    hist = MlflowClient(pipeline.uri).get_metric_history(run.info.run_id, "train/loss")
    hsteps = [h.step for h in hist]
    assert len(hsteps) == len(set(hsteps)) and max(hsteps) == STAGE2_STEPS
    assert (out / "model" / "model.safetensors").is_file()


def test_registered_versions_alias_and_samples(pipeline: Pipeline):
    from mlflow import MlflowClient

    client = MlflowClient(pipeline.uri)
    meta = json.loads((pipeline.run / "stage2" / "model" / "config.json").read_text())["meta"]
    name, version = meta["registered_version"].split("/")
    assert name == "midi-sandwich2"
    mv = client.get_model_version_by_alias(name, ALIAS)  # set by the register job
    assert str(mv.version) == version
    (s2,) = _runs(pipeline.uri, "stage2")
    assert mv.run_id == s2.info.run_id
    bvae = client.search_model_versions("name='ms2-bvae'")
    assert len(bvae) == len(TRACKS)  # one registered version per array task
    # the sample job generated from models:/midi-sandwich2@<alias>
    log = pipeline.log(f"ms2-sample-{pipeline.jobs['sample']}")
    assert f"models:/midi-sandwich2@{ALIAS}" in log
    mids = list((pipeline.run / "samples").rglob("*.mid"))
    assert len(mids) >= 2, os.listdir(pipeline.run / "samples")


# --- two nodes ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_node_conf(slurm_conf: Path, tmp_path_factory) -> Path:
    """A second local cluster with two slurmd "nodes" on this host (own dir and ports),
    stopped again afterwards. Its job ids restart at 1: the jobs get an explicit
    rendezvous port so they cannot collide with the first cluster's."""
    d = tmp_path_factory.mktemp("slurm-2n")
    base = int(os.environ.get("MS2DIST_TEST_SLURM2_PORT", "0")) or _free_cluster_ports()
    extra = {"MS2DIST_SLURM_DIR": str(d), "MS2DIST_SLURM_NODES": "2",
             "MS2DIST_SLURMCTLD_PORT": str(base), "MS2DIST_SLURMD_PORT": str(base + 1)}
    _start_cluster(extra)
    conf = d / "etc" / "slurm.conf"
    try:
        if not _cluster_responding(conf):
            _unavailable("the two-node local cluster does not answer after start")
        yield conf
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop"], env={**os.environ, **extra},
                       capture_output=True, text=True, timeout=120)


def test_two_nodes_train_as_one_world(pipeline: Pipeline, two_node_conf: Path):
    conf = two_node_conf
    run = pipeline.root / "run-2n"
    (run / "logs").mkdir(parents=True)
    # Its own MLflow store (created here, before the job, as pipeline.sh does).
    uri = f"sqlite:///{run / 'mlflow.db'}"
    _mlflow(uri).search_experiments()
    env = _base_env()
    env.update(SLURM_CONF=str(conf), MS2DIST_RUN=str(run), MS2DIST_DATA=str(pipeline.data),
               MS2DIST_PRESET="tiny", MS2DIST_TRACKING_URI=uri,
               MS2DIST_STAGE1=str(pipeline.run / "stage1" / "assembled"),
               MS2DIST_PROCS_PER_NODE="1", MS2DIST_ALLOW_LOOPBACK="1",
               MS2DIST_MAIN_PORT=str(_free_port()),
               MS2DIST_STAGE2_ARGS=STAGE2_ARGS.replace(f"={STAGE2_STEPS}", f"={MN_STEPS}")
               + " --tracking.register=false")
    t0 = time.time()
    r = subprocess.run(["sbatch", "--parsable", "-N2", f"--output={run}/logs/%x-%j.out",
                        str(REPO / "slurm" / "stage2.sbatch")],
                       env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    wait_jobs(conf, [job], time.time() + 240, run / "logs")
    print(f"\n[test_slurm] two-node stage 2 in {time.time() - t0:.0f} s")
    info = job_info(conf, job)
    text = _clean((run / "logs" / f"ms2-stage2-{job}.out").read_text())
    assert info["JobState"] == "COMPLETED", f"{info}\n{text[-4000:]}"
    assert info["NumNodes"] == "2"
    assert "launch: 2 node(s) x 1 = world 2" in text
    pre = re.findall(r"\[preflight\] host=\S+ node_rank=(\d) procid=(\d) .*machines=2 "
                     r"procs_per_node=1 world=2 head=127\.0\.0\.1:(\d+)", text)
    assert sorted(p[:2] for p in pre) == [("0", "0"), ("1", "1")], text[-3000:]
    assert {p[2] for p in pre} == {env["MS2DIST_MAIN_PORT"]}  # one rendezvous for both
    assert "rank 0/2 " in text and "rank 1/2 " in text
    assert (run / "stage2" / "model" / "model.safetensors").is_file()
    (mlrun,) = _runs(uri, "stage2")
    assert mlrun.data.tags["ms2dist.world_size"] == "2" and mlrun.info.status == "FINISHED"
    assert mlrun.data.tags["slurm.job_id"] == job
