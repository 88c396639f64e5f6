"""Check a pack against its manifests: every shard present, of the recorded size and sha256,
every block readable and passing its checksum, every count as recorded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ms2dist.dataset.blocks import CorruptShardError, iter_shard_blocks
from ms2dist.dataset.manifest import MANIFEST, SPLITS, read_split
from ms2dist.dataset.writer import sha256_file

__all__ = ["SplitReport", "verify_pack", "split_dirs"]


@dataclass
class SplitReport:
    split: Path
    n_shards: int = 0
    n_phrases: int = 0
    n_blocks: int = 0
    blocks_without_checksum: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def split_dirs(path: str | os.PathLike) -> list[Path]:
    """The split folders of a pack folder, or the one split folder given."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return [p]
    found = [p / s for s in SPLITS if (p / s / MANIFEST).is_file()]
    if not found:
        raise FileNotFoundError(f"{p}: no manifest.json in it or in its train/ val/ test/ "
                                f"(give a folder written by `ms2dist pack`)")
    return found


def _check_shard(path: Path, rec: dict, phrase_bytes: int, report: SplitReport) -> None:
    if not path.is_file():
        report.problems.append(f"{path}: missing")
        return
    size = path.stat().st_size
    if size != rec["bytes"]:
        report.problems.append(f"{path}: {size} bytes, the manifest says {rec['bytes']}")
    elif sha256_file(path) != rec["sha256"]:
        report.problems.append(f"{path}: sha256 differs from the manifest's")
    try:
        for block in iter_shard_blocks(path, phrase_bytes, rec["n_phrases"]):
            report.n_blocks += 1
            report.n_phrases += len(block)
            report.blocks_without_checksum += not block.has_checksum
    except CorruptShardError as e:
        report.problems.append(str(e))


def verify_pack(path: str | os.PathLike) -> list[SplitReport]:
    """One report per split (see the module docstring); never raises on damage."""
    reports = []
    for d in split_dirs(path):
        report = SplitReport(d)
        try:
            info = read_split(d)
        except (ValueError, KeyError) as e:
            report.problems.append(f"{d / MANIFEST}: {e}")
            reports.append(report)
            continue
        for rec in info.manifest["shards"]:
            report.n_shards += 1
            _check_shard(d / rec["name"], rec, info.phrase_bytes, report)
        reports.append(report)
    return reports
