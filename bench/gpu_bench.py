"""Training-step throughput per precision on one device: what bench/gpu_check.sh prints.

    python3 bench/gpu_bench.py [--device cuda] [--preset paper] [--steps 200] [--quick]

Per setting (workload x precision) it trains a fresh model for ``--steps`` Adam steps on a
random {0,1} batch of 32 and prints phrases/s, achieved TFLOP/s (the analytic FLOPs of
``bench_model.py``) and the peak device memory. Workloads: the stage-1 VRAE phase, the
refine phase with separate and grouped refine nets, and stage 2 (frozen encoders + MFG-VAE).
Precisions: fp32, bf16 autocast, fp16 autocast with a gradient scaler. A setting whose loss
goes non-finite fails the run. ``--quick``: the ``tiny`` preset and 3 steps, so the script is
exercised on CPU in CI (tests/test_gpu_check.py); its figures mean nothing there, and fp16
is left out on CPU (oneDNN's LSTM cannot run it).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_model import step_flops  # noqa: E402

from ms2dist.configs import get_preset  # noqa: E402
from ms2dist.models import MidiSandwich2, stage2_loss  # noqa: E402
from ms2dist.models.losses import stage1_losses  # noqa: E402

WORKLOADS = ["vrae", "refine-separate", "refine-grouped", "stage2"]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_bf16_lstm() -> bool:
    """Whether oneDNN can run a bf16 LSTM here (AVX-512 CPUs can; AVX2-only ones cannot)."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(4, 4, batch_first=True)(torch.randn(1, 2, 4))
        return True
    except RuntimeError:
        return False


def run(preset: str, workload: str, precision: str, device: torch.device, steps: int,
        batch: int) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = get_preset(preset)
    model = MidiSandwich2(cfg).to(device)
    model.flatten_parameters()
    params = model.mfg.parameters() if workload == "stage2" else model.bvaes.parameters()
    opt = torch.optim.Adam(params, 1e-4)
    dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    shape = (batch, cfg.n_bars, cfg.steps_per_bar, cfg.n_pitches, cfg.n_tracks)
    x = (torch.rand(shape, device=device) < 0.02).float()
    tracks = list(range(cfg.n_tracks))

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        amp = (torch.autocast(device.type, dtype=dtype) if dtype is not None
               else contextlib.nullcontext())
        with amp:
            if workload == "stage2":
                loss = stage2_loss(model, x)[0]
            else:
                phase = "vrae" if workload == "vrae" else "refine"
                losses, _ = stage1_losses(model, x, tracks, phase=phase,
                                          grouped=workload == "refine-grouped")
                loss = torch.stack(losses).sum()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.item()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()  # warm-up: cuDNN/oneDNN plans, allocator
    _sync(device)
    times, last = [], 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        last = step()  # .item() synchronises, so each time is the whole step
        times.append(time.perf_counter() - t0)
    if not math.isfinite(last):
        raise SystemExit(f"{preset} {workload} {precision}: loss {last} is not finite")
    sec = statistics.median(times)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return {"phrases_s": batch / sec,
            "tflops": step_flops(cfg, workload) * batch / sec / 1e12, "mem_gib": mem,
            "loss": last}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precisions", nargs="+", choices=list(PRECISIONS),
                    help="default: all three on cuda; fp32 and bf16 on cpu, where oneDNN's "
                         "LSTM has no fp16 kernel")
    ap.add_argument("--quick", action="store_true", help="tiny preset, 3 steps (CI)")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.steps = "tiny", 3
    device = torch.device(args.device)
    if args.precisions is None:
        args.precisions = list(PRECISIONS) if device.type == "cuda" else ["fp32", "bf16"]
        if device.type == "cpu" and not cpu_bf16_lstm():
            args.precisions = ["fp32"]
            print("gpu_bench: this CPU's oneDNN has no bf16 LSTM (needs AVX-512): fp32 only")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, preset {args.preset}, batch "
          f"{args.batch}, {args.steps} steps per setting (median step time)")
    print("| workload | precision | phrases/s | TFLOP/s | peak memory (GiB) | last loss |")
    print("|---|---|---|---|---|---|")
    for wl in WORKLOADS:
        for prec in args.precisions:
            r = run(args.preset, wl, prec, device, args.steps, args.batch)
            print(f"| {wl} | {prec} | {r['phrases_s']:.1f} | {r['tflops']:.3f} | "
                  f"{r['mem_gib']:.2f} | {r['loss']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
