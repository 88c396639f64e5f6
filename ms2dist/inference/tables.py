"""Table I as files: ``table_i.md`` (grouped, with the verdicts), ``.csv`` and strict ``.json``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ms2dist.inference.evaluation import (
    DIST_FLOOR,
    PAPER_TABLE_I,
    closer_count,
    played_tracks,
    prior_checks,
)

__all__ = ["write_tables", "json_safe", "slug", "fmt"]


def json_safe(v: Any) -> Any:
    """nan/inf -> null, so table_i.json is strict JSON."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def slug(name: str) -> str:
    """A row name as a file / metric name: ``"x (MSR)"`` -> ``"x_MSR"``."""
    return name.replace(" ", "_").replace("(", "").replace(")", "")


def fmt(v: float | None) -> str:
    """Three decimals, ``-`` for a missing or non-finite value."""
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
        f1s = [rows["MSR"][f"F1/{t}"] for t in played_tracks(rows)
               if math.isfinite(rows["MSR"].get(f"F1/{t}", math.nan))]
        lines += [f"- Closest to Dataset first: {' < '.join(order)} (by `dist`).",
                  f"- MSG2 closer to Dataset than MSG1 on {w} of {n} columns.",
                  f"- Restore (MSR) note F1, mean over the tracks the data plays: "
                  f"{np.mean(f1s) if f1s else math.nan:.3f}.", ""]
        pc = prior_checks(rows)
        lines += ["## Generated from noise (MSG2) vs Dataset, per track", "",
                  "| track | metric | Dataset | MSG2 | bound | within |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {c['track']} | {c['metric']} | {c['data']:.3f} | {fmt(c['model'])} | "
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
            lines.append(f"| {name} | " + " | ".join(fmt(row.get(c)) for c in gcols) + " |")
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
    (out / "table_i.json").write_text(json.dumps(json_safe({"meta": meta, "rows": rows}),
                                                 indent=1, allow_nan=False))
    return out / "table_i.md"
