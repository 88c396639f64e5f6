"""The paper's Table I for a model: its rows, the distance to the data, the prior checks.

Rows: Dataset (the phrases themselves), MSG1 (generator without refine), MSG2 (generator),
MSR (restore = the paper's "reducer"), no-fusion (every BVAE from its own prior), and any
extra models. Columns: every metric of :func:`ms2dist.metrics.compute_all`, plus note F1
per track for restore rows (:mod:`ms2dist.metrics.f1`). ``dist`` is each row's mean of
``|x - d| / (|d| + 0.1)`` over all finite metric columns ``x`` against the Dataset row ``d``
(the paper's "closer to the first row is better", as one number).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ms2dist import TRACKS
from ms2dist.metrics import compute_all, note_prf

__all__ = ["PAPER_TABLE_I", "DIST_FLOOR", "PRIOR_BOUNDS", "evaluate_model", "table_rows",
           "prior_checks", "closer_count", "is_restore_row", "played_tracks"]

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


def _batched(fn: Any, n: int, bs: int) -> np.ndarray:
    return np.concatenate([fn(i, min(bs, n - i)) for i in range(0, n, bs)])


def evaluate_model(model: Any, data: np.ndarray, *, seed: int, bs: int, rule: Any
                   ) -> dict[str, np.ndarray]:
    """Binary outputs of every row for one model (Dataset excluded); ``rule`` is a
    :class:`ms2dist.inference.calibration.BinarizeRule` (MSG1 uses its no-refine thresholds)."""
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
    _, _, f1 = note_prf(pred, tgt)
    return {f"F1/{name}": float(f1[t]) for t, name in enumerate(TRACKS)}


def table_rows(outputs: dict[str, np.ndarray], data: np.ndarray) -> dict[str, dict[str, float]]:
    rows = {"Dataset": compute_all(data)}
    for name, arr in outputs.items():
        rows[name] = compute_all(arr)
        if is_restore_row(name):  # "MSR" and every extra model's "<name> (MSR)"
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


def is_restore_row(name: str) -> bool:
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


def played_tracks(rows: dict[str, dict[str, float]]) -> list[str]:
    """Tracks the Dataset row plays at all (empty-bar rate below 1)."""
    return [t for t in TRACKS if rows["Dataset"].get(f"EB/{t}", 1.0) < 1.0]
