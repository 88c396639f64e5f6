"""Measurements of the generation modes (:mod:`ms2dist.inference.modes`), the numbers
``ms2dist evaluate --modes`` prints and logs. Each check returns rows of a table (dicts of
plain floats) and a verdict; they are measured on songs and phrases the caller chooses
(held-out ones: the model must not have seen them).

- :func:`song_check`: between consecutive phrases, the correlation of their pitch-class
  histograms (the pitched tracks) and the ratio of their note counts (smaller / larger),
  for our songs, for independent phrases (link 0) and for real songs. Ours pass when
  they are closer to the real songs than independent phrases are, on both.
- :func:`infill_check`: note F1 of the infilled cells to the held-back originals, against
  that of freshly generated phrases on the same cells; and whether every kept cell came
  back bit for bit.
- :func:`attribute_check`: per attribute, the mean of the attribute over generated
  phrases at each scale, its Spearman correlation with the scale, how far it moved (in
  data standard deviations) and how far the same attribute of the other tracks moved.
- :func:`vary_check`: note F1 to the input at each ``amount``; passes when it falls
  monotonically.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ms2dist.inference import modes
from ms2dist.inference.attributes import segment_attributes, shift_vector
from ms2dist.metrics.f1 import note_prf
from ms2dist.metrics.tonal import chroma

__all__ = ["spearman", "phrase_links", "song_check", "infill_check", "attribute_check",
           "vary_check", "run_checks", "flat_rows", "markdown", "SCALES", "AMOUNTS"]

SCALES = (-2.0, -1.0, 0.0, 1.0, 2.0)
AMOUNTS = (0.0, 0.25, 0.5, 0.75, 1.0)
Notes = Callable[[torch.Tensor], np.ndarray]  # probabilities -> played notes (bool)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank); NaN for a constant input."""
    def ranks(v: Sequence[float]) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for u in np.unique(v):  # ties: their mean rank
            r[v == u] = r[v == u].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def phrase_links(songs: Sequence[np.ndarray], lowest_pitch: int = 24) -> dict[str, float]:
    """Mean pitch-class-histogram correlation and note-count ratio of consecutive phrases.

    ``songs``: each ``(n_phrases, bars, T, P, tracks)`` bool, its phrases in order. Pairs
    where a histogram is constant (or both phrases are silent) count for neither mean.
    """
    cors, ratios = [], []
    for s in songs:
        s = np.asarray(s) > 0
        pitched = s[..., 1:].any(-1)  # (n, bars, T, P): Drums carry no pitch class
        pch = chroma(pitched.reshape(len(s), -1, s.shape[-2]).sum(1), lowest_pitch)
        notes = s.reshape(len(s), -1).sum(1).astype(np.float64)
        for i in range(len(s) - 1):
            a, b = pch[i].astype(np.float64), pch[i + 1].astype(np.float64)
            if a.std() > 0 and b.std() > 0:
                cors.append(float(np.corrcoef(a, b)[0, 1]))
            hi = max(notes[i], notes[i + 1])
            if hi > 0:
                ratios.append(min(notes[i], notes[i + 1]) / hi)
    return {"pch_correlation": float(np.mean(cors)) if cors else float("nan"),
            "density_ratio": float(np.mean(ratios)) if ratios else float("nan"),
            "pairs": float(len(cors))}


def song_check(model: Any, notes: Notes, real_songs: Sequence[np.ndarray], *,
               n_songs: int = 16, n_phrases: int = 8, seed: int = 0,
               link: float | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Consecutive-phrase similarity of our songs, independent phrases and real songs."""
    n_bars = model.cfg.n_bars

    def ours(lk: float) -> list[np.ndarray]:
        out = []
        for a in range(0, n_songs, batch_size):
            k = min(batch_size, n_songs - a)
            p = modes.song(model, modes.sample_seeds(seed, a, k), n_phrases, link=lk)
            out += [s.reshape(n_phrases, n_bars, *s.shape[1:]) for s in notes(p)]
        return out

    link = modes.LINK if link is None else link
    rows = {f"ours (link {link:.2f})": phrase_links(ours(link)),
            "independent phrases": phrase_links(ours(0.0)),
            "real songs": phrase_links(real_songs)}
    o, i, r = rows.values()
    passed = all(abs(o[k] - r[k]) < abs(i[k] - r[k]) for k in ("pch_correlation",
                                                                "density_ratio"))
    return {"rows": rows, "passed": bool(passed)}


def _f1(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.nanmean(note_prf(pred, target)[2]))


def infill_check(model: Any, notes: Notes, phrases: np.ndarray, bars: Sequence[int],
                 tracks: Sequence[int], *, seed: int = 0, batch_size: int = 64
                 ) -> dict[str, Any]:
    """Infill ``bars`` of ``tracks`` in every phrase; F1 to the originals vs fresh ones."""
    x = np.asarray(phrases) > 0
    filled, fresh = [], []
    for a in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[a:a + batch_size], dtype=torch.float32, device=model.device)
        seeds = modes.sample_seeds(seed, a, len(xb))
        filled.append(notes(modes.infill(model, xb, bars, tracks, seeds)))
        fresh.append(notes(modes.song(model, seeds, 1, link=0.0)))
    got, new = np.concatenate(filled), np.concatenate(fresh)
    b, t = list(bars), list(tracks)
    regen = modes.infill_mask(x.shape[1], x.shape[-1], b, t).numpy()
    mask = np.broadcast_to(regen[:, None, None, :], x.shape[1:])  # the regenerated cells
    kept_same = bool((got[:, ~mask] == x[:, ~mask]).all())

    def cut(v: np.ndarray) -> np.ndarray:
        return v[:, b][..., t]  # (N, chosen bars, T, P, chosen tracks)

    f_in, f_new = _f1(cut(got), cut(x)), _f1(cut(new), cut(x))
    rows = {"infilled": {"note_f1": f_in}, "freshly generated": {"note_f1": f_new}}
    return {"rows": rows, "kept_bit_for_bit": kept_same,
            "passed": bool(kept_same and f_in > f_new)}


def attribute_check(model: Any, notes: Notes, available: Mapping[str, torch.Tensor],
                    stats: Mapping[str, Any], *, n: int = 64, seed: int = 0,
                    scales: Sequence[float] = SCALES) -> dict[str, Any]:
    """Each attribute's response to its own vector, and the other tracks' response."""
    seeds = modes.sample_seeds(seed, 0, n)
    means: dict[float, dict[str, float]] = {}
    rows: dict[str, dict[str, float]] = {}
    for name in available:
        for s in scales:
            p = modes.song(model, seeds, 1, link=0.0,
                           shift=shift_vector(available, {name: s}))
            vals = segment_attributes(notes(p), model.n_segments)
            means[s] = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                        for k, v in vals.items()}
        kind = name.split(".", 1)[1]

        def moved(k: str) -> float:
            v = [means[s][k] for s in scales]
            std = float(stats.get(k, {}).get("std") or 0) or 1.0
            return float((np.nanmax(v) - np.nanmin(v)) / std)

        others = [moved(k) for k in available if k != name and k.endswith("." + kind)]
        target = [means[s][name] for s in scales]
        rho = spearman(scales, target)
        rows[name] = {**{f"mean at {s:+g}": v for s, v in zip(scales, target, strict=True)},
                      "spearman": rho, "moved (std)": moved(name),
                      "others moved (max std)": max(others) if others else float("nan")}
        r = rows[name]
        r["passed"] = float(rho >= 0.9 and not r["others moved (max std)"] >= r["moved (std)"])
    n_pass = int(sum(r["passed"] for r in rows.values()))
    return {"rows": rows, "passed_attributes": n_pass, "attributes": len(rows)}


def vary_check(model: Any, notes: Notes, phrases: np.ndarray, *, seed: int = 0,
               amounts: Sequence[float] = AMOUNTS, batch_size: int = 64) -> dict[str, Any]:
    """Note F1 of variations to their input at each amount."""
    x = np.asarray(phrases) > 0
    rows = {}
    for amount in amounts:
        out = []
        for a in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[a:a + batch_size], dtype=torch.float32,
                                 device=model.device)
            out.append(notes(modes.vary(model, xb, amount, modes.sample_seeds(seed, a,
                                                                             len(xb)))))
        rows[f"amount {amount:g}"] = {"note_f1": _f1(np.concatenate(out), x)}
    f = [r["note_f1"] for r in rows.values()]
    return {"rows": rows, "passed": bool(all(a > b for a, b in zip(f, f[1:], strict=False)))}


def run_checks(model: Any, notes: Notes, phrases: np.ndarray,
               real_songs: Sequence[np.ndarray] | None, *, seed: int = 0,
               infill_bars: Sequence[int] = (2, 3),
               infill_tracks: Sequence[Sequence[int]] = ((0, 1, 2, 3, 4), (1, 3)),
               batch_size: int = 64, n_samples: int = 64) -> dict[str, Any]:
    """Every check above on ``model`` (songs against ``real_songs``, when given; the
    attribute check, on ``n_samples`` generated phrases per scale, when the model has
    attribute vectors)."""
    from ms2dist import TRACKS

    out: dict[str, Any] = {}
    if real_songs:
        out["song"] = song_check(model, notes, real_songs, seed=seed)
    for tracks in infill_tracks:
        which = "all tracks" if len(tracks) == model.cfg.n_tracks else \
            " and ".join(TRACKS[t] for t in tracks)
        bars = "-".join(str(b + 1) for b in (min(infill_bars), max(infill_bars)))
        out[f"infill bars {bars} of {which}"] = infill_check(
            model, notes, phrases, infill_bars, tracks, seed=seed, batch_size=batch_size)
    available = getattr(model, "ms2dist_attributes", None)
    if available:
        stats = model.ms2dist_meta.get("attributes", {}).get("stats", {})
        out["attributes"] = attribute_check(model, notes, available, stats, seed=seed,
                                            n=n_samples)
    out["vary"] = vary_check(model, notes, phrases, seed=seed, batch_size=batch_size)
    return out


def flat_rows(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``check: row`` -> metric -> value, the cells MLflow logs (names cut to the
    characters MLflow accepts: ``Piano,Bass`` -> ``Piano Bass``)."""
    rows: dict[str, dict[str, float]] = {}
    for check, r in result.items():
        for name, metrics in r["rows"].items():
            key = re.sub(r"[^\w\-. :/]+", " ", f"{check}: {name}").strip()
            rows[key] = {re.sub(r"[^\w\-. :/]+", "_", k).strip("_"): float(v)
                         for k, v in metrics.items()}
    return rows


def _cell(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def markdown(result: Mapping[str, Any], title: str) -> str:
    """The checks as Markdown tables, one per mode, each with its verdict."""
    lines = [f"# {title}", ""]
    for check, r in result.items():
        rows = r["rows"]
        cols = list(dict.fromkeys(k for m in rows.values() for k in m if k != "passed"))
        lines += [f"## {check}", "", "| | " + " | ".join(cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for name, m in rows.items():
            mark = "" if "passed" not in m else (" (pass)" if m["passed"] else " (FAIL)")
            lines.append(f"| {name}{mark} | " + " | ".join(_cell(m.get(c)) for c in cols)
                         + " |")
        if "passed_attributes" in r:
            verdict = (f"{r['passed_attributes']} of {r['attributes']} attributes move "
                       f"monotonically with their scale (Spearman >= 0.9) and more than the "
                       f"other tracks' same attribute")
        elif "kept_bit_for_bit" in r:
            verdict = (f"kept cells unchanged bit for bit: {r['kept_bit_for_bit']}; infilled "
                       f"closer to the originals than fresh phrases: "
                       f"{'yes' if r['passed'] else 'NO'}")
        else:
            verdict = "passed" if r["passed"] else "NOT passed"
        lines += ["", verdict, ""]
    return "\n".join(lines)
