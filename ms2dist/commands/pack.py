"""``ms2dist pack``: LPD / MIDI songs -> WebDataset shards of bit-packed phrases.

    ms2dist pack --input ../shared/data/lpd5_train --name lpd5 --workers 2

The format and the guarantees (determinism, resume) are in :mod:`ms2dist.dataset.packer`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ms2dist.dataset.manifest import parse_split
from ms2dist.dataset.packer import PackUsageError, pack
from ms2dist.songs.files import FORMATS
from ms2dist.songs.phrases import PhraseConfig

__all__ = ["add_arguments", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="input folders (searched recursively) and/or files")
    p.add_argument("--name", required=True, help="dataset name (default output shards/<name>)")
    p.add_argument("--out", default=None, help="output folder (default shards/<name>)")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="input format: auto (by suffix), lpd5, lpd (any LPD npz, merged), midi")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)),
                   help="processes reading songs, the writing main process included "
                        "(default: CPU count)")
    p.add_argument("--phrases-per-shard", type=int, default=2048,
                   help="close a shard at the first song boundary at/after this many phrases")
    p.add_argument("--block-size", type=int, default=256,
                   help="phrases per tar sample (one .npy member per block)")
    p.add_argument("--split", default="90,5,5", help="train,val,test shares (default 90,5,5)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard an existing output made with other settings/inputs")
    d = PhraseConfig()
    g = p.add_argument_group("phrase settings")
    g.add_argument("--source-resolution", type=int, default=d.source_resolution,
                   help="steps per beat the inputs must have (others are rejected)")
    g.add_argument("--steps-per-beat", type=int, default=d.steps_per_beat)
    g.add_argument("--beats-per-bar", type=int, default=d.beats_per_bar)
    g.add_argument("--bars-per-phrase", type=int, default=d.bars_per_phrase)
    g.add_argument("--lowest-pitch", type=int, default=d.lowest_pitch)
    g.add_argument("--n-pitches", type=int, default=d.n_pitches)
    g.add_argument("--keep-empty", action="store_true",
                   help="keep windows where every track is empty")


def main(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        cfg = PhraseConfig(
            source_resolution=args.source_resolution,
            steps_per_beat=args.steps_per_beat,
            beats_per_bar=args.beats_per_bar,
            bars_per_phrase=args.bars_per_phrase,
            lowest_pitch=args.lowest_pitch,
            n_pitches=args.n_pitches,
            drop_empty=not args.keep_empty,
        )
        split = parse_split(args.split)
        if args.workers < 1 or args.phrases_per_shard < 1 or args.block_size < 1:
            raise ValueError("--workers, --phrases-per-shard and --block-size must be >= 1")
    except ValueError as e:
        print(f"ms2dist pack: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("shards") / args.name
    try:
        result = pack(
            args.input, out, name=args.name, fmt=args.format, workers=args.workers,
            phrases_per_shard=args.phrases_per_shard, block_size=args.block_size,
            split=split, cfg=cfg, overwrite=args.overwrite, progress=True,
        )
    except PackUsageError as e:
        print(f"ms2dist pack: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0 if result.n_packed_songs > 0 else 1
