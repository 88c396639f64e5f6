"""ms2dist.dataset: exact-once eval stream, reproducible/resumable training stream, unpacking,
corrupt shards."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from ms2dist.dataset.batch import unpack_phrases
from ms2dist.dataset.blocks import CorruptShardError, corrupt_skipped, iter_shard_blocks
from ms2dist.dataset.eval_stream import eval_loader
from ms2dist.dataset.packer import pack
from ms2dist.dataset.train_stream import train_loader
from ms2dist.layout import unpack_bits
from tests.test_pack import read_shards

SMALL = {"phrases_per_shard": 64, "block_size": 16}


@pytest.fixture(scope="module")
def shards(lpd5_test_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "small"
    pack([lpd5_test_small], out, name="small", workers=2, **SMALL)
    return out


def _key_rows(batch) -> list[tuple[int, tuple[str, int]]]:
    """(row, (song id, phrase index)) of the valid rows of a batch."""
    valid = batch.get("valid", torch.ones(len(batch["song_id"]), dtype=torch.bool))
    return [(r, (s, int(i))) for r, (s, i, v) in enumerate(
        zip(batch["song_id"], batch["phrase_index"], valid, strict=True)) if v]


def test_unpack_phrases_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.random((5, 4, 48, 84, 5)) < 0.05
    packed = np.packbits(x.reshape(5, -1), axis=1)
    t = unpack_phrases(torch.from_numpy(packed), "cpu")
    assert t.shape == (5, 4, 48, 84, 5) and t.dtype == torch.float32 and t.device.type == "cpu"
    assert np.array_equal(t.numpy().astype(bool), x)
    assert unpack_phrases(packed, None, torch.bool).dtype == torch.bool
    assert np.array_equal(unpack_bits(packed), x)


@pytest.mark.parametrize("split", ["train", "test"])
def test_eval_exactly_once_2_ranks_2_workers(shards, split):
    split_dir = shards / split
    truth = {(s, int(i)): (ph, ne) for s, i, ph, ne in read_shards(split_dir)}
    n = json.loads((split_dir / "manifest.json").read_text())["n_phrases"]
    assert len(truth) == n
    seen: Counter = Counter()
    lengths = []
    for rank in range(2):
        loader = eval_loader(split_dir, 24, rank=rank, world_size=2, num_workers=2)
        batches = list(loader)
        lengths.append(len(batches))
        assert len(batches) == len(loader)
        for b in batches:
            assert b["phrases"].dtype == torch.uint8 and b["phrases"].shape == (24, 10080)
            assert b["nonempty"].dtype == torch.bool and b["phrase_index"].dtype == torch.int64
            assert b["valid"].dtype == torch.bool and len(b["song_id"]) == 24
            assert not b["phrases"][~b["valid"]].any()
            dense = unpack_phrases(b["phrases"], "cpu", torch.bool).numpy()
            for row, key in _key_rows(b):
                seen[key] += 1
                ph, ne = truth[key]
                assert np.array_equal(dense[row], ph)
                assert np.array_equal(b["nonempty"][row].numpy(), ne)
    assert lengths[0] == lengths[1]
    assert set(seen) == set(truth) and set(seen.values()) == {1}


def test_eval_more_ranks_than_phrases_never_hangs(shards):
    # lpd5_test_small's 16 songs leave the val split empty: zero batches on every rank
    assert json.loads((shards / "val" / "manifest.json").read_text())["n_phrases"] == 0
    assert [len(list(eval_loader(shards / "val", 4, rank=r, world_size=2))) for r in (0, 1)] \
        == [0, 0]
    n = json.loads((shards / "test" / "manifest.json").read_text())["n_phrases"]
    world = n + 3
    counts = [len(list(eval_loader(shards / "test", 4, rank=r, world_size=world)))
              for r in (0, n - 1, n + 2)]
    assert counts == [1, 1, 1]


def _take(loader, k: int) -> list[dict]:
    out = []
    for b in loader:
        out.append(b)
        if len(out) == k:
            break
    return out


def _take_steps(loader, k: int) -> list[dict]:
    """k batches, across epoch ends (each iter() of an epoch-sized loader is one epoch)."""
    out: list[dict] = []
    while len(out) < k:
        got = _take(loader, k - len(out))
        assert got, "loader ended"
        out += got
    return out


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["step"] == y["step"] and torch.equal(x["phrases"], y["phrases"])
        and x["song_id"] == y["song_id"] for x, y in zip(a, b, strict=True))


def test_train_stream_reproducible_and_rank_dependent(shards):
    kw = {"seed": 7, "world_size": 2, "num_workers": 2, "shuffle_buffer": 64}
    a = _take(train_loader(shards / "train", 16, rank=0, **kw), 12)
    b = _take(train_loader(shards / "train", 16, rank=0, **kw), 12)
    c = _take(train_loader(shards / "train", 16, rank=1, **kw), 12)
    assert _same(a, b)
    assert [x["step"] for x in a] == list(range(12))
    assert not _same(a, c)
    assert a[0]["phrases"].dtype == torch.uint8 and a[0]["phrases"].shape == (16, 10080)
    assert a[0]["nonempty"].shape == (16, 5) and a[0]["phrase_index"].dtype == torch.int64
    # the stream is defined per num_workers (documented): 0 workers is another stream
    z = _take(train_loader(shards / "train", 16, rank=0, seed=7, world_size=2, num_workers=0,
                           shuffle_buffer=64), 12)
    assert [x["step"] for x in z] == list(range(12))
    assert not _same(z, a)  # different num_workers = different (documented) stream
    # 4 train shards, 4 open at once, none twice: the first batch has distinct phrases
    assert len({k for _, k in _key_rows(a[0])}) == 16


def test_shared_memory_handover_equals_pickled(shards):
    kw = {"seed": 5, "num_workers": 2, "shuffle_buffer": 32, "prefetch_factor": 1}
    ring = _take(train_loader(shards / "train", 8, shared_memory=True, **kw), 30)
    pickled = _take(train_loader(shards / "train", 8, shared_memory=False, **kw), 30)
    assert _same(ring, pickled)
    pairs = zip(ring[:-1], ring[1:], strict=True)
    assert all(not torch.equal(a["phrases"], b["phrases"]) for a, b in pairs)


@pytest.mark.parametrize("epoch_steps", [None, 5])  # batch 32: steps go in groups of 4
def test_train_resume_equals_uninterrupted(shards, epoch_steps):
    kw = {"seed": 3, "rank": 0, "world_size": 1, "num_workers": 2, "shuffle_buffer": 48,
          "epoch_steps": epoch_steps}
    straight = train_loader(shards / "train", 32, **kw)
    full = _take_steps(straight, 14)  # several epochs when epoch_steps is set
    assert [b["step"] for b in full] == list(range(14))
    first = train_loader(shards / "train", 32, **kw)
    head = _take_steps(first, 7)
    state = first.state_dict()
    assert state["next_step"] == 7
    resumed = train_loader(shards / "train", 32, start_step=state["next_step"], **kw)
    tail = _take_steps(resumed, 7)
    assert _same(head + tail, full)
    again = train_loader(shards / "train", 32, **kw)
    again.load_state_dict(state)
    assert _same(_take_steps(again, 7), tail)
    if epoch_steps:
        assert len(straight) == epoch_steps


def test_corrupt_shard_named_or_skipped(shards, tmp_path):
    split = tmp_path / "train"
    shutil.copytree(shards / "train", split)
    victim = split / "shard-00001.tar"
    data = bytearray(victim.read_bytes())
    victim.write_bytes(bytes(data[: len(data) // 2]))  # truncated mid-member
    with pytest.raises(CorruptShardError, match="shard-00001.tar"):
        list(eval_loader(split, 16))
    with pytest.raises(CorruptShardError, match="shard-00001.tar"):
        list(iter_shard_blocks(victim))
    before = corrupt_skipped()
    with pytest.warns(UserWarning, match="shard-00001.tar"):
        batches = list(eval_loader(split, 16, skip_corrupt=True))
    assert corrupt_skipped() > before
    total = json.loads((split / "manifest.json").read_text())["n_phrases"]
    got = sum(int(b["valid"].sum()) for b in batches)
    assert 0 < got < total  # the damaged shard's missing phrases come back as padding

    garbled = split / "shard-00002.tar"
    raw = bytearray(garbled.read_bytes())
    raw[600:1600] = b"\xff" * 1000  # inside the first .npy member's header/data
    garbled.write_bytes(bytes(raw))
    with pytest.raises(CorruptShardError, match="shard-0000[12].tar"):
        list(eval_loader(split, 16))
    # training stream skips, counts and keeps going
    loader = train_loader(split, 8, seed=0, num_workers=0, shuffle_buffer=16,
                          skip_corrupt=True)
    with pytest.warns(UserWarning):
        assert len(_take(loader, 20)) == 20
    with pytest.raises(CorruptShardError, match="shard-0000[12].tar"):
        _take(train_loader(split, 8, seed=0, num_workers=0, shuffle_buffer=4000), 5)
