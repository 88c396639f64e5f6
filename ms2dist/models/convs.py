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
  convolution (~6 GFLOP/s here). Along pitch it is a product with a banded (Toeplitz)
  matrix, so the whole layer is one matmul of the time- and bar-shifted inputs against
  that matrix: 7x the multiply-adds (84 pitches instead of 12 taps) at matmul speed,
  2-4x faster than the convolution (bench/README.md).
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


def _band(weight: Tensor, n_pitches: int) -> Tensor:
    """(C, 1, kb, kt, kp) kernel -> (kb * kt * P_in, P_out * C) banded pitch matrix."""
    c, _, kb, kt, kp = weight.shape
    before = _same_pads([kp])[0][0]
    tap = torch.arange(n_pitches)[:, None] - torch.arange(n_pitches)[None, :] + before
    inside = ((tap >= 0) & (tap < kp)).to(weight.device, weight.dtype)
    tap = tap.clamp(0, kp - 1).to(weight.device)
    band = weight.reshape(c, kb, kt, kp)[..., tap] * inside  # (C, kb, kt, P_in, P_out)
    return band.permute(1, 2, 3, 4, 0).reshape(kb * kt * n_pitches, n_pitches * c)


def band_stem(x: Tensor, conv: nn.Sequential) -> Tensor:
    """A one-input-channel :func:`conv3d_same` layer on ``x`` ``(N, bars, T, P)``.

    Returns ``(N, C, bars, T, P)`` in ``channels_last_3d`` (what :func:`same_conv` wants).
    """
    weight, bias = conv[1].weight, conv[1].bias
    if weight.shape[1] != 1:
        raise ValueError(f"band_stem needs a 1-channel input layer, got {weight.shape[1]}")
    n, bars, steps, pitches = x.shape
    (b0, b1), (t0, t1), _ = _same_pads(weight.shape[2:])
    xp = F.pad(x, (0, 0, t0, t1, b0, b1))
    kb, kt = weight.shape[2:4]
    shifted = torch.cat([xp[:, i:i + bars, j:j + steps] for i in range(kb) for j in range(kt)],
                        -1).reshape(n * bars * steps, -1)
    band = _band(weight, pitches)
    y = shifted @ band if bias is None else torch.addmm(bias.repeat(pitches), shifted, band)
    return y.view(n, bars, steps, pitches, -1).permute(0, 4, 1, 2, 3)
