"""Shared fixtures. Tests that need ../shared/data skip locally when it is absent,
but FAIL under CI=true: CI must never go green by skipping the real-data tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MS2DIST_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored():
    """A test that points MLflow at a store in this process (``mlflow.set_tracking_uri``,
    which also sets ``MLFLOW_TRACKING_URI``) must not leave the next test pointing there."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None:
        utils._tracking_uri = None
    if env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = env


def _require(path: Path) -> Path:
    if not path.exists():
        msg = f"shared data {path} is missing (expected ../shared/data beside the checkout)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def lpd5_test_small(shared_data: Path) -> Path:
    return _require(shared_data / "lpd5_test_small")


@pytest.fixture(scope="session")
def lpd_cleansed_test_small(shared_data: Path) -> Path:
    return _require(shared_data / "lpd_cleansed_test_small")


@pytest.fixture(scope="session")
def lpd5_train_demo(shared_data: Path) -> Path:
    return _require(shared_data / "lpd5_train_demo")


def run_ms2dist(args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                timeout: float = 600, check: bool = True):
    """Run ``python -m ms2dist ARGS`` in a subprocess (fresh interpreter, like a user)."""
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "ms2dist", *map(str, args)], env=full_env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ms2dist {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def packed_small(lpd5_test_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 16 test songs packed with enough val songs for validation (60/20/20)."""
    out = tmp_path_factory.mktemp("shards") / "small"
    run_ms2dist(["pack", "--input", lpd5_test_small, "--name", "small", "--out", out,
                 "--split", "60,20,20", "--workers", "2", "--phrases-per-shard", "32"])
    return out


@pytest.fixture(scope="session")
def packed_memorize(lpd5_test_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two songs whose val split IS the train split: "does the loop learn?" in seconds.

    Generalising to unseen songs takes far more steps than a CPU test can afford;
    memorising 41 phrases does not.
    """
    import shutil

    src = tmp_path_factory.mktemp("mem_in")
    for f in sorted(lpd5_test_small.rglob("*.npz"))[:2]:
        shutil.copy(f, src / f.name)
    out = tmp_path_factory.mktemp("shards") / "mem"
    run_ms2dist(["pack", "--input", src, "--name", "mem", "--out", out, "--split", "100,0,0",
                 "--workers", "1"])
    shutil.rmtree(out / "val", ignore_errors=True)
    shutil.copytree(out / "train", out / "val")
    return out
