"""Forward+backward throughput of MIDI-Sandwich2 presets, with analytic FLOPs and the peak.

    python3 bench/bench_model.py [--presets tiny paper] [--batch 32] [--repeats 5]

Workloads per preset, each one optimiser-free training step on a random {0,1} batch, all 5
tracks (the phases of ``ms2dist train stage1`` and stage 2):

- ``vrae``: the stage-1 VRAE phase (BCE + KL, gradients through the VRAEs).
- ``refine-*``: the refine phase (frozen VRAE forward, refine nets trained) four ways:
  ``refine-before`` the five refine nets one after another through their explicit-padding
  modules (the trainer before this work); ``refine-grouped-padded`` one grouped
  convolution per layer over explicitly padded activations (the first grouped version);
  ``refine-grouped`` the grouped stack of ``models/grouped.py`` (the trainer's default on
  CUDA) and ``refine-separate`` net by net (the default elsewhere), both with the fast
  layers of ``models/convs.py`` (internal padding, the stem as one banded matmul). The two
  older paths are reproduced here by swapping functions for the step; the package no
  longer has them.
- ``stage2``: frozen BVAE encoders (no grad) + MFG-VAE forward and backward.

FLOPs are counted analytically (multiply-add = 2 FLOPs), forward only, then a backward pass is
taken as 2x its forward (the usual estimate; frozen parts have none):

- LSTM: ``8 * h * (in + h)`` per step per direction (4 gates, input and recurrent matmuls);
- Linear: ``2 * in * out`` per application;
- Conv3d: ``2 * c_in * c_out * prod(kernel)`` per output voxel (stride 1, 'same' size).

Elementwise work (gates, sigmoids, losses, padding) is ignored, so GFLOP/s is a lower bound
of the arithmetic actually done. ``peak`` is the machine's fp32 matmul rate measured in the
same run (a 2048^3 ``torch.mm``, median); ``% peak`` = achieved / that. Timings are medians
over ``--repeats`` steps after one warm-up, the contenders of a preset interleaved.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ms2dist.configs import get_preset  # noqa: E402
from ms2dist.models import (  # noqa: E402
    MidiSandwich2,
    ModelConfig,
    grouped,  # noqa: E402
    n_params,
    stage2_loss,
)
from ms2dist.models.bvae import RefineNet  # noqa: E402
from ms2dist.models.losses import stage1_losses  # noqa: E402

WORKLOADS = ["vrae", "refine-before", "refine-grouped-padded", "refine-grouped",
             "refine-separate", "stage2"]


def _padded_forward(self: RefineNet, probs: torch.Tensor) -> torch.Tensor:
    """RefineNet.forward before same_conv: every layer pads a copy of its input."""
    h = self.units(self.stem(probs.unsqueeze(1)))
    out = self.head(torch.relu(h)).squeeze(1)
    return out + torch.logit(probs, eps=1e-6) if self.skip else out


def _padded_grouped_conv(h: torch.Tensor, convs) -> torch.Tensor:
    """The first grouped layer: explicit F.pad, then conv3d(groups=k)."""
    weight = torch.cat([c[1].weight for c in convs])
    bias = torch.cat([c[1].bias for c in convs]) if convs[0][1].bias is not None else None
    return F.conv3d(F.pad(h, convs[0][0].padding), weight, bias, groups=len(convs))


def lstm_flops(steps: int, inp: int, h: int, dirs: int = 1) -> float:
    return 8.0 * h * (inp + h) * steps * dirs


def bvae_flops(cfg: ModelConfig) -> tuple[float, float, float]:
    """(encoder, VRAE decoder, refiner) forward FLOPs of one BVAE on one phrase's track."""
    b = cfg.bvae
    steps = cfg.n_bars * cfg.steps_per_bar  # the same total with bar-level sequences
    segs = cfg.n_bars if b.bar_level else 1
    dirs = 2 if b.encoder_bidirectional else 1
    enc = lstm_flops(steps, cfg.n_pitches, b.hidden, dirs) + segs * 2 * (
        2 * dirs * b.hidden * b.latent
    )
    dec = lstm_flops(steps, b.latent + b.decoder_position_dim, b.hidden)
    dec += steps * 2 * b.hidden * cfg.n_pitches
    if b.z_to_state:
        dec += segs * 2 * b.latent * 2 * b.hidden
    vox = steps * cfg.n_pitches
    k, c = math.prod(b.refine.kernel), b.refine.channels
    ref = 2 * k * vox * (c + 2 * b.refine.n_units * c * c + c)
    return enc, dec, ref


def mfg_flops(cfg: ModelConfig) -> float:
    """MFG-VAE forward FLOPs per phrase (encoder + decoder)."""
    m, t, feat = cfg.mfg, cfg.n_tracks, 2 * cfg.bvae.latent
    segs = cfg.n_bars if cfg.bvae.bar_level else 1
    if m.strategy in ("vrae", "lstm"):
        f = lstm_flops(t, feat, m.hidden) + lstm_flops(t, m.latent, m.hidden)
        f += 2 * 2 * m.hidden * m.latent + t * 2 * m.hidden * feat
        if m.strategy == "vrae":
            f += 2 * m.latent * 2 * m.hidden
    else:
        h, n = m.hidden, m.mlp_layers
        if m.strategy == "project":  # per-track projections, then MLP from project_dim
            f = 2 * t * feat * m.project_dim + 2 * m.project_dim * h
        else:
            f = 2 * t * feat * h
        f += 2 * (n - 1) * h * h  # encoder hidden layers
        f += 2 * 2 * h * m.latent  # mu and log-variance heads
        f += 2 * m.latent * h + 2 * (n - 1) * h * h + 2 * h * t * feat  # decoder
    return segs * f


def step_flops(cfg: ModelConfig, workload: str) -> float:
    """FLOPs of one phrase's training step (forward + backward) in ``workload``."""
    enc, dec, ref = bvae_flops(cfg)
    t = cfg.n_tracks
    if workload == "vrae":
        return 3 * t * (enc + dec)
    if workload.startswith("refine"):  # frozen VRAE forward, refine forward + backward
        return t * (enc + dec + 3 * ref)
    return t * enc + 3 * mfg_flops(cfg)


def matmul_peak(repeats: int = 5, n: int = 2048) -> float:
    """fp32 GFLOP/s of a large ``torch.mm`` on this machine, now (median)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def make_step(model: MidiSandwich2, x: torch.Tensor, workload: str):
    tracks = list(range(model.cfg.n_tracks))

    def run() -> None:
        model.zero_grad(set_to_none=True)
        if workload == "stage2":
            loss = stage2_loss(model, x, kl_weight=1.0, free_bits=0.0)[0]
        else:
            phase = "vrae" if workload == "vrae" else "refine"
            losses, _ = stage1_losses(model, x, tracks, phase=phase, grouped=workload in (
                "refine-grouped", "refine-grouped-padded"))
            loss = torch.stack(losses).sum()
        loss.backward()

    def step() -> None:
        forward, conv = RefineNet.forward, grouped.same_conv
        if workload == "refine-before":
            RefineNet.forward = _padded_forward
        elif workload == "refine-grouped-padded":
            grouped.same_conv = _padded_grouped_conv
        try:
            run()
        finally:
            RefineNet.forward, grouped.same_conv = forward, conv

    return step


def bench(preset: str, workloads: list[str], batch: int, repeats: int
          ) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    cfg = get_preset(preset)
    model = MidiSandwich2(cfg)
    x = torch.rand(batch, cfg.n_bars, cfg.steps_per_bar, cfg.n_pitches, cfg.n_tracks) < 0.02
    x = x.float()
    steps = {w: make_step(model, x, w) for w in workloads}
    for s in steps.values():
        s()  # warm-up (allocator, oneDNN primitives)
    times: dict[str, list[float]] = {w: [] for w in workloads}
    for _ in range(repeats):  # interleaved, so a noisy moment hits every contender
        for w, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[w].append(time.perf_counter() - t0)
    out = {}
    for w in workloads:
        sec = statistics.median(times[w])
        flops = step_flops(cfg, w)
        out[w] = {"params": n_params(model), "sec": sec, "phrases_s": batch / sec,
                  "gflop_phrase": flops / 1e9, "gflops": flops * batch / sec / 1e9}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    ap.add_argument("--workloads", nargs="+",
                    default=WORKLOADS, choices=WORKLOADS)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    peak = matmul_peak()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"median of {args.repeats}, load avg {load:.1f} (other processes skew CPU timings); "
        f"fp32 matmul peak {peak:.1f} GFLOP/s"
    )
    hdr = f"{'preset':>15} {'workload':>16} {'params':>10} {'s/step':>8} "
    print(hdr + f"{'phrases/s':>10} {'GFLOP/phrase':>13} {'GFLOP/s':>8} {'% peak':>7}")
    for preset in args.presets:
        rows = bench(preset, args.workloads, args.batch, args.repeats)
        for wl, r in rows.items():
            print(
                f"{preset:>15} {wl:>16} {r['params']:>10,} {r['sec']:>8.3f} "
                f"{r['phrases_s']:>10.1f} {r['gflop_phrase']:>13.3f} {r['gflops']:>8.1f} "
                f"{100 * r['gflops'] / peak:>6.1f}%",
                flush=True,
            )
        default = "refine-separate"  # this bench runs on CPU: the trainer's CPU default
        if default in rows:
            sec = rows[default]["sec"]
            line = f"{preset:>15} {default} (the default on cpu)"
            for other in ("refine-before", "refine-grouped-padded", "refine-grouped"):
                if other in rows and other != default:
                    line += f"; {rows[other]['sec'] / sec:.2f}x faster than {other}"
            if "vrae" in rows:
                line += f"; refine / vrae step time {sec / rows['vrae']['sec']:.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
