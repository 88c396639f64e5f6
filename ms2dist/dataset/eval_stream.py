"""The evaluation stream: every phrase of a split exactly once across ranks.

Evaluation stream (:func:`eval_loader`): the split's phrases in shard order are cut into
``world_size`` contiguous ranges; every rank gets the same number of batches
(``ceil(ceil(N / world_size) / batch_size)``), padded with ``valid=False`` rows, so every
phrase is seen exactly once and DDP never waits on a rank with fewer batches. Workers of a
rank take every ``num_workers``-th batch.

A corrupt shard skipped with ``skip_corrupt=True`` comes back as ``valid=False`` padding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ms2dist import TRACKS
from ms2dist.dataset.batch import batch_dict, no_collate, to_torch
from ms2dist.dataset.blocks import CorruptShardError, SkipBudget, blocks_or_skip
from ms2dist.dataset.manifest import SplitInfo, read_split

__all__ = ["EvalLoader", "eval_loader"]


class _EvalStream(IterableDataset):
    def __init__(self, info: SplitInfo, batch_size: int, lo: int, hi: int, n_batches: int,
                 num_workers: int, skip_corrupt: bool, max_corrupt_fraction: float = 1.0):
        super().__init__()
        self.info, self.batch_size = info, batch_size
        self.lo, self.hi, self.n_batches = lo, hi, n_batches
        self.n_workers = max(1, num_workers)
        self.skip_corrupt = skip_corrupt
        self.budget = SkipBudget(len(info.shards), max_corrupt_fraction)

    def _empty(self):
        B, nb = self.batch_size, self.info.phrase_bytes
        return {
            "packed": np.zeros((B, nb), np.uint8),
            "index": np.full(B, -1, np.int64),
            "nonempty": np.zeros((B, len(TRACKS)), bool),
            "song": np.full(B, "", dtype=object),
            "valid": np.zeros(B, bool),
        }

    def _emit(self, j: int, buf: dict) -> dict:
        return batch_dict(buf["packed"], buf["index"], buf["nonempty"], buf["song"],
                           valid=buf["valid"], batch_index=j)

    def __iter__(self):
        wi = get_worker_info()
        w, W = (0, 1) if wi is None else (wi.id, wi.num_workers)
        B = self.batch_size
        mine = [j for j in range(self.n_batches) if j % W == w]
        bufs: dict[int, dict] = {}
        pending = list(mine)
        offset = 0
        for shard, count in zip(self.info.shards, self.info.counts, strict=True):
            s_lo, s_hi = offset, offset + count
            offset = s_hi
            # does this shard hold phrases of any of my remaining batches?
            wanted = [j for j in pending
                      if self.lo + j * B < s_hi and min(self.lo + (j + 1) * B, self.hi) > s_lo]
            if wanted and s_lo < self.hi and s_hi > self.lo:
                pos = s_lo
                blocks = blocks_or_skip(shard, self.info.phrase_bytes, self.skip_corrupt, count,
                                        self.budget)
                for block in blocks:
                    k = len(block)
                    p = np.arange(pos, pos + k)
                    pos += k
                    if pos > s_hi:
                        raise CorruptShardError(
                            f"corrupt shard {shard}: more phrases than the manifest's {count}")
                    rel = p - self.lo
                    sel = (p >= self.lo) & (p < self.hi) & ((rel // B) % W == w)
                    if not sel.any():
                        continue
                    for jb in np.unique(rel[sel] // B):
                        jb = int(jb)
                        m = sel & (rel // B == jb)
                        rows = rel[m] - jb * B
                        buf = bufs.setdefault(jb, self._empty())
                        buf["packed"][rows] = block.packed[m]
                        buf["index"][rows] = block.phrase_index[m]
                        buf["nonempty"][rows] = block.nonempty[m]
                        buf["song"][rows] = block.song_id[m]
                        buf["valid"][rows] = True
            # batches entirely before the next shard are complete
            while pending and min(self.lo + (pending[0] + 1) * B, self.hi) <= s_hi:
                j = pending.pop(0)
                yield self._emit(j, bufs.pop(j, None) or self._empty())
        for j in pending:
            yield self._emit(j, bufs.pop(j, None) or self._empty())


class EvalLoader:
    """Every phrase of a split once across ranks; the same number of batches on each rank."""

    def __init__(self, info: SplitInfo, batch_size: int, rank: int, world_size: int,
                 num_workers: int, skip_corrupt: bool, max_corrupt_fraction: float = 1.0):
        self.info = info
        self.batch_size = batch_size
        n = info.n_phrases
        per = math.ceil(n / world_size)
        self.lo, self.hi = min(rank * per, n), min((rank + 1) * per, n)
        self.n_batches = math.ceil(per / batch_size)
        self.num_workers = num_workers
        self.skip_corrupt, self.max_corrupt_fraction = skip_corrupt, max_corrupt_fraction

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[dict]:
        ds = _EvalStream(self.info, self.batch_size, self.lo, self.hi, self.n_batches,
                         self.num_workers, self.skip_corrupt, self.max_corrupt_fraction)
        dl = DataLoader(ds, batch_size=None, num_workers=self.num_workers,
                        collate_fn=no_collate)
        expect = 0
        for batch in dl:
            batch = to_torch(batch)
            if batch["batch_index"] != expect:
                raise RuntimeError("evaluation batches out of order")
            expect += 1
            yield batch
        if expect != self.n_batches:
            raise RuntimeError(f"evaluation stream gave {expect} of {self.n_batches} batches")


def eval_loader(
    split_dir: str | os.PathLike,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    skip_corrupt: bool = False,
    max_corrupt_fraction: float = 1.0,
) -> EvalLoader:
    """Exact-once evaluation batches for one rank (``valid`` marks real rows)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if batch_size < 1 or num_workers < 0:
        raise ValueError("batch_size >= 1 and num_workers >= 0 required")
    return EvalLoader(read_split(split_dir), batch_size, rank, world_size, num_workers,
                      skip_corrupt, max_corrupt_fraction)
