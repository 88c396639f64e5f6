"""One training loop for both stages (see accelerate's complete_nlp_example):

Accelerator -> data -> model -> optimiser -> one ``prepare`` -> resume -> loop -> end.

Runs as a plain process and unchanged under ``accelerate launch`` (DDP, DeepSpeed,
mixed precision all come from the launch config). Only the main process writes
checkpoints, talks to MLflow and draws the progress bar. What differs between the stages
is asked of a :class:`~ms2dist.training.stages.Stage`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from tqdm import tqdm

from ms2dist import TRACKS
from ms2dist.dataset.manifest import manifest_sha
from ms2dist.tracking.runs import RunInfo, RunTracker
from ms2dist.training.checkpoint import Snapshot, latest_checkpoint, read_snapshot, save_checkpoint
from ms2dist.training.distributed import (
    EXIT_PREEMPTED,
    Preemption,
    broadcast_from_main,
    check_world,
    keep_lstm_fp32,
    make_accelerator,
)
from ms2dist.training.export import export
from ms2dist.training.job import (
    StageMismatch,
    TrainJob,
    check_data,
    data_layout,
    log_local,
    truncate_local_log,
)
from ms2dist.training.previews import due, log_previews
from ms2dist.training.schedule import kl_weight_at, lr_at
from ms2dist.training.stages import STAGES
from ms2dist.training.validate import validate
from ms2dist.yamlconfig import to_dict

__all__ = ["train", "TrainJob", "StageMismatch"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
               "rmsprop": torch.optim.RMSprop}


def train(job: TrainJob) -> int:
    # One flat function on purpose (nanoGPT's train.py, accelerate's complete example): the
    # order of setup, prepare, resume and the step loop is the thing to read; what differs
    # between the stages is in the Stage objects, everything else in named helpers.
    stage = STAGES[job.stage]
    accelerator = make_accelerator(job.cfg.optim.grad_accum, job.cfg.train.dist_timeout_s,
                                   find_unused=stage.find_unused_parameters)
    check_world(accelerator, job.expect_world_size)
    check_data(job.data)
    layout = data_layout(job.data)
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, \
        accelerator.process_index
    device = accelerator.device
    print(f"[ms2dist] rank {rank}/{world} local {accelerator.local_process_index} "
          f"device {device} distributed {accelerator.distributed_type} "
          f"precision {accelerator.mixed_precision}", file=sys.stderr, flush=True)

    set_seed(job.cfg.train.seed)  # identical initial weights on every rank
    model, cfg, meta = stage.build(job, layout)
    track_ids = [TRACKS.index(t) for t in job.tracks]
    if device.type == "cpu" and accelerator.mixed_precision == "bf16":
        keep_lstm_fp32(model)
    for p in model.parameters():
        p.requires_grad_(False)
    objective, groups = stage.trainable(model, cfg, track_ids, device)
    optimizer = _OPTIMIZERS[cfg.optim.optimizer](groups, lr=cfg.optim.lr,
                                                 weight_decay=cfg.optim.weight_decay)
    _set_ds_batch_size(accelerator, cfg.data.batch_size)
    objective, optimizer = accelerator.prepare(objective, optimizer)

    step, run_id = _resume(job, accelerator)
    total = stage.total_steps(cfg)
    stop_at = min(total, job.max_steps) if job.max_steps else total
    info = RunInfo(job.stage, job.data, job.tracks, manifest_sha(job.data), job.out,
                   job.stage1, job.launch_config, resume_step=step if run_id else None)
    tracker = RunTracker(cfg, info,
                         accelerator, run_id=run_id, extra_tags=meta,
                         broadcast=broadcast_from_main)
    tracker.start()  # fails before any step if the tracking server is unreachable
    bs, accum = cfg.data.batch_size, cfg.optim.grad_accum
    # The stream is a pure function of (seed, rank, position): resuming at micro-batch k
    # yields exactly the batches an uninterrupted run would have seen from k on.
    batches = stage.batches(job, cfg, model, accelerator, step * accum, layout)

    preempt = Preemption()
    if main:
        (job.out / "PREEMPTED").unlink(missing_ok=True)
    bar = tqdm(total=stop_at, initial=step, disable=not main, desc=job.stage, unit="step",
               dynamic_ncols=True, file=sys.stderr)
    last_logs: dict[str, float] = {}
    t_last, n_last = time.perf_counter(), 0

    def snapshot(metrics: dict[str, float]) -> Snapshot:
        return Snapshot(stage=job.stage, step=step, phase=stage.phase(step, cfg),
                        tracks=job.tracks, config=to_dict(cfg), mlflow_run_id=tracker.run_id,
                        world_size=world, metrics=metrics)

    def evaluate(kl_w: float) -> dict[str, float]:
        val = validate(job.stage, model, job.data / "val", accelerator, track_ids, cfg, kl_w,
                       layout.shape)
        tracker.log_metrics(val, step)
        log_local(job.out, step, val, main)
        return val

    if step == 0 and cfg.train.eval_at_start:
        evaluate(0.0)  # the untrained baseline: what "validation F1 improved" is measured against

    try:
        while step < stop_at:
            if preempt.agreed(accelerator):
                return _preempted(job, accelerator, tracker, preempt, snapshot(last_logs), step)
            phase = stage.phase(step, cfg)
            _set_lrs(optimizer, cfg, phase, *stage.phase_clock(step, cfg))
            kl_w = kl_weight_at(step, stage.kl_weight(cfg), cfg.train.kl_warmup_steps)
            for _ in range(accum):
                # The loader draws DataLoader seeds from the global RNG at every epoch start;
                # shielding it keeps the model's noise a function of the step alone (exact resume).
                with torch.random.fork_rng(devices=[]):
                    batch = next(batches)
                with accelerator.accumulate(objective):
                    loss, logs = stage.loss(objective, model, batch, device, layout, phase, kl_w,
                                            cfg.train.free_bits)
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
            if isinstance(batch, dict) and batch.get("corrupt_skipped"):
                last_logs["corrupt_shards_skipped"] = batch["corrupt_skipped"]
            if step % cfg.train.log_every == 0 or step == stop_at:
                dt = time.perf_counter() - t_last
                last_logs["phrases_per_s"] = n_last / max(dt, 1e-9)
                if device.type == "cuda":  # what a GPU run is sized by (bench/gpu_check.sh)
                    last_logs["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                t_last, n_last = time.perf_counter(), 0
                bar.set_postfix(loss=f"{last_logs['loss']:.4f}",
                                phr_s=f"{last_logs['phrases_per_s']:.0f}")
                train_logs = {f"train/{k}": v for k, v in last_logs.items()}
                tracker.log_metrics(train_logs, step)
                log_local(job.out, step, train_logs, main)
            if step % cfg.train.eval_every == 0 or step == stop_at:
                val = evaluate(kl_w)
                if main:
                    summary = {k: round(v, 4) for k, v in val.items() if "f1" in k}
                    bar.write(f"[ms2dist] step {step} val {json.dumps(summary)}")
            # Previews on their own clock (main process only, no collective inside).
            if main and due(step, cfg.tracking.sample_every, final=False):
                log_previews(tracker, model, stage, step, job.data / "val", layout,
                             tracks=stage.trained_tracks(job))
            if step % cfg.train.checkpoint_every == 0 or step == stop_at:
                save_checkpoint(accelerator, job.out, snapshot(last_logs),
                                cfg.train.keep_checkpoints)
    except Exception:
        # Whatever failed (data, disk, a bug), the steps done are not lost: a single
        # process checkpoints before dying (with several ranks a one-sided collective
        # would hang; their last periodic checkpoint stands).
        if world == 1 and step > 0:
            _emergency_checkpoint(job, accelerator, snapshot(last_logs))
        tracker.abort()
        raise
    finally:
        bar.close()

    if step >= total:
        export(job, stage, cfg, accelerator, objective, model, tracker, meta, layout)
    accelerator.wait_for_everyone()
    tracker.finish()
    accelerator.end_training()
    return 0


def _resume(job: TrainJob, accelerator: Any) -> tuple[int, str | None]:
    """Load the checkpoint to resume from (``--resume auto|never|DIR``): (step, run id)."""
    ckpt = latest_checkpoint(job.out) if job.resume == "auto" else None
    if job.resume not in ("auto", "never"):
        ckpt = Path(job.resume)
    if ckpt is None:
        return 0, None
    snap = read_snapshot(ckpt)
    if snap.stage != job.stage:
        raise StageMismatch(f"{ckpt} is a {snap.stage} checkpoint, not {job.stage}")
    accelerator.load_state(str(ckpt))
    if accelerator.is_main_process:
        truncate_local_log(job.out, snap.step)
        print(f"[ms2dist] resumed from {ckpt} at step {snap.step}", file=sys.stderr, flush=True)
    return snap.step, snap.mlflow_run_id


def _emergency_checkpoint(job: TrainJob, accelerator: Any, snap: Snapshot) -> None:
    try:
        path = save_checkpoint(accelerator, job.out, snap, job.cfg.train.keep_checkpoints)
        print(f"[ms2dist] failed at step {snap.step}: checkpoint written to {path}; rerun the "
              f"same command to resume", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - the original error is the one to report
        print(f"[ms2dist] failed at step {snap.step}; the checkpoint could not be written "
              f"either ({type(e).__name__}: {e})", file=sys.stderr, flush=True)


def _set_lrs(optimizer: Any, cfg: Any, phase: str, clock: int, length: int) -> None:
    """Scheduled LR per param group; the group a phase does not train gets 0."""
    for g in optimizer.param_groups:
        base = cfg.optim.refine_lr if g.get("name") == "refine" else cfg.optim.lr
        idle = (phase == "vrae" and g.get("name") == "refine") or (
            phase == "refine" and g.get("name") == "vrae")
        g["lr"] = 0.0 if idle else lr_at(clock, length, base, cfg.optim)


def _preempted(job: TrainJob, accelerator: Any, tracker: Any, preempt: Preemption,
               snap: Snapshot, step: int) -> int:
    """Checkpoint on every rank, mark the run, exit with the requeue status."""
    save_checkpoint(accelerator, job.out, snap, job.cfg.train.keep_checkpoints)
    if accelerator.is_main_process:
        (job.out / "PREEMPTED").write_text(json.dumps(
            {"step": step, "signal": preempt.signal_name or "peer"}))
        print(f"[ms2dist] preempted ({preempt.signal_name or 'peer'}): checkpoint at "
              f"step {step}; exiting {EXIT_PREEMPTED} for requeue", file=sys.stderr, flush=True)
    tracker.pause()
    return EXIT_PREEMPTED


def _set_ds_batch_size(accelerator: Any, batch_size: int) -> None:
    """No DataLoader goes through prepare(), so DeepSpeed cannot infer its "auto" batch."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size
        plugin.deepspeed_config.setdefault("gradient_accumulation_steps",
                                           accelerator.gradient_accumulation_steps)
