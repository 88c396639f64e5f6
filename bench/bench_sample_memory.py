"""Peak memory of ``ms2dist sample`` against ``--n``: is it flat?

    python3 bench/bench_sample_memory.py [--n 100 10000] [--batch-size 64] [--keep-out]

Each ``--n`` runs ``ms2dist sample --model pretrained:lpd5 --mode generate --no-png`` in its
own child process (a fresh interpreter, as a user runs it) and reads that child's peak
resident set from ``os.wait4`` (``ru_maxrss``: the kernel's high-water mark, so a short
spike counts too). The table gives each peak, its ratio to the first, and the time. The
target is a ratio of at most 1.2 between n=100 and n=10000: samples are computed,
binarised and written ``--batch-size`` at a time. (Before batching, n=10000 held all
probabilities and notes at once: ~3.2 GB for the float32 probabilities alone.)

Outputs go to a temporary directory, removed afterwards (n=10000 writes ~1.5 GB of
``.mid`` + ``.npz``) unless ``--keep-out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.2


def peak_rss(n: int, batch_size: int, out: Path) -> tuple[int, float]:
    """(peak RSS in bytes, wall seconds) of one ``ms2dist sample`` child process."""
    cmd = [sys.executable, "-m", "ms2dist", "sample", "--model", "pretrained:lpd5",
           "--mode", "generate", "--no-png", "--n", str(n), "--batch-size", str(batch_size),
           "--seed", "0", "--device", "cpu", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = proc.stderr.read()  # until the child closes it (it exits)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"n={n}: ms2dist sample exited {proc.returncode}\n{err.decode()[-3000:]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - t0  # Linux reports KiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100, 10000])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--keep-out", action="store_true", help="keep the samples written")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_sample_memory_"))
    rows = []
    try:
        for n in args.n:
            rss, wall = peak_rss(n, args.batch_size, root / f"n{n}")
            rows.append((n, rss, wall))
            if not args.keep_out:
                shutil.rmtree(root / f"n{n}", ignore_errors=True)
    finally:
        if not args.keep_out:
            shutil.rmtree(root, ignore_errors=True)
    base = rows[0][1]
    print(f"ms2dist sample --mode generate --no-png --batch-size {args.batch_size} "
          f"(pretrained:lpd5, CPU, 1 thread)\n")
    print(f"| n | peak RSS (MB) | ratio to n={rows[0][0]} | wall (s) | samples/s |")
    print("|---|---|---|---|---|")
    for n, rss, wall in rows:
        print(f"| {n} | {rss / 1e6:.0f} | {rss / base:.3f} | {wall:.1f} | {n / wall:.0f} |")
    worst = max(rss for _, rss, _ in rows) / base
    verdict = "ok" if worst <= TARGET_RATIO else "ABOVE TARGET"
    print(f"\nlargest ratio {worst:.3f} (target <= {TARGET_RATIO}): {verdict}")
    return 0 if worst <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
