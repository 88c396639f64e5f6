"""Stage-2 latent cache: encode the train split once with the frozen BVAE encoders.

The MFG-VAE only ever sees the BVAEs' (mu, logvar) matrices, and the BVAEs are
frozen, so re-running five LSTM encoders over every batch for every step is wasted
work. Each rank encodes its exact-once share of the split and then samples
mini-batches from it; the order is a pure function of (seed, rank, position), so a
resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ms2dist.dataset.batch import unpack_phrases
from ms2dist.dataset.eval_stream import eval_loader

__all__ = ["LatentCache"]


class LatentCache:
    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """``mu``/``logvar``: (phrases, segments, tracks, latent)."""
        if len(mu) == 0:
            raise ValueError("latent cache is empty on this rank: the train split has fewer "
                             "phrases than ranks; pack more songs or use fewer processes")
        self.mu, self.logvar = mu, logvar

    @property
    def size(self) -> int:
        return len(self.mu)

    @classmethod
    @torch.no_grad()
    def build(cls, model: Any, split_dir: Path, accelerator: Any, batch_size: int,
              shape: Sequence[int], data: Any = None) -> LatentCache:
        """``data``: the config's data section (its corrupt-shard policy), if any."""
        device = accelerator.device
        mus, lvs = [], []
        was_training = model.training
        model.eval()
        for batch in eval_loader(split_dir, max(batch_size, 64),
                                 rank=accelerator.process_index,
                                 world_size=accelerator.num_processes,
                                 skip_corrupt=bool(getattr(data, "skip_corrupt", False)),
                                 max_corrupt_fraction=getattr(data, "max_corrupt_fraction", 0.1)):
            x = unpack_phrases(batch["phrases"].to(device), device, shape=shape)
            mu, logvar = model.encode_tracks(x)
            # encode_tracks returns one row per segment (bar-level BVAEs: 4 per phrase):
            # keep them grouped per phrase, so a batch is batch_size *phrases* as uncached.
            mu = mu.view(len(x), -1, *mu.shape[1:])
            logvar = logvar.view(len(x), -1, *logvar.shape[1:])
            valid = batch["valid"].to(device)
            mus.append(mu[valid].float().cpu())
            lvs.append(logvar[valid].float().cpu())
        model.train(was_training)
        return cls(torch.cat(mus), torch.cat(lvs))

    def batches(self, batch_size: int, *, seed: int, rank: int,
                start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Infinite stream of (mu, logvar) batches; batch k is the same whatever `start`."""
        n = self.size
        per_epoch = max(1, n // batch_size)
        k = start
        perm_epoch, perm = -1, None
        while True:
            epoch, pos = divmod(k, per_epoch)
            if epoch != perm_epoch:
                rng = np.random.default_rng([seed, rank, epoch])
                perm, perm_epoch = rng.permutation(n), epoch
            idx = torch.from_numpy(perm[pos * batch_size:(pos + 1) * batch_size])
            if len(idx) < batch_size:  # fewer phrases than one batch: sample with repeats
                idx = torch.from_numpy(rng.integers(0, n, batch_size))
            yield self.mu[idx].flatten(0, 1), self.logvar[idx].flatten(0, 1)
            k += 1
