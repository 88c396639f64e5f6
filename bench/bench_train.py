"""Training-loop overhead on this machine: the real trainer against a bare PyTorch loop,
1 vs 2 CPU processes for stage 1, and stage 2 with vs without the latent cache, all
measured in the same run, contenders interleaved rep by rep.

    python3 bench/bench_train.py [--reps 3] [--a-presets tiny paper] [--c-presets tiny paper]
                                 [--threads 1] [--json out.json]

Rows (batch 32 per process, every process ``--threads`` threads, 1 by default):

(a) ``loop``: ``python -m ms2dist train stage1`` (one plain process, in-process data
    loading, Accelerate, logging to ``metrics.jsonl``; tracking, evaluation and periodic
    checkpoints off). ``bare``: the same model (``MidiSandwich2(cfg.model)``, same seed),
    the same Adam parameter groups and gradient clipping, ``stage1_loss(phase="vrae")`` for
    all 5 tracks, on batches drawn from the same loader and unpacked to float *before* the
    timed loop. Ratio = loop / bare (target >= 0.9x).
(b) ``2 processes``: the same stage-1 run under ``accelerate launch --config_file
    launch_configs/cpu_multiprocess.yaml --num_processes 2`` (gloo DDP, 1 thread each).
    Ratio = its global phrases/s / the 1-process ``loop`` row of (a).
(c) stage 2 (``--data.latent_cache=true|false``) from a 1+1-step stage-1 model (throughput
    does not depend on how well it is trained). Ratio = cache / no cache.

Figures: the trainer's ``train/phrases_per_s`` (all ranks together) per window of
``log_every`` steps from ``<out>/metrics.jsonl``; the bare loop times the same windows
itself. The first ``warmup`` windows of each run are dropped; the table gives the median of
the rest over all reps. Stage 2 rows also give latent rows/s: the trainer counts
``batch_size`` "phrases" per step, but with a bar-level preset (tiny) a cached batch holds
``batch_size`` *bar* rows while an uncached one holds ``batch_size`` phrases = 4x as many rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "lpd5_test_small"
CFG = REPO / "launch_configs" / "cpu_multiprocess.yaml"
BATCH = 32

# (preset, stage) -> (steps, log_every, warm-up windows dropped)
PLAN = {
    ("tiny", "stage1"): (60, 10, 1),
    ("paper", "stage1"): (24, 4, 1),
    ("tiny", "stage2"): (300, 30, 2),
    ("paper", "stage2"): (300, 30, 2),
    ("tiny", "stage2-nocache"): (120, 12, 2),
    ("paper", "stage2-nocache"): (60, 6, 2),
}


def _env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "ACCELERATE_", "MS2DIST_"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    return env


def _run(cmd: list[str], log: Path, timeout: float, env: dict[str, str]) -> str:
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                           timeout=timeout)
    text = log.read_text()
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    return text


def _common(steps: int, log_every: int) -> list[str]:
    return [f"--data.batch_size={BATCH}", "--data.num_workers=0", "--data.val_batches=1",
            f"--train.log_every={log_every}", "--train.eval_every=100000",
            "--train.eval_at_start=false", "--train.checkpoint_every=100000",
            "--tracking.enabled=false"]


def _stage1_overrides(steps: int, log_every: int) -> list[str]:
    # vrae_steps large + --max-steps: the whole run stays in the "vrae" phase and stops
    # without exporting (the end-of-run validation/checkpoint come after the last window).
    return _common(steps, log_every) + ["--train.vrae_steps=100000", "--train.refine_steps=0"]


def _windows(out: Path, steps: int, log_every: int, warmup: int) -> list[float]:
    rates = [json.loads(ln)["train/phrases_per_s"]
             for ln in (out / "metrics.jsonl").read_text().splitlines()
             if "train/phrases_per_s" in ln]
    return rates[:steps // log_every][warmup:]


# ------------------------------------------------------------------------------ contenders


def run_loop(preset: str, data: Path, out: Path, threads: int, world: int = 1) -> list[float]:
    steps, every, warm = PLAN[(preset, "stage1")]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = ["-m", "ms2dist", "train", "stage1", "--config", preset, "--data", str(data),
            "--out", str(out), "--resume", "never", "--max-steps", str(steps),
            *_stage1_overrides(steps, every)]
    env = _env(threads)
    if world == 1:
        cmd = [sys.executable, *args]
    else:
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CFG),
               "--num_processes", str(world), "--num_cpu_threads_per_process", str(threads),
               *args, "--expect-world-size", str(world)]
    _run(cmd, out / "log.txt", 120 + steps * 10, env)
    return _windows(out, steps, every, warm)


def run_bare(preset: str, data: Path, out: Path, threads: int,
             in_loop: bool = False) -> list[float]:
    steps, every, warm = PLAN[(preset, "stage1")]
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bare", preset, "--data", str(data),
           "--threads", str(threads)] + (["--bare-data-in-loop"] if in_loop else [])
    text = _run(cmd, out / "bare.log", 120 + steps * 10, _env(threads))
    rates = json.loads(text.strip().splitlines()[-1])["windows"]
    return rates[warm:]


def run_stage2(preset: str, data: Path, s1: Path, out: Path, threads: int,
               cache: bool) -> tuple[list[float], float | None]:
    steps, every, warm = PLAN[(preset, "stage2" if cache else "stage2-nocache")]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "ms2dist", "train", "stage2", "--config", preset,
           "--data", str(data), "--out", str(out), "--stage1", str(s1), "--resume", "never",
           "--max-steps", str(steps), *_common(steps, every),
           "--train.stage2_steps=100000", f"--data.latent_cache={str(cache).lower()}"]
    text = _run(cmd, out / "log.txt", 120 + steps * 5, _env(threads))
    m = re.search(r"latent cache: (\d+) latent rows on rank 0 in ([\d.]+)s", text)
    return _windows(out, steps, every, warm), (float(m.group(2)) if m else None)


# ------------------------------------------------------------------------------ bare loop


def bare_main(preset: str, data: Path, threads: int, in_loop: bool) -> None:
    """The stage-1 step with nothing around it; prints {"windows": [phrases/s, ...]}.

    ``in_loop``: draw and unpack every batch inside the timed loop, from the trainer's
    endless loader (same arguments as the trainer), instead of cycling 8 pre-unpacked ones.
    """
    import torch

    torch.set_num_threads(threads)
    from ms2dist.configs import resolve_config
    from ms2dist.dataset.batch import unpack_phrases
    from ms2dist.dataset.train_stream import train_loader
    from ms2dist.models import MidiSandwich2, stage1_loss
    from ms2dist.training.objectives import stage1_param_groups

    steps, every, _ = PLAN[(preset, "stage1")]
    cfg = resolve_config(preset, _stage1_overrides(steps, every))
    torch.manual_seed(cfg.train.seed)
    model = MidiSandwich2(cfg.model)
    model.requires_grad_(False)
    tracks = list(range(cfg.model.n_tracks))
    vrae_p, refine_p = stage1_param_groups(model, tracks)
    for p in vrae_p + refine_p:
        p.requires_grad_(True)
    # the trainer's groups; in the "vrae" phase the refine group has lr 0 and no grads
    opt = torch.optim.Adam([{"params": vrae_p, "lr": cfg.optim.lr},
                            {"params": refine_p, "lr": 0.0}],
                           lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    from ms2dist.training.job import endless, epoch_steps

    it = endless(train_loader(data / "train", BATCH, seed=cfg.train.seed, num_workers=0,
                               shuffle_buffer=cfg.data.shuffle_buffer,
                               epoch_steps=epoch_steps(data / "train", BATCH, 1)))
    pool = [] if in_loop else [unpack_phrases(next(it)["phrases"]) for _ in range(8)]
    kl_w, fb = cfg.train.kl_weight, cfg.train.free_bits
    windows = []
    t_last = time.perf_counter()
    for step in range(steps):
        x = unpack_phrases(next(it)["phrases"]) if in_loop else pool[step % len(pool)]
        loss = x.new_zeros(())
        for t in tracks:
            loss = loss + stage1_loss(model, x, t, phase="vrae", kl_weight=kl_w,
                                      free_bits=fb)[0]
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(vrae_p + refine_p, cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % every == 0:
            now = time.perf_counter()
            windows.append(BATCH * every / (now - t_last))
            t_last = now
    print(json.dumps({"windows": windows}))


# ------------------------------------------------------------------------------ main


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="round-robin repetitions")
    ap.add_argument("--a-presets", nargs="*", default=["tiny", "paper"])
    ap.add_argument("--b-presets", nargs="*", default=["tiny"])
    ap.add_argument("--c-presets", nargs="*", default=["tiny", "paper"])
    ap.add_argument("--threads", type=int, default=1, help="threads per process (all rows)")
    ap.add_argument("--data", type=Path, help="packed shards (default: pack lpd5_test_small)")
    ap.add_argument("--work", type=Path, help="keep runs here (default: a temp dir)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="only print the table of an earlier run's --json")
    ap.add_argument("--bare", metavar="PRESET", help=argparse.SUPPRESS)
    ap.add_argument("--bare-data-in-loop", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.report:
        return report(json.loads(a.report.read_text()))
    if a.bare:
        return bare_main(a.bare, a.data, a.threads, a.bare_data_in_loop)

    work = a.work or Path(tempfile.mkdtemp(prefix="ms2-train-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    env = _env(a.threads)
    data = a.data
    if data is None:
        data = work / "shards"
        if not (data / "train" / "manifest.json").is_file():
            _run([sys.executable, "-m", "ms2dist", "pack", "--input", str(SMALL), "--name",
                  "small", "--out", str(data), "--split", "60,20,20", "--workers", "2"],
                 work / "pack.log", 300, env)
    stage1 = {}
    for preset in a.c_presets:  # stage-1 models for stage 2: all five BVAEs, 1+1 steps
        s1 = work / f"stage1-{preset}"
        if not (s1 / "model" / "config.json").is_file():
            _run([sys.executable, "-m", "ms2dist", "train", "stage1", "--config", preset,
                  "--data", str(data), "--out", str(s1), "--resume", "never",
                  "--train.vrae_steps=1", "--train.refine_steps=1",
                  "--train.eval_every=1000000", "--train.eval_at_start=false",
                  "--tracking.enabled=false", "--data.num_workers=0",
                  "--data.batch_size=4", "--data.val_batches=1"], work / f"s1-{preset}.log",
                 900, env)
        stage1[preset] = s1 / "model"
    print(f"setup: {time.time() - t0:.0f} s, work dir {work}", file=sys.stderr)

    jobs: list[tuple[str, object]] = []
    for p in a.a_presets:
        jobs.append((f"a {p} loop", lambda p=p: run_loop(p, data, work / f"a-{p}-loop",
                                                          a.threads)))
        jobs.append((f"a {p} bare", lambda p=p: run_bare(p, data, work / f"a-{p}-bare",
                                                          a.threads)))
        jobs.append((f"a {p} bare+data", lambda p=p: run_bare(p, data, work / f"a-{p}-bared",
                                                               a.threads, in_loop=True)))
    for p in a.b_presets:
        if p not in a.a_presets:
            jobs.append((f"a {p} loop", lambda p=p: run_loop(p, data, work / f"a-{p}-loop",
                                                              a.threads)))
        jobs.append((f"b {p} 2proc", lambda p=p: run_loop(p, data, work / f"b-{p}-2proc",
                                                           a.threads, world=2)))
    for p in a.c_presets:
        for cache in (True, False):
            jobs.append((f"c {p} {'cache' if cache else 'nocache'}",
                         lambda p=p, c=cache: run_stage2(p, data, stage1[p],
                                                         work / f"c-{p}-{c}", a.threads, c)))

    windows: dict[str, list[float]] = {name: [] for name, _ in jobs}
    extra: dict[str, list[float]] = {name: [] for name, _ in jobs}
    loads = [_load()]
    for rep in range(a.reps):
        for name, fn in jobs:
            t = time.time()
            r = fn()
            w, build = r if isinstance(r, tuple) else (r, None)
            windows[name] += w
            if build is not None:
                extra[name].append(build)
            print(f"rep {rep + 1}/{a.reps} {name}: {len(w)} windows, median "
                  f"{statistics.median(w):,.1f} phrases/s ({time.time() - t:.0f} s, "
                  f"load {_load()})", file=sys.stderr, flush=True)
        loads.append(_load())

    result = {"batch": BATCH, "threads": a.threads, "reps": a.reps, "loads": loads,
              "a_presets": a.a_presets, "b_presets": a.b_presets, "c_presets": a.c_presets,
              "plan": {f"{k[0]} {k[1]}": v for k, v in PLAN.items()},
              "windows": windows, "cache_build_s": extra}
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    report(result)


def report(r: dict) -> None:
    """Print the table. Ratios are the median over reps of the ratio of that rep's medians
    (paired: both contenders ran back to back), so a load change between reps cancels."""
    import torch

    from ms2dist.configs import get_preset

    reps, windows = r["reps"], r["windows"]
    med = {k: statistics.median(v) for k, v in windows.items()}

    def per_rep(name: str) -> list[float]:
        w = windows[name]
        n = len(w) // reps
        return [statistics.median(w[i * n:(i + 1) * n]) for i in range(reps)]

    def ratio(num: str, den: str) -> tuple[float, str]:
        rs = [x / y for x, y in zip(per_rep(num), per_rep(den), strict=True)]
        return statistics.median(rs), "/".join(f"{x:.2f}" for x in rs)

    def segs(p: str) -> int:
        c = get_preset(p)
        return c.n_bars if c.bvae.bar_level else 1

    rows = []

    def row(what: str, name: str, vs: str = "", den: str = "", target: float = 0.0,
            note: str = "") -> None:
        w = windows[name]
        rtxt = ttxt = ""
        if den:
            rm, each = ratio(name, den)
            rtxt = f"{rm:.2f}x {vs} ({each})"
            if target:
                ttxt = f">= {target}x: " + ("met" if rm >= target else "**not met**")
        rows.append(f"| {what} | {med[name]:,.1f} | {min(w):,.1f}-{max(w):,.1f} | {len(w)} "
                    f"| {rtxt} | {ttxt} | {note} |")

    for p in r.get("a_presets", ["tiny", "paper"]):
        row(f"(a) stage 1 {p}: bare PyTorch loop", f"a {p} bare")
        row(f"(a) stage 1 {p}: bare loop + loader/unpack in the loop", f"a {p} bare+data",
            "bare", f"a {p} bare")
        row(f"(a) stage 1 {p}: `ms2dist train stage1`, 1 process", f"a {p} loop", "bare",
            f"a {p} bare", 0.9)
    for p in r.get("b_presets", ["tiny"]):
        row(f"(b) stage 1 {p}: 2 processes (DDP, gloo), all ranks", f"b {p} 2proc",
            "1 process", f"a {p} loop")
    for p in r.get("c_presets", ["tiny", "paper"]):
        s = segs(p)
        nc, c = f"c {p} nocache", f"c {p} cache"
        builds = r.get("cache_build_s", {}).get(c) or [float("nan")]
        rows_ratio = statistics.median(
            [x / (y * s) for x, y in zip(per_rep(c), per_rep(nc), strict=True)])
        row(f"(c) stage 2 {p}: no latent cache", nc, note=f"{med[nc] * s:,.0f} latent rows/s")
        row(f"(c) stage 2 {p}: latent cache", c, "no cache", nc,
            note=f"{med[c]:,.0f} latent rows/s ({rows_ratio:.2f}x no cache); cache build "
                 f"{statistics.median(builds):.2f} s")

    print(f"\nbatch {r['batch']}/process, {r['threads']} thread(s)/process, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {reps} reps, load avg "
          f"(1/5/15 min) before/after each rep: {' -> '.join(r['loads'])}")
    print("| what | phrases/s (median of all windows) | min-max of windows | windows "
          "| ratio (median of per-rep ratios; each rep) | target | note |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
