"""Time ``ms2dist.metrics.compute_all`` on random phrases (median of 3 runs).

Usage: ``python3 bench/bench_metrics.py [--phrases 10000] [--density 0.02]``

The phrases are random boolean ``(N, 4, 48, 84, 5)`` rolls with about ``density`` ones
(MuseGAN's training tensor has 1.9%); the rolls are built before the clock starts.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from ms2dist.metrics import compute_all


def random_phrases(n: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, 4, 48, 84, 5), dtype=bool)
    for s in range(0, n, 1000):
        x[s : s + 1000] = rng.random((len(x[s : s + 1000]), 4, 48, 84, 5), np.float32) < density
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phrases", type=int, default=10_000)
    ap.add_argument("--density", type=float, default=0.02)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", default="128,256,1024")
    args = ap.parse_args()

    x = random_phrases(args.phrases, args.density)
    print(
        f"compute_all on {args.phrases:,} random phrases (4, 48, 84, 5), "
        f"{x.mean():.2%} ones, {x.nbytes / 2**20:,.0f} MiB; "
        f"numpy {np.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; median of {args.repeats}"
    )
    print(f"{'batch_size':>10} | {'median s':>8} | {'min s':>6} | {'phrases/s':>9}")
    print(f"{'-' * 10}-+-{'-' * 8}-+-{'-' * 6}-+-{'-' * 9}")
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            compute_all(x, batch_size=bs)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"{bs:>10} | {med:>8.2f} | {min(times):>6.2f} | {args.phrases / med:>9,.0f}")


if __name__ == "__main__":
    main()
