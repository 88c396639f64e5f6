"""bench/gpu_check.sh keeps working: its CPU path (--device cpu --quick) runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", "bench/gpu_check.sh", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_gpu_check_on_cpu_prints_every_setting_with_finite_figures() -> None:
    r = _check("--device", "cpu", "--quick")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
    steps_out, trainers_out = r.stdout.split("ms2dist train (accelerate launch")
    rows = [line.split("|")[1:-1] for line in steps_out.splitlines()
            if line.startswith("| ") and "workload" not in line]
    got = {(c[0].strip(), c[1].strip()) for c in rows}
    # fp16 is GPU only (no fp16 LSTM in oneDNN); bf16 needs an AVX-512 CPU
    precisions = ("fp32",) if "no bf16 LSTM" in r.stdout else ("fp32", "bf16")
    want = {(w, p) for w in ("vrae", "refine-separate", "refine-grouped", "stage2")
            for p in precisions}
    assert got == want
    for c in rows:
        assert float(c[2]) > 0 and float(c[3]) > 0, c  # phrases/s, TFLOP/s
        assert float(c[5]) == float(c[5]) and abs(float(c[5])) < 1e9, c  # a finite loss
    # The real trainers, per phase and precision, from their own metrics.jsonl.
    rows = [line.split("|")[1:-1] for line in trainers_out.splitlines()
            if line.startswith("| ") and "trainer phase" not in line]
    assert {(c[0].strip(), c[1].strip()) for c in rows} == {
        (ph, "fp32") for ph in ("vrae", "refine", "stage2")}  # --quick: one precision
    assert all(float(c[2]) > 0 and float(c[3]) > 0 for c in rows), rows


def test_gpu_check_refuses_an_unknown_argument_and_cuda_without_a_gpu() -> None:
    r = _check("--gpus", "2")
    assert r.returncode == 2 and "unknown argument '--gpus'" in r.stderr
    import torch

    if not torch.cuda.is_available():
        r = _check("--device", "cuda")
        assert r.returncode == 2 and "torch.cuda.is_available() is False" in r.stderr
