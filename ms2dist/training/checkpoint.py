"""Atomic, pruned checkpoints: ``<out>/checkpoints/step-000000123/``.

Every rank calls ``accelerator.save_state`` into a hidden temp directory (DeepSpeed
writes one shard per rank); the main process then writes ``snapshot.json`` (the marker
that the checkpoint is complete) and renames the directory into place. A job killed
mid-save leaves only a ``.tmp-*`` directory, which resume ignores and the next save
removes. A ``step-*`` directory without ``snapshot.json`` (copied half, or left by an
older version) can never be resumed from; the next save removes it too.

A save that fails (full disk, quota, permissions) raises :class:`CheckpointError`, naming
the checkpoint and, when the disk is (nearly) full, the space a checkpoint needs: torch's
own message for a full disk is ``unexpected pos 2136704 vs 2136592``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

__all__ = ["Snapshot", "save_checkpoint", "latest_checkpoint", "list_checkpoints",
           "read_snapshot", "CheckpointError"]

SNAPSHOT = "snapshot.json"
LOW_SPACE = 64 * 10**6  # bytes: below this much free space a failed save is a full disk
_STEP_DIR = re.compile(r"step-(\d+)")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the message names it and, on a full disk, the
    space a checkpoint needs."""


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


def _step(p: Path) -> int | None:
    """The step of a ``step-<n>`` directory name; None for any other name."""
    m = _STEP_DIR.fullmatch(p.name)
    return int(m.group(1)) if m else None


def list_checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = _root(Path(out))
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if _step(p) is not None and (p / SNAPSHOT).is_file()]
    return sorted(done, key=_step)


def latest_checkpoint(out: str | Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def read_snapshot(ckpt: str | Path) -> Snapshot:
    data = json.loads((Path(ckpt) / SNAPSHOT).read_text())
    return Snapshot(**data)


def save_checkpoint(accelerator: Any, out: str | Path, snap: Snapshot, keep: int,
                    keep_incomplete: bool = False) -> Path:
    """Collective: every rank must call this at the same step.

    Keeps the newest ``keep`` complete checkpoints (all if ``keep <= 0``) and removes every
    ``step-*`` directory without ``snapshot.json``, except the newest such one when
    ``keep_incomplete`` (to inspect it). Raises :class:`CheckpointError` if the save fails.
    """
    root = _root(Path(out))
    tmp = root / f".tmp-step-{snap.step:09d}"
    final = root / f"step-{snap.step:09d}"
    try:
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".tmp-step-*"):
                shutil.rmtree(stale, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _commit(tmp, final, snap)
    except (OSError, RuntimeError, SafetensorError) as e:
        raise _save_failed(accelerator, out, final, tmp, e) from e
    if accelerator.is_main_process:
        _prune(root, keep, keep_incomplete)
    accelerator.wait_for_everyone()
    return final


def _commit(tmp: Path, final: Path, snap: Snapshot) -> None:
    """Mark ``tmp`` complete (``snapshot.json``, synced) and move it into place."""
    with open(tmp / SNAPSHOT, "w") as f:
        json.dump(asdict(snap), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # the same step saved twice (e.g. final save after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp, final)


def _prune(root: Path, keep: int, keep_incomplete: bool) -> None:
    for old in list_checkpoints(root.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    incomplete = sorted((p for p in root.glob("step-*") if _step(p) is not None
                         and p.is_dir() and not (p / SNAPSHOT).is_file()), key=_step)
    for p in incomplete[:-1] if keep_incomplete else incomplete:
        shutil.rmtree(p, ignore_errors=True)


def _dir_size(d: Path) -> int:
    if not d.is_dir():
        return 0
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and not f.is_symlink())


def _free_bytes(path: Path) -> int | None:
    """Free space on the filesystem of ``path`` (or of its nearest existing parent)."""
    for p in (path, *path.parents):
        if p.is_dir():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def _save_failed(accelerator: Any, out: str | Path, final: Path, tmp: Path,
                 error: BaseException) -> CheckpointError:
    """The error to raise for a failed save; the partial ``tmp`` is removed (one process)."""
    written = _dir_size(tmp)
    free = _free_bytes(tmp.parent)
    previous = latest_checkpoint(out)
    need = _dir_size(previous) if previous is not None else None
    if accelerator.num_processes == 1:  # other ranks may still be writing into it
        shutil.rmtree(tmp, ignore_errors=True)
    return CheckpointError(_failure_message(final, error, free, need, written))


def _failure_message(final: Path, error: BaseException, free: int | None, need: int | None,
                    written: int = 0) -> str:
    """One line: which checkpoint failed, why, and (little ``free`` space, or an error that
    says so) that the disk is full and how much a checkpoint takes (``need``: the size of
    the previous complete one; without one, at least the ``written`` bytes)."""
    cause = " ".join(f"{type(error).__name__}: {error}".split())
    text = str(error)
    code = getattr(error, "errno", None)  # an OSError's says what failed; torch's has none
    full = code in _NO_SPACE or "No space left" in text or "os error 28" in text \
        or "Disk quota exceeded" in text \
        or (code is None and free is not None and free < max(need or 0, LOW_SPACE))
    msg = f"could not save checkpoint {final} ({cause})"
    have = f", {_mb(free)} MB free" if free is not None else ""
    if full:
        size = f"~{_mb(need)} MB" if need else f"more than {_mb(written)} MB"
        msg += (f": no space left on {final.parent}: need {size}{have}; free space (or lower "
                f"train.keep_checkpoints) and rerun the same command to resume from the last "
                f"complete checkpoint")
    elif "unexpected pos" in text or "write failed" in text:  # torch's failed write
        there = f"{_mb(free)} MB free there; " if free is not None else ""
        msg += f": a write into {final.parent} stopped partway ({there}a disk quota?)"
    return msg


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}" if n < 10**7 else f"{n / 1e6:.0f}"
