"""Quality per CPU budget: train each preset for fixed wall-clock budgets, then measure it on
songs it never saw.

    python bench/bench_quality.py --data shards/lpd5demo --presets tiny,small --budgets 2,5,15
    python bench/bench_quality.py --data shards/lpd5demo --presets paper --budgets 10 \\
        --tracks Piano --stage1-only            # the paper's VRAE on one track

For every (preset, budget): the step rates of the VRAE and refine phases are measured in
this process (median of a few batch-32 steps), the budget is split 80% VRAE / 10% refine /
10% stage 2, and the real CLI trains both stages (tracking off). Then ``ms2dist evaluate``
runs on the pack's *val* split: restore note F1 per track through the whole model (MSR),
and the prior-sample statistics of generated phrases (MSG2) next to the Dataset row.
With ``--stage1-only`` it reports the stage-1 validation curve (F1, KL) instead.
Run it on an idle machine: budgets are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ms2dist import TRACKS  # noqa: E402

SPLIT = {"vrae": 0.8, "refine": 0.1, "stage2": 0.1}
STAGE2_STEPS_PER_S = 60.0  # latent-cache steps on 2 cores (small); bounded below


def _f(v: float | None) -> str:
    """table_i.json writes nan as null."""
    return "-" if v is None or v != v else f"{v:.3f}"


def step_rates(preset: str, tracks: list[int], batch: int = 32) -> dict[str, float]:
    """Steps/s of the VRAE and refine phases for ``preset`` on random 2%-dense phrases."""
    from ms2dist.configs import get_preset
    from ms2dist.models import MidiSandwich2
    from ms2dist.models.losses import stage1_loss

    torch.manual_seed(0)
    model = MidiSandwich2(get_preset(preset))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = (torch.rand(batch, 4, 48, 84, 5) < 0.02).float()
    rates = {}
    for phase, n in (("vrae", 5), ("refine", 3)):
        times = []
        for _ in range(n + 1):
            t0 = time.perf_counter()
            loss = sum(stage1_loss(model, x, t, phase=phase)[0] for t in tracks)
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        rates[phase] = 1.0 / statistics.median(times[1:])
    return rates


def run(args: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "ms2dist", *map(str, args)], check=True,
                       stdout=f, stderr=subprocess.STDOUT, env={"TQDM_DISABLE": "1",
                                                                 **__import__("os").environ})
    return time.perf_counter() - t0


def curve(metrics: Path, tracks: list[str]) -> list[dict]:
    rows = []
    for line in metrics.read_text().splitlines():
        d = json.loads(line)
        if f"val/f1/{tracks[0]}" in d:
            rows.append({"step": d["step"], **{f"f1/{t}": d[f"val/f1/{t}"] for t in tracks},
                         **{f"kl/{t}": d.get(f"val/kl/{t}") for t in tracks}})
    return rows


def bench_one(preset: str, minutes: float, data: Path, out: Path, tracks: list[str],
              stage1_only: bool, seed: int) -> dict:
    ids = [TRACKS.index(t) for t in tracks]
    rates = step_rates(preset, ids)
    budget = minutes * 60
    vrae = max(50, int(budget * (SPLIT["vrae"] if not stage1_only else 1.0) * rates["vrae"]))
    refine = 0 if stage1_only else max(10, int(budget * SPLIT["refine"] * rates["refine"]))
    s2 = max(500, int(budget * SPLIT["stage2"] * STAGE2_STEPS_PER_S))
    run_dir = out / f"{preset}-{minutes:g}min"
    run_dir.mkdir(parents=True, exist_ok=True)
    common = ["--config", preset, "--data", data, "--tracking.enabled=false",
              f"--train.seed={seed}", "--data.val_batches=0"]
    eval_every = max(vrae // 6, 1) if stage1_only else vrae + refine
    t1 = run(["train", "stage1", *common, "--out", run_dir / "s1", "--tracks", ",".join(tracks),
              f"--train.vrae_steps={vrae}", f"--train.refine_steps={refine}",
              f"--train.eval_every={eval_every}", f"--train.checkpoint_every={vrae + refine}"],
             run_dir / "stage1.log")
    res = {"preset": preset, "budget_min": minutes, "rates": rates, "vrae_steps": vrae,
           "refine_steps": refine, "stage1_s": t1}
    if stage1_only:
        res["curve"] = curve(run_dir / "s1" / "metrics.jsonl", tracks)
        return res
    t2 = run(["train", "stage2", *common, "--out", run_dir / "s2", "--stage1", run_dir / "s1",
              f"--train.stage2_steps={s2}", f"--train.eval_every={s2}",
              f"--train.checkpoint_every={s2}"], run_dir / "stage2.log")
    run(["evaluate", "--model", run_dir / "s2", "--data", data / "val", "--out", run_dir / "eval",
         "--max-phrases", "500", "--no-mlflow"], run_dir / "evaluate.log")
    table = json.loads((run_dir / "eval" / "table_i.json").read_text())
    res.update(stage2_steps=s2, stage2_s=t2, wall_min=(t1 + t2) / 60,
               restore_f1={t: table["rows"]["MSR"].get(f"F1/{t}") for t in TRACKS},
               prior_checks=table["meta"]["prior_checks"],
               msg2_closer_than_msg1=table["meta"]["msg2_closer_than_msg1"])
    return res


def report(results: list[dict]) -> str:
    lines = []
    full = [r for r in results if "restore_f1" in r]
    if full:
        lines += ["| preset | budget (min) | wall (min) | steps VRAE/refine/stage 2 | "
                  + " | ".join(f"F1 {t}" for t in TRACKS) + " | F1 mean | prior checks within |",
                  "|---" * (6 + len(TRACKS)) + "|"]
        for r in full:
            f1 = [r["restore_f1"][t] for t in TRACKS]
            ok = sum(c["ok"] for c in r["prior_checks"]["checks"])
            lines.append(
                f"| {r['preset']} | {r['budget_min']:g} | {r['wall_min']:.1f} | "
                f"{r['vrae_steps']}/{r['refine_steps']}/{r['stage2_steps']} | "
                + " | ".join(_f(v) for v in f1)
                + f" | {_f(statistics.mean([v for v in f1 if v is not None] or [0.0]))} | "
                f"{ok}/{len(r['prior_checks']['checks'])} |")
        lines.append("")
        for r in full:
            lines += [f"Prior samples (MSG2) vs Dataset, {r['preset']} {r['budget_min']:g} min:",
                      "", "| track | metric | Dataset | MSG2 | bound | within |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {c['track']} | {c['metric']} | {_f(c['data'])} | {_f(c['model'])} | "
                      f"{c['bound']} | {'yes' if c['ok'] else 'no'} |"
                      for c in r["prior_checks"]["checks"]]
            lines.append("")
    for r in (r for r in results if "curve" in r):
        lines += [f"Stage 1 only, {r['preset']} {r['budget_min']:g} min "
                  f"({r['vrae_steps']} VRAE steps, {r['stage1_s'] / 60:.1f} min wall):", "",
                  "| step | " + " | ".join(k for k in r["curve"][0] if k != "step") + " |",
                  "|---" * len(r["curve"][0]) + "|"]
        for row in r["curve"]:
            lines.append(f"| {row['step']} | " + " | ".join(
                f"{v:.3f}" if isinstance(v, float) else str(v)
                for k, v in row.items() if k != "step") + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a pack folder (train/ val/ test/)")
    p.add_argument("--presets", default="tiny,small")
    p.add_argument("--budgets", default="2,5,15", help="minutes per run")
    p.add_argument("--tracks", default=",".join(TRACKS))
    p.add_argument("--stage1-only", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench_quality")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tracks = [t for t in args.tracks.split(",") if t]
    results = []
    for preset in args.presets.split(","):
        for minutes in (float(b) for b in args.budgets.split(",")):
            results.append(bench_one(preset, minutes, args.data, args.out, tracks,
                                     args.stage1_only, args.seed))
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
            print(report(results[-1:]), flush=True)
    text = report(results)
    (args.out / "report.md").write_text(text + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
