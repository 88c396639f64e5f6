"""``ms2dist evaluate``: the paper's Table I for our model, side by side with the data.

    ms2dist evaluate --model models:/midi-sandwich2@champion --data shards/lpd5/test --out eval/

The rows and columns are described in :mod:`ms2dist.inference.evaluation`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ms2dist.dataset.load import split_phrases
from ms2dist.inference.calibration import CalibrationError, rule_for_model
from ms2dist.inference.evaluation import closer_count, evaluate_model, prior_checks, table_rows
from ms2dist.inference.modelio import load_model
from ms2dist.inference.tables import slug, write_tables
from ms2dist.music.files import write_outputs
from ms2dist.tracking.connect import TrackingUnavailable, connect

__all__ = ["add_arguments", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model dir or MLflow URI")
    p.add_argument("--data", type=Path, required=True, help="a split folder, e.g. shards/x/test")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--extra-model", action="append", default=[], metavar="NAME=URI",
                   help="more rows, e.g. shared-BVAE=runs/shared/model or concat=models:/..")
    p.add_argument("--max-phrases", type=int, default=2000,
                   help="phrases of the split used (and samples generated per row)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--binarize", choices=["calibrated", "threshold", "bernoulli"], default=None,
                   help="which notes are played (default: the model's calibrated per-track "
                   "thresholds; threshold 0.5 for an uncalibrated model)")
    p.add_argument("--threshold", type=float, default=None,
                   help="one threshold for every track and model instead")
    p.add_argument("--tracking-uri", default="")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the table to MLflow")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _fail(msg: str) -> int:
    print(f"ms2dist evaluate: error: {msg}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace, extra: list[str]) -> int:
    if args.max_phrases < 1 or args.batch_size < 1:
        return _fail("--max-phrases and --batch-size must be at least 1")
    extras: dict[str, str] = {}
    for item in args.extra_model:
        name, sep, uri = item.partition("=")
        name = name.strip()
        if not sep or not name or not uri:
            return _fail(f"--extra-model {item!r}: expected NAME=URI")
        if name in extras or name in ("Dataset", "MSG1", "MSG2", "MSR", "no-fusion"):
            return _fail(f"--extra-model {item!r}: the row name {name!r} is already used")
        extras[name] = uri
    torch.manual_seed(args.seed)
    try:
        data = split_phrases(args.data, args.max_phrases)
    except (FileNotFoundError, ValueError) as e:
        return _fail(f"--data {args.data}: {e}")
    outputs: dict[str, np.ndarray] = {}
    rules: dict[str, str] = {}
    for name, uri in {"": args.model, **extras}.items():
        try:
            model = load_model(uri, device=args.device)
        except (FileNotFoundError, ValueError) as e:
            return _fail(f"{'--extra-model ' + name if name else '--model'}: {e}")
        try:
            rule = rule_for_model(model.ms2dist_meta, args.binarize, args.threshold,
                                  label=uri)
        except CalibrationError as e:
            return _fail(str(e))
        rules[name or "model"] = rule.describe()
        rule_short = rule.short()
        rows = evaluate_model(model, data, seed=args.seed, bs=args.batch_size, rule=rule)
        if name:  # an extra model contributes its generator and restore rows
            rows = {f"{name} (MSG2)": rows["MSG2"], f"{name} (MSR)": rows["MSR"]}
        outputs.update(rows)
    table = table_rows(outputs, data)
    meta = {"model": str(args.model), "data": str(args.data), "n_phrases": int(len(data)),
            "binarize": "; ".join(f"{k}: {v}" for k, v in rules.items()) if extras
            else rules["model"], "threshold": args.threshold, "seed": args.seed,
            "extra_models": extras, "prior_checks": prior_checks(table),
            "msg2_closer_than_msg1": closer_count(table, "MSG2", "MSG1")}
    md = write_tables(table, args.out, meta)
    figs = args.out / "figures"
    for name, arr in [("Dataset", data), *outputs.items()]:
        how = "" if name == "Dataset" else f", {rule_short}"
        write_outputs(arr[:1].astype(np.float32), arr[:1], figs, slug(name),
                      titles=[f"{name}{how}"])
    print(md.read_text())
    if not args.no_mlflow:
        try:
            _log_mlflow(args, md, figs, table, meta)
        except TrackingUnavailable as e:
            return _fail(f"{e} (the table is written to {md}; --no-mlflow skips logging)")
    print(f"Table I written to {md} and {args.out / 'table_i.csv'}")
    return 0


def _log_mlflow(args: argparse.Namespace, md: Path, figs: Path,
                table: dict[str, dict[str, float]], meta: dict[str, Any]) -> None:
    mlflow = connect(args.tracking_uri)
    mlflow.set_experiment("ms2dist-evaluate")
    with mlflow.start_run(run_name="table-i", tags={"ms2dist.model": str(args.model),
                                                    "ms2dist.data": str(args.data)}):
        mlflow.log_params({"n_phrases": meta["n_phrases"], "threshold": meta["threshold"],
                           "binarize": meta["binarize"][:500],
                           "seed": meta["seed"], **{f"extra_model.{k}": v
                                                     for k, v in meta["extra_models"].items()}})
        for name, row in table.items():
            mlflow.log_metrics({f"{slug(name)}/{k}": v for k, v in row.items()
                                if math.isfinite(v)})
        for suffix in (".md", ".csv", ".json"):
            mlflow.log_artifact(str(md.with_suffix(suffix)))
        mlflow.log_artifacts(str(figs), artifact_path="figures")
