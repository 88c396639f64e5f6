"""``ms2dist demo``: the whole pipeline end to end on the embedded default.

pack -> stage 1 -> stage 2 -> register in the local MLflow -> promote -> sample MIDI/PNG
-> evaluate (Table I). Each step runs as its own ``python -m ms2dist`` process, the way
a user (or a SLURM script) runs it, and the demo stops with a non-zero status at the
first step that fails.

Data: music21's bundled corpus written to MIDI (no download), or ``--data DIR`` for an
LPD folder such as ``../shared/data/lpd5_train_demo``. Training uses the ``demo``
settings below (the ``tiny`` model with a step budget that fits ~10 minutes on a
2-core CPU); ``--quick`` cuts the budget further for CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ms2dist import TRACKS
from ms2dist.dataset.load import split_phrases
from ms2dist.dataset.manifest import assign_split, parse_split
from ms2dist.songs.corpus import write_corpus_midi
from ms2dist.songs.files import collect_inputs
from ms2dist.songs.song import song_id_for

__all__ = ["add_arguments", "main", "check_music", "enforce_verdict", "DEMO_STEPS",
           "QUICK_STEPS", "EPILOG"]

EPILOG = """examples:
  ms2dist demo                                  # ~10 min on 2 CPU cores, into demo_out/
  ms2dist demo --quick --out /tmp/demo          # a few steps only (smoke run)
  ms2dist demo --data ../shared/data/lpd5_train_demo --workers 4 --seed 1
"""

# The `tiny` recipe (batch 32, lr 3e-3) with a budget that fits ~8 minutes on 2 cores and
# restores unseen corpus phrases at note F1 >= 0.5 (bench/README.md, "demo").
DEMO_STEPS = {"vrae_steps": 1600, "refine_steps": 40, "stage2_steps": 3000}
# A short budget learns faster at a higher learning rate (1,000 steps at 3e-3 left the
# corpus' restores at F1 0.40).
DEMO_LR = 5e-3
QUICK_STEPS = {"vrae_steps": 24, "refine_steps": 8, "stage2_steps": 100}
MIN_RESTORE_F1 = 0.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_out"),
                   help="everything goes here: shards, runs, samples, eval, mlflow.db")
    p.add_argument("--data", type=Path, default=None,
                   help="an LPD folder instead of music21's bundled corpus")
    p.add_argument("--max-pieces", type=int, default=160,
                   help="corpus pieces to convert (chorales first)")
    p.add_argument("--config", default="tiny", help="model preset or YAML for both stages")
    p.add_argument("--quick", action="store_true", help="a few steps only (CI smoke run)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes converting the corpus and packing (default: 2, or 1 on "
                        "one core)")
    p.add_argument("--seed", type=int, default=0,
                   help="training seed (--train.seed) and the seed of the generated samples")
    p.add_argument("--min-f1", type=float, default=None,
                   help=f"fail unless restores of test phrases reach this mean note F1 "
                   f"(default {MIN_RESTORE_F1}; 0 with --quick)")


def _run(step: str, args: list[str], log: Path) -> float:
    """Run one pipeline step; stream its output to a log; raise on failure."""
    t0 = time.perf_counter()
    print(f"==> {step}: ms2dist {' '.join(map(str, args))}", flush=True)
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "ms2dist", *map(str, args)], stdout=f,
                              stderr=subprocess.STDOUT, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"demo step '{step}' failed (exit {proc.returncode}); last lines of "
                         f"{log}:\n{tail}")
    print(f"    done in {dt:.0f} s (log: {log})", flush=True)
    return dt


def main(args: argparse.Namespace, extra: list[str]) -> int:
    # A script of pipeline steps, each one a subprocess the way a user runs it: read top
    # to bottom, it is the demo's documentation, so it stays one function.
    out: Path = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    uri = os.environ["MLFLOW_TRACKING_URI"]
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    if args.data is None:
        t0 = time.perf_counter()
        print(f"==> corpus: music21's bundled scores -> MIDI ({args.max_pieces} pieces)")
        rows = write_corpus_midi(out / "corpus_midi", args.max_pieces, workers=args.workers)
        unmapped = [(r["piece"], r["unmapped"]) for r in rows if r.get("unmapped")]
        errors = [(r["piece"], r["error"]) for r in rows if r.get("error")]
        print(f"    {sum('midi' in r for r in rows)} MIDI files; {len(unmapped)} pieces with "
              f"unmapped parts (left out): {unmapped[:3]}{' ...' if len(unmapped) > 3 else ''}"
              f"; {len(errors)} unreadable")
        times["corpus"] = time.perf_counter() - t0
        data_in, split = out / "corpus_midi", "80,10,10"
    else:
        data_in, split = args.data, "90,5,5"
    shards = out / "shards"
    times["pack"] = _run("pack", ["pack", "--input", data_in, "--name", "demo", "--out", shards,
                                  "--split", split, "--workers", args.workers,
                                  "--phrases-per-shard", 256], logs / "pack.log")

    steps = QUICK_STEPS if args.quick else DEMO_STEPS
    common = ["--config", args.config, "--data", shards, f"--train.seed={args.seed}",
              "--data.num_workers=0", *([] if args.quick else [f"--optim.lr={DEMO_LR}"])]
    s1, s2 = out / "runs" / "stage1", out / "runs" / "stage2"
    times["stage1"] = _run("stage 1 (five BVAEs)", [
        "train", "stage1", *common, "--out", s1, f"--train.vrae_steps={steps['vrae_steps']}",
        f"--train.refine_steps={steps['refine_steps']}",
        f"--train.eval_every={steps['vrae_steps'] + steps['refine_steps']}"],
        logs / "stage1.log")
    times["stage2"] = _run("stage 2 (MFG-VAE)", [
        "train", "stage2", *common, "--out", s2, "--stage1", s1,
        f"--train.stage2_steps={steps['stage2_steps']}",
        f"--train.eval_every={steps['stage2_steps']}"], logs / "stage2.log")

    version = json.loads((s2 / "model" / "config.json").read_text())["meta"].get(
        "registered_version", "")
    if not version:
        raise SystemExit("stage 2 did not register a model version (see logs/stage2.log)")
    name, ver = version.split("/")
    times["promote"] = _run("promote", ["registry", "promote", name, ver], logs / "promote.log")
    model_uri = f"models:/{name}@champion"
    test_song = _first_test_song(Path(data_in), split, shards)
    times["sample"] = _run("sample", ["sample", "--model", model_uri, "--mode", "generate",
                                      "--n", 4, "--seed", args.seed, "--out",
                                      out / "samples" / "generate"], logs / "sample.log")
    if test_song:
        _run("restore", ["sample", "--model", model_uri, "--mode", "restore", "--input",
                         test_song, "--n", 2, "--out", out / "samples" / "restore"],
             logs / "restore.log")
    times["evaluate"] = _run("evaluate", [
        "evaluate", "--model", model_uri, "--data", shards / "test", "--out", out / "eval",
        "--max-phrases", 64 if args.quick else 300], logs / "evaluate.log")
    total = time.perf_counter() - t_all
    min_f1 = args.min_f1 if args.min_f1 is not None else (0.0 if args.quick else MIN_RESTORE_F1)
    verdict = check_music(out / "samples" / "generate", shards / "train",
                          out / "eval" / "table_i.json", min_f1)
    (out / "demo_summary.json").write_text(json.dumps(
        {"seconds": times, "total_seconds": total, "model": model_uri,
         "tracking_uri": uri, "quick": args.quick, "music": verdict}, indent=1))
    enforce_verdict(verdict, enforce=not args.quick)
    print(f"""
ms2dist demo finished in {total / 60:.1f} min. Outputs in {out}:
  shards/                 packed phrases (+ manifest.json, rejects.jsonl)
  runs/stage1, runs/stage2  checkpoints, metrics.jsonl, model/ (safetensors + config.json)
  samples/                generated and restored phrases (.mid, .npz, .png, index.html)
  eval/table_i.md         the paper's Table I for this model
  mlflow.db               runs, metrics, registered models ({model_uri})
Open the MLflow UI on them (the run links above select its Model training pages):
  mlflow ui --backend-store-uri {uri}
""")
    return 0


# A track the training data plays in at least this share of its phrases must play in every
# generated sample; rarer ones (the corpus' strings: only the string quartets have them)
# are reported but not required, since a faithful model leaves them out of most samples.
COMMON_TRACK_SHARE = 0.5


def check_music(samples: Path, train_split: Path, table_json: Path,
                min_f1: float) -> dict[str, Any]:
    """Does the demo's model play? Every generated sample must hold notes in every track the
    training data commonly plays, and restores of test phrases must reach ``min_f1`` (mean
    note F1 over those tracks). Returns the lines to print and the problems found (empty =
    music).
    """
    share = split_phrases(train_split, 2000).any(axis=(1, 2, 3)).mean(0)
    played = [t for t, s in zip(TRACKS, share, strict=True) if s >= COMMON_TRACK_SHARE]
    rare = {t: float(s) for t, s in zip(TRACKS, share, strict=True)
            if 0 < s < COMMON_TRACK_SHARE}
    silent = [t for t, s in zip(TRACKS, share, strict=True) if s == 0]
    index = json.loads((samples / "generate_index.json").read_text())
    lines = [f"Generated samples ({len(index)}), notes per track:"]
    problems: list[str] = []
    for entry in index:
        counts = entry["notes_per_track"]
        name = Path(entry["midi"]).name
        lines.append(f"  {name}: " + ", ".join(f"{t} {counts[t]}" for t in TRACKS))
        empty = [t for t in played if counts[t] == 0]
        if empty:
            problems.append(f"{name} has no notes in {', '.join(empty)}")
    if silent:
        lines.append(f"  (the training data never plays {', '.join(silent)}: silent there "
                     f"by design)")
    if rare:
        lines.append("  (rare in the training data, so not required in every sample: "
                     + ", ".join(f"{t} in {s:.0%} of its phrases" for t, s in rare.items())
                     + ")")
    rows = json.loads(table_json.read_text())["rows"]
    f1 = {t: rows["MSR"].get(f"F1/{t}") for t in played}
    f1 = {t: v for t, v in f1.items() if v is not None}
    f1_rare = {t: rows["MSR"].get(f"F1/{t}") for t in rare}
    mean = sum(f1.values()) / len(f1) if f1 else 0.0
    lines.append("Restore note F1 on unseen test phrases: " + ", ".join(
        f"{t} {v:.3f}" for t, v in f1.items()) + f"; mean {mean:.3f} (required {min_f1:.2f})"
        + "".join(f"; {t} (rare) {v:.3f}" for t, v in f1_rare.items() if v is not None))
    if mean < min_f1:
        problems.append(f"mean restore F1 {mean:.3f} is below {min_f1:.2f}")
    return {"lines": lines, "problems": problems, "played_tracks": played, "rare_tracks": rare,
            "restore_f1": f1, "restore_f1_mean": mean,
            "notes_per_track": [e["notes_per_track"] for e in index]}


def enforce_verdict(verdict: dict[str, Any], enforce: bool = True) -> None:
    """Print the verdict; a model that does not play music ends the demo non-zero
    (``--quick`` trains a few dozen steps only: there it is reported, not enforced)."""
    print("\n".join(verdict["lines"]))
    if not verdict["problems"]:
        return
    msg = "the model does not play music: " + "; ".join(verdict["problems"])
    if not enforce:
        print(f"(--quick, not enforced) {msg}")
        return
    raise SystemExit(f"ms2dist demo: {msg}")


def _first_test_song(data_in: Path, split: str, shards_dir: Path) -> str | None:
    """A source file of a test-split song (for the restore example), found the way pack
    assigns splits."""
    fractions = parse_split(split)
    rejects = Path(shards_dir) / "rejects.jsonl"
    rejected = {json.loads(ln)["path"] for ln in rejects.read_text().splitlines() if ln.strip()} \
        if rejects.is_file() else set()
    for path in collect_inputs([data_in]):
        if str(path) in rejected:
            continue
        if assign_split(song_id_for(path), fractions) == "test":
            return str(path)
    return None
