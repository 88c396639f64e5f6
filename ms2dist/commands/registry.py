"""``ms2dist registry``: list and promote registered models, import a shipped one.

    ms2dist registry list
    ms2dist registry promote midi-sandwich2 3
    ms2dist registry import pretrained:lpd5      # the shipped model, as @champion
"""

from __future__ import annotations

import argparse
import json
import sys

from ms2dist.tracking.connect import TrackingUnavailable
from ms2dist.tracking.registry import import_model, list_models, promote

__all__ = ["add_arguments", "main", "EPILOG"]

EPILOG = """examples:
  ms2dist registry list --tracking-uri sqlite:///demo_out/mlflow.db
  ms2dist registry promote midi-sandwich2 3 --alias staging
  ms2dist registry import pretrained:lpd5      # the shipped model, as @champion
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "promote", "import"],
                   help="list versions; promote NAME VERSION; import MODEL (a model directory "
                   "or pretrained:lpd5) as a new midi-sandwich2 version")
    p.add_argument("name", nargs="?", help="registered model name (promote) or model (import)")
    p.add_argument("version", nargs="?", help="version number (promote)")
    p.add_argument("--alias", default="champion",
                   help="alias promote and import point at the version (models:/NAME@ALIAS)")
    p.add_argument("--tracking-uri", default="",
                   help="MLflow URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def main(args: argparse.Namespace, extra: list[str]) -> int:
    from mlflow.exceptions import MlflowException

    try:
        return _main(args)
    except TrackingUnavailable as e:
        print(f"ms2dist registry: error: {e}", file=sys.stderr)
        return 1
    except MlflowException as e:
        print(f"ms2dist registry {args.action}: error: {e.message}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    if args.action == "import":
        if not args.name:
            print("usage: ms2dist registry import MODEL (e.g. pretrained:lpd5)", file=sys.stderr)
            return 2
        try:
            version = import_model(args.name, args.alias, args.tracking_uri)
        except (FileNotFoundError, ValueError) as e:
            print(f"ms2dist registry import: error: {e}", file=sys.stderr)
            return 2
        name, ver = version.split("/")
        print(f"imported {args.name} as {name} version {ver}; models:/{name}@{args.alias} "
              f"now points to it")
        return 0
    if args.action == "promote":
        if not args.name or not args.version:
            print("usage: ms2dist registry promote NAME VERSION", file=sys.stderr)
            return 2
        promote(args.name, args.version, args.alias, args.tracking_uri)
        print(f"{args.name} version {args.version} is now @{args.alias}")
        return 0
    rows = list_models(args.tracking_uri)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no registered models")
        return 0
    print(f"{'name':<16} {'ver':>4}  {'aliases':<20} {'val/f1_mean':>11}  tracks / stands on")
    for r in rows:
        f1 = r["metrics"].get("val/f1_mean")
        f1s = f"{f1:.4f}" if f1 is not None else "-"
        on = r["tags"].get("ms2-bvae.version") or r["tags"].get("ms2dist.trained_tracks", "")
        print(f"{r['name']:<16} {r['version']:>4}  {','.join(r['aliases']):<20} {f1s:>11}  {on}")
    return 0
