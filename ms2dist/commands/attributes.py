"""``ms2dist attributes``: fit a model's attribute vectors on its training data.

    ms2dist attributes --model runs/s2 --data shards/lpd5/train

Stage 2 already fits them when it exports a model; run this for a model trained before, to
refit on more data, or to measure how well each vector steers the model: unless
``--check-samples 0``, every attribute's response is measured on generated phrases
(``ms2dist.inference.mode_checks.attribute_check``) and stored with it
(``meta.attributes.response``), and ``sample --attribute`` warns about one that does not
steer. The directions go into the model directory
(``attributes.safetensors`` + ``meta.attributes`` in ``config.json``) and are what
``ms2dist sample --attribute TRACK.ATTR=SCALE`` and the pyfunc ``attributes`` field use
(see ``ms2dist.inference.attributes``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

from ms2dist.inference.attributes import MAX_PHRASES, fit_attributes_dir
from ms2dist.inference.calibration import rule_for_model
from ms2dist.inference.mode_checks import SCALES, attribute_check
from ms2dist.inference.modelio import load_model, resolve_model_dir, update_model_meta

__all__ = ["add_arguments", "main", "EPILOG"]

EPILOG = """examples:
  ms2dist attributes --model runs/s2 --data shards/lpd5/train
  ms2dist attributes --model runs/s2/model --data songs/ --max-phrases 4000
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a local model directory or training output directory (its model/); "
                        "the vectors are written into it")
    p.add_argument("--data", type=Path, required=True,
                   help="the training data: a split folder (shards/<name>/train), a pack "
                        "folder (its train/) or a folder of .npz / .mid songs")
    p.add_argument("--max-phrases", type=int, default=MAX_PHRASES,
                   help="data phrases read to fit the directions")
    p.add_argument("--batch-size", type=int, default=64, help="phrases per model call")
    p.add_argument("--check-samples", type=int, default=64,
                   help="phrases generated per attribute and scale to measure each vector's "
                   "response (0: do not measure)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when available, else cpu)")


def _fail(msg: str) -> int:
    print(f"ms2dist attributes: error: {msg}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace, extra: list[str]) -> int:
    if str(args.model).startswith(("models:/", "runs:/", "pretrained:")):
        return _fail("--model must be a local directory (the vectors are written into it); "
                     "download or copy the model first")
    if args.max_phrases < 1 or args.batch_size < 1:
        return _fail("--max-phrases and --batch-size must be at least 1")
    if args.check_samples < 0 or args.check_samples == 1:
        return _fail(f"--check-samples must be 0 (no check) or at least 2, got "
                     f"{args.check_samples}")
    data = args.data
    if not (data / "manifest.json").is_file() and (data / "train" / "manifest.json").is_file():
        data = data / "train"
    try:
        model_dir = resolve_model_dir(args.model)
        model = load_model(model_dir, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        return _fail(f"--model: {e}")
    if model.ms2dist_meta.get("stage") != "stage2":
        return _fail(f"{model_dir} is a {model.ms2dist_meta.get('stage')} model; attribute "
                     f"vectors live in the MFG-VAE's latent, trained in stage 2")
    try:
        block = fit_attributes_dir(model_dir, model, data, args.max_phrases, args.batch_size)
    except (FileNotFoundError, ValueError) as e:
        return _fail(f"--data {args.data}: {e}")
    response = _measure(model_dir, args.check_samples, args.device) \
        if args.check_samples else {}
    print(f"attribute vectors of {model_dir}, fitted on {block['source']}:")
    for name in block["names"]:
        st = block["stats"][name]
        r = response.get(name)
        said = "" if r is None else (f"; response Spearman {_f(r['spearman'])}, moves "
                                     f"{_f(r['moved_std'])} std (other tracks "
                                     f"{_f(r['others_moved_std'])})"
                                     + ("" if r["steers"] else ": does NOT steer"))
        print(f"  {name:<18} {st['segments']:>6} segments, mean {st['mean']:.2f}, quartiles "
              f"{st['q25']:.2f}..{st['q75']:.2f}, |direction| {st['direction_norm']:.3f}"
              + said)
    for name, why in block["skipped"].items():
        print(f"  {name:<18} left out: {why}")
    return 0


def _measure(model_dir: Path, n: int, device: str) -> dict[str, dict[str, Any]]:
    """Each vector's response on ``n`` generated phrases per scale, stored with the model."""
    model = load_model(model_dir, device)  # as a user will: with the vectors just written
    rule = rule_for_model(model.ms2dist_meta)
    with torch.no_grad():
        check = attribute_check(model, lambda p: rule.apply(p).cpu().numpy(),
                                model.ms2dist_attributes,
                                model.ms2dist_meta["attributes"]["stats"], n=n)
    response = {name: {"spearman": _num(row["spearman"]), "moved_std": _num(row["moved (std)"]),
                       "others_moved_std": _num(row["others moved (max std)"]),
                       "steers": bool(row["passed"]), "samples_per_scale": n,
                       "scales": list(SCALES)}
                for name, row in check["rows"].items()}
    meta = model.ms2dist_meta["attributes"]
    update_model_meta(model_dir, {"attributes": {**meta, "response": response}})
    return response


def _num(v: float) -> float | None:
    return round(float(v), 4) if math.isfinite(v) else None  # JSON has no NaN


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"
