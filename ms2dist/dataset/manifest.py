"""The shard format's manifest: its one owner (written by the packer, read by every reader).

A pack folder holds one folder per split (``train``, ``val``, ``test``), each with a
``manifest.json``: the format name, counts, the shard list (name, sha256, bytes, phrase and
song counts), the settings, and the phrase layout (``phrase_config`` and ``phrase_shape``,
see :mod:`ms2dist.layout`). A song's split is a pure function of its id
(:func:`assign_split`), known before it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ms2dist import TRACKS, __version__
from ms2dist.layout import PhraseLayout

__all__ = ["SHARD_FORMAT", "SPLITS", "SplitInfo", "read_split", "manifest_for", "write_manifest",
           "manifest_sha", "parse_split", "assign_split"]

SHARD_FORMAT = "ms2dist-phrases-v1"
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SplitInfo:
    dir: Path
    shards: tuple[Path, ...]
    counts: tuple[int, ...]
    phrase_bytes: int
    phrase_shape: tuple[int, ...]
    manifest: dict
    layout: PhraseLayout

    @property
    def n_phrases(self) -> int:
        return sum(self.counts)


def read_split(split_dir: str | os.PathLike) -> SplitInfo:
    """Read ``<split_dir>/manifest.json`` (shard list, counts, phrase layout)."""
    d = Path(split_dir)
    mpath = d / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(f"no manifest.json in {d} (is it a split folder of a pack?)")
    m = json.loads(mpath.read_text())
    shards = tuple(d / s["name"] for s in m["shards"])
    counts = tuple(int(s["n_phrases"]) for s in m["shards"])
    try:
        layout = PhraseLayout.from_manifest(m)
    except ValueError as e:
        raise ValueError(f"{mpath}: {e}") from None
    if int(m["phrase_bytes"]) != layout.n_bytes:
        raise ValueError(f"{mpath}: phrase_bytes {m['phrase_bytes']} does not fit the layout "
                         f"{layout.shape} ({layout.n_bytes} bytes); repack the data")
    return SplitInfo(d, shards, counts, int(m["phrase_bytes"]), tuple(m["phrase_shape"]), m,
                     layout)


def manifest_for(split: str, records: list[dict], *, name: str, fractions: Sequence[float],
                 n_rejected: int, phrase_config: dict[str, Any], layout: PhraseLayout,
                 phrases_per_shard: int, block_size: int) -> dict[str, Any]:
    """The manifest of one split from its finished-shard records."""
    return {
        "format": SHARD_FORMAT,
        "ms2dist_version": __version__,
        "name": name,
        "split": split,
        "split_fractions": list(fractions),
        "n_phrases": sum(r["n_phrases"] for r in records),
        "n_songs": sum(r["n_songs"] for r in records),
        "n_rejected": n_rejected,
        "phrase_bytes": layout.n_bytes,
        "phrase_shape": list(layout.shape),
        "tracks": list(TRACKS),
        "phrase_config": phrase_config,
        "phrases_per_shard": phrases_per_shard,
        "block_size": block_size,
        "shards": [
            {"name": r["shard"], "sha256": r["sha256"], "bytes": r["bytes"],
             "n_phrases": r["n_phrases"], "n_songs": r["n_songs"]} for r in records
        ],
    }


def write_manifest(split_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    path = Path(split_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def manifest_sha(data: str | os.PathLike) -> str:
    """One hash over a pack's split manifests: which data a model was trained on."""
    h = hashlib.sha256()
    for split in SPLITS:
        m = Path(data) / split / MANIFEST
        if m.is_file():
            h.update(m.read_bytes())
    return h.hexdigest()


def parse_split(spec: str | Sequence[float]) -> tuple[float, float, float]:
    """``"90,5,5"`` (percent or fractions, any scale) -> normalised train/val/test fractions."""
    parts = [float(p) for p in spec.split(",")] if isinstance(spec, str) else list(spec)
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"split must be three non-negative numbers, got {spec!r}")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def assign_split(song_id: str, fractions: Sequence[float] = (0.9, 0.05, 0.05)) -> str:
    """Stable split of a song: sha1(song id) mapped to [0, 1) against cumulative fractions."""
    h = int.from_bytes(hashlib.sha1(song_id.encode("utf-8")).digest()[:8], "big")
    u = h / 2.0**64
    acc = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        acc += frac
        if u < acc:
            return name
    for name, frac in reversed(list(zip(SPLITS, fractions, strict=True))):
        if frac > 0:
            return name
    return SPLITS[0]
