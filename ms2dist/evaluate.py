"""``ms2dist evaluate``: the paper's Table I for our model, side by side with the data.

Rows: Dataset (the split itself), MSG1 (generator without refine), MSG2 (generator),
MSR (restore = the paper's "reducer"), no-fusion (every BVAE from its own prior), and
any extra models given (shared-BVAE ablation, other fusion strategies). Columns: every
metric of :func:`ms2dist.metrics.compute_all`, plus note F1 per track for restore rows.
``dist`` is each row's mean of ``|x - d| / (|d| + 0.1)`` over all finite metric
columns ``x`` against the Dataset row ``d`` (the paper's "closer to the first row is
better", as one number).

    ms2dist evaluate --model models:/midi-sandwich2@champion --data shards/lpd5/test --out eval/
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ms2dist import TRACKS

__all__ = ["add_arguments", "main", "evaluate_model", "table_rows", "PAPER_TABLE_I"]

# As published (computed with MuseGAN's metric code, whose chroma is wrong): for
# reference only, never comparable with our numbers.
PAPER_TABLE_I = {
    "columns": ["SR/Bass", "SR/Drums", "SR/Guitar", "SR/Piano", "SR/Strings", "UPC/Bass",
                "UPC/Guitar", "UPC/Piano", "UPC/Strings", "DP"],
    "Dataset": [60.4, 72.1, 71.7, 46.1, 71.4, 15, 75, 41, 82, 94.4],
    "MSG1": [97.6, 73.7, 70.5, 35.8, 80.0, 4, 106, 47, 66, 98.5],
    "MSG2": [53.0, 72.6, 80.2, 43.5, 73.7, 16, 88, 37, 70, 97.4],
    "MSR": [55.9, 71.6, 72.5, 50.3, 77.3, 14, 72, 48, 78, 97.6],
}


# Relative deviations |x - d| / (|d| + floor): the floor keeps a metric whose dataset
# value is 0 (e.g. EB of an always-present track) from dominating the mean.
DIST_FLOOR = 0.1


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


def split_phrases(split: Path, limit: int) -> np.ndarray:
    """Up to ``limit`` phrases (bool) of a packed split folder, or of a folder of songs
    (LPD ``.npz`` / MIDI, e.g. ``lpd5_test_small``: every phrase of every song, in path
    order)."""
    from ms2dist.data import eval_loader, unpack_phrases

    split = Path(split)
    if split.is_dir() and not (split / "manifest.json").is_file():
        return _song_folder_phrases(split, limit)

    out, n = [], 0
    for batch in eval_loader(split, 256, rank=0, world_size=1):
        x = unpack_phrases(batch["phrases"], torch.device("cpu"), torch.float32) > 0.5
        x = x[batch["valid"]]
        out.append(x.numpy())
        n += len(x)
        if n >= limit:
            break
    if not out or n == 0:
        raise ValueError(f"{split}: no phrases (is it a split folder written by `ms2dist pack`?)")
    return np.concatenate(out)[:limit]


def _song_folder_phrases(folder: Path, limit: int) -> np.ndarray:
    from ms2dist.pack import collect_inputs
    from ms2dist.sampling import song_phrases

    paths = collect_inputs([folder])
    if not paths:
        raise ValueError(f"{folder}: neither a packed split (no manifest.json) nor a folder "
                         f"of .npz / .mid songs")
    out, n, skipped = [], 0, []
    for path in paths:
        try:
            phrases, _ = song_phrases(path)
        except ValueError as e:  # a rejected or empty song: said, not fatal
            skipped.append(str(e))
            continue
        out.append(phrases)
        n += len(phrases)
        if n >= limit:
            break
    if skipped:
        print(f"warning: {len(skipped)} song(s) of {folder} left out: {skipped[0]}"
              + (" ..." if len(skipped) > 1 else ""), file=sys.stderr)
    if not out:
        raise ValueError(f"{folder}: no usable song ({skipped[0] if skipped else 'none'})")
    return np.concatenate(out)[:limit]


def _batched(fn: Any, n: int, bs: int) -> np.ndarray:
    return np.concatenate([fn(i, min(bs, n - i)) for i in range(0, n, bs)])


def evaluate_model(model: Any, data: np.ndarray, *, seed: int, bs: int, rule: Any
                   ) -> dict[str, np.ndarray]:
    """Binary outputs of every row for one model (Dataset excluded); ``rule`` is a
    :class:`ms2dist.calibration.BinarizeRule` (MSG1 uses its no-refine thresholds)."""
    n = len(data)
    dev = next(model.parameters()).device

    def notes(probs: torch.Tensor, refine: bool, i: int) -> np.ndarray:
        g = torch.Generator(device=probs.device).manual_seed(seed + i)
        return rule.apply(probs, refine=refine, generator=g).cpu().numpy()

    def gen(refine: bool, fusion: bool = True):
        def f(i: int, k: int) -> np.ndarray:
            g = model.generate if fusion else model.generate_no_fusion
            return notes(g(k, seed=seed + i, refine=refine), refine, i)
        return f

    def restore(i: int, k: int) -> np.ndarray:
        x = torch.as_tensor(data[i:i + k], dtype=torch.float32, device=dev)
        return notes(model.restore(x, seed=seed + i), True, i)

    return {"MSG1": _batched(gen(False), n, bs), "MSG2": _batched(gen(True), n, bs),
            "MSR": _batched(restore, n, bs), "no-fusion": _batched(gen(True, False), n, bs)}


def _f1(pred: np.ndarray, tgt: np.ndarray) -> dict[str, float]:
    out = {}
    for t, name in enumerate(TRACKS):
        p, y = pred[..., t], tgt[..., t]
        tp = float((p & y).sum())
        fp, fn = float((p & ~y).sum()), float((~p & y).sum())
        out[f"F1/{name}"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return out


def table_rows(outputs: dict[str, np.ndarray], data: np.ndarray) -> dict[str, dict[str, float]]:
    from ms2dist.metrics import compute_all

    rows = {"Dataset": compute_all(data)}
    for name, arr in outputs.items():
        rows[name] = compute_all(arr)
        if _is_restore_row(name):  # "MSR" and every extra model's "<name> (MSR)"
            rows[name].update(_f1(arr, data))
    ref = rows["Dataset"]
    for name, row in rows.items():
        devs = [abs(row[k] - ref[k]) / (abs(ref[k]) + DIST_FLOOR) for k in ref
                if k in row and math.isfinite(row[k]) and math.isfinite(ref[k])]
        if name == "Dataset":
            row["dist"] = 0.0
        else:  # nothing comparable (e.g. a row without any note) -> nan, never 0
            row["dist"] = float(np.mean(devs)) if devs else math.nan
    return rows


# Point 2 of "prior samples are music": per track, generated vs Dataset.
PRIOR_BOUNDS = {"EB": ("abs", 0.10), "NPB": ("ratio", 1.5), "UPC": ("abs", 1.0),
                "polyphony": ("ratio", 1.5)}


def prior_checks(rows: dict[str, dict[str, float]], row: str = "MSG2") -> dict[str, Any]:
    """Is each track of ``row`` within the bounds of :data:`PRIOR_BOUNDS` of the Dataset?

    Tracks the data never plays (EB 1) are skipped. Returns ``{"ok": bool, "checks":
    [{track, metric, data, model, bound, ok}]}``.
    """
    ref, got = rows["Dataset"], rows[row]
    checks = []
    for t in TRACKS:
        if not ref.get(f"EB/{t}", 1.0) < 1.0:
            continue
        for metric, (kind, bound) in PRIOR_BOUNDS.items():
            key = f"{metric}/{t}"
            if key not in ref:
                continue
            d, m = ref[key], got.get(key, math.nan)
            if not (math.isfinite(d) and math.isfinite(m)):
                ok = False
            elif kind == "abs":
                ok = abs(m - d) <= bound
            else:
                ok = d > 0 and m > 0 and max(m / d, d / m) <= bound
            checks.append({"track": t, "metric": metric, "data": d, "model": m,
                           "bound": f"{'+-' if kind == 'abs' else 'x'}{bound:g}", "ok": ok})
    return {"row": row, "ok": all(c["ok"] for c in checks), "checks": checks}


def closer_count(rows: dict[str, dict[str, float]], a: str, b: str) -> tuple[int, int]:
    """(columns where row ``a`` is closer to the Dataset than row ``b``, comparable columns)."""
    ref = rows["Dataset"]
    wins = total = 0
    for k, d in ref.items():
        if k == "dist" or k.startswith("F1/"):
            continue
        x, y = rows[a].get(k, math.nan), rows[b].get(k, math.nan)
        if not all(math.isfinite(v) for v in (d, x, y)):
            continue
        total += 1
        wins += abs(x - d) < abs(y - d)
    return wins, total


def _is_restore_row(name: str) -> bool:
    return name == "MSR" or name.endswith("(MSR)")


def _json_safe(v: Any) -> Any:
    """nan/inf -> null, so table_i.json is strict JSON."""
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("(", "").replace(")", "")


def _fmt(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"


def write_tables(rows: dict[str, dict[str, float]], out: Path, meta: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    cols: list[str] = []
    for row in rows.values():
        cols += [k for k in row if k not in cols]
    cols = ["dist"] + [c for c in cols if c != "dist"]
    with open(out / "table_i.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", *cols])
        for name, row in rows.items():
            w.writerow([name, *[row.get(c, "") for c in cols]])
    lines = [f"# Table I: objective metrics ({meta['model']} on {meta['data']})", "",
             f"{meta['n_phrases']} phrases per row, notes played by {meta['binarize']}, seed "
             f"{meta['seed']}. `dist`: mean over metrics of |x - d| / (|d| + {DIST_FLOOR}) "
             "against the Dataset row d (lower is closer). Metrics: `ms2dist.metrics` "
             "(correct chroma; conventions in its docstring; NPB = notes per bar).", ""]
    if "MSG2" in rows and "MSG1" in rows:
        w, n = closer_count(rows, "MSG2", "MSG1")
        order = sorted((r for r in ("MSG1", "MSG2", "MSR") if r in rows),
                       key=lambda r: rows[r]["dist"] if math.isfinite(rows[r]["dist"]) else 9e9)
        f1s = [rows["MSR"][f"F1/{t}"] for t in TRACKS
               if math.isfinite(rows["MSR"].get(f"F1/{t}", math.nan))]
        lines += [f"- Closest to Dataset first: {' < '.join(order)} (by `dist`).",
                  f"- MSG2 closer to Dataset than MSG1 on {w} of {n} columns.",
                  f"- Restore (MSR) note F1, mean over the tracks the data plays: "
                  f"{np.mean(f1s) if f1s else math.nan:.3f}.", ""]
        pc = prior_checks(rows)
        lines += ["## Generated from noise (MSG2) vs Dataset, per track", "",
                  "| track | metric | Dataset | MSG2 | bound | within |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {c['track']} | {c['metric']} | {c['data']:.3f} | {_fmt(c['model'])} | "
                  f"{c['bound']} | {'yes' if c['ok'] else '**no**'} |" for c in pc["checks"]]
        lines.append("")
    groups = [("summary", ["dist"] + [c for c in cols if c.startswith(("DP", "F1/"))]),
              ("EB", [c for c in cols if c.startswith("EB/")]),
              ("UPC", [c for c in cols if c.startswith("UPC/")]),
              ("QN", [c for c in cols if c.startswith("QN/")]),
              ("SR", [c for c in cols if c.startswith("SR/")]),
              ("TD", [c for c in cols if c.startswith("TD/")]),
              ("polyphony", [c for c in cols if c.startswith("polyphony/")]),
              ("notes per bar (NPB)", [c for c in cols if c.startswith("NPB/")])]
    for title, gcols in groups:
        if not gcols:
            continue
        lines += [f"## {title}", "", "| row | " + " | ".join(gcols) + " |",
                  "|---" * (len(gcols) + 1) + "|"]
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(row.get(c)) for c in gcols) + " |")
        lines.append("")
    pc = PAPER_TABLE_I["columns"]
    lines += ["## As published in the paper (for reference only)", "",
              "Computed with MuseGAN's metric code, whose chroma folds neighbouring semitones "
              "together and whose scales differ from ours: **not comparable** with the "
              "tables above. Compare rows within one table.", "",
              "| row | " + " | ".join(pc) + " |", "|---" * (len(pc) + 1) + "|"]
    for name in ("Dataset", "MSG1", "MSG2", "MSR"):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in PAPER_TABLE_I[name]) + " |")
    (out / "table_i.md").write_text("\n".join(lines) + "\n")
    (out / "table_i.json").write_text(json.dumps(_json_safe({"meta": meta, "rows": rows}),
                                                 indent=1, allow_nan=False))
    return out / "table_i.md"


def _fail(msg: str) -> int:
    print(f"ms2dist evaluate: error: {msg}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace, extra: list[str]) -> int:
    from ms2dist.modelio import load_model
    from ms2dist.sampling import write_outputs

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
    from ms2dist.calibration import CalibrationError, rule_for_model

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
        write_outputs(arr[:1].astype(np.float32), arr[:1], figs, _slug(name),
                      titles=[f"{name}{how}"])
    print(md.read_text())
    if not args.no_mlflow:
        from ms2dist.tracking import TrackingUnavailable

        try:
            _log_mlflow(args, md, figs, table, meta)
        except TrackingUnavailable as e:
            return _fail(f"{e} (the table is written to {md}; --no-mlflow skips logging)")
    print(f"Table I written to {md} and {args.out / 'table_i.csv'}")
    return 0


def _log_mlflow(args: argparse.Namespace, md: Path, figs: Path,
                table: dict[str, dict[str, float]], meta: dict[str, Any]) -> None:
    import mlflow

    from ms2dist.tracking import check_tracking_server, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("ms2dist-evaluate")
    with mlflow.start_run(run_name="table-i", tags={"ms2dist.model": str(args.model),
                                                    "ms2dist.data": str(args.data)}):
        mlflow.log_params({"n_phrases": meta["n_phrases"], "threshold": meta["threshold"],
                           "binarize": meta["binarize"][:500],
                           "seed": meta["seed"], **{f"extra_model.{k}": v
                                                     for k, v in meta["extra_models"].items()}})
        for name, row in table.items():
            mlflow.log_metrics({f"{_slug(name)}/{k}": v for k, v in row.items()
                                if math.isfinite(v)})
        for suffix in (".md", ".csv", ".json"):
            mlflow.log_artifact(str(md.with_suffix(suffix)))
        mlflow.log_artifacts(str(figs), artifact_path="figures")
