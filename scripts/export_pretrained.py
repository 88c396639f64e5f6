"""Copy a trained, calibrated model into the package as ``pretrained:<name>`` with its card.

Run by scripts/train_pretrained.sh after training. Evaluates the model (Table I) on songs
it never saw, the pack's test split and ``lpd5_test_small``, and writes
``ms2dist/pretrained/<name>/{config.json, model.safetensors, MODEL_CARD.md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ms2dist import TRACKS  # noqa: E402
from ms2dist.inference.modelio import (  # noqa: E402
    ATTRIBUTES_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    read_model_config,
)

MAX_BYTES = 20 * 2**20


def _f(v: float | None, digits: int = 3) -> str:
    """table_i.json writes nan as null."""
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _relative(obj: object) -> object:
    """Paths inside the repository as repository-relative strings (no machine paths ship)."""
    if isinstance(obj, dict):
        return {k: _relative(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v) for v in obj]
    if isinstance(obj, str) and obj.startswith(str(REPO) + os.sep):
        return os.path.relpath(obj, REPO)
    return obj


def _evaluate(model: Path, data: Path, out: Path, n: int) -> dict:
    cmd = [sys.executable, "-m", "ms2dist", "evaluate", "--model", str(model), "--data",
           str(data), "--out", str(out), "--max-phrases", str(n), "--no-mlflow"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads((out / "table_i.json").read_text())


def _summary(doc: dict, label: str) -> list[str]:
    rows, meta = doc["rows"], doc["meta"]
    f1 = {t: rows["MSR"].get(f"F1/{t}") for t in TRACKS}
    vals = [v for v in f1.values() if v is not None and math.isfinite(v)]
    w, n = meta["msg2_closer_than_msg1"]
    pc = meta["prior_checks"]
    failed = [f"{c['track']} {c['metric']} ({_f(c['model'])} vs {_f(c['data'])})"
              for c in pc["checks"] if not c["ok"]]
    out = [f"### {label}: {meta['n_phrases']} phrases", "",
           "| row | dist to Dataset |", "|---|---|"]
    out += [f"| {r} | {_f(rows[r]['dist'])} |" for r in rows if r != "Dataset"]
    out += ["", "Restore (MSR, through BVAE encoders -> MFG-VAE -> decoders) note F1: "
            + ", ".join(f"{t} {_f(v)}" for t, v in f1.items() if v is not None)
            + f"; mean {_f(sum(vals) / len(vals) if vals else None)}.",
            f"MSG2 closer to Dataset than MSG1 on {w} of {n} columns.",
            "Generated phrases within the bounds (EB +-0.10, notes/bar x1.5, UPC +-1.0, "
            f"polyphony x1.5) on every track: {'yes' if pc['ok'] else 'no'}"
            + (f" (outside: {'; '.join(failed)})" if failed else "") + ".", ""]
    return out


def _prior_summary(doc: dict, label: str) -> list[str]:
    """Generated-from-noise statistics against a data set (no restore figures: the model
    saw these songs)."""
    pc = doc["meta"]["prior_checks"]
    out = [f"### Generated from noise vs {label}", "",
           "| track | metric | data | generated | bound | within |", "|---|---|---|---|---|---|"]
    out += [f"| {c['track']} | {c['metric']} | {_f(c['data'])} | {_f(c['model'])} | "
            f"{c['bound']} | {'yes' if c['ok'] else '**no**'} |" for c in pc["checks"]]
    ok = sum(c["ok"] for c in pc["checks"])
    return out + ["", f"{ok} of {len(pc['checks'])} checks within the bounds.", ""]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--name", default="lpd5")
    p.add_argument("--data", type=Path, required=True, help="the pack folder it trained on")
    p.add_argument("--test-songs", type=Path, required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--preset", required=True)
    p.add_argument("--timings", type=Path, default=None, help="'name seconds' lines")
    p.add_argument("--mfg-kl", type=float, required=True, help="stage-2 KL weight used")
    p.add_argument("--history", default=os.environ.get("MS2DIST_TRAIN_HISTORY", ""),
                   help="one line on how this particular model's training deviated, if it did")
    args = p.parse_args()

    cfg, meta = read_model_config(args.model)
    if not meta.get("calibration"):
        raise SystemExit(f"{args.model} is not calibrated: run `ms2dist calibrate` first")
    dest = REPO / "ms2dist" / "pretrained" / args.name
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(args.model / WEIGHTS_FILE, dest / WEIGHTS_FILE)
    if (args.model / ATTRIBUTES_FILE).is_file():  # the attribute vectors stage 2 fitted
        shutil.copy2(args.model / ATTRIBUTES_FILE, dest / ATTRIBUTES_FILE)
    payload = json.loads((args.model / CONFIG_FILE).read_text())
    (dest / CONFIG_FILE).write_text(json.dumps(_relative(payload), indent=1, sort_keys=True))
    size = sum((dest / f).stat().st_size for f in (CONFIG_FILE, WEIGHTS_FILE, ATTRIBUTES_FILE)
               if (dest / f).is_file())
    if size > MAX_BYTES:
        raise SystemExit(f"{dest} is {size / 2**20:.1f} MB, over the 20 MB limit")

    work = args.model.parent.parent / "eval"
    split_doc = _evaluate(dest, args.data / "test", work / "test_split", 2000)
    songs_doc = _evaluate(dest, args.test_songs, work / "lpd5_test_small", 2000)
    # The distribution the generator learned: its prior samples against the training songs.
    train_doc = _evaluate(dest, args.data / "train", work / "train_split", 2000)
    for src in (work / "test_split", work / "lpd5_test_small"):
        text = (src / "table_i.md").read_text().replace(str(REPO) + os.sep, "")
        (dest / f"TABLE_I_{src.name}.md").write_text(text)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip() or "unknown"
    s1 = json.loads((args.model.parent.parent / "stage1" / "model" / CONFIG_FILE).read_text())
    timings: dict[str, float] = {}
    if args.timings and args.timings.is_file():
        for line in args.timings.read_text().split("\n"):
            if line.strip():
                name, secs = line.split()
                timings[name] = timings.get(name, 0.0) + float(secs)
    from ms2dist.configs import resolve_config

    rc = resolve_config(args.preset)
    cal = meta["calibration"]
    mb = size / 2**20
    lines = [
        f"# Model card: `pretrained:{args.name}`", "",
        "MIDI-Sandwich2 (two-stage hierarchical RNN VAE) for 5-track LPD-5 phrases "
        "(4 bars x 48 steps x 84 pitches; Drums, Piano, Guitar, Bass, Strings), trained by "
        "ms2dist on a CPU. It generates phrases from noise and restores (re-imagines) real "
        "ones.", "",
        "```bash",
        f"ms2dist sample --model pretrained:{args.name} --mode generate --n 4 --out out/",
        f"ms2dist registry import pretrained:{args.name}   # -> models:/midi-sandwich2@champion",
        "```", "",
        "## Data", "",
        "`lpd5_train_demo`: 400 songs of the Lakh Pianoroll Dataset (lpd_cleansed, merged to "
        "LPD-5), packed with `ms2dist pack` (388 songs kept: 12 duplicate ids rejected; "
        "split by song 90/5/5). **Attribution (CC BY 4.0):** the Lakh Pianoroll Dataset by "
        "Hao-Wen Dong and Wen-Yi Hsiao, derived from the Lakh MIDI Dataset by Colin Raffel, "
        "both under CC BY 4.0. This model is a derived work under the same licence terms.", "",
        "## How it was made", "",
        f"- Command: `{args.command}` (commit `{commit}`).",
        f"- Preset `{args.preset}`: BVAE latent {cfg.bvae.latent}, hidden {cfg.bvae.hidden}, "
        f"bar-level {cfg.bvae.bar_level}, decoder position embedding "
        f"{cfg.bvae.decoder_position_dim}, refine {cfg.bvae.refine.channels} channels x "
        f"{cfg.bvae.refine.n_units} unit; MFG-VAE strategy `{cfg.mfg.strategy}`, latent "
        f"{cfg.mfg.latent}, hidden {cfg.mfg.hidden}.",
        f"- Budget: stage 1 {rc.train.vrae_steps} VRAE + {rc.train.refine_steps} refine "
        "steps, "
        f"stage 2 {rc.train.stage2_steps} steps, batch {rc.data.batch_size}, Adam lr "
        f"{rc.optim.lr} (cosine), KL weight {rc.train.kl_weight} (BVAEs) and {args.mfg_kl} "
        "(MFG-VAE); 2 CPU cores"
        + (", wall time " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())
           if timings else "") + ".",
        f"- Stage-1 trained tracks: {', '.join(s1['meta'].get('trained_tracks', []))}.",
        *([f"- {args.history}"] if args.history else []),
        f"- Size: {mb:.1f} MB (safetensors + JSON; loading executes no code).", "",
        "## Binarisation", "",
        "Fitted on the val split (`ms2dist calibrate`): a bar of a track plays only if its "
        "most probable cell passes the track's bar gate (fitted to the data's empty-bar rate), "
        "and then every cell above the track's note threshold (fitted to its note density) is "
        "a note. Bar gates: " + ", ".join(f"{t} {cal['bar_gates'][t]:.3f}" for t in TRACKS)
        + "; note thresholds: " + ", ".join(f"{t} {cal['thresholds'][t]:.3f}" for t in TRACKS)
        + " (the no-refine MSG1 output has its own pair).", "",
        "## Attribute vectors", "",
        "`attributes.safetensors`: per track, latent directions for note density, polyphony "
        "and pitch range (Drums: density), fitted on 4,000 training phrases "
        "(`ms2dist attributes`, the last step of `scripts/train_pretrained.sh`); "
        "`ms2dist sample --attribute Drums.density=+1.5`. How well each one steers its "
        "attribute, on generated phrases: `bench/README.md`, \"Generation modes\".", "",
        "## Table I on songs it never saw", "",
        "Full tables beside this card: `TABLE_I_test_split.md`, `TABLE_I_lpd5_test_small.md` "
        "(`ms2dist evaluate --model pretrained:" + args.name + " --data ...`).", "",
        *_summary(split_doc, "The pack's test split (21 songs)"),
        *_summary(songs_doc, "`lpd5_test_small` (16 other songs)"),
        "The two test sets are small (21 and 16 songs) and their empty-bar rates differ from "
        "each other and from the training songs (Piano EB "
        f"{_f(split_doc['rows']['Dataset']['EB/Piano'])} and "
        f"{_f(songs_doc['rows']['Dataset']['EB/Piano'])} against "
        f"{_f(train_doc['rows']['Dataset']['EB/Piano'])} in train), so a generator of the "
        "training distribution can miss their EB. Against the data it learned from:", "",
        *_prior_summary(train_doc, "the training split (2,000 phrases)"),
        "## Limits", "",
        "- Trained for about an hour of CPU on ~8,700 phrases: far from the paper's GPU run.",
        "- Bar-level BVAEs: each bar of a phrase has its own latent, so bars within a "
        "generated phrase are related only through the MFG-VAE.", "",
    ]
    (dest / "MODEL_CARD.md").write_text("\n".join(lines))
    print(f"wrote {dest} ({mb:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
