"""The refine nets of several tracks as one grouped convolution stack.

Each track's :class:`~ms2dist.models.bvae.RefineNet` is a handful of Conv3d layers with a few
channels (4-8). Run one after another, five tracks make five small convolutions per layer;
on a GPU each is a kernel launch too small to fill the chip. Here the tracks' feature maps
sit side by side on the channel axis and every layer is *one* ``conv3d(groups=n_tracks)``:
group ``k`` sees only track ``k``'s channels, with track ``k``'s own weights, so the result
is the per-track computation exactly (to float rounding), and so are the gradients.

The grouped weights are concatenated from the tracks' own parameters at every call
(a few KB; differentiable), so each track keeps its parameters, optimiser state and saved
tensors: nothing about the model's format changes. Activations are kept in
``channels_last_3d``. On CPU the net-by-net path is faster (:func:`refine_tracks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .bvae import RefineNet
from .convs import band_stem, same_conv

__all__ = ["can_group", "grouped_refine_logits", "refine_tracks"]


def can_group(nets: Sequence[RefineNet]) -> bool:
    """Whether ``nets`` are distinct modules of one architecture (what grouping needs)."""
    if len(nets) < 2 or len({id(n) for n in nets}) != len(nets):
        return False
    shapes = {tuple(tuple(p.shape) for p in n.parameters()) for n in nets}
    return len(shapes) == 1 and len({n.skip for n in nets}) == 1


def grouped_refine_logits(nets: Sequence[RefineNet], probs: Tensor) -> Tensor:
    """VRAE probabilities ``(B, bars, T, P, K)`` -> refined logits of the same shape.

    ``nets[k]`` refines track ``k`` of the last axis; equal to
    ``torch.stack([nets[k](probs[..., k]) for k in range(K)], -1)`` (tests/test_grouped.py).
    """
    k = len(nets)
    if probs.shape[-1] != k:
        raise ValueError(f"probs has {probs.shape[-1]} tracks on its last axis, nets {k}")
    # Each track's stem is its own matmul (convs.band_stem), the tracks' channels side by
    # side in channels_last_3d for the grouped layers.
    h = torch.cat([band_stem(probs[..., j], n.stem) for j, n in enumerate(nets)], 1)
    for i in range(len(nets[0].units)):
        units = [n.units[i] for n in nets]
        r = same_conv(torch.relu(h), [u.conv1 for u in units])
        h = h + same_conv(torch.relu_(r), [u.conv2 for u in units])
    out = same_conv(torch.relu_(h), [n.head for n in nets]).permute(0, 2, 3, 4, 1)
    return out + torch.logit(probs, eps=1e-6) if nets[0].skip else out


def refine_tracks(nets: Sequence[RefineNet], probs: Sequence[Tensor],
                  grouped: bool | None = None) -> list[Tensor]:
    """Refined logits of each track, ``(B, bars, T, P)`` for ``nets[k]`` on ``probs[k]``.

    Grouped when :func:`can_group`, else net by net, each on its own contiguous tensor
    (a stacked ``(..., K)`` batch would hand every net a strided slice, which the pads and
    elementwise ops then read ~2x slower).

    ``grouped=None`` groups on CUDA only. On CPU, oneDNN runs a grouped convolution of
    4-8 channels per group no faster than the groups one by one (8 -> 8 channels: 1.7x
    slower), so there the nets run one after another (bench/README.md). Net by net is
    also the shared-BVAE ablation (one module for every track) and ``grouped=False``.
    """
    if len(probs) != len(nets):
        raise ValueError(f"{len(probs)} tracks of probabilities for {len(nets)} refine nets")
    if grouped is None:
        grouped = probs[0].device.type == "cuda"
    if grouped and can_group(nets):
        out = grouped_refine_logits(nets, torch.stack(list(probs), -1))
        return [out[..., k] for k in range(len(nets))]
    return [n(p) for n, p in zip(nets, probs, strict=True)]
