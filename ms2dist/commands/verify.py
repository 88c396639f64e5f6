"""``ms2dist verify``: check a pack (or one split) against its manifests.

    ms2dist verify shards/lpd5

Every shard must be present with the recorded size and sha256, every block must read and
pass its CRC32, every count must be the manifest's. Exit 0 when all holds, 1 otherwise
(each problem on its own line, naming the shard and what is wrong).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ms2dist.dataset.verify import verify_pack

__all__ = ["add_arguments", "main", "EPILOG"]

EPILOG = """examples:
  ms2dist verify shards/lpd5              # every split of a pack
  ms2dist verify shards/lpd5/val          # one split
  ms2dist verify demo_out/shards && echo intact
exit status: 0 when everything holds, 1 when a problem is found, 2 when there is no pack.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", type=Path, help="a folder written by `ms2dist pack`, or one split")


def main(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        reports = verify_pack(args.pack)
    except FileNotFoundError as e:
        print(f"ms2dist verify: error: {e}", file=sys.stderr)
        return 2
    bad = 0
    for r in reports:
        state = "ok" if r.ok else f"{len(r.problems)} problem(s)"
        old = f", {r.blocks_without_checksum} blocks without checksum (older pack: counts " \
              f"and sha256 checked only)" if r.blocks_without_checksum else ""
        print(f"{r.split}: {r.n_shards} shards, {r.n_blocks} blocks, {r.n_phrases} phrases: "
              f"{state}{old}")
        for p in r.problems:
            print(f"  {p}")
        bad += not r.ok
    return 1 if bad else 0
