"""The stage-1 implementation choices, measured: what ``bench/README.md`` says was rejected.

    python3 bench/bench_stage1_options.py [--repeats 7]

One forward + backward per contender, contenders of a row interleaved, medians in ms, on
the shapes of a batch of 32 phrases of one track (128 bars of 48 steps x 84 pitches):

- LSTM: the five tracks' LSTMs as five ``nn.LSTM`` calls (oneDNN's fused kernel, what the
  VRAEs do) against one batched cell with the five weight sets stacked (``torch.bmm`` per
  step in a Python loop), at ``tiny`` (84 -> 64) and ``paper``-like (256 -> 256) sizes.
- Refine layers: five per-track convolutions against one ``conv3d(groups=5)`` of the same
  layers (both channels-last, internal padding), for 4 and 8 channels.
- Stem: the 1-channel first layer as a convolution against :func:`band_stem`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ms2dist.models.convs import band_stem, conv3d_same  # noqa: E402

K, N, T, P = 5, 128, 48, 84  # tracks; 32 phrases x 4 bars; steps per bar; pitches


def timed(contenders: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for f in contenders.values():
        f()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for k, f in contenders.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def lstm_row(inp: int, hid: int) -> dict[str, Callable[[], None]]:
    lstms = [torch.nn.LSTM(inp, hid, batch_first=True) for _ in range(K)]
    xs = torch.randn(K, N, T, inp)
    w_ih = (0.1 * torch.randn(K, inp, 4 * hid)).requires_grad_()
    w_hh = (0.1 * torch.randn(K, hid, 4 * hid)).requires_grad_()

    def separate() -> None:
        sum(lstm(x)[0].sum() for lstm, x in zip(lstms, xs, strict=True)).backward()

    def batched_cell() -> None:
        gates_in = (xs.reshape(K, N * T, inp) @ w_ih).view(K, N, T, 4 * hid)
        h = c = torch.zeros(K, N, hid)
        out = []
        for t in range(T):
            i, f, g, o = (gates_in[:, :, t] + torch.bmm(h, w_hh)).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        torch.stack(out, 2).sum().backward()

    return {"5 x nn.LSTM": separate, "batched cell": batched_cell}


def conv_row(c_in: int, c_out: int) -> dict[str, Callable[[], None]]:
    cl = torch.channels_last_3d
    xs = [torch.randn(N, c_in, 1, T, P).contiguous(memory_format=cl).requires_grad_()
          for _ in range(K)]
    ws = [torch.randn(c_out, c_in, 1, 3, 13, requires_grad=True) for _ in range(K)]
    xg = torch.randn(N, K * c_in, 1, T, P).contiguous(memory_format=cl).requires_grad_()
    wg = torch.randn(K * c_out, c_in, 1, 3, 13, requires_grad=True)

    def separate() -> None:
        for x, w in zip(xs, ws, strict=True):
            F.conv3d(x, w, padding=(0, 1, 6)).sum().backward()

    def grouped() -> None:
        F.conv3d(xg, wg, padding=(0, 1, 6), groups=K).sum().backward()

    return {"5 convolutions": separate, "conv3d(groups=5)": grouped}


def stem_row(channels: int) -> dict[str, Callable[[], None]]:
    stem = conv3d_same(1, channels, (1, 3, 12))
    x = torch.rand(N // 4, 4, T, P)

    def conv() -> None:
        F.conv3d(x.unsqueeze(1), F.pad(stem[1].weight, (1, 0)), stem[1].bias,
                 padding=(0, 1, 6)).sum().backward()

    def band() -> None:
        band_stem(x, stem).sum().backward()

    return {"conv3d": conv, "band_stem": band}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
          f"{args.repeats} (ms, forward + backward)\n")
    print("| what | shape | contender A (ms) | contender B (ms) | B / A |")
    print("|---|---|---|---|---|")
    rows = [("LSTM, 5 tracks", "84 -> 64", lstm_row(84, 64)),
            ("LSTM, 5 tracks", "256 -> 256", lstm_row(256, 256)),
            ("refine layer, 5 tracks", "4 -> 4", conv_row(4, 4)),
            ("refine layer, 5 tracks", "8 -> 8", conv_row(8, 8)),
            ("refine head, 5 tracks", "4 -> 1", conv_row(4, 1)),
            ("refine stem, 1 track", "1 -> 4", stem_row(4)),
            ("refine stem, 1 track", "1 -> 8", stem_row(8))]
    for what, shape, contenders in rows:
        (a, ta), (b, tb) = timed(contenders, args.repeats).items()
        print(f"| {what} | {shape} | {a}: {ta:.1f} | {b}: {tb:.1f} | {tb / ta:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
