"""``ms2dist pack``: LPD / MIDI songs -> WebDataset shards of bit-packed phrases.

    ms2dist pack ../shared/data/lpd5_train --workers 2     # -> shards/lpd5_train

The inputs come as positional arguments or after ``--input`` (not both). ``--name`` (recorded
in the manifests, and the default output ``shards/<name>``) defaults to the input folder's
name, a lone file's stem, or the folder several inputs share. The format and the guarantees
(determinism, resume) are in :mod:`ms2dist.dataset.packer`.
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

__all__ = ["add_arguments", "main", "input_name", "EPILOG"]

EPILOG = """examples:
  ms2dist pack ../shared/data/lpd5_train --workers 2
  ms2dist pack songs/ --format midi --split 80,10,10 --out shards/mine
  ms2dist pack --input a.mid b.mid c.mid --name trio --phrases-per-shard 256
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="input folders (searched recursively) and/or song files (.npz LPD, "
                        ".mid); or give them with --input")
    p.add_argument("--input", nargs="+", default=None, metavar="DIR_OR_FILE",
                   help="the same as the positional INPUTs (not both)")
    p.add_argument("--name", default=None,
                   help="dataset name recorded in the manifests (default: the input folder's "
                        "name, a lone file's stem, or the folder the inputs share)")
    p.add_argument("--out", default=None, help="output folder (default: shards/<name>)")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="input format: auto (by suffix), lpd5, lpd (any LPD npz, merged), midi")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)),
                   help="processes reading songs, the writing main process included "
                        "(default: the CPU count)")
    p.add_argument("--phrases-per-shard", type=int, default=2048,
                   help="close a shard at the first song boundary at/after this many phrases")
    p.add_argument("--block-size", type=int, default=256,
                   help="phrases per tar sample (one .npy member per block)")
    p.add_argument("--split", default="90,5,5",
                   help="train,val,test shares, by a hash of each song's id")
    p.add_argument("--overwrite", action="store_true",
                   help="discard an existing output made with other settings/inputs")
    d = PhraseConfig()
    g = p.add_argument_group("phrase settings")
    g.add_argument("--source-resolution", type=int, default=d.source_resolution,
                   help="steps per beat the inputs must have (others are rejected)")
    g.add_argument("--steps-per-beat", type=int, default=d.steps_per_beat,
                   help="steps per beat of the phrases (must divide --source-resolution)")
    g.add_argument("--beats-per-bar", type=int, default=d.beats_per_bar,
                   help="beats per bar; songs in another metre are rejected")
    g.add_argument("--bars-per-phrase", type=int, default=d.bars_per_phrase,
                   help="bars per phrase (windows cut from each song's first bar line)")
    g.add_argument("--lowest-pitch", type=int, default=d.lowest_pitch,
                   help="MIDI pitch of the phrases' lowest pitch row")
    g.add_argument("--n-pitches", type=int, default=d.n_pitches,
                   help="pitch rows kept from --lowest-pitch up (notes outside are dropped)")
    g.add_argument("--keep-empty", action="store_true",
                   help="keep windows where every track is empty")


def input_name(inputs: list[str]) -> str:
    """The dataset name inputs give: a folder's name, a lone file's stem, else the name of
    the folder the inputs share ("" when they share none but the root)."""
    paths = [Path(x).resolve() for x in inputs]
    if len(paths) == 1:
        return paths[0].stem if paths[0].is_file() else paths[0].name
    return Path(os.path.commonpath(paths)).name


def _inputs_and_name(args: argparse.Namespace) -> tuple[list[str], str]:
    """Inputs from the positional arguments or --input; --name or the name they give."""
    if args.inputs and args.input and list(args.inputs) != list(args.input):
        raise ValueError(f"inputs given twice, as arguments ({' '.join(args.inputs)}) and "
                         f"with --input ({' '.join(args.input)}): give them one way")
    inputs = list(args.inputs or args.input or [])
    if not inputs:
        raise ValueError("no inputs: give folders or song files, e.g. "
                         "`ms2dist pack ../shared/data/lpd5_train`")
    name = args.name if args.name is not None else input_name(inputs)
    if not name.strip():
        raise ValueError(f"cannot name the dataset after {' '.join(inputs)}: give --name")
    return inputs, name


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
        inputs, name = _inputs_and_name(args)
    except ValueError as e:
        print(f"ms2dist pack: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("shards") / name
    try:
        result = pack(
            inputs, out, name=name, fmt=args.format, workers=args.workers,
            phrases_per_shard=args.phrases_per_shard, block_size=args.block_size,
            split=split, cfg=cfg, overwrite=args.overwrite, progress=True,
        )
    except PackUsageError as e:
        print(f"ms2dist pack: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0 if result.n_packed_songs > 0 else 1
