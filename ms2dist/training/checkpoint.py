"""Atomic, pruned checkpoints: ``<out>/checkpoints/step-000000123/``.

Every rank calls ``accelerator.save_state`` into a hidden temp directory (DeepSpeed
writes one shard per rank); the main process then writes ``snapshot.json`` (the marker
that the checkpoint is complete) and renames the directory into place. A job killed
mid-save leaves only a ``.tmp-*`` directory, which resume ignores and the next save
removes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Snapshot", "save_checkpoint", "latest_checkpoint", "list_checkpoints",
           "read_snapshot"]

SNAPSHOT = "snapshot.json"


@dataclass
class Snapshot:
    """What a checkpoint needs beyond accelerate's model/optimizer/RNG state."""

    stage: str
    step: int
    phase: str
    tracks: list[str]
    config: dict[str, Any]
    mlflow_run_id: str | None = None
    world_size: int = 1
    metrics: dict[str, float] = field(default_factory=dict)


def _root(out: Path) -> Path:
    return Path(out) / "checkpoints"


def list_checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = _root(Path(out))
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / SNAPSHOT).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(out: str | Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def read_snapshot(ckpt: str | Path) -> Snapshot:
    data = json.loads((Path(ckpt) / SNAPSHOT).read_text())
    return Snapshot(**data)


def save_checkpoint(accelerator: Any, out: str | Path, snap: Snapshot, keep: int) -> Path:
    """Collective: every rank must call this at the same step."""
    root = _root(Path(out))
    tmp = root / f".tmp-step-{snap.step:09d}"
    final = root / f"step-{snap.step:09d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker = tmp / SNAPSHOT
        with open(marker, "w") as f:
            json.dump(asdict(snap), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # the same step saved twice (e.g. final save after a periodic one)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
