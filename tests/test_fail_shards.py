"""Damaged shards are found, named and (on request) skipped: flipped payload bytes, a
damaged tar header, too many bad shards, old blocks without checksums; `ms2dist verify`."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ms2dist.dataset.blocks import CorruptShardError, decode_block, iter_shard_blocks
from ms2dist.dataset.manifest import read_split
from ms2dist.dataset.packer import pack
from ms2dist.dataset.train_stream import train_loader
from ms2dist.npyio import npy_bytes
from tests.conftest import run_ms2dist

SMALL = {"phrases_per_shard": 64, "block_size": 16}


@pytest.fixture(scope="module")
def clean(lpd5_test_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "pack"
    pack([lpd5_test_small], out, name="clean", split=(0.6, 0.2, 0.2), workers=2, **SMALL)
    return out


@pytest.fixture()
def damaged(clean: Path, tmp_path: Path) -> Path:
    out = tmp_path / "pack"
    shutil.copytree(clean, out)
    return out


def _members(shard: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(shard) as tf:
        return tf.getmembers()


def flip_payload(shard: Path, n_bytes: int, member: int = 2) -> str:
    """Invert ``n_bytes`` in the middle of the ``member``-th member's data; its name."""
    ti = _members(shard)[member]
    assert ti.name.endswith(".phrases.npy")
    data = bytearray(shard.read_bytes())
    mid = ti.offset_data + ti.size // 2
    data[mid:mid + n_bytes] = bytes(b ^ 0xFF for b in data[mid:mid + n_bytes])
    shard.write_bytes(bytes(data))
    return ti.name


def damage_header(shard: Path, member: int = 2) -> None:
    ti = _members(shard)[member]
    data = bytearray(shard.read_bytes())
    data[ti.offset:ti.offset + 100] = b"\x07" * 100  # the name field: the checksum fails
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("n_bytes", [64, 4096])
def test_flipped_payload_bytes_fail_the_block_checksum(damaged: Path, n_bytes: int) -> None:
    shard = read_split(damaged / "train").shards[0]
    name = flip_payload(shard, n_bytes)
    with pytest.raises(CorruptShardError) as e:
        list(iter_shard_blocks(shard))
    msg = str(e.value)
    assert str(shard) in msg and name.removesuffix(".phrases.npy") in msg and "checksum" in msg


def test_damaged_tar_header_is_not_a_quiet_end_of_shard(damaged: Path) -> None:
    info = read_split(damaged / "train")
    shard = info.shards[0]
    damage_header(shard, member=2)
    with pytest.raises(CorruptShardError, match="unreadable tar header"):
        list(iter_shard_blocks(shard))
    # and the manifest's count catches a shard that simply ends early
    with pytest.raises(CorruptShardError, match=r"the manifest says"):
        list(iter_shard_blocks(info.shards[1], expect_phrases=info.counts[1] + 1))


def _read_all(split: Path, **kw) -> list[dict]:
    loader = train_loader(split, 16, num_workers=0, shuffle_buffer=64,
                          epoch_steps=20, **kw)
    return list(loader)


def test_training_stream_raises_or_skips_and_counts(damaged: Path) -> None:
    info = read_split(damaged / "train")
    assert len(info.shards) >= 3
    flip_payload(info.shards[0], 64)
    with pytest.raises(CorruptShardError, match="checksum"):
        _read_all(damaged / "train")
    with pytest.warns(UserWarning, match="skipping corrupt shard"):
        batches = _read_all(damaged / "train", skip_corrupt=True, max_corrupt_fraction=0.5)
    assert len(batches) == 20 and batches[-1]["corrupt_skipped"] == 1
    # more bad shards than the budget allows: the run fails, naming the limit
    for shard in info.shards[1:3]:
        flip_payload(shard, 64)
    with pytest.raises(CorruptShardError, match="max_corrupt_fraction"):
        _read_all(damaged / "train", skip_corrupt=True, max_corrupt_fraction=0.2)


def test_blocks_written_without_checksums_still_read() -> None:
    packed = np.arange(2 * 8, dtype=np.uint8).reshape(2, 8)
    meta = {"songs": [["a", 2]], "phrase_index": [0, 1], "nonempty": [1, 3]}
    block = decode_block("old-0", {"phrases.npy": npy_bytes(packed),
                                   "meta.json": json.dumps(meta).encode()}, 8)
    assert not block.has_checksum and block.nonempty[1].tolist() == [1, 1, 0, 0, 0]
    np.testing.assert_array_equal(block.packed, packed)


def test_verify_command(damaged: Path) -> None:
    ok = run_ms2dist(["verify", damaged])
    assert ok.returncode == 0 and ok.stdout.count(": ok") == 3
    info = read_split(damaged / "val")
    flip_payload(info.shards[0], 64)
    (damaged / "test" / read_split(damaged / "test").shards[0].name).unlink()
    bad = run_ms2dist(["verify", damaged], check=False)
    assert bad.returncode == 1
    assert "checksum" in bad.stdout and "sha256 differs" in bad.stdout
    assert "missing" in bad.stdout and bad.stdout.count(": ok") == 1  # train is intact


def test_train_skip_corrupt_flag_end_to_end(damaged: Path, tmp_path: Path) -> None:
    """--data.skip_corrupt is a config key: without it the run fails in one line naming the
    shard; with it the run finishes and logs the skipped shard."""
    flip_payload(read_split(damaged / "train").shards[0], 64)
    args = ["train", "stage1", "--config", "tiny", "--data", damaged, "--tracking.enabled=false",
            "--train.vrae_steps=30", "--train.refine_steps=0", "--train.eval_at_start=false",
            "--train.log_every=10", "--data.shuffle_buffer=64"]
    fail = run_ms2dist(args + ["--out", tmp_path / "a"], check=False)
    assert fail.returncode == 1 and "corrupt shard" in fail.stderr.strip().splitlines()[-1]
    run_ms2dist(args + ["--out", tmp_path / "b", "--data.skip_corrupt=true",
                        "--data.max_corrupt_fraction=0.5"])
    logs = [json.loads(ln) for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert any(d.get("train/corrupt_shards_skipped") == 1 for d in logs)
    assert (tmp_path / "b" / "model" / "model.safetensors").is_file()


def test_a_failure_after_step_0_checkpoints_first(damaged: Path, clean: Path,
                                                  tmp_path: Path) -> None:
    """A val shard found damaged at step 10 ends the run with a checkpoint at step 10; once
    the shard is repaired, the same command resumes there."""
    val = read_split(damaged / "val").shards[0]
    flip_payload(val, 64)
    args = ["train", "stage1", "--config", "tiny", "--data", damaged, "--out", tmp_path / "r",
            "--tracking.enabled=false", "--train.vrae_steps=20", "--train.refine_steps=0",
            "--train.eval_at_start=false", "--train.eval_every=10",
            "--train.checkpoint_every=100", "--data.shuffle_buffer=64"]
    fail = run_ms2dist(args, check=False)
    assert fail.returncode != 0 and "checkpoint written" in fail.stderr
    assert (tmp_path / "r" / "checkpoints" / "step-000000010" / "snapshot.json").is_file()
    shutil.copy(clean / "val" / val.name, val)
    ok = run_ms2dist(args)
    assert "resumed from" in ok.stderr and "at step 10" in ok.stderr
