"""The real trainers per precision: ``ms2dist train stage1`` and ``stage2`` under
``accelerate launch`` (one process), what bench/gpu_check.sh runs after the step benchmark.

    python3 bench/gpu_trainers.py [--device cuda] [--steps 200] [--quick] [--work DIR]

Data: a few synthetic MIDI songs (random notes on the five tracks' General MIDI programs;
no download), packed with ``ms2dist pack``: throughput does not depend on the notes. Per
precision (fp32, bf16, fp16: accelerate's ``--mixed_precision no|bf16|fp16``, fp16 with its
gradient scaler) it trains ``paper`` stage 1 for ``--steps`` VRAE + ``--steps`` refine steps
(the default refine path: grouped on CUDA), then stage 2 for ``--steps`` steps on that
stage 1, with tracking off, and reads the trainer's own ``metrics.jsonl``: phrases/s per
phase (the median over its logging windows, the first one, with warm-up and compilation,
left out), achieved TFLOP/s (the analytic FLOPs of ``bench_model.py``) and the peak device
memory. A run that fails or logs a non-finite loss fails the script. ``--quick``:
``tiny``, 6 steps per phase, fp32 only, so CI keeps the path working on CPU
(tests/test_gpu_check.py); its figures mean nothing there. On CPU fp16 is left out
(oneDNN's LSTM has no fp16).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import mido
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_model import step_flops  # noqa: E402

from ms2dist.configs import get_preset  # noqa: E402

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
PROGRAMS = {"Drums": None, "Piano": 0, "Guitar": 24, "Bass": 33, "Strings": 48}


def write_songs(out: Path, n: int = 8, bars: int = 24, seed: int = 0) -> None:
    """``n`` 4/4 MIDI songs of ``bars`` bars: random quarter and eighth notes per track."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    tpb = 480
    for s in range(n):
        mid = mido.MidiFile(ticks_per_beat=tpb)
        for ch, (name, program) in enumerate(PROGRAMS.items()):
            channel = 9 if program is None else ch
            track = mido.MidiTrack([mido.MetaMessage("track_name", name=name)])
            if ch == 0:
                track += [mido.MetaMessage("time_signature", numerator=4, denominator=4),
                          mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(100))]
            if program is not None:
                track.append(mido.Message("program_change", program=program, channel=channel))
            low = 36 if program is None else {0: 60, 24: 52, 33: 36, 48: 55}[program]
            t, gap = 0, 0
            while t < bars * 4 * tpb:
                dur = int(rng.choice([tpb // 2, tpb]))
                if rng.random() < 0.7:
                    pitch = int(low + rng.integers(0, 12))
                    track += [mido.Message("note_on", note=pitch, velocity=90, time=gap,
                                           channel=channel),
                              mido.Message("note_off", note=pitch, velocity=0, time=dur,
                                           channel=channel)]
                    gap = 0
                else:
                    gap += dur
                t += dur
            mid.tracks.append(track)
        mid.save(out / f"song_{s:02d}.mid")


def _ms2dist(args: list[str], log: Path, accelerate: list[str] | None = None) -> None:
    head = [sys.executable, "-m", "accelerate.commands.launch", *accelerate, "-m", "ms2dist"] \
        if accelerate else [sys.executable, "-m", "ms2dist"]
    with open(log, "w") as f:
        proc = subprocess.run([*head, *map(str, args)], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"gpu_trainers: ms2dist {' '.join(map(str, args[:2]))} failed "
                         f"(exit {proc.returncode}); the end of {log}:\n{tail}")


def _phases(metrics: Path, bounds: dict[str, tuple[int, int]]) -> dict[str, dict[str, float]]:
    """Per phase: median phrases/s over its logging windows (the first dropped when there
    are more) and the peak memory logged; a non-finite loss is an error."""
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if "train/phrases_per_s" in r]
    out = {}
    for phase, (lo, hi) in bounds.items():
        mine = [r for r in rows if lo < r["step"] <= hi]
        if not mine:
            raise SystemExit(f"gpu_trainers: {metrics} has no train log for steps {lo}..{hi}")
        bad = [r["step"] for r in mine if not math.isfinite(r["train/loss"])]
        if bad:
            raise SystemExit(f"gpu_trainers: {metrics}: non-finite loss at step {bad[0]}")
        rates = [r["train/phrases_per_s"] for r in mine]
        rates = rates[1:] if len(rates) > 1 else rates
        mem = max(r.get("train/max_memory_gib", 0.0) for r in mine)
        out[phase] = {"phrases_per_s": statistics.median(rates), "max_memory_gib": mem}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--steps", type=int, default=200, help="steps per phase (and stage 2)")
    ap.add_argument("--quick", action="store_true", help="tiny, 6 steps (a CPU smoke run)")
    ap.add_argument("--work", type=Path, default=None, help="folder for data and runs")
    args = ap.parse_args()
    preset = "tiny" if args.quick else "paper"
    steps = 6 if args.quick else args.steps
    log_every = max(1, steps // 10) if not args.quick else 2
    # --quick keeps the path working (CI), so one precision is enough there.
    precisions = ["fp32"] if args.quick else \
        [p for p in PRECISIONS if not (args.device == "cpu" and p == "fp16")]
    work = args.work or Path(tempfile.mkdtemp(prefix="ms2dist-gpu-trainers-"))
    write_songs(work / "songs")
    _ms2dist(["pack", "--input", work / "songs", "--name", "synthetic", "--out",
              work / "shards", "--split", "80,10,10", "--workers", "1"], work / "pack.log")
    cfg = get_preset(preset)
    flops = {k: step_flops(cfg, k) for k in ("vrae", "refine", "stage2")}
    common = [f"--train.log_every={log_every}", f"--train.eval_every={10 * steps}",
              "--train.eval_at_start=false", f"--train.checkpoint_every={10 * steps}",
              "--tracking.enabled=false", "--data.batch_size=32"]
    cpu = ["--cpu"] if args.device == "cpu" else []
    table = []
    for name, mp in PRECISIONS.items():
        if name not in precisions:
            continue
        launch = ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", mp,
                  "--dynamo_backend", "no", *cpu]
        s1, s2 = work / f"stage1-{name}", work / f"stage2-{name}"
        _ms2dist(["train", "stage1", "--config", preset, "--data", work / "shards", "--out", s1,
                  f"--train.vrae_steps={steps}", f"--train.refine_steps={steps}", *common],
                 work / f"stage1-{name}.log", launch)
        _ms2dist(["train", "stage2", "--config", preset, "--data", work / "shards", "--out", s2,
                  "--stage1", s1, f"--train.stage2_steps={steps}", *common],
                 work / f"stage2-{name}.log", launch)
        got = {**_phases(s1 / "metrics.jsonl", {"vrae": (0, steps),
                                                "refine": (steps, 2 * steps)}),
               **_phases(s2 / "metrics.jsonl", {"stage2": (0, steps)})}
        for phase, r in got.items():
            table.append((phase, name, r["phrases_per_s"],
                          r["phrases_per_s"] * flops[phase] / 1e12, r["max_memory_gib"]))
    print(f"\nms2dist train (accelerate launch, 1 process), preset {preset}, batch 32, "
          f"{steps} steps per phase, device {args.device}")
    print("| trainer phase | precision | phrases/s | TFLOP/s | peak memory GiB |")
    print("|---|---|---|---|---|")
    for phase, name, rate, tflops, mem in table:
        print(f"| {phase} | {name} | {rate:.1f} | {tflops:.3f} | {mem:.2f} |")
    print(f"(runs and logs in {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
