"""Data-layer benchmark on the 400-song demo set (../shared/data/lpd5_train_demo).

(a) packing songs/s with 1 and 2 workers vs. ``pypianoroll.load`` alone on the same files;
(b) training-stream phrases/s with 2 DataLoader workers vs. a raw sequential read of the
    same shard bytes;
(c) peak RSS of packing 100 vs. 400 songs.

Prints a table of medians and ratios against the targets. Usage::

    python3 bench/bench_pack.py [--data DIR] [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_DATA = Path(os.environ.get("MS2DIST_SHARED_DATA", REPO.parent / "shared" / "data"))


def files_of(data: Path) -> list[Path]:
    return sorted(data.rglob("*.npz"), key=str)


def bench_load_only(files: list[Path]) -> tuple[float, float]:
    import pypianoroll

    t, c = time.perf_counter(), time.process_time()
    for f in files:
        pypianoroll.load(f)
    return len(files) / (time.perf_counter() - t), (time.process_time() - c) / len(files)


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_pack(files: list[Path], workers: int, tmp: Path) -> tuple[float, float]:
    """(songs/s wall clock, CPU seconds of main + pool per song)."""
    from ms2dist.dataset.packer import pack

    out = tmp / f"pack-w{workers}-{time.monotonic_ns()}"
    t, c, k = time.perf_counter(), time.process_time(), _children_cpu()
    res = pack(files, out, name="bench", workers=workers)
    dt = time.perf_counter() - t
    cpu = time.process_time() - c + _children_cpu() - k
    assert res.n_inputs == len(files)
    return len(files) / dt, cpu / len(files)


def bench_stream(split_dir: Path, batch: int, workers: int, n_phrases: int) -> tuple[float, float]:
    """(phrases/s after the first batch, seconds to the first batch)."""
    from ms2dist.dataset.train_stream import train_loader

    loader = train_loader(split_dir, batch, seed=0, num_workers=workers, shuffle_buffer=4096)
    t0 = time.perf_counter()
    n, t_first = 0, None
    for b in loader:
        if t_first is None:
            t_first = time.perf_counter()
            continue
        n += b["phrases"].shape[0]
        if n >= n_phrases:
            break
    return n / (time.perf_counter() - t_first), t_first - t0


def bench_raw(split_dir: Path, n_phrases_total: int) -> float:
    """Phrases/s of reading the split's shard files front to back (1 MiB reads)."""
    shards = sorted(split_dir.glob("shard-*.tar"))
    t = time.perf_counter()
    for s in shards:
        with open(s, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
    return n_phrases_total / (time.perf_counter() - t)


def bench_blocks(split_dir: Path) -> float:
    """Phrases/s of a sequential decode of the same shards (tar parse + .npy + meta), no
    shuffling, no batching, one process: the floor any reader of this format pays."""
    from ms2dist.dataset.blocks import iter_shard_blocks

    t, n = time.perf_counter(), 0
    for s in sorted(split_dir.glob("shard-*.tar")):
        for b in iter_shard_blocks(s):
            n += len(b)
    return n / (time.perf_counter() - t)


RSS_CHILD = """
import json, resource, sys
sys.path.insert(0, {repo!r})
from ms2dist.dataset.packer import pack
files = json.loads(sys.argv[1])
pack(files, sys.argv[2], name="rss", workers=int(sys.argv[3]))
# VmHWM, not RUSAGE_SELF: ru_maxrss survives exec and would report the (vforked) parent
own = int([ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0])
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({{"self_kb": own, "children_kb": kids}}))
"""


def bench_rss(files: list[Path], workers: int, tmp: Path) -> dict:
    code = RSS_CHILD.format(repo=str(REPO))
    out = tmp / f"rss-{len(files)}-{time.monotonic_ns()}"
    r = subprocess.run([sys.executable, "-c", code, json.dumps([str(f) for f in files]),
                        str(out), str(workers)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA / "lpd5_train_demo")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stream-phrases", type=int, default=60000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    files = files_of(args.data)
    if not files:
        print(f"no .npz under {args.data}", file=sys.stderr)
        return 2
    for f in files:  # warm the page cache so every contender reads from memory
        f.read_bytes()
    med = statistics.median
    res: dict = {"songs": len(files), "cpus": os.cpu_count(), "reps": args.reps,
                 "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="ms2dist-bench-") as td:
        tmp = Path(td)
        rss = {}
        for n in (100, 400):
            runs = [bench_rss(files[:n], 2, tmp) for _ in range(max(1, args.reps - 1))]
            rss[n] = {k: med([r[k] for r in runs]) for k in runs[0]}
        res["rss_kb"] = rss
        load, p1, p2 = [], [], []
        for _ in range(args.reps):  # interleaved so background load hits all alike
            load.append(bench_load_only(files))
            p1.append(bench_pack(files, 1, tmp))
            p2.append(bench_pack(files, 2, tmp))
        res["load_only_songs_s"], res["pack1_songs_s"], res["pack2_songs_s"] = (
            med(x[0] for x in load), med(x[0] for x in p1), med(x[0] for x in p2))
        res["cpu_ms_per_song"] = {"load_only": 1e3 * med(x[1] for x in load),
                                  "pack1": 1e3 * med(x[1] for x in p1),
                                  "pack2": 1e3 * med(x[1] for x in p2)}

        from ms2dist.dataset.packer import pack

        out = tmp / "stream"
        pack(files, out, name="bench", workers=2)
        split = out / "train"
        n_total = json.loads((split / "manifest.json").read_text())["n_phrases"]
        res["train_phrases"] = n_total
        raw, blk, s32, s128, s0, first = [], [], [], [], [], []
        for _ in range(args.reps):
            raw.append(med([bench_raw(split, n_total) for _ in range(5)]))
            blk.append(med([bench_blocks(split) for _ in range(3)]))
            r, f = bench_stream(split, 32, 2, args.stream_phrases)
            s32.append(r)
            first.append(f)
            s128.append(bench_stream(split, 128, 2, args.stream_phrases)[0])
            s0.append(bench_stream(split, 32, 0, args.stream_phrases)[0])
        res.update(raw_read_phrases_s=med(raw), block_decode_phrases_s=med(blk),
                   stream2_b32_phrases_s=med(s32),
                   stream2_b128_phrases_s=med(s128), stream0_b32_phrases_s=med(s0),
                   stream_first_batch_s=med(first))

    res["loadavg_end"] = os.getloadavg()

    def peak(n: int) -> float:
        return max(rss[n]["self_kb"], rss[n]["children_kb"]) / 1024

    rows = [
        ("pypianoroll.load only (1 proc)", f"{res['load_only_songs_s']:.1f} songs/s", "", ""),
        ("pack, 1 worker", f"{res['pack1_songs_s']:.1f} songs/s",
         f"{res['pack1_songs_s'] / res['load_only_songs_s']:.2f}x load-only", ">= 0.7x"),
        ("pack, 2 workers", f"{res['pack2_songs_s']:.1f} songs/s",
         f"{res['pack2_songs_s'] / res['pack1_songs_s']:.2f}x 1 worker", ">= 1.6x"),
        ("CPU ms/song (all processes): load-only / pack 1w / pack 2w",
         " / ".join(f"{res['cpu_ms_per_song'][k]:.2f}" for k in ("load_only", "pack1", "pack2")),
         f"{res['cpu_ms_per_song']['load_only'] / res['cpu_ms_per_song']['pack1']:.2f}x "
         "load-only per CPU-s", ""),
        ("raw sequential read of train shards", f"{res['raw_read_phrases_s']:,.0f} phrases/s",
         "", ""),
        ("sequential block decode, 1 process, no shuffle",
         f"{res['block_decode_phrases_s']:,.0f} phrases/s",
         f"{res['block_decode_phrases_s'] / res['raw_read_phrases_s']:.2f}x raw", ""),
        ("train stream, 2 workers, batch 32", f"{res['stream2_b32_phrases_s']:,.0f} phrases/s",
         f"{res['stream2_b32_phrases_s'] / res['raw_read_phrases_s']:.2f}x raw, "
         f"{res['stream2_b32_phrases_s'] / res['block_decode_phrases_s']:.2f}x decode",
         ">= 50,000/s and >= 0.5x raw"),
        ("train stream, 2 workers, batch 128", f"{res['stream2_b128_phrases_s']:,.0f} phrases/s",
         f"{res['stream2_b128_phrases_s'] / res['raw_read_phrases_s']:.2f}x raw", ""),
        ("train stream, in-process, batch 32", f"{res['stream0_b32_phrases_s']:,.0f} phrases/s",
         f"{res['stream0_b32_phrases_s'] / res['raw_read_phrases_s']:.2f}x raw", ""),
        ("train stream, time to first batch", f"{res['stream_first_batch_s']:.2f} s", "", ""),
        ("peak RSS, pack 100 songs (2 workers)", f"{peak(100):.0f} MiB", "", ""),
        ("peak RSS, pack 400 songs (2 workers)", f"{peak(400):.0f} MiB",
         f"{peak(400) / peak(100):.2f}x 100 songs", "<= 1.2x"),
    ]
    w0 = max(len(r[0]) for r in rows)
    print(f"ms2dist data bench: {len(files)} songs, {res['train_phrases']} train phrases, "
          f"{res['cpus']} CPUs, medians of {args.reps}, "
          f"load avg {res['loadavg_start'][0]:.1f} -> {res['loadavg_end'][0]:.1f}")
    print(f"| {'what':<{w0}} | median | ratio | target |")
    print(f"|{'-' * (w0 + 2)}|---|---|---|")
    for r in rows:
        print(f"| {r[0]:<{w0}} | {r[1]} | {r[2]} | {r[3]} |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
