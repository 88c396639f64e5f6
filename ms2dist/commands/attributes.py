"""``ms2dist attributes``: fit a model's attribute vectors on its training data.

    ms2dist attributes --model runs/s2 --data shards/lpd5/train

Stage 2 already does this when it exports a model; run it for a model trained before, or
to refit on more data. The directions go into the model directory
(``attributes.safetensors`` + ``meta.attributes`` in ``config.json``) and are what
``ms2dist sample --attribute TRACK.ATTR=SCALE`` and the pyfunc ``attributes`` field use
(see ``ms2dist.inference.attributes``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ms2dist.inference.attributes import MAX_PHRASES, fit_attributes_dir
from ms2dist.inference.modelio import load_model, resolve_model_dir

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
    print(f"attribute vectors of {model_dir}, fitted on {block['source']}:")
    for name in block["names"]:
        st = block["stats"][name]
        print(f"  {name:<18} {st['segments']:>6} segments, mean {st['mean']:.2f}, quartiles "
              f"{st['q25']:.2f}..{st['q75']:.2f}, |direction| {st['direction_norm']:.3f}")
    for name, why in block["skipped"].items():
        print(f"  {name:<18} left out: {why}")
    return 0
