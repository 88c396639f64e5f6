"""``ms2dist evaluate``: the paper's Table I for our model, side by side with the data; one
sample per row in ``<out>/figures/`` (``--audio``: rendered too) and ``<out>/index.html``
to look at and listen to them. Examples: :data:`EPILOG`.

The rows and columns are described in :mod:`ms2dist.inference.evaluation`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ms2dist.dataset.load import song_folder, split_phrases
from ms2dist.inference.calibration import CalibrationError, rule_for_model
from ms2dist.inference.evaluation import closer_count, evaluate_model, prior_checks, table_rows
from ms2dist.inference.mode_checks import flat_rows, run_checks
from ms2dist.inference.mode_checks import markdown as mode_markdown
from ms2dist.inference.modelio import load_model
from ms2dist.inference.tables import slug, write_tables
from ms2dist.music.audio import AUDIO_FORMATS, AudioUnavailable, RenderError, require
from ms2dist.music.files import write_outputs
from ms2dist.music.page import audio_settings, write_page
from ms2dist.tracking.connect import TrackingUnavailable
from ms2dist.tracking.tables import log_table_run

__all__ = ["EPILOG", "add_arguments", "main"]

EPILOG = """examples:
  ms2dist evaluate --model models:/midi-sandwich2@champion --data shards/lpd5/test --out eval/
  ms2dist evaluate --model pretrained:lpd5 --data shards/lpd5/test --max-phrases 200 \\
      --audio flac --no-mlflow --out eval/
  ms2dist evaluate --model runs/s2/model --data shards/lpd5/test --out eval/ \\
      --extra-model shared-BVAE=runs/shared/model --threshold 0.3
  ms2dist evaluate --model pretrained:lpd5 --data ../shared/data/lpd5_test_small --modes \\
      --no-mlflow --out eval/   # + songs, infill, attributes and variations (modes.md)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model dir, pretrained:NAME or MLflow URI (models:/name@alias)")
    p.add_argument("--data", type=Path, required=True, help="a split folder, e.g. shards/x/test")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for table_i.{md,csv,json}, figures/ and index.html")
    p.add_argument("--extra-model", action="append", default=[], metavar="NAME=URI",
                   help="more rows, e.g. shared-BVAE=runs/shared/model or concat=models:/..")
    p.add_argument("--max-phrases", type=int, default=2000,
                   help="phrases of the split used (and samples generated per row)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the generated rows and the restore noise: same seed, same table")
    p.add_argument("--batch-size", type=int, default=64,
                   help="phrases per model call (memory, not results)")
    p.add_argument("--binarize", choices=["calibrated", "threshold", "bernoulli"], default=None,
                   help="which notes are played (none: the model's calibrated per-track "
                   "thresholds; threshold 0.5 for an uncalibrated model)")
    p.add_argument("--threshold", type=float, default=None,
                   help="play every note with probability above this, every track and model")
    p.add_argument("--tracking-uri", default="",
                   help="MLflow tracking URI (empty: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the table to MLflow")
    p.add_argument("--audio", choices=AUDIO_FORMATS, default=None,
                   help="also render each row's sample to audio with FluidSynth (needs the "
                   "Debian packages fluidsynth fluid-soundfont-gm, or $MS2DIST_SOUNDFONT)")
    p.add_argument("--modes", action="store_true",
                   help="also measure the generation modes (song, infill, attributes, vary; "
                   "ms2dist.inference.mode_checks) -> modes.md / modes.json")
    p.add_argument("--mode-samples", type=int, default=64,
                   help="--modes: phrases generated per attribute and scale")
    p.add_argument("--songs", type=Path, default=None,
                   help="--modes: a folder of real songs (.npz / .mid) whose consecutive "
                   "phrases the songs are compared with (default: --data, when it is a "
                   "folder of songs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device to evaluate on")


def _fail(msg: str) -> int:
    print(f"ms2dist evaluate: error: {msg}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace, extra: list[str]) -> int:
    if args.max_phrases < 1 or args.batch_size < 1:
        return _fail("--max-phrases and --batch-size must be at least 1")
    if args.audio:  # before any work: a missing package must not cost an evaluation
        try:
            require()
        except AudioUnavailable as e:
            return _fail(str(e))
    extras: dict[str, str] = {}
    for item in args.extra_model:
        name, sep, uri = item.partition("=")
        name = name.strip()
        if not sep or not name or not uri:
            return _fail(f"--extra-model {item!r}: expected NAME=URI")
        if name in extras or name in ("Dataset", "MSG1", "MSG2", "MSR", "no-fusion"):
            return _fail(f"--extra-model {item!r}: the row name {name!r} is already used")
        extras[name] = uri
    if args.songs is not None and not args.modes:
        return _fail("--songs goes with --modes")
    if args.mode_samples < 2:
        return _fail(f"--mode-samples must be at least 2, got {args.mode_samples}")
    torch.manual_seed(args.seed)
    try:
        data = split_phrases(args.data, args.max_phrases)
    except (FileNotFoundError, ValueError) as e:
        return _fail(f"--data {args.data}: {e}")
    real_songs = None
    if args.modes:
        songs_dir = args.songs
        if songs_dir is None and not (args.data / "manifest.json").is_file():
            songs_dir = args.data
        if songs_dir is None:
            print("ms2dist evaluate: note: --data is a packed split (no song order), so the "
                  "song check is left out; give --songs DIR (real songs) to run it",
                  file=sys.stderr)
        else:
            try:
                real_songs = song_folder(songs_dir)
            except (FileNotFoundError, ValueError) as e:
                return _fail(f"--songs {songs_dir}: {e}")
    outputs: dict[str, np.ndarray] = {}
    rules: dict[str, str] = {}
    short: dict[str, str] = {}
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
        rows = evaluate_model(model, data, seed=args.seed, bs=args.batch_size, rule=rule)
        if name:  # an extra model contributes its generator and restore rows
            rows = {f"{name} (MSG2)": rows["MSG2"], f"{name} (MSR)": rows["MSR"]}
        outputs.update(rows)
        short.update(dict.fromkeys(rows, rule.short()))  # each row titled by its own rule
    table = table_rows(outputs, data)
    meta = {"model": str(args.model), "data": str(args.data), "n_phrases": int(len(data)),
            "binarize": "; ".join(f"{k}: {v}" for k, v in rules.items()) if extras
            else rules["model"], "threshold": args.threshold, "seed": args.seed,
            "extra_models": extras, "prior_checks": prior_checks(table),
            "msg2_closer_than_msg1": closer_count(table, "MSG2", "MSG1")}
    md = write_tables(table, args.out, meta)
    figs = args.out / "figures"
    page = []
    for name, arr in [("Dataset", data), *outputs.items()]:
        how = "" if name == "Dataset" else f", {short[name]}"
        try:
            entry, = write_outputs(arr[:1].astype(np.float32), arr[:1], figs, slug(name),
                                   titles=[f"{name}{how}"], audio=args.audio)
        except (RenderError, AudioUnavailable) as e:
            return _fail(f"{e} (the table is written to {md})")
        page.append({**entry, "title": f"{name}{how}"})
    settings = {k: v for k, v in meta.items() if k != "prior_checks"}
    write_page(args.out, page, {**settings, **audio_settings(args.audio)},
               f"ms2dist evaluate: {args.model} on {args.data}")
    print(md.read_text())
    mode_files: list[Path] = []
    if args.modes:
        model = load_model(args.model, device=args.device)
        rule = rule_for_model(model.ms2dist_meta, args.binarize, args.threshold)
        with torch.no_grad():
            result = run_checks(model, lambda p: rule.apply(p).cpu().numpy(), data,
                                real_songs, seed=args.seed, batch_size=args.batch_size,
                                n_samples=args.mode_samples)
        text = mode_markdown(result, f"Generation modes: {args.model} on {args.data}")
        mode_files = [args.out / "modes.md", args.out / "modes.json"]
        mode_files[0].write_text(text + "\n")
        mode_files[1].write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(text)
        table = {**table, **{f"mode {k}": v for k, v in flat_rows(result).items()}}
    if not args.no_mlflow:
        try:
            _log_mlflow(args, md, figs, table, meta, mode_files)
        except TrackingUnavailable as e:
            return _fail(f"{e} (the table is written to {md}; --no-mlflow skips logging)")
    print(f"Table I written to {md} and {args.out / 'table_i.csv'}")
    return 0


def _log_mlflow(args: argparse.Namespace, md: Path, figs: Path,
                table: dict[str, dict[str, float]], meta: dict[str, Any],
                extra_files: list[Path]) -> None:
    # Into the evaluated model's own pipeline when the store holds it (else the
    # ms2dist-evaluate experiment); artifacts beside the store, never under the cwd.
    log_table_run(args.tracking_uri, str(args.model), str(args.data), table, meta,
                  files=[md.with_suffix(s) for s in (".md", ".csv", ".json")] + extra_files,
                  folders={"figures": figs})
