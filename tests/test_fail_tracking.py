"""A tracking outage never stops training: a real `mlflow server` killed (-9) mid-run and
restarted later; the run finishes and MLflow ends up with every logged step exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_tracking import _clean_env, _free_port, _start_server, _stop_server

STEPS, LOG_EVERY = 240, 5


def _serve(root: Path, port: int) -> subprocess.Popen:
    return _start_server(root, port)[0]


def _logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln)["step"] for ln in path.read_text().splitlines()
            if "train/loss" in ln]


def _wait_for(cond, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"training ended while waiting for {what}: "
                                 f"{proc.stderr.read()[-4000:]}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_server_killed_and_restarted_mid_run(packed_small: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _serve(root, port)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "ms2dist", "train", "stage1", "--config", "tiny",
            "--data", packed_small, "--out", out, "--tracking-uri", uri,
            f"--train.vrae_steps={STEPS}", "--train.refine_steps=0",
            f"--train.log_every={LOG_EVERY}", "--train.eval_every=1000",
            "--train.checkpoint_every=1000", "--train.eval_at_start=false",
            "--data.val_batches=1", "--tracking.register=false"]
    env = _clean_env()
    train = subprocess.Popen(list(map(str, args)), env=env, cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: len(_logged_steps(out)) >= 4, train, 300, "training to log")
        os.killpg(server.pid, signal.SIGKILL)  # the outage: no goodbye
        server.wait(timeout=10)
        down_at = len(_logged_steps(out))
        # training goes on while the server is down
        _wait_for(lambda: len(_logged_steps(out)) >= down_at + 6, train, 300,
                  "training to go on during the outage")
        server = _serve(root, port)
        _, err = train.communicate(timeout=600)
        assert train.returncode == 0, err[-4000:]
    finally:
        if train.poll() is None:
            train.kill()
        _stop_server(server)
    assert "tracking degraded" in err and "tracking recovered" in err
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    server = _serve(root, port)
    try:
        exp = client.get_experiment_by_name("ms2dist")
        (run,) = client.search_runs([exp.experiment_id])
        history = client.get_metric_history(run.info.run_id, "train/loss")
        steps = sorted(m.step for m in history)
        assert steps == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))  # each step once
        assert run.info.status == "FINISHED"
    finally:
        _stop_server(server)
    assert not (out / "tracking" / "spool.jsonl").exists()  # all delivered, spool cleared
