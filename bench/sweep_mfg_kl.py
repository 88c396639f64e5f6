"""Choose the MFG-VAE's KL weight by measurement: restore F1 vs music from noise.

A weak KL gives sharp restores and meaningless samples from N(0, I); a strong one gives
samples near the mean (silence or mush). For each weight, stage 2 trains on the frozen
stage-1 model (tracking off), the model is calibrated, and ``ms2dist evaluate`` runs on the
pack's *val* split. The printed table has restore F1 (MSR) and how many of the prior-sample
checks (EB +-0.10, notes/bar x1.5, UPC +-1.0, polyphony x1.5 per track) hold.

    python bench/sweep_mfg_kl.py --stage1 runs/pretrained/stage1 --data runs/pretrained/shards \\
        --config small --weights 0.01,0.03,0.1,0.3,1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from bench_quality import _f, run  # noqa: E402

from ms2dist import TRACKS  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage1", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--config", default="small")
    p.add_argument("--weights", default="0.01,0.03,0.1,0.3,1")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "sweep_mfg_kl")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = []
    for w in args.weights.split(","):
        d = args.out / f"kl_{w}"
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "s2" / "model" / "config.json").is_file():
            run(["train", "stage2", "--config", args.config, "--data", args.data, "--out",
                 d / "s2", "--stage1", args.stage1, "--tracking.enabled=false",
                 f"--train.stage2_kl_weight={w}", f"--train.stage2_steps={args.steps}",
                 f"--train.eval_every={args.steps}", f"--train.checkpoint_every={args.steps}",
                 f"--train.seed={args.seed}"], d / "stage2.log")
        run(["evaluate", "--model", d / "s2", "--data", args.data / "val", "--out", d / "eval",
             "--max-phrases", "500", "--no-mlflow"], d / "evaluate.log")
        doc = json.loads((d / "eval" / "table_i.json").read_text())
        f1 = {t: doc["rows"]["MSR"].get(f"F1/{t}") for t in TRACKS}
        checks = doc["meta"]["prior_checks"]["checks"]
        rows.append({"kl_weight": float(w), "restore_f1": f1,
                     "f1_mean": statistics.mean([v for v in f1.values() if v is not None]
                                                or [0.0]),
                     "checks_ok": sum(c["ok"] for c in checks), "checks": len(checks),
                     "failed": [f"{c['track']} {c['metric']} {_f(c['model'])} vs {_f(c['data'])}"
                                for c in checks if not c["ok"]],
                     "dist": {r: doc["rows"][r]["dist"] for r in ("MSG1", "MSG2", "MSR")},
                     "msg2_closer_than_msg1": doc["meta"]["msg2_closer_than_msg1"]})
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["| MFG KL weight | restore F1 mean | " + " | ".join(f"F1 {t}" for t in TRACKS)
             + " | prior checks within | dist MSG1/MSG2/MSR | MSG2 closer than MSG1 | outside |",
             "|---" * (6 + len(TRACKS)) + "|"]
    for r in rows:
        w, n = r["msg2_closer_than_msg1"]
        lines.append(f"| {r['kl_weight']:g} | {r['f1_mean']:.3f} | "
                     + " | ".join(_f(r['restore_f1'][t]) for t in TRACKS)
                     + f" | {r['checks_ok']}/{r['checks']} | "
                     + "/".join(_f(r['dist'][k]) for k in ("MSG1", "MSG2", "MSR"))
                     + f" | {w}/{n} | {'; '.join(r['failed']) or '-'} |")
    text = "\n".join(lines)
    (args.out / "report.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
