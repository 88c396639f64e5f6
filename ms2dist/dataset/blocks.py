"""Blocks: the unit a shard is made of (one tar sample = up to ``block_size`` phrases).

A block ``<key>`` is two tar members: ``<key>.phrases.npy``, uint8 ``(k, n_bytes)`` of
bit-packed phrases (:func:`ms2dist.layout.pack_bits`), and ``<key>.meta.json``,
``{"songs": [[song_id, n], ...], "phrase_index": [...], "nonempty": [bitmask, ...]}``
(``songs`` is run-length over the block's phrases; ``nonempty`` bit k = track k). Tar headers
are fixed (mtime 0, uid/gid 0, no user names), so the same blocks give the same bytes.

A shard that cannot be read raises :class:`CorruptShardError` naming the file; readers with
``skip_corrupt=True`` skip it with a warning and count it (:func:`corrupt_skipped`).
"""

from __future__ import annotations

import json
import os
import tarfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ms2dist import TRACKS
from ms2dist.npyio import read_npy

__all__ = ["Block", "CorruptShardError", "SkipBudget", "corrupt_skipped", "iter_shard_blocks",
           "blocks_or_skip", "decode_block", "block_meta", "tarinfo"]

_TRACK_BITS = 1 << np.arange(len(TRACKS))
#: Readers verify block checksums unless told otherwise (``verify=False``); a process-wide
#: switch only for benchmarks that compare reading with and without them.
VERIFY_CHECKSUMS = True
_CORRUPT_SKIPPED = 0


class CorruptShardError(RuntimeError):
    """A shard could not be read; the message names the file."""


def corrupt_skipped() -> int:
    """Corrupt shards skipped so far in this process (``skip_corrupt=True``)."""
    return _CORRUPT_SKIPPED


@dataclass
class Block:
    packed: np.ndarray  # (k, n_bytes) uint8
    phrase_index: np.ndarray  # (k,) int64
    nonempty: np.ndarray  # (k, 5) bool
    song_id: np.ndarray  # (k,) object (str)
    has_checksum: bool = True  # False: written before blocks carried a CRC32

    def __len__(self) -> int:
        return int(self.packed.shape[0])


def decode_block(key: str, parts: dict[str, bytes], phrase_bytes: int | None,
                 verify: bool | None = None) -> Block:
    """One block from its members; ValueError names the block and what is wrong.

    ``verify``: check the payload against the CRC32 in its metadata (blocks written before
    checksums existed have none and are checked by their counts only)."""
    meta = json.loads(parts["meta.json"])
    raw = parts["phrases.npy"]
    check = VERIFY_CHECKSUMS if verify is None else verify
    if check and "crc32" in meta and zlib.crc32(raw) != meta["crc32"]:
        raise ValueError(f"block {key}: phrases.npy fails its checksum (crc32 "
                         f"{zlib.crc32(raw):08x}, recorded {meta['crc32']:08x}): damaged bytes")
    packed = read_npy(raw, f"block {key}")
    k = packed.shape[0]
    if packed.dtype != np.uint8 or packed.ndim != 2 or (
        phrase_bytes is not None and packed.shape[1] != phrase_bytes
    ):
        raise ValueError(f"block {key}: bad phrases array {packed.dtype} {packed.shape}")
    index = np.asarray(meta["phrase_index"], np.int64)
    ne_bits = np.asarray(meta["nonempty"], np.int64)
    names = [s for s, _ in meta["songs"]]
    runs = [int(n) for _, n in meta["songs"]]
    if index.shape != (k,) or ne_bits.shape != (k,) or sum(runs) != k:
        raise ValueError(f"block {key}: metadata does not match {k} phrases")
    song_id = np.repeat(np.asarray(names, dtype=object), runs)
    nonempty = (ne_bits[:, None] & _TRACK_BITS) != 0
    return Block(packed, index, nonempty, song_id, "crc32" in meta)


def _tar_members(f) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of a seekable tar, in order.

    Random-access mode ("r:") reads each header then the member in one call; webdataset's
    streaming ``tar_file_iterator`` ("r|*") reads in 10 KiB pieces, ~2x slower here.
    tarfile takes a damaged header after the first member for the end of the archive;
    what follows the last member read must therefore be the zero padding of a real end.
    """
    with tarfile.open(fileobj=f, mode="r:") as tf:
        for ti in tf:
            if ti.isreg():
                yield ti.name, tf.extractfile(ti).read()  # type: ignore[union-attr]
        end = tf.offset
    f.seek(end)
    rest = f.read()
    if rest.strip(b"\0"):
        raise ValueError(f"unreadable tar header at byte {end}: {len(rest)} bytes after the "
                         f"last readable member are not the end-of-archive padding")


def iter_shard_blocks(path: str | os.PathLike, phrase_bytes: int | None = None,
                      expect_phrases: int | None = None, verify: bool | None = None
                      ) -> Iterator[Block]:
    """Blocks of one shard in file order; any read/parse failure, a block failing its
    checksum, or (given ``expect_phrases``, the manifest's count) a different number of
    phrases -> CorruptShardError naming the shard, the block and what was wrong."""
    from webdataset.tariterators import base_plus_ext

    path = Path(path)
    n = 0
    try:
        with open(path, "rb") as f:
            key, parts = None, {}
            for fname, data in _tar_members(f):
                k, ext = base_plus_ext(fname)
                if k is None:
                    continue
                if k != key:
                    if parts:
                        block = decode_block(key, parts, phrase_bytes, verify)
                        n += len(block)
                        yield block
                    key, parts = k, {}
                parts[ext] = data
            if parts:
                block = decode_block(key, parts, phrase_bytes, verify)
                n += len(block)
                yield block
    except CorruptShardError:
        raise
    except (OSError, EOFError, tarfile.TarError, ValueError, KeyError, TypeError) as e:
        raise CorruptShardError(f"corrupt shard {path}: {type(e).__name__}: {e}") from e
    if expect_phrases is not None and n != expect_phrases:
        raise CorruptShardError(f"corrupt shard {path}: {n} phrases, the manifest says "
                                f"{expect_phrases} (truncated or damaged)")


class SkipBudget:
    """Which corrupt shards a reader skipped (``skip_corrupt=True``), and the limit: more
    than ``max_fraction`` of the split's ``n_shards`` skipped fails the read."""

    def __init__(self, n_shards: int, max_fraction: float) -> None:
        self.n_shards, self.max_fraction = n_shards, max_fraction
        self.skipped: set[str] = set()

    def skip(self, e: CorruptShardError, path: Path) -> None:
        global _CORRUPT_SKIPPED
        first = str(path) not in self.skipped
        self.skipped.add(str(path))
        if len(self.skipped) > self.max_fraction * self.n_shards:
            raise CorruptShardError(
                f"{e}; {len(self.skipped)} of {self.n_shards} shards are corrupt, more than "
                f"--data.max_corrupt_fraction={self.max_fraction:g}: repack or verify the data "
                f"(ms2dist verify)") from e
        if first:
            _CORRUPT_SKIPPED += 1
            warnings.warn(f"skipping {e} ({len(self.skipped)} of {self.n_shards} shards "
                          f"skipped)", stacklevel=3)


def blocks_or_skip(path: Path, phrase_bytes: int, skip_corrupt: bool,
                   expect_phrases: int | None = None,
                   budget: SkipBudget | None = None) -> Iterator[Block]:
    """:func:`iter_shard_blocks`, or (``skip_corrupt``) nothing more once the shard fails."""
    try:
        yield from iter_shard_blocks(path, phrase_bytes, expect_phrases)
    except CorruptShardError as e:
        if not skip_corrupt:
            raise
        (budget or SkipBudget(1, 1.0)).skip(e, path)


def block_meta(songs: list[tuple[str, np.ndarray, np.ndarray]], payload: bytes) -> bytes:
    """``meta.json`` of a block from its runs of (song id, phrase_index, nonempty (k, 5))
    and the bytes of its ``phrases.npy`` (their CRC32: checked on every read)."""
    meta = {
        "crc32": zlib.crc32(payload),
        "songs": [[sid, int(ix.shape[0])] for sid, ix, _ in songs],
        "phrase_index": [int(i) for _, ix, _ in songs for i in ix],
        "nonempty": [int(v) for _, _, ne in songs for v in (ne * _TRACK_BITS).sum(1)],
    }
    return json.dumps(meta, separators=(",", ":")).encode()


def tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti
