"""Training under real multi-process DDP (``accelerate launch``, 2 CPU ranks, gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_ms2dist

CPU_CONFIG = REPO / "launch_configs" / "cpu_multiprocess.yaml"
# Small, fast and deterministic: tiny preset, a few dozen steps, no DataLoader workers.
# The toy optimisation (batch 8, lr 1e-2) memorises two songs in a few dozen steps.
FAST = ["--config", "tiny", "--data.num_workers=0", "--train.log_every=2",
        "--train.checkpoint_every=4", "--data.batch_size=8", "--optim.lr=1e-2",
        "--optim.refine_lr=1e-2"]


def launch_cmd(n: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
            "--num_processes", str(n), "-m", "ms2dist", *map(str, args)]


def launch(n: int, args: list[str], env: dict[str, str], timeout: float = 600,
           check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(launch_cmd(n, args), env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def series(out: Path, key: str) -> list[tuple[int, float]]:
    return [(m["step"], m[key]) for m in metrics(out) if key in m]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{db}", "OMP_NUM_THREADS": "1",
            "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def stage1_run(packed_memorize: Path, tmp_path_factory, env) -> Path:
    out = tmp_path_factory.mktemp("s1")
    launch(2, ["train", "stage1", *FAST, "--data", packed_memorize, "--out", out,
               "--expect-world-size", "2", "--train.vrae_steps=60", "--train.refine_steps=20",
               "--train.eval_every=80"], env)
    return out


def test_stage1_two_ranks_learn_and_export(stage1_run: Path, env) -> None:
    f1 = series(stage1_run, "val/f1_mean")
    assert f1[0][0] == 0 and f1[-1][0] == 80
    assert f1[0][1] == 0.0  # the decoder's output bias starts every note "off"
    assert f1[-1][1] > 0.05, f1  # trained beats untrained
    bce = series(stage1_run, "val/refine_bce_mean")
    assert bce[-1][1] < 0.8 * bce[0][1], bce
    cfg = json.loads((stage1_run / "model" / "config.json").read_text())
    assert cfg["meta"]["trained_tracks"] == ["Drums", "Piano", "Guitar", "Bass", "Strings"]
    state = load_file(str(stage1_run / "model" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(search_all_experiments=True,
                              filter_string="tags.`ms2dist.stage` = 'stage1'")
    assert len(runs) == 1  # one run for the stage, not one per rank
    assert runs.iloc[0]["tags.ms2dist.world_size"] == "2"


def test_stage2_two_ranks_improves_restore(stage1_run: Path, packed_memorize: Path,
                                           tmp_path, env) -> None:
    out = tmp_path / "s2"
    launch(2, ["train", "stage2", *FAST, "--data", packed_memorize, "--out", out, "--stage1",
               stage1_run, "--expect-world-size", "2", "--train.stage2_steps=800",
               "--train.eval_every=800", "--train.log_every=50",
               "--train.checkpoint_every=400", "--optim.schedule=constant"], env)
    loss = series(out, "val/mfg_loss")
    assert loss[-1][1] < 0.1 * loss[0][1], loss
    f1 = series(out, "val/f1_mean")  # restore through the whole model
    assert f1[-1][1] > f1[0][1] + 0.02, f1
    assert (out / "model" / "model.safetensors").is_file()


def test_resume_equals_straight_run(packed_small: Path, tmp_path, env) -> None:
    common = ["train", "stage1", *FAST, "--data", packed_small, "--train.vrae_steps=8",
              "--train.refine_steps=4", "--train.eval_every=100", "--train.eval_at_start=false",
              "--tracking.enabled=false"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch(2, [*common, "--out", straight], env)
    launch(2, [*common, "--out", resumed, "--max-steps", "6"], env)
    assert not (resumed / "model").exists()
    launch(2, [*common, "--out", resumed], env)
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    la, lb = series(straight, "train/loss"), series(resumed, "train/loss")
    assert [s for s, _ in la] == [s for s, _ in lb] == [2, 4, 6, 8, 10, 12]
    torch.testing.assert_close(torch.tensor([v for _, v in lb]), torch.tensor([v for _, v in la]),
                               rtol=1e-5, atol=1e-6)


def test_preemption_checkpoints_and_resumes(packed_small: Path, tmp_path, env) -> None:
    out = tmp_path / "pre"
    args = ["train", "stage1", *FAST, "--data", packed_small, "--out", out,
            "--train.vrae_steps=400", "--train.refine_steps=0", "--train.eval_every=1000",
            "--train.eval_at_start=false", "--train.checkpoint_every=1000",
            "--tracking.enabled=false"]
    proc = subprocess.Popen(launch_cmd(2, args), env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        if (out / "metrics.jsonl").is_file() and series(out, "train/loss")[-1:] and \
                series(out, "train/loss")[-1][0] >= 6:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # what SLURM sends before a preemption kill
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    marker = json.loads((out / "PREEMPTED").read_text())
    step = marker["step"]
    assert 6 <= step < 400
    assert (out / "checkpoints" / f"step-{step:09d}" / "snapshot.json").is_file()
    done = launch(2, [*args, "--train.vrae_steps=" + str(step + 4)], env)
    assert "resumed from" in done.stderr
    assert (out / "model" / "model.safetensors").is_file()
    assert not (out / "PREEMPTED").exists()


def test_wrong_world_size_fails_before_training(packed_small: Path, tmp_path, env) -> None:
    proc = run_ms2dist(["train", "stage1", *FAST, "--data", packed_small, "--out",
                        tmp_path / "w", "--expect-world-size", "2"], env=env, check=False)
    assert proc.returncode != 0
    assert "--expect-world-size 2 but the job runs 1 process" in proc.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_missing_data_fails_before_training(tmp_path, env) -> None:
    proc = run_ms2dist(["train", "stage1", *FAST, "--data", tmp_path / "nope", "--out",
                        tmp_path / "m"], env=env, check=False)
    assert proc.returncode != 0
    assert "manifest.json not found" in proc.stderr and str(tmp_path / "nope") in proc.stderr


def test_unknown_override_is_an_error(packed_small: Path, tmp_path, env) -> None:
    proc = run_ms2dist(["train", "stage1", *FAST, "--data", packed_small, "--out", tmp_path,
                        "--train.vrae_stepz=3"], env=env, check=False)
    assert proc.returncode == 2 and "vrae_stepz" in proc.stderr


@pytest.mark.slow
def test_stage2_deepspeed_zero2_two_ranks(stage1_run: Path, packed_memorize: Path, tmp_path,
                                          env) -> None:
    """ZeRO-2 through accelerate on CPU (gloo); the frozen BVAEs stay outside the engine and
    the exported weights are a plain fp32 state dict."""
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "launch_configs" / "deepspeed_zero2_cpu.yaml"), "-m", "ms2dist", "train",
           "stage2", *FAST, "--data", str(packed_memorize), "--out", str(out), "--stage1",
           str(stage1_run), "--expect-world-size", "2", "--train.stage2_steps=20",
           "--train.eval_every=20", "--tracking.enabled=false"]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "DistributedType.DEEPSPEED" in proc.stderr
    loss = series(out, "val/mfg_loss")
    assert loss[-1][1] < loss[0][1], loss
    state = load_file(str(out / "model" / "model.safetensors"))
    s1 = load_file(str(stage1_run / "model" / "model.safetensors"))
    for k, v in state.items():
        assert v.dtype == torch.float32, k
        if not k.startswith("mfg."):
            torch.testing.assert_close(v, s1[k], rtol=0, atol=0, msg=k)  # BVAEs frozen
