"""Training time with a tracking outage vs without, in the same run.

Trains ``tiny`` stage 1 twice against a real ``mlflow server`` on 127.0.0.1: once with the
server up throughout, once with the server killed (SIGKILL) after the first logged steps
and restarted ``--down-s`` seconds later. Reports both wall times (from the first logged
step to the end of the process: setup is left out) and the ratio; the
target is < 1.10. Needs a packed split (default: packs ../shared/data/lpd5_test_small).

    python3 bench/bench_tracking_outage.py [--steps 400] [--down-s 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MS2DIST_SHARED_DATA", REPO.parent / "shared" / "data"))
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
       "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def serve(root: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'srv.db'}",
         "--artifacts-destination", str(root / "artifacts")], cwd=root, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("mlflow server did not start")


def run(data: Path, out: Path, uri: str, steps: int, on_step=None) -> float:
    cmd = [sys.executable, "-m", "ms2dist", "train", "stage1", "--config", "tiny",
           "--data", str(data), "--out", str(out), "--tracking-uri", uri,
           f"--train.vrae_steps={steps}", "--train.refine_steps=0", "--train.log_every=5",
           "--train.eval_every=100000", "--train.checkpoint_every=100000",
           "--train.eval_at_start=false", "--tracking.register=false"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    first = None
    while proc.poll() is None:
        n = sum(1 for _ in (out / "metrics.jsonl").open()) if (out / "metrics.jsonl").is_file() \
            else 0
        if n and first is None:
            first = time.perf_counter()
        if on_step:
            on_step(n)
        time.sleep(0.1)
    if proc.returncode:
        raise RuntimeError(proc.stderr.read()[-3000:])
    end = time.perf_counter()
    return end - (first or t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--down-s", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        subprocess.run([sys.executable, "-m", "ms2dist", "pack", "--input",
                        str(DATA / "lpd5_test_small"), "--name", "b", "--out", str(data),
                        "--split", "60,20,20", "--workers", "2"], env=ENV, check=True,
                       capture_output=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        root = tmp / "store"
        root.mkdir()
        server = [serve(root, port)]
        uri = f"http://127.0.0.1:{port}"
        base = run(data, tmp / "base", uri, args.steps)
        state = {"killed_at": None, "restarted": False}

        def outage(n: int) -> None:
            if state["killed_at"] is None and n >= 3:
                os.killpg(server[0].pid, signal.SIGKILL)
                state["killed_at"] = time.perf_counter()
            elif state["killed_at"] and not state["restarted"] and \
                    time.perf_counter() - state["killed_at"] > args.down_s:
                server[0] = serve(root, port)
                state["restarted"] = True

        hit = run(data, tmp / "outage", uri, args.steps, outage)
        os.killpg(server[0].pid, signal.SIGTERM)
    print(f"tiny stage 1, {args.steps} steps, log every 5; outage: server killed after the "
          f"first logs, back after {args.down_s:g} s (restarted: {state['restarted']})")
    print("| run | train wall s |\n|---|---|")
    print(f"| server up throughout | {base:.1f} |\n| server killed and restarted | {hit:.1f} |")
    print(f"outage / up = {hit / base:.3f} (target < 1.10)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
