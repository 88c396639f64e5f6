"""``ms2dist sample``: generate, restore, interpolate or complete phrases; writes MIDI,
pianoroll ``.npz`` and a PNG per sample.

    ms2dist sample --model models:/midi-sandwich2@champion --mode generate --n 4 --out out/
    ms2dist sample --model runs/s2 --mode restore --input song.npz --n 2 --out out/
    ms2dist sample --model runs/s2 --mode interpolate --input a.npz b.mid --n 8 --out out/
    ms2dist sample --model runs/s2 --mode complete --input song.npz --keep Piano --out out/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ms2dist import TRACKS
from ms2dist.inference.calibration import CalibrationError, rule_for_model
from ms2dist.inference.modelio import layout_of, load_model
from ms2dist.layout import parse_tracks
from ms2dist.music.files import DEFAULT_BPM, write_outputs
from ms2dist.songs.files import FORMATS, file_phrases

__all__ = ["add_arguments", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model dir, training output dir, or MLflow URI (models:/name@alias)")
    p.add_argument("--mode", choices=["generate", "restore", "interpolate", "complete",
                                      "no-fusion"], default="generate")
    p.add_argument("--n", type=int, default=4, help="samples (generate), phrases (restore, "
                   "complete) or interpolation steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--input", nargs="*", type=Path, default=[],
                   help="song files (.npz LPD or .mid) for restore/interpolate/complete")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--keep", default="Piano", help="complete: comma-separated tracks to keep")
    p.add_argument("--binarize", choices=["calibrated", "threshold", "bernoulli"], default=None,
                   help="which notes are played: the model's per-track thresholds fitted on "
                   "held-out data (default when it has them), one --threshold, or Bernoulli "
                   "draws")
    p.add_argument("--threshold", type=float, default=None,
                   help="play every note with probability above this (all tracks)")
    p.add_argument("--no-refine", action="store_true", help="skip the refine net (MSG1)")
    p.add_argument("--tempo", type=float, default=None, help="BPM (default: input's, or 100)")
    p.add_argument("--no-png", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _fail(msg: str) -> int:
    print(f"ms2dist sample: error: {msg}", file=sys.stderr)
    return 2


def _argument_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, checked before the (slow) model and song loading."""
    if args.n < 1:
        return f"--n must be at least 1, got {args.n}"
    needs_input = args.mode in ("restore", "interpolate", "complete")
    if needs_input and not args.input:
        return f"--mode {args.mode} needs --input SONG [SONG ...] (.npz LPD or .mid)"
    if not needs_input and args.input:
        return f"--mode {args.mode} takes no --input"
    if args.mode == "complete":
        try:
            parse_tracks(args.keep, "--keep")
        except ValueError as e:
            return str(e)
    if args.tempo is not None and not args.tempo > 0:
        return f"--tempo must be positive, got {args.tempo}"
    return None


def main(args: argparse.Namespace, extra: list[str]) -> int:
    error = _argument_error(args)
    if error:
        return _fail(error)
    kept = [TRACKS.index(t) for t in parse_tracks(args.keep, "--keep")] \
        if args.mode == "complete" else None
    songs = []
    for path in args.input:
        try:
            songs.append(file_phrases(path, args.format))
        except (ValueError, OSError) as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            return _fail(f"--input {msg}")
    try:
        model = load_model(args.model, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        return _fail(f"--model: {e}")
    meta = getattr(model, "ms2dist_meta", {})
    layout = layout_of(model)
    try:
        rule = rule_for_model(meta, args.binarize, args.threshold, label=str(args.model))
    except CalibrationError as e:
        return _fail(str(e))
    if rule.rule == "threshold" and args.threshold is None and args.binarize is None:
        print(f"ms2dist sample: warning: {args.model} has no calibrated thresholds; using "
              f"threshold 0.5 (fit them with `ms2dist calibrate`)", file=sys.stderr)
    if meta.get("stage") == "stage1" and args.mode != "no-fusion":
        print(f"ms2dist sample: warning: {args.model} is a stage-1 model (its MFG-VAE is "
              f"untrained); only --mode no-fusion is meaningful", file=sys.stderr)
    refine = not args.no_refine
    bpm = args.tempo or (songs[0][1] if songs else DEFAULT_BPM)
    probs, titles, x = _probabilities(model, args, songs, kept, refine)
    if x is not None:  # the input phrases, next to what became of them
        phrases = x.cpu().numpy() > 0.5
        write_outputs(phrases.astype(np.float32), phrases, args.out, "input", bpm=bpm,
                      titles=[f"input phrase {i}" for i in range(len(x))],
                      pictures=not args.no_png, layout=layout)
    g = torch.Generator(device=probs.device).manual_seed(args.seed)
    binary = rule.apply(probs, refine=refine, generator=g)
    if kept is not None:
        # The kept tracks come back exactly as given, whatever the binariser does.
        binary[..., kept] = x[..., kept] > 0.5
    titles = [f"{t}, {rule.short()}"
              for t in (titles or [f"{args.mode} {i}" for i in range(len(probs))])]
    index = write_outputs(probs.float().cpu().numpy(), binary.cpu().numpy(), args.out,
                          args.mode, bpm=bpm, titles=titles, pictures=not args.no_png,
                          layout=layout)
    summary = {"model": str(args.model), "mode": args.mode, "seed": args.seed,
               "n": len(index), "inputs": [str(p) for p in args.input], "tempo_bpm": bpm,
               "binarize": rule.to_json(refine), "threshold": args.threshold,
               "temperature": args.temperature, "refine": refine,
               "keep": [TRACKS[k] for k in kept] if kept is not None else None,
               "files": index}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    for entry in index:
        counts = entry["notes_per_track"]
        print(f"{Path(entry['midi']).name}: " + ", ".join(f"{t} {counts[t]}" for t in TRACKS)
              + f" notes ({sum(counts.values())} in all)")
    print(f"wrote {len(index)} {args.mode} sample(s) to {args.out} "
          f"(.mid, .npz{'' if args.no_png else ', .png'}); notes played by "
          f"{rule.describe(refine)}")
    return 0


def _probabilities(model: Any, args: argparse.Namespace, songs: list, kept: list[int] | None,
                   refine: bool) -> tuple[torch.Tensor, list[str] | None, torch.Tensor | None]:
    """The mode's note probabilities, its titles, and the input phrases (modes with input)."""
    device = torch.device(args.device)
    if args.mode in ("generate", "no-fusion"):
        fn = model.generate if args.mode == "generate" else model.generate_no_fusion
        return fn(args.n, temperature=args.temperature, seed=args.seed, refine=refine), None, None
    if args.mode == "interpolate":
        a = songs[0][0][0]
        b = songs[1][0][0] if len(songs) > 1 else songs[0][0][min(1, len(songs[0][0]) - 1)]
        xa = torch.as_tensor(a, dtype=torch.float32, device=device)
        xb = torch.as_tensor(b, dtype=torch.float32, device=device)
        probs = model.interpolate(xa, xb, steps=max(2, args.n), refine=refine)
        return probs, [f"interpolation step {i}" for i in range(len(probs))], None
    phrases = np.concatenate([s[0] for s in songs])[: args.n]
    x = torch.as_tensor(phrases, dtype=torch.float32, device=device)
    if args.mode == "restore":
        probs = model.restore(x, seed=args.seed, refine=refine)
        return probs, [f"restored phrase {i}" for i in range(len(x))], x
    probs = model.complete(x, kept, seed=args.seed, refine=refine)
    return probs, [f"phrase {i} completed from {args.keep}" for i in range(len(x))], x
