"""One ``ms2dist train`` invocation: where it reads and writes, and its local files.

Kept out of :class:`ms2dist.configs.RunConfig`: the job says *where*, the config says *what*.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ms2dist import TRACKS
from ms2dist.dataset.manifest import read_split
from ms2dist.layout import PhraseLayout

__all__ = ["TrainJob", "StageMismatch", "check_data", "data_layout", "epoch_steps", "endless",
           "log_local", "truncate_local_log"]


class StageMismatch(ValueError):
    """A stage's inputs do not fit (stage 2 without a complete stage-1 model, ...)."""


class TrainJob:
    """Arguments of one ``ms2dist train`` invocation."""

    def __init__(self, stage: str, cfg: Any, data: Path, out: Path,
                 tracks: list[str] | None = None, resume: str = "auto",
                 stage1: str | None = None, expect_world_size: int | None = None,
                 launch_config: str = "", max_steps: int | None = None) -> None:
        self.stage, self.cfg, self.data, self.out = stage, cfg, Path(data), Path(out)
        self.tracks = list(tracks or TRACKS)
        self.resume, self.stage1 = resume, stage1
        self.expect_world_size, self.launch_config = expect_world_size, launch_config
        self.max_steps = max_steps  # stop early (tests: "N/2 steps, then killed")


def check_data(data: Path) -> None:
    """Fail before training, with the fix, unless ``data`` is a pack with train and val."""
    for split in ("train", "val"):
        d = data / split
        if not (d / "manifest.json").is_file():
            raise FileNotFoundError(
                f"{d}/manifest.json not found: --data must be a folder written by "
                f"`ms2dist pack` (holding train/ and val/), e.g. shards/<name>")
        n = json.loads((d / "manifest.json").read_text()).get("n_phrases", 0)
        if n == 0:
            raise FileNotFoundError(
                f"{d} holds no phrases: pack more songs or give this split a larger share "
                f"(ms2dist pack --split 80,10,10)")


def data_layout(data: Path) -> PhraseLayout:
    """The phrase layout of a pack; train and val must agree."""
    train, val = read_split(data / "train").layout, read_split(data / "val").layout
    if train != val:
        raise StageMismatch(f"{data}: train and val were packed with different phrase layouts "
                            f"({train} vs {val}); repack them together")
    return train


def epoch_steps(split: Path, batch_size: int, world: int) -> int:
    """Micro-batches per rank in one pass over the split: epochs bound resume fast-forward."""
    n = json.loads((split / "manifest.json").read_text())["n_phrases"]
    return max(1, n // (batch_size * world))


def endless(loader: Any) -> Any:
    """Each iter() of the loader yields the rest of one epoch; chain them forever."""
    while True:
        yield from loader


def log_local(out: Path, step: int, metrics: dict[str, float], main: bool) -> None:
    """``<out>/metrics.jsonl``: the same numbers as MLflow, readable without a server."""
    if main:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


def truncate_local_log(out: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from (a hard kill's leftovers)."""
    path = out / "metrics.jsonl"
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in keep))
