"""``ms2dist calibrate``: fit the per-track thresholds of a model on held-out data.

    ms2dist calibrate --model runs/s2 --data shards/lpd5/val

Stage 2 already does this when it exports a model; run it again after changing the data
or to refit with more samples. The thresholds go into the model's ``config.json``
(``meta.calibration``) and are the default rule of ``sample``, ``evaluate`` and the
pyfunc model (see ``ms2dist.inference.calibration``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ms2dist import TRACKS
from ms2dist.inference.calibration import calibrate_dir
from ms2dist.inference.modelio import load_model, resolve_model_dir

__all__ = ["add_arguments", "main", "EPILOG"]

EPILOG = """examples:
  ms2dist calibrate --model runs/s2 --data shards/lpd5/val
  ms2dist calibrate --model runs/s2/model --data shards/lpd5 --n-samples 512 --seed 1
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a local model directory or training output directory (its model/); "
                        "the thresholds are written into its config.json")
    p.add_argument("--data", type=Path, required=True,
                   help="held-out split folder (shards/<name>/val) or a pack folder (its val/)")
    p.add_argument("--n-samples", type=int, default=256,
                   help="phrases generated to fit the thresholds on")
    p.add_argument("--max-phrases", type=int, default=2000,
                   help="data phrases read for the target note densities")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated phrases")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when available, else cpu)")


def main(args: argparse.Namespace, extra: list[str]) -> int:
    if str(args.model).startswith(("models:/", "runs:/", "pretrained:")):
        print("ms2dist calibrate: error: --model must be a local directory (calibration "
              "writes into its config.json); download or copy the model first",
              file=sys.stderr)
        return 2
    split = args.data
    if not (split / "manifest.json").is_file() and (split / "val" / "manifest.json").is_file():
        split = split / "val"
    try:
        model_dir = resolve_model_dir(args.model)
        model = load_model(model_dir, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"ms2dist calibrate: error: --model: {e}", file=sys.stderr)
        return 2
    if model.ms2dist_meta.get("stage") != "stage2":
        print(f"ms2dist calibrate: error: {model_dir} is a {model.ms2dist_meta.get('stage')} "
              f"model; calibration needs the full model (stage 2)", file=sys.stderr)
        return 2
    try:
        cal = calibrate_dir(model_dir, model, split, n_samples=args.n_samples,
                            max_phrases=args.max_phrases, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"ms2dist calibrate: error: --data {args.data}: {e}", file=sys.stderr)
        return 2
    print(f"calibrated {model_dir} on {split} ({cal['n_data_phrases']} phrases, "
          f"{cal['n_samples']} generated):")
    for t in TRACKS:
        print(f"  {t:<8} data: density {cal['target_density'][t]:.4f}, empty bars "
              f"{cal['target_empty_bar_rate'][t]:.3f} -> bar gate {cal['bar_gates'][t]:.3f}, "
              f"note threshold {cal['thresholds'][t]:.3f} (no refine "
              f"{cal['bar_gates_no_refine'][t]:.3f} / {cal['thresholds_no_refine'][t]:.3f}); "
              f"density at 0.5 was {cal['density_at_0.5'][t]:.4f}")
    print(json.dumps({"thresholds": cal["thresholds"], "bar_gates": cal["bar_gates"]}))
    return 0
