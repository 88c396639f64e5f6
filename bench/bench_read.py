"""Shard reading with and without integrity checks, in the same run.

Packs the 400-song demo set once, then reads its train split (a) block by block with
``iter_shard_blocks`` and (b) through the training stream (``train_loader``, 2 workers,
batch 32: what training sees), each with the block CRC32 verified (the default) and
without (``VERIFY_CHECKSUMS = False``: reading before blocks carried checksums; the
tar-end and count checks stay, they are nearly free). Medians of ``--reps`` passes,
alternated; the target is checked / unchecked >= 0.9 for the training stream.

    python3 bench/bench_read.py [--data DIR] [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_DATA = Path(os.environ.get("MS2DIST_SHARED_DATA", REPO.parent / "shared" / "data"))


def read_all(info, verify: bool) -> tuple[float, int]:
    from ms2dist.dataset.blocks import iter_shard_blocks

    t, n = time.perf_counter(), 0
    for shard, count in zip(info.shards, info.counts, strict=True):
        for block in iter_shard_blocks(shard, info.phrase_bytes, count, verify=verify):
            n += len(block)
    return time.perf_counter() - t, n


def stream(info, verify: bool, n_batches: int = 400) -> tuple[float, int]:
    from ms2dist.dataset import blocks
    from ms2dist.dataset.train_stream import train_loader

    blocks.VERIFY_CHECKSUMS = verify  # forked workers inherit it
    loader = train_loader(info.dir, 32, num_workers=2, epoch_steps=None)
    t, n = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        n += len(batch["phrases"])
        if i + 1 == n_batches:
            break
    blocks.VERIFY_CHECKSUMS = True
    return time.perf_counter() - t, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA / "lpd5_train_demo")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    from ms2dist.dataset.manifest import read_split
    from ms2dist.dataset.packer import pack

    with tempfile.TemporaryDirectory() as tmp:
        pack([args.data], Path(tmp) / "p", name="bench", workers=2)
        info = read_split(Path(tmp) / "p" / "train")
        read_all(info, True)  # warm the page cache
        rates: dict[tuple[str, bool], list[float]] = {}
        for _ in range(args.reps):
            for verify in (False, True):
                for name, fn in (("blocks", read_all), ("training stream", stream)):
                    dt, n = fn(info, verify)
                    rates.setdefault((name, verify), []).append(n / dt)
    print(f"train split: {len(info.shards)} shards, {info.n_phrases} phrases "
          f"({info.n_phrases * info.phrase_bytes / 1e6:.0f} MB); medians of {args.reps}")
    print("| read | no checksum, phrases/s | CRC32, phrases/s | checked / unchecked |")
    print("|---|---|---|---|")
    for name in ("blocks", "training stream"):
        off, on = (statistics.median(rates[(name, v)]) for v in (False, True))
        print(f"| {name} | {off:,.0f} | {on:,.0f} | {on / off:.3f} |")
    off, on = (statistics.median(rates[("training stream", v)]) for v in (False, True))
    verdict = "ok" if on / off >= 0.9 else "MISS"
    print(f"training stream checked / unchecked = {on / off:.3f} (target >= 0.9): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
