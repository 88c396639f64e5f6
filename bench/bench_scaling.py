"""Stage-2 data-parallel scaling on this machine: 1 process, 2 processes (one machine),
and two simulated nodes (two `accelerate launch` x 1 process, machine ranks 0/1 over
127.0.0.1), all measured in the same run with the real trainer.

    python3 bench/bench_scaling.py [--preset paper] [--steps 300] [--reps 2] [--json out.json]

What it does:
1. packs ../shared/data/lpd5_test_small (16 songs) into a temp dir (or uses --data);
2. makes a stage-1 model for the preset (all five BVAEs, 1+1 steps: stage 2 only needs
   their shapes and frozen weights; throughput does not depend on how well they are trained);
3. runs `ms2dist train stage2` under `accelerate launch --config_file
   launch_configs/cpu_multiprocess.yaml` (ACCELERATE_USE_CPU=1, gloo) for each setup,
   round-robin `--reps` times, with tracking, evaluation and periodic checkpoints off;
4. reads `train/phrases_per_s` (GLOBAL phrases/s over all ranks, per `--log-every` steps)
   from `<out>/metrics.jsonl`, drops the first `--warmup` windows, takes the median.

Every process gets ONE thread (`--num_cpu_threads_per_process 1`), so "2 processes" uses
two cores where "1 process" uses one: the ratio is the data-parallel speed-up per added
core, not a thread-vs-process comparison. Batch size is per process (paper: 32), so two
processes train a global batch of 64 per step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "lpd5_test_small"
CFG = REPO / "launch_configs" / "cpu_multiprocess.yaml"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "ACCELERATE_", "MS2DIST_"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], log: Path, timeout: float) -> None:
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT,
                           timeout=timeout)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")


def _launch(extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CFG),
            "--num_cpu_threads_per_process", "1", *extra]


def _train_args(a: argparse.Namespace, data: Path, s1: Path, out: Path, world: int) -> list[str]:
    return ["-m", "ms2dist", "train", "stage2", "--config", a.preset, "--data", str(data),
            "--out", str(out), "--stage1", str(s1), "--resume", "never",
            "--expect-world-size", str(world),
            f"--train.stage2_steps={a.steps}", f"--train.log_every={a.log_every}",
            "--train.eval_every=1000000", f"--train.checkpoint_every={a.steps}",
            "--train.eval_at_start=false", "--tracking.enabled=false",
            "--data.num_workers=0", f"--data.batch_size={a.batch}"]


def run_setup(name: str, a: argparse.Namespace, data: Path, s1: Path, work: Path) -> list[float]:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    timeout = 60 + a.steps * 2.0
    if name == "1 process":
        _run(_launch(["--num_processes", "1"]) + _train_args(a, data, s1, out, 1),
             out / "log.txt", timeout)
    elif name == "2 processes":
        _run(_launch(["--num_processes", "2"]) + _train_args(a, data, s1, out, 2),
             out / "log.txt", timeout)
    else:  # two simulated nodes: two launches, one process each, one world
        port = _free_port()
        procs = []
        for rank in (0, 1):
            cmd = _launch(["--num_machines", "2", "--num_processes", "2",
                           "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                           "--main_process_port", str(port), "--same_network",
                           "--rdzv_backend", "static"]) + _train_args(a, data, s1, out, 2)
            f = open(out / f"log-node{rank}.txt", "w")  # noqa: SIM115 - closed below
            procs.append((subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=f,
                                           stderr=subprocess.STDOUT), f))
        deadline = time.time() + timeout
        for p, f in procs:
            rc = p.wait(timeout=max(1.0, deadline - time.time()))
            f.close()
            if rc != 0:
                sys.exit(f"{name}: a launch failed ({rc}); see {out}")
    rates = [json.loads(ln)["train/phrases_per_s"]
             for ln in (out / "metrics.jsonl").read_text().splitlines()
             if "train/phrases_per_s" in ln]
    # the last window may be partial (step == stop_at): keep only full windows
    full = a.steps // a.log_every
    return rates[:full][a.warmup:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--data", type=Path, help="packed shards (default: pack lpd5_test_small)")
    ap.add_argument("--steps", type=int, default=300, help="stage-2 steps per setup and rep")
    ap.add_argument("--log-every", type=int, default=20, help="steps per timed window")
    ap.add_argument("--warmup", type=int, default=3, help="windows dropped at the start")
    ap.add_argument("--batch", type=int, default=32, help="per-process batch size")
    ap.add_argument("--reps", type=int, default=2, help="round-robin repetitions")
    ap.add_argument("--setups", nargs="+",
                    default=["1 process", "2 processes", "2 nodes x 1 process"])
    ap.add_argument("--work", type=Path, help="keep runs here (default: a temp dir)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    work = a.work or Path(tempfile.mkdtemp(prefix="ms2-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = a.data
    if data is None:
        data = work / "shards"
        if not (data / "train" / "manifest.json").is_file():
            _run([sys.executable, "-m", "ms2dist", "pack", "--input", str(SMALL), "--name",
                  "small", "--out", str(data), "--split", "60,20,20", "--workers", "2",
                  "--phrases-per-shard", "32"], work / "pack.log", 300)
    s1 = work / f"stage1-{a.preset}"
    if not (s1 / "model" / "config.json").is_file():
        _run([sys.executable, "-m", "ms2dist", "train", "stage1", "--config", a.preset,
              "--data", str(data), "--out", str(s1), "--resume", "never",
              "--train.vrae_steps=1", "--train.refine_steps=1", "--train.eval_every=1000000",
              "--train.eval_at_start=false", "--tracking.enabled=false",
              "--data.num_workers=0", "--data.batch_size=4", "--data.val_batches=1"],
             work / "stage1.log", 900)
    print(f"setup: {time.time() - t0:.0f} s (data {data}, stage 1 {s1})", file=sys.stderr)

    windows: dict[str, list[float]] = {s: [] for s in a.setups}
    for rep in range(a.reps):
        for name in a.setups:
            t = time.time()
            w = run_setup(name, a, data, s1 / "model", work)
            windows[name] += w
            print(f"rep {rep + 1}/{a.reps} {name}: {len(w)} windows, median "
                  f"{statistics.median(w):.0f} phrases/s ({time.time() - t:.0f} s)",
                  file=sys.stderr)

    base = statistics.median(windows[a.setups[0]])
    rows = []
    print(f"\nstage 2, preset {a.preset}, batch {a.batch}/process, 1 thread/process, "
          f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}")
    print("| setup | world | phrases/s (median) | min-max of windows | ratio vs 1 process "
          "| per process |")
    print("|---|---|---|---|---|---|")
    for name in a.setups:
        w = windows[name]
        med = statistics.median(w)
        world = 1 if name == "1 process" else 2
        rows.append({"setup": name, "world": world, "median": med, "min": min(w),
                     "max": max(w), "n_windows": len(w), "ratio": med / base})
        print(f"| {name} | {world} | {med:,.0f} | {min(w):,.0f}-{max(w):,.0f} | "
              f"{med / base:.2f}x | {med / world:,.0f} |")
    if a.json:
        a.json.write_text(json.dumps({"preset": a.preset, "batch": a.batch, "steps": a.steps,
                                      "log_every": a.log_every, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
