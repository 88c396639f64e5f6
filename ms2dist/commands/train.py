"""``ms2dist train stage1|stage2|assemble``: the same command under a plain ``python``
process and under ``accelerate launch`` with any launch config.

    ms2dist train stage1 --config tiny --data shards/demo --out runs/s1
    accelerate launch --config_file launch_configs/cpu_multiprocess.yaml \\
        -m ms2dist train stage2 --config tiny --data shards/demo --out runs/s2 --stage1 runs/s1
    ms2dist train assemble --out runs/s1 --from runs/s1-Drums runs/s1-Piano ...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ms2dist import TRACKS
from ms2dist.configs import resolve_config
from ms2dist.dataset.blocks import CorruptShardError
from ms2dist.layout import parse_tracks
from ms2dist.tracking.connect import TrackingUnavailable
from ms2dist.training.assemble import assemble
from ms2dist.training.distributed import WorldSizeError
from ms2dist.training.job import StageMismatch, TrainJob

__all__ = ["add_arguments", "main", "EPILOG"]

EPILOG = """config overrides: any --section.key=value after the options, e.g. --optim.lr=3e-3
  --train.vrae_steps=2e3 --data.batch_size=64 (unknown keys and out-of-range values are
  refused before training starts).

examples:
  ms2dist train stage1 --config tiny --data shards/demo --out runs/s1
  ms2dist train stage2 --config tiny --data shards/demo --out runs/s2 --stage1 runs/s1
  accelerate launch --config_file launch_configs/cpu_multiprocess.yaml \\
      -m ms2dist train stage1 --config tiny --data shards/demo --out runs/s1 --optim.lr=3e-3
  ms2dist train assemble --out runs/s1 --from runs/s1-Drums runs/s1-Piano runs/s1-Bass
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=["stage1", "stage2", "assemble"],
                   help="stage1: the five BVAEs; stage2: the MFG-VAE on frozen BVAEs; "
                        "assemble: join per-track stage-1 runs into one model")
    p.add_argument("--config", default="paper",
                   help="preset name (paper, tiny, ...) or YAML file (may name a preset)")
    p.add_argument("--data", type=Path,
                   help="packed shards folder holding train/ and val/ (needed to train)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints + model/")
    p.add_argument("--tracks", default=",".join(TRACKS),
                   help="stage1: comma-separated subset of the tracks to train")
    p.add_argument("--resume", default="auto",
                   help="auto (newest complete checkpoint in --out), never, or a checkpoint dir")
    p.add_argument("--stage1", help="stage2: stage-1 model dir or MLflow URI (models:/ms2-bvae@..)")
    p.add_argument("--expect-world-size", type=int, default=None,
                   help="fail before training unless exactly this many processes joined")
    p.add_argument("--tracking-uri", default="", help="MLflow URI (default: $MLFLOW_TRACKING_URI "
                   "or sqlite:///mlflow.db)")
    p.add_argument("--launch-config", default=os.environ.get("MS2DIST_LAUNCH_CONFIG", ""),
                   help="name of the accelerate config used, recorded as a tag (default: "
                        "$MS2DIST_LAUNCH_CONFIG)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this global step (checkpointed), leaving the run resumable")
    p.add_argument("--from", dest="sources", nargs="+", type=Path, metavar="RUN",
                   help="assemble: per-track stage-1 run folders")


def main(args: argparse.Namespace, extra: list[str]) -> int:
    if args.stage == "assemble":
        if not args.sources:
            print("ms2dist train assemble: give --from DIR [DIR ...]", file=sys.stderr)
            return 2
        out = assemble(args.out, args.sources)
        print(f"assembled stage-1 model: {out}")
        return 0
    from ms2dist.training.loop import train  # imports accelerate: only when training

    if args.data is None:
        print(f"ms2dist train {args.stage}: --data is required", file=sys.stderr)
        return 2
    try:
        tracks = parse_tracks(args.tracks, "--tracks")
    except ValueError as e:
        print(f"ms2dist train {args.stage}: {e}", file=sys.stderr)
        return 2
    overrides = list(extra)
    if args.tracking_uri:
        overrides.append(f"--tracking.tracking_uri={args.tracking_uri}")
        # Every MLflow call of this process (e.g. resolving --stage1 models:/...) uses it.
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    cfg = resolve_config(args.config, overrides)
    job = TrainJob(args.stage, cfg, args.data, args.out, tracks=tracks, resume=args.resume,
                   stage1=args.stage1, expect_world_size=args.expect_world_size,
                   launch_config=args.launch_config, max_steps=args.max_steps)
    try:
        return train(job)
    except (FileNotFoundError, WorldSizeError, TrackingUnavailable, StageMismatch,
            CorruptShardError) as e:
        # Known failure modes (missing data, wrong world, tracking server down) get one
        # clear line instead of a traceback from every rank.
        print(f"ms2dist train {args.stage}: error: {e}", file=sys.stderr)
        return 1
    finally:
        # gloo aborts the process at exit ("terminate called without an active exception")
        # when its group is still alive: tear it down on every path, preemption included.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
