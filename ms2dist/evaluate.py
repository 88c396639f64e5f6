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
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--tracking-uri", default="")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the table to MLflow")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _split_phrases(split: Path, limit: int) -> np.ndarray:
    from ms2dist.data import eval_loader, unpack_phrases

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


def _batched(fn: Any, n: int, bs: int) -> np.ndarray:
    return np.concatenate([fn(i, min(bs, n - i)) for i in range(0, n, bs)])


def evaluate_model(model: Any, data: np.ndarray, *, seed: int, bs: int, threshold: float
                   ) -> dict[str, np.ndarray]:
    """Binary outputs of every row for one model (Dataset excluded)."""
    n = len(data)
    dev = next(model.parameters()).device

    def gen(refine: bool, fusion: bool = True):
        def f(i: int, k: int) -> np.ndarray:
            g = model.generate if fusion else model.generate_no_fusion
            return (g(k, seed=seed + i, refine=refine) > threshold).cpu().numpy()
        return f

    def restore(i: int, k: int) -> np.ndarray:
        x = torch.as_tensor(data[i:i + k], dtype=torch.float32, device=dev)
        return (model.restore(x, seed=seed + i) > threshold).cpu().numpy()

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
             f"{meta['n_phrases']} phrases per row, threshold {meta['threshold']}, seed "
             f"{meta['seed']}. `dist`: mean over metrics of |x - d| / (|d| + {DIST_FLOOR}) "
             "against the Dataset row d (lower is closer). Metrics: `ms2dist.metrics` "
             "(correct chroma; conventions in its docstring).", ""]
    groups = [("summary", ["dist"] + [c for c in cols if c.startswith(("DP", "F1/"))]),
              ("EB", [c for c in cols if c.startswith("EB/")]),
              ("UPC", [c for c in cols if c.startswith("UPC/")]),
              ("QN", [c for c in cols if c.startswith("QN/")]),
              ("SR", [c for c in cols if c.startswith("SR/")]),
              ("TD", [c for c in cols if c.startswith("TD/")]),
              ("polyphony", [c for c in cols if c.startswith("polyphony/")])]
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
    torch.manual_seed(args.seed)
    try:
        data = _split_phrases(args.data, args.max_phrases)
    except (FileNotFoundError, ValueError) as e:
        return _fail(f"--data {args.data}: {e}")
    outputs: dict[str, np.ndarray] = {}
    for name, uri in {"": args.model, **extras}.items():
        try:
            model = load_model(uri, device=args.device)
        except (FileNotFoundError, ValueError) as e:
            return _fail(f"{'--extra-model ' + name if name else '--model'}: {e}")
        rows = evaluate_model(model, data, seed=args.seed, bs=args.batch_size,
                              threshold=args.threshold)
        if name:  # an extra model contributes its generator and restore rows
            rows = {f"{name} (MSG2)": rows["MSG2"], f"{name} (MSR)": rows["MSR"]}
        outputs.update(rows)
    table = table_rows(outputs, data)
    meta = {"model": str(args.model), "data": str(args.data), "n_phrases": int(len(data)),
            "threshold": args.threshold, "seed": args.seed, "extra_models": extras}
    md = write_tables(table, args.out, meta)
    figs = args.out / "figures"
    for name, arr in [("Dataset", data), *outputs.items()]:
        write_outputs(arr[:1].astype(np.float32), arr[:1], figs, _slug(name), titles=[name])
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
                           "seed": meta["seed"], **{f"extra_model.{k}": v
                                                     for k, v in meta["extra_models"].items()}})
        for name, row in table.items():
            mlflow.log_metrics({f"{_slug(name)}/{k}": v for k, v in row.items()
                                if math.isfinite(v)})
        for suffix in (".md", ".csv", ".json"):
            mlflow.log_artifact(str(md.with_suffix(suffix)))
        mlflow.log_artifacts(str(figs), artifact_path="figures")
