"""Shard writing: one split's stream of blocks -> shard tars -> progress records (resume).

Shards are written to ``*.tar.tmp`` and renamed when complete; then a record (shard, sha256,
counts, the split position after its last song, rejects so far) is appended to
``.progress.jsonl`` and fsynced. A shard is closed at the first song boundary at or after
``phrases_per_shard`` phrases. :func:`load_records` keeps the longest prefix of records
whose files still check out (size and sha256) and removes everything after it.

A record also lists its songs' content hashes (``hashes``: ``[position in the split, hash,
head hash]`` per packed song; positions, not paths, so the record does not depend on where
the inputs are): a resumed pack rebuilds from them the songs already packed, so it rejects
the same duplicates as one straight run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from ms2dist.dataset.blocks import block_meta, tarinfo
from ms2dist.npyio import npy_bytes

__all__ = ["SplitWriter", "load_records", "sha256_file", "PROGRESS_NAME"]

PROGRESS_NAME = ".progress.jsonl"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class SplitWriter:
    """One split's shard stream: blocks of phrases -> shard tars -> progress records."""

    def __init__(self, split_dir: Path, split: str, phrases_per_shard: int, block_size: int,
                 records: list[dict]):
        self.dir = split_dir
        self.split = split
        self.phrases_per_shard = phrases_per_shard
        self.block_size = block_size
        self.records = records
        self.shard_idx = len(records)
        self.cursor = records[-1]["end"] if records else 0
        self.rejects: list[dict] = []  # since the last finished shard
        self.hashes: list[list] = []  # [position, hash, head hash] of its packed songs
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._block_idx = 0
        self._shard_phrases = 0
        self._shard_songs = 0
        self._pending: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_n = 0

    def add(self, r: Any) -> None:
        """One song's result (a ``packer.SongResult``): its phrases, or why it was rejected."""
        if r.reason is not None:
            self.rejects.append({"path": r.path, "song_id": r.song_id, "split": self.split,
                                 "reason": r.reason})
        else:
            assert r.packed is not None and r.index is not None and r.nonempty is not None
            self.hashes.append([r.pos, r.content_hash, r.head_hash])
            self._pending.append((r.song_id, r.packed, r.index, r.nonempty))
            self._pending_n += r.packed.shape[0]
            self._shard_phrases += r.packed.shape[0]
            self._shard_songs += 1
            while self._pending_n >= self.block_size:
                self._emit_block(self.block_size)
        self.cursor = r.pos + 1
        if self._shard_phrases >= self.phrases_per_shard:
            self._close_shard()

    def finish(self) -> None:
        if self._shard_phrases > 0:
            self._close_shard()

    def _open(self) -> tarfile.TarFile:
        if self._tar is None:
            self._tmp = self.dir / f"shard-{self.shard_idx:05d}.tar.tmp"
            self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT,
                                     copybufsize=4 << 20)
            self._block_idx = 0
        return self._tar

    def _emit_block(self, n: int) -> None:
        take: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []  # runs of one song
        got = 0
        while got < n and self._pending:
            sid, pk, ix, ne = self._pending[0]
            m = min(n - got, pk.shape[0])
            take.append((sid, pk[:m], ix[:m], ne[:m]))
            if m == pk.shape[0]:
                self._pending.pop(0)
            else:
                self._pending[0] = (sid, pk[m:], ix[m:], ne[m:])
            got += m
        self._pending_n -= got
        packed = np.concatenate([t[1] for t in take])
        payload = npy_bytes(packed)
        meta = block_meta([(t[0], t[2], t[3]) for t in take], payload)
        tar = self._open()
        key = f"{self.split}-{self.shard_idx:05d}-{self._block_idx:05d}"
        for name, data in ((f"{key}.phrases.npy", payload), (f"{key}.meta.json", meta)):
            tar.addfile(tarinfo(name, len(data)), io.BytesIO(data))
        self._block_idx += 1

    def _close_shard(self) -> None:
        while self._pending_n > 0:
            self._emit_block(min(self.block_size, self._pending_n))
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        final = self.dir / f"shard-{self.shard_idx:05d}.tar"
        os.replace(self._tmp, final)
        rec = {
            "shard": final.name,
            "sha256": sha256_file(final),
            "bytes": final.stat().st_size,
            "n_phrases": self._shard_phrases,
            "n_songs": self._shard_songs,
            "end": self.cursor,
            "rejects": self.rejects,
            "hashes": self.hashes,
        }
        with open(self.dir / PROGRESS_NAME, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(rec)
        self.rejects, self.hashes = [], []
        self.shard_idx += 1
        self._tar, self._tmp = None, None
        self._shard_phrases = self._shard_songs = 0


def load_records(split_dir: Path) -> list[dict]:
    """Recorded shards whose files are intact (longest valid prefix); later files removed.

    A record without ``hashes`` (written before duplicates were matched by content) ends
    the prefix too: its songs were never checked for duplicates, so they are packed again.
    """
    records: list[dict] = []
    prog = split_dir / PROGRESS_NAME
    if prog.exists():
        for line in prog.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # torn last line
            path = split_dir / rec["shard"]
            if rec["shard"] != f"shard-{len(records):05d}.tar" or "hashes" not in rec \
                    or not path.exists() \
                    or path.stat().st_size != rec["bytes"] or sha256_file(path) != rec["sha256"]:
                break
            records.append(rec)
    with open(prog, "w") as f:  # rewrite without any invalid tail
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
    keep = {r["shard"] for r in records}
    for p in split_dir.iterdir():
        if p.name.startswith("shard-") and p.name not in keep:
            p.unlink()
    return records
