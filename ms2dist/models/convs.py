"""The refine nets' convolutions: 'same'-size Conv3d layers, and how to run them fast.

A refine layer is built as ``nn.Sequential(ConstantPad3d, Conv3d)`` (:func:`conv3d_same`),
which is the layer's definition and its saved format (``stem.1.weight``, ...). Running it
that way copies every activation into a padded buffer, and for a net of 4-8 channels that
copy and its backward are a third of the step on CPU. The forward passes use two faster,
equal computations instead (tests/test_grouped.py checks both against the modules):

- :func:`same_conv`: the convolution pads internally. An even kernel size (12 pitches) has
  asymmetric 'same' padding, which a convolution cannot do; one zero tap in front of the
  kernel (12 -> 13, 8% more multiply-adds) makes it symmetric.
- :func:`band_stem`: the first layer has one input channel, the worst case for a direct
  convolution (~6 GFLOP/s here). Along pitch it is a product with a banded matrix, so
  the whole layer is one matmul of windows of the input against one block of that
  matrix, at matmul speed (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["conv3d_same", "same_conv", "band_stem"]


def _same_pads(kernel: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) 'same' padding per kernel dimension: more after for an even size."""
    return [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel]


def conv3d_same(c_in: int, c_out: int, kernel: tuple[int, int, int]) -> nn.Sequential:
    """Stride-1 Conv3d whose output has the input's size, for odd or even kernels."""
    pad: list[int] = []
    for before, after in reversed(_same_pads(kernel)):  # F.pad order: last dim first
        pad += [before, after]
    return nn.Sequential(nn.ConstantPad3d(tuple(pad), 0.0), nn.Conv3d(c_in, c_out, kernel))


def _weights(convs: Sequence[nn.Sequential]) -> tuple[Tensor, Tensor | None]:
    if len(convs) == 1:
        return convs[0][1].weight, convs[0][1].bias
    bias = None if convs[0][1].bias is None else torch.cat([c[1].bias for c in convs])
    return torch.cat([c[1].weight for c in convs]), bias


def same_conv(h: Tensor, convs: Sequence[nn.Sequential]) -> Tensor:
    """:func:`conv3d_same` layers on ``(N, C, bars, T, P)`` without padding ``h`` first.

    One layer, or several of one shape as a grouped convolution: ``convs[k]`` then sees
    only the ``k``-th block of ``h``'s channels, with its own weights.
    """
    weight, bias = _weights(convs)
    taps: list[int] = []
    for k in reversed(weight.shape[2:]):  # F.pad order: last dim first
        taps += [1 - k % 2, 0]
    if any(taps):
        weight = F.pad(weight, taps)
    padding = tuple(k // 2 for k in weight.shape[2:])
    return F.conv3d(h, weight, bias, padding=padding, groups=len(convs))


def _block_band(weight: Tensor) -> Tensor:
    """(C, 1, kb, kt, kp) kernel -> (kb * kt * 2kp, kp * C): one pitch block's matrix.

    Row ``(shift, q)`` is pitch ``q`` of a ``2 kp``-wide input window, column ``(r, c)``
    output pitch ``r`` of the block (channel ``c``); the tap joining them is ``q - r``.
    """
    c, _, kb, kt, kp = weight.shape
    tap = torch.arange(2 * kp)[:, None] - torch.arange(kp)[None, :]  # (q, r)
    inside = ((tap >= 0) & (tap < kp)).to(weight.device, weight.dtype)
    tap = tap.clamp(0, kp - 1).to(weight.device)
    band = weight.reshape(c, kb * kt, kp)[..., tap] * inside  # (C, shifts, 2kp, kp)
    return band.permute(1, 2, 3, 0).reshape(kb * kt * 2 * kp, kp * c)


def band_stem(x: Tensor, conv: nn.Sequential) -> Tensor:
    """A one-input-channel :func:`conv3d_same` layer on ``x`` ``(N, bars, T, P)``.

    Output pitches go in blocks of the kernel's width ``kp``; a block reads a window of
    ``2 kp`` input pitches (its own and the next block's, shifted by the 'same' padding)
    at every bar and time shift of the kernel, so the layer is one matmul of those
    windows against :func:`_block_band` (2x the convolution's multiply-adds, not 7x as a
    full pitch-by-pitch matrix would be). Returns ``(N, C, bars, T, P)`` in
    ``channels_last_3d``, what :func:`same_conv` wants.
    """
    weight, bias = conv[1].weight, conv[1].bias
    if weight.shape[1] != 1:
        raise ValueError(f"band_stem needs a 1-channel input layer, got {weight.shape[1]}")
    n, bars, steps, pitches = x.shape
    kb, kt, kp = weight.shape[2:]
    (b0, b1), (t0, t1), (p0, _) = _same_pads(weight.shape[2:])
    blocks = -(-pitches // kp)
    xp = F.pad(x, (p0, (blocks + 1) * kp - pitches - p0, t0, t1, b0, b1))
    shifts = torch.stack([xp[:, i:i + bars, j:j + steps] for i in range(kb) for j in range(kt)],
                         3)  # (N, bars, T, shifts, padded P)
    windows = shifts.unfold(-1, 2 * kp, kp).transpose(3, 4)  # (N, bars, T, blocks, shifts, 2kp)
    rows = windows.reshape(n * bars * steps * blocks, -1)
    band = _block_band(weight)
    y = rows @ band if bias is None else torch.addmm(bias.repeat(kp), rows, band)
    y = y.view(n, bars, steps, blocks * kp, -1)[:, :, :, :pitches]
    return y.permute(0, 4, 1, 2, 3).contiguous(memory_format=torch.channels_last_3d)
