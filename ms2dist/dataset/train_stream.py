"""The training stream: resampled, shuffled, reproducible batches for one rank.

Training stream (:func:`train_loader`): shards are *resampled* (drawn with replacement,
weighted by phrase count), several shards are interleaved block by block, phrases go
through a numpy shuffle buffer and come out as ready-made batches (one Python step per
batch, not per phrase). Ranks draw independently (the rank is part of the seed), so no
shard list has to be divided and no rank can run dry.

Reproducibility and resume: steps are handed over in groups of ``K = max(1, 128 //
batch_size)``; global step ``s`` is produced by *virtual stream* ``v = (s // K) %
max(1, num_workers)`` of epoch ``e = s // epoch_steps`` (``e = 0`` when ``epoch_steps`` is
None), and each (seed, rank, v, e) stream is an independent seeded generator. Batches thus
depend on the step, not on which process makes them. ``train_loader(..., start_step=k)``
re-creates exactly the batches of an uninterrupted run from step k on: it reseeds at the
epoch of k and *fast-forwards* each virtual stream over its batches before k inside that
epoch (shards are still read, batches are not built). So resume is exact provided seed,
world_size/rank, num_workers, batch_size, shuffle_buffer and epoch_steps are unchanged; set
``epoch_steps`` to bound the fast-forward (without it, resuming at step k re-reads about
k * batch_size phrases spread over the workers). ``TrainLoader.state_dict()`` gives the
step to resume from; ``load_state_dict`` refuses a changed stream definition.

Hand-over: with the ``fork`` start method, workers write ``phrases`` into a shared-memory
ring inherited from the loader (only the small fields are pickled); a slot is reused only
after more than ``prefetch_factor * num_workers`` later groups, i.e. after the main
process has copied it out.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ms2dist import TRACKS
from ms2dist.dataset.batch import batch_dict, no_collate, worker_init
from ms2dist.dataset.blocks import Block, CorruptShardError, SkipBudget, blocks_or_skip
from ms2dist.dataset.manifest import SplitInfo, read_split

__all__ = ["TrainLoader", "train_loader", "group_size"]


class _Pool:
    """Shuffle buffer: phrases in fixed numpy slots; a refill writes blocks into free slots,
    a drain hands out random occupied slots. Each phrase is copied once in and once out."""

    def __init__(self, n_bytes: int, cap: int):
        self.packed = np.empty((cap, n_bytes), np.uint8)
        self.index = np.empty(cap, np.int64)
        self.nonempty = np.empty((cap, len(TRACKS)), bool)
        self.song = np.empty(cap, object)
        self.occupied = np.zeros(cap, bool)
        self.n = 0

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self.packed.shape[0])
        for name in ("packed", "index", "nonempty", "song", "occupied"):
            old = getattr(self, name)
            new = np.zeros((cap,) + old.shape[1:], old.dtype) if name == "occupied" else \
                np.empty((cap,) + old.shape[1:], old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def add(self, b: Block) -> None:
        k = len(b)
        if self.n + k > self.packed.shape[0]:
            self._grow(self.n + k)
        slots = np.flatnonzero(~self.occupied)[:k]
        self.packed[slots], self.index[slots] = b.packed, b.phrase_index
        self.nonempty[slots], self.song[slots] = b.nonempty, b.song_id
        self.occupied[slots] = True
        self.n += k

    def drain(self, rng: np.random.Generator, batch: int) -> Iterator[tuple]:
        """Hand out about half of the buffer, in random order, as batches."""
        emit = max(batch, (self.n // 2) // batch * batch)
        sel = rng.permutation(np.flatnonzero(self.occupied))[:emit]
        packed, index = self.packed[sel], self.index[sel]
        nonempty, song = self.nonempty[sel], self.song[sel]
        self.occupied[sel] = False
        self.n -= emit
        for i in range(0, emit, batch):
            s = slice(i, i + batch)
            yield packed[s], index[s], nonempty[s], song[s]


class _TrainStream(IterableDataset):
    def __init__(self, info: SplitInfo, batch_size: int, seed: int, rank: int,
                 num_workers: int, shuffle_buffer: int, shard_mix: int,
                 start_step: int, end_step: int | None, epoch_steps: int | None,
                 skip_corrupt: bool, ring: mmap.mmap | None = None, ring_slots: int = 0,
                 max_corrupt_fraction: float = 1.0):
        super().__init__()
        self.ring, self.ring_slots = ring, ring_slots
        self.group = group_size(batch_size)
        self.info = info
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.n_streams = max(1, num_workers)
        self.shuffle_buffer = max(shuffle_buffer, 2 * batch_size)
        self.shard_mix = max(1, shard_mix)
        self.start_step = start_step
        self.end_step = end_step
        self.epoch_steps = epoch_steps
        self.skip_corrupt = skip_corrupt
        self.budget = SkipBudget(len(info.shards), max_corrupt_fraction)

    def ring_view(self) -> np.ndarray:
        """(workers, slots, group * batch, bytes) view of the shared ring (fork-inherited)."""
        assert self.ring is not None
        return np.frombuffer(self.ring, np.uint8).reshape(
            self.n_streams, self.ring_slots, self.group * self.batch_size,
            self.info.phrase_bytes)

    def _virtual_batches(self, v: int, epoch: int, skip: int) -> Iterator[tuple]:
        """Batches of virtual stream v in epoch `epoch`, the first `skip` not materialised."""
        info = self.info
        rng = np.random.default_rng([self.seed, self.rank, v, epoch, 0x6D73])
        weights = np.asarray(info.counts, np.float64)
        weights /= weights.sum()
        pool = _Pool(info.phrase_bytes, self.shuffle_buffer + 2 * 256)
        active: list[tuple[int, Iterator[Block]]] = []
        failures = 0
        j = 0
        while True:
            while len(active) < self.shard_mix:
                # resample with replacement, but not a shard that is open right now (its
                # blocks would meet themselves in the buffer) unless all are open
                w = weights.copy()
                w[[i for i, _ in active]] = 0.0
                w = weights if w.sum() == 0 else w / w.sum()
                s = int(rng.choice(len(info.shards), p=w))
                active.append((s, blocks_or_skip(info.shards[s], info.phrase_bytes,
                                                  self.skip_corrupt, info.counts[s],
                                                  self.budget)))
            a = int(rng.integers(len(active)))
            block = next(active[a][1], None)
            if block is None:
                active.pop(a)
                failures += 1
                if failures > 50 * len(info.shards) + 100:
                    raise CorruptShardError(f"no readable phrases in the shards of {info.dir}")
                continue
            failures = 0
            pool.add(block)
            if pool.n >= self.shuffle_buffer:
                for out in pool.drain(rng, self.batch_size):
                    if j >= skip:
                        yield out
                    j += 1

    def __iter__(self):
        wi = get_worker_info()
        W, K = self.n_streams, self.group
        if wi is not None and wi.num_workers != W:
            raise RuntimeError(f"DataLoader has {wi.num_workers} workers, stream expects {W}")
        E = self.epoch_steps
        gens: dict[int, tuple[int, Iterator]] = {}

        def batch_for(s: int):
            v = (s // K) % W
            e = s // E if E else 0
            cur = gens.get(v)
            if cur is None or cur[0] != e:
                lo = e * E if E else 0
                skip = _count_grouped(s, v, K, W) - _count_grouped(lo, v, K, W)
                cur = (e, self._virtual_batches(v, e, skip))
                gens[v] = cur
            return next(cur[1])

        # Steps travel in groups of K (one message per group: fewer, larger hand-overs).
        # A worker makes groups u0+w, u0+w+W, ...: the DataLoader's round-robin then returns
        # them in step order. Without workers one process makes every group (the same
        # batches: they depend on the step, not on who makes them).
        u0 = self.start_step // K
        u, inc = (u0 + wi.id, W) if wi is not None else (u0, 1)
        ring = self.ring_view()[wi.id] if (self.ring is not None and wi is not None) else None
        q = 0
        B = self.batch_size
        while True:
            steps = [s for s in range(u * K, u * K + K)
                     if s >= self.start_step and (self.end_step is None or s < self.end_step)]
            if not steps:
                return
            parts = [batch_for(s) for s in steps]
            index = np.concatenate([p[1] for p in parts])
            nonempty = np.concatenate([p[2] for p in parts])
            song = np.concatenate([p[3] for p in parts])
            if ring is None:
                d = batch_dict(np.concatenate([p[0] for p in parts]), index, nonempty, song)
            else:  # phrases go through shared memory; only the small fields are pickled
                slot = q % self.ring_slots
                for i, p in enumerate(parts):
                    ring[slot, i * B : (i + 1) * B] = p[0]
                d = batch_dict(parts[0][0][:0], index, nonempty, song)
                d["ring_slot"] = (wi.id, slot)
            d["steps"] = steps
            d["corrupt_skipped"] = sorted(self.budget.skipped)
            yield d
            u += inc
            q += 1


def group_size(batch_size: int) -> int:
    """Consecutive steps handed over together (>= ~128 phrases per hand-over)."""
    return max(1, 128 // batch_size)


def _count_grouped(n: int, v: int, k: int, m: int) -> int:
    """How many integers x in [0, n) have (x // k) % m == v."""
    period = k * m
    return (n // period) * k + min(max(n % period - v * k, 0), k)


class TrainLoader:
    """Iterable over training batches; see the module docstring for the step semantics.

    With ``epoch_steps`` set, each ``iter()`` yields the rest of the current epoch
    (``len()`` = epoch_steps) and the next ``iter()`` continues with the next epoch; with
    ``epoch_steps=None`` one ``iter()`` is endless.
    """

    def __init__(self, info: SplitInfo, batch_size: int, *, seed: int, rank: int,
                 world_size: int, num_workers: int, shuffle_buffer: int, shard_mix: int,
                 epoch_steps: int | None, start_step: int, skip_corrupt: bool,
                 max_corrupt_fraction: float = 1.0,
                 pin_memory: bool = False, prefetch_factor: int = 4, use_ring: bool = True):
        self.info = info
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers = num_workers
        self.shuffle_buffer, self.shard_mix = shuffle_buffer, shard_mix
        self.epoch_steps = epoch_steps
        self.next_step = start_step
        self.skip_corrupt, self.max_corrupt_fraction = skip_corrupt, max_corrupt_fraction
        self.corrupt_skipped: set[str] = set()  # shards skipped by any worker so far
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.use_ring = use_ring

    def __len__(self) -> int:
        if self.epoch_steps is None:
            raise TypeError("endless training stream (epoch_steps=None) has no length")
        return self.epoch_steps

    @property
    def epoch(self) -> int:
        return self.next_step // self.epoch_steps if self.epoch_steps else 0

    def state_dict(self) -> dict:
        return {"next_step": self.next_step, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "num_workers": self.num_workers,
                "batch_size": self.batch_size, "shuffle_buffer": self.shuffle_buffer,
                "epoch_steps": self.epoch_steps}

    def load_state_dict(self, state: dict) -> None:
        for k in ("seed", "num_workers", "batch_size", "shuffle_buffer", "epoch_steps"):
            if state.get(k) != getattr(self, k):
                raise ValueError(f"cannot resume the data stream exactly: {k} changed "
                                 f"({state.get(k)} -> {getattr(self, k)})")
        self.next_step = int(state["next_step"])

    def __iter__(self) -> Iterator[dict]:
        start = self.next_step
        end = None if self.epoch_steps is None else (start // self.epoch_steps + 1) * \
            self.epoch_steps
        ring, slots, kw = None, 0, {}
        if self.num_workers > 0:
            kw = {"prefetch_factor": self.prefetch_factor, "persistent_workers": False}
            if self.use_ring and multiprocessing.get_start_method(allow_none=False) == "fork":
                # A worker has at most prefetch_factor * num_workers batches outstanding
                # (DataLoader's cap on tasks in flight), and the batch before those is
                # copied out below before the next one is requested: one more slot is
                # enough; two for margin.
                slots = self.prefetch_factor * self.num_workers + 2
                ring = mmap.mmap(-1, self.num_workers * slots * group_size(self.batch_size)
                                 * self.batch_size * self.info.phrase_bytes)
                kw["multiprocessing_context"] = "fork"
        ds = _TrainStream(self.info, self.batch_size, self.seed, self.rank, self.num_workers,
                          self.shuffle_buffer, self.shard_mix, start, end, self.epoch_steps,
                          self.skip_corrupt, ring, slots, self.max_corrupt_fraction)
        view = ds.ring_view() if ring is not None else None
        dl = DataLoader(ds, batch_size=None, num_workers=self.num_workers,
                        collate_fn=no_collate, worker_init_fn=worker_init, **kw)
        B = self.batch_size
        for msg in dl:
            steps = msg["steps"]
            self.corrupt_skipped.update(msg["corrupt_skipped"])
            n = len(steps) * B
            if view is not None:
                w, slot = msg["ring_slot"]
                phrases = view[w, slot, :n].copy()
            else:
                phrases = msg["phrases"]
            for i, step in enumerate(steps):
                r = slice(i * B, (i + 1) * B)
                batch = {
                    "phrases": torch.from_numpy(phrases[r]),
                    "nonempty": torch.from_numpy(msg["nonempty"][r]),
                    "phrase_index": torch.from_numpy(msg["phrase_index"][r]),
                    "song_id": msg["song_id"][r],
                    "step": step,
                    "corrupt_skipped": len(self.corrupt_skipped),
                }
                if self.pin_memory:
                    batch["phrases"] = batch["phrases"].pin_memory()
                self.next_step = step + 1
                yield batch


def train_loader(
    split_dir: str | os.PathLike,
    batch_size: int,
    *,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 2,
    shuffle_buffer: int = 4096,
    shard_mix: int = 4,
    epoch_steps: int | None = None,
    start_step: int = 0,
    skip_corrupt: bool = False,
    max_corrupt_fraction: float = 1.0,
    pin_memory: bool = False,
    prefetch_factor: int = 4,
    shared_memory: bool = True,
) -> TrainLoader:
    """Resampled, shuffled, reproducible training batches for one rank (see module doc).

    ``shared_memory``: workers hand over ``phrases`` through a fork-inherited shared ring
    buffer instead of pickling them through a pipe (~1.5x faster with 2 workers here);
    used only with the ``fork`` start method.
    """
    info = read_split(split_dir)
    if info.n_phrases == 0:
        raise ValueError(f"{split_dir} holds no phrases")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if batch_size < 1 or num_workers < 0 or start_step < 0:
        raise ValueError("batch_size >= 1, num_workers >= 0 and start_step >= 0 required")
    if epoch_steps is not None and epoch_steps < 1:
        raise ValueError("epoch_steps must be >= 1 or None")
    return TrainLoader(info, batch_size, seed=seed, rank=rank, world_size=world_size,
                       num_workers=num_workers, shuffle_buffer=shuffle_buffer,
                       shard_mix=shard_mix, epoch_steps=epoch_steps, start_step=start_step,
                       skip_corrupt=skip_corrupt, max_corrupt_fraction=max_corrupt_fraction,
                       pin_memory=pin_memory,
                       prefetch_factor=prefetch_factor, use_ring=shared_memory)
