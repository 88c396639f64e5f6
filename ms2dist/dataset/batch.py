"""Batches: what both streams hand over, and how packed phrases become model input.

Batches are dicts: ``phrases`` uint8 ``(B, n_bytes)`` packed bits, ``nonempty`` bool
``(B, 5)``, ``phrase_index`` int64 ``(B,)``, ``song_id`` list of str, plus ``step`` (int,
training stream: the global step the batch belongs to) or ``valid`` (bool ``(B,)``,
evaluation stream: False on padding). Turn ``phrases`` into model input with
:func:`unpack_phrases` on the model's device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ms2dist.dataset.malloc import keep_freed_buffers
from ms2dist.layout import DEFAULT_LAYOUT

__all__ = ["batch_dict", "to_torch", "no_collate", "worker_init", "unpack_phrases"]


def batch_dict(packed, index, nonempty, song, **extra) -> dict:
    """A batch as numpy arrays: pickled through the worker pipe in one piece (tensors would
    each go through a shared-memory file, several times slower for small batches)."""
    d = {
        "phrases": np.ascontiguousarray(packed),
        "nonempty": np.ascontiguousarray(nonempty),
        "phrase_index": np.ascontiguousarray(index),
        "song_id": [str(s) for s in song],
    }
    d.update(extra)
    return d


def worker_init(_worker_id: int) -> None:
    keep_freed_buffers()


def no_collate(x):
    return x


def to_torch(d: dict) -> dict:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in d.items()}


def unpack_phrases(
    packed: torch.Tensor | np.ndarray,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    shape: Sequence[int] = DEFAULT_LAYOUT.shape,
) -> torch.Tensor:
    """Packed uint8 ``(B, n_bytes)`` -> ``(B, *shape)`` tensor of 0/1 on ``device``.

    The bits are unpacked on the target device (8x less host->device traffic); same bit
    order as ``np.packbits`` (big bit order, C order). ``shape``: the split's layout
    (``read_split(dir).layout.shape``; the default layout's when omitted).
    """
    if not isinstance(packed, torch.Tensor):
        packed = torch.from_numpy(np.ascontiguousarray(packed, dtype=np.uint8))
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"expected uint8 (B, n_bytes), got {packed.dtype} {tuple(packed.shape)}")
    x = packed.to(device, non_blocking=True) if device is not None else packed
    n_bits = int(np.prod(shape))
    if x.shape[1] * 8 < n_bits:
        raise ValueError(f"{x.shape[1]} bytes cannot hold {n_bits} bits")
    shifts = torch.arange(7, -1, -1, device=x.device, dtype=torch.uint8)
    bits = torch.bitwise_and(torch.bitwise_right_shift(x.unsqueeze(-1), shifts), 1)
    bits = bits.reshape(x.shape[0], -1)
    if bits.shape[1] != n_bits:
        bits = bits[:, :n_bits]
    return bits.reshape(x.shape[0], *shape).to(dtype)
