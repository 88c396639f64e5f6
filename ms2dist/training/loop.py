"""One training loop for both stages (see accelerate's complete_nlp_example):

Accelerator -> data -> model -> optimiser -> one ``prepare`` -> resume -> loop -> end.

Runs as a plain process and unchanged under ``accelerate launch`` (DDP, DeepSpeed,
mixed precision all come from the launch config). Only the main process writes
checkpoints, talks to MLflow and draws the progress bar.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ms2dist import TRACKS
from ms2dist.config import to_dict
from ms2dist.data import train_loader
from ms2dist.modelio import read_model_config, resolve_model_dir, save_model
from ms2dist.models import MidiSandwich2
from ms2dist.tracking import manifest_sha
from ms2dist.training.checkpoint import Snapshot, latest_checkpoint, read_snapshot, save_checkpoint
from ms2dist.training.config import RunConfig
from ms2dist.training.distributed import (
    EXIT_PREEMPTED,
    Preemption,
    check_world,
    keep_lstm_fp32,
    make_accelerator,
)
from ms2dist.training.latents import LatentCache
from ms2dist.training.objectives import (
    Stage1Objective,
    Stage2Objective,
    bvae_posteriors,
    stage1_param_groups,
)
from ms2dist.training.validate import validate

__all__ = ["train", "TrainJob", "StageMismatch"]


class StageMismatch(ValueError):
    """A stage's inputs do not fit (stage 2 without a complete stage-1 model, ...)."""


class TrainJob:
    """Arguments of one ``ms2dist train`` invocation (kept out of RunConfig: they say
    *where*, the config says *what*)."""

    def __init__(self, stage: str, cfg: RunConfig, data: Path, out: Path,
                 tracks: list[str] | None = None, resume: str = "auto",
                 stage1: str | None = None, expect_world_size: int | None = None,
                 launch_config: str = "", max_steps: int | None = None) -> None:
        self.stage, self.cfg, self.data, self.out = stage, cfg, Path(data), Path(out)
        self.tracks = list(tracks or TRACKS)
        self.resume, self.stage1 = resume, stage1
        self.expect_world_size, self.launch_config = expect_world_size, launch_config
        self.max_steps = max_steps  # stop early (tests: "N/2 steps, then killed")


def _phase_clock(stage: str, step: int, cfg: RunConfig, total: int) -> tuple[int, int]:
    """(step within the phase, the phase's length): in sequential stage 1 the VRAE and the
    refine phase each get their own warm-up and cosine (the refine net would otherwise
    train at the VRAE's fully decayed learning rate)."""
    t = cfg.train
    if stage == "stage1" and t.stage1_mode == "sequential":
        return (step, t.vrae_steps) if step < t.vrae_steps else (step - t.vrae_steps,
                                                                  t.refine_steps)
    return step, total


def _lr_at(step: int, total: int, base: float, cfg: RunConfig) -> float:
    o = cfg.optim
    if step < o.warmup_steps:
        return base * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return base
    frac = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
    return base * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _phase(stage: str, step: int, cfg: RunConfig) -> str:
    if stage == "stage2":
        return "mfg"
    if cfg.train.stage1_mode == "joint":
        return "joint"
    return "vrae" if step < cfg.train.vrae_steps else "refine"


def _total_steps(stage: str, cfg: RunConfig) -> int:
    t = cfg.train
    if stage == "stage2":
        return t.stage2_steps
    return t.vrae_steps + (t.refine_steps if t.stage1_mode == "sequential" else 0)


def _endless(loader: Any) -> Any:
    """Each iter() of the loader yields the rest of one epoch; chain them forever."""
    while True:
        yield from loader


def _epoch_steps(split: Path, batch_size: int, world: int) -> int:
    """Micro-batches per rank in one pass over the split: epochs bound resume fast-forward."""
    n = json.loads((split / "manifest.json").read_text())["n_phrases"]
    return max(1, n // (batch_size * world))


def _check_data(data: Path) -> None:
    for split in ("train", "val"):
        d = data / split
        if not (d / "manifest.json").is_file():
            raise FileNotFoundError(
                f"{d}/manifest.json not found: --data must be a folder written by "
                f"`ms2dist pack` (holding train/ and val/), e.g. shards/<name>")
        n = json.loads((d / "manifest.json").read_text()).get("n_phrases", 0)
        if n == 0:
            raise FileNotFoundError(
                f"{d} holds no phrases: pack more songs or give this split a larger share "
                f"(ms2dist pack --split 80,10,10)")


def _build_model(job: TrainJob) -> tuple[MidiSandwich2, RunConfig, dict[str, Any]]:
    cfg = job.cfg
    if job.stage == "stage1":
        return MidiSandwich2(cfg.model), cfg, {}
    if not job.stage1:
        raise StageMismatch("stage2 needs --stage1 (a stage-1 output directory or MLflow URI)")
    src = resolve_model_dir(job.stage1)
    s1_cfg, meta = read_model_config(src)
    missing = [t for t in TRACKS if t not in meta.get("trained_tracks", [])]
    if missing:
        raise StageMismatch(f"stage-1 model {job.stage1} has untrained BVAEs for {missing}; "
                         f"train them or assemble the per-track outputs first "
                         f"(`ms2dist train assemble`)")
    # BVAE shapes come from stage 1; the MFG-VAE part from this run's config.
    model_cfg = replace(s1_cfg, mfg=cfg.model.mfg)
    cfg = replace(cfg, model=model_cfg)
    model = MidiSandwich2(model_cfg)
    from safetensors.torch import load_file

    state = load_file(str(src / "model.safetensors"))
    bvae_state = {k: v for k, v in state.items() if not k.startswith("mfg.")}
    model.load_state_dict(bvae_state, strict=False)
    return model, cfg, {"stage1_source": str(job.stage1),
                        "stage1_version": meta.get("registered_version")}


def train(job: TrainJob) -> int:
    from accelerate.utils import set_seed

    from ms2dist.tracking import RunTracker

    cfg = job.cfg
    accelerator = make_accelerator(cfg.optim.grad_accum, cfg.train.dist_timeout_s,
                                   find_unused=job.stage == "stage1")
    check_world(accelerator, job.expect_world_size)
    _check_data(job.data)
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    device = accelerator.device
    print(f"[ms2dist] rank {rank}/{world} local {accelerator.local_process_index} "
          f"device {device} distributed {accelerator.distributed_type} "
          f"precision {accelerator.mixed_precision}", file=sys.stderr, flush=True)

    set_seed(cfg.train.seed)  # identical initial weights on every rank
    model, cfg, s2_meta = _build_model(job)
    track_ids = [TRACKS.index(t) for t in job.tracks]
    if device.type == "cpu" and accelerator.mixed_precision == "bf16":
        keep_lstm_fp32(model)
    for p in model.parameters():
        p.requires_grad_(False)

    if job.stage == "stage1":
        vrae_p, refine_p = stage1_param_groups(model, track_ids)
        for p in vrae_p + refine_p:
            p.requires_grad_(True)
        objective: torch.nn.Module = Stage1Objective(model, track_ids)
        groups = [{"params": vrae_p, "lr": cfg.optim.lr, "name": "vrae"},
                  {"params": refine_p, "lr": cfg.optim.refine_lr, "name": "refine"}]
    else:
        model.to(device)
        for p in model.mfg.parameters():
            p.requires_grad_(True)
        objective = Stage2Objective(model)
        groups = [{"params": list(model.mfg.parameters()), "lr": cfg.optim.lr, "name": "mfg"}]
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
               "rmsprop": torch.optim.RMSprop}[cfg.optim.optimizer]
    optimizer = opt_cls(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)

    _set_ds_batch_size(accelerator, cfg.data.batch_size)
    objective, optimizer = accelerator.prepare(objective, optimizer)

    # ---- resume --------------------------------------------------------------------
    step, run_id = 0, None
    ckpt = latest_checkpoint(job.out) if job.resume == "auto" else None
    if job.resume not in ("auto", "never"):
        ckpt = Path(job.resume)
    if ckpt is not None:
        snap = read_snapshot(ckpt)
        if snap.stage != job.stage:
            raise StageMismatch(f"{ckpt} is a {snap.stage} checkpoint, not {job.stage}")
        accelerator.load_state(str(ckpt))
        step, run_id = snap.step, snap.mlflow_run_id
        if main:
            _truncate_local_log(job.out, step)
            print(f"[ms2dist] resumed from {ckpt} at step {step}", file=sys.stderr, flush=True)

    total = _total_steps(job.stage, cfg)
    stop_at = min(total, job.max_steps) if job.max_steps else total
    tracker = RunTracker(cfg, job, accelerator, run_id=run_id, extra_tags=s2_meta)
    tracker.start()  # fails before any step if the tracking server is unreachable

    bs, accum = cfg.data.batch_size, cfg.optim.grad_accum
    cache = None
    if job.stage == "stage2" and cfg.data.latent_cache:
        t0 = time.perf_counter()
        cache = LatentCache.build(model, job.data / "train", accelerator, bs)
        if main:
            print(f"[ms2dist] latent cache: {cache.size} phrases on rank 0 in "
                  f"{time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    # The stream is a pure function of (seed, rank, position): resuming at micro-batch k
    # yields exactly the batches an uninterrupted run would have seen from k on.
    batches = (cache.batches(bs, seed=cfg.train.seed, rank=rank, start=step * accum)
               if cache is not None else
               _endless(train_loader(job.data / "train", bs, seed=cfg.train.seed, rank=rank,
                                     world_size=world, num_workers=cfg.data.num_workers,
                                     shuffle_buffer=cfg.data.shuffle_buffer,
                                     epoch_steps=_epoch_steps(job.data / "train", bs, world),
                                     start_step=step * accum)))

    preempt = Preemption()
    if main:
        (job.out / "PREEMPTED").unlink(missing_ok=True)
    bar = tqdm(total=stop_at, initial=step, disable=not main, desc=f"{job.stage}",
               unit="step", dynamic_ncols=True, file=sys.stderr)
    model_ref = model
    last_logs: dict[str, float] = {}
    t_last, n_last = time.perf_counter(), 0

    def snapshot(metrics: dict[str, float]) -> Snapshot:
        return Snapshot(stage=job.stage, step=step, phase=_phase(job.stage, step, cfg),
                        tracks=job.tracks, config=to_dict(cfg), mlflow_run_id=tracker.run_id,
                        world_size=world, metrics=metrics)

    if step == 0 and cfg.train.eval_at_start:
        # The untrained baseline: what "validation F1 improved" is measured against.
        val0 = validate(job.stage, model_ref, objective, job.data / "val", accelerator,
                        track_ids, cfg, 0.0)
        tracker.log_metrics(val0, 0)
        _log_local(job.out, 0, val0, main)

    while step < stop_at:
        if preempt.agreed(accelerator):
            save_checkpoint(accelerator, job.out, snapshot(last_logs), cfg.train.keep_checkpoints)
            if main:
                (job.out / "PREEMPTED").write_text(json.dumps(
                    {"step": step, "signal": preempt.signal_name or "peer"}))
                print(f"[ms2dist] preempted ({preempt.signal_name or 'peer'}): checkpoint at "
                      f"step {step}; exiting {EXIT_PREEMPTED} for requeue",
                      file=sys.stderr, flush=True)
            tracker.pause()
            return EXIT_PREEMPTED
        phase = _phase(job.stage, step, cfg)
        for g in optimizer.param_groups:
            base = cfg.optim.refine_lr if g.get("name") == "refine" else cfg.optim.lr
            idle = (phase == "vrae" and g.get("name") == "refine") or (
                phase == "refine" and g.get("name") == "vrae")
            g["lr"] = 0.0 if idle else _lr_at(*_phase_clock(job.stage, step, cfg, total),
                                                base, cfg)
        warm = cfg.train.kl_warmup_steps
        weight = cfg.train.stage2_kl_weight if job.stage == "stage2" else cfg.train.kl_weight
        kl_w = weight * (min(1.0, (step + 1) / warm) if warm > 0 else 1.0)
        for _ in range(accum):
            # The loader draws DataLoader seeds from the global RNG at every epoch start;
            # shielding it keeps the model's noise a function of the step alone (exact resume).
            with torch.random.fork_rng(devices=[]):
                batch = next(batches)
            with accelerator.accumulate(objective):
                if job.stage == "stage1":
                    from ms2dist.data import unpack_phrases

                    x = unpack_phrases(batch["phrases"].to(device), device)
                    loss, logs = objective(x, phase, kl_w, cfg.train.free_bits)
                else:
                    if cache is None:
                        from ms2dist.data import unpack_phrases

                        x = unpack_phrases(batch["phrases"].to(device), device)
                        mu, logvar = bvae_posteriors(model_ref, x)
                    else:
                        mu, logvar = batch[0].to(device), batch[1].to(device)
                    loss, logs = objective(mu, logvar, kl_w, cfg.train.free_bits)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.optim.grad_clip > 0:
                    accelerator.clip_grad_norm_(
                        [p for g in optimizer.param_groups for p in g["params"]],
                        cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        step += 1
        n_last += bs * accum * world
        bar.update(1)
        last_logs = {"loss": float(loss.detach()), "kl_weight": kl_w,
                     "lr": optimizer.param_groups[0]["lr"], **logs}
        if step % cfg.train.log_every == 0 or step == stop_at:
            dt = time.perf_counter() - t_last
            last_logs["phrases_per_s"] = n_last / max(dt, 1e-9)
            t_last, n_last = time.perf_counter(), 0
            bar.set_postfix(loss=f"{last_logs['loss']:.4f}",
                            phr_s=f"{last_logs['phrases_per_s']:.0f}")
            train_logs = {f"train/{k}": v for k, v in last_logs.items()}
            tracker.log_metrics(train_logs, step)
            _log_local(job.out, step, train_logs, main)
        if step % cfg.train.eval_every == 0 or step == stop_at:
            val = validate(job.stage, model_ref, objective, job.data / "val", accelerator,
                           track_ids, cfg, kl_w)
            tracker.log_metrics(val, step)
            _log_local(job.out, step, val, main)
            with torch.random.fork_rng(devices=[]):
                tracker.log_samples(model_ref, step, job.data / "val")
            if main:
                summary = {k: round(v, 4) for k, v in val.items() if "f1" in k}
                bar.write(f"[ms2dist] step {step} val {json.dumps(summary)}")
        if step % cfg.train.checkpoint_every == 0 or step == stop_at:
            save_checkpoint(accelerator, job.out, snapshot(last_logs), cfg.train.keep_checkpoints)
    bar.close()

    if step >= total:
        _export(job, cfg, accelerator, objective, model_ref, tracker, s2_meta)
    accelerator.wait_for_everyone()
    tracker.finish()
    accelerator.end_training()
    return 0


def _log_local(out: Path, step: int, metrics: dict[str, float], main: bool) -> None:
    """``<out>/metrics.jsonl``: the same numbers as MLflow, readable without a server."""
    if main:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


def _truncate_local_log(out: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from (a hard kill's leftovers)."""
    path = out / "metrics.jsonl"
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in keep))


def _set_ds_batch_size(accelerator: Any, batch_size: int) -> None:
    """No DataLoader goes through prepare(), so DeepSpeed cannot infer its "auto" batch."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size
        plugin.deepspeed_config.setdefault("gradient_accumulation_steps",
                                           accelerator.gradient_accumulation_steps)


def _export(job: TrainJob, cfg: RunConfig, accelerator: Any, objective: Any, model: Any,
            tracker: Any, s2_meta: dict[str, Any]) -> None:
    # Collective under DeepSpeed (gathers ZeRO partitions); a plain fp32 state dict after.
    state = accelerator.get_state_dict(objective)
    if not accelerator.is_main_process:
        return
    if job.stage == "stage2":
        model.mfg.load_state_dict({k.removeprefix("mfg."): v for k, v in state.items()})
        trained = list(TRACKS)
    else:
        trained = job.tracks
    meta = {"stage": job.stage, "trained_tracks": trained, "preset": cfg.preset,
            "data_manifest_sha256": manifest_sha(job.data), **s2_meta}
    out = save_model(model, cfg.model, job.out / "model", meta)
    if job.stage == "stage2":
        # Every full model leaves training calibrated: per-track thresholds fitted on the val
        # split (ms2dist.calibration), the default rule of sample / evaluate / pyfunc.
        from ms2dist.calibrate import calibrate_dir

        cal = calibrate_dir(out, model, job.data / "val", seed=cfg.train.seed)
        tracker.log_params({f"calibration.threshold.{t}": round(v, 5)
                            for t, v in cal["thresholds"].items()})
        print(f"[ms2dist] calibrated thresholds {json.dumps(cal['thresholds'])}",
              file=sys.stderr, flush=True)
        from ms2dist.calibration import rule_for_model

        with torch.random.fork_rng(devices=[]):
            tracker.log_samples(model, cfg.train.stage2_steps, job.data / "val",
                                rule=rule_for_model({"calibration": cal}), final=True)
    tracker.log_model(out, job.stage)
    print(f"[ms2dist] {job.stage} model written to {out}", file=sys.stderr, flush=True)
