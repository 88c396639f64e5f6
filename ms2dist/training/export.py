"""The end of a stage: the trained model as a directory (safetensors + JSON), calibrated
(stage 2), previewed (both stages) and logged/registered in MLflow. Only the main process
writes."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

import torch

from ms2dist.configs import RunConfig
from ms2dist.dataset.manifest import manifest_sha
from ms2dist.inference.attributes import fit_attributes_dir
from ms2dist.inference.calibration import calibrate_dir, rule_for_model
from ms2dist.inference.modelio import save_model
from ms2dist.layout import PhraseLayout
from ms2dist.training.job import TrainJob
from ms2dist.training.previews import log_previews
from ms2dist.training.stages import Stage

__all__ = ["export"]


def export(job: TrainJob, stage: Stage, cfg: RunConfig, accelerator: Any, objective: Any,
           model: Any, tracker: Any, meta: dict[str, Any], layout: PhraseLayout) -> None:
    # Collective under DeepSpeed (gathers ZeRO partitions); a plain fp32 state dict after.
    state = accelerator.get_state_dict(objective)
    if not accelerator.is_main_process:
        return
    stage.load_trained(model, state)
    meta = {"stage": stage.name, "trained_tracks": stage.trained_tracks(job),
            "preset": cfg.preset, "data_manifest_sha256": manifest_sha(job.data),
            "layout": asdict(layout), **meta}
    out = save_model(model, cfg.model, job.out / "model", meta)
    if stage.calibrates():
        # Every full model leaves training calibrated: per-track thresholds fitted on the val
        # split (ms2dist.inference.calibration), the default rule of sample / evaluate / pyfunc.
        cal = calibrate_dir(out, model, job.data / "val", seed=cfg.train.seed)
        tracker.log_params({f"calibration.threshold.{t}": round(v, 5)
                            for t, v in cal["thresholds"].items()})
        print(f"[ms2dist] calibrated thresholds {json.dumps(cal['thresholds'])}",
              file=sys.stderr, flush=True)
        # ... and with its attribute vectors, fitted on the training split (`sample
        # --attribute`, ms2dist.inference.attributes); they travel with it into MLflow.
        try:
            attrs = fit_attributes_dir(out, model, job.data / "train")
            print(f"[ms2dist] attribute vectors: {', '.join(attrs['names'])}"
                  + "".join(f"; {k} left out: {v}" for k, v in attrs["skipped"].items()),
                  file=sys.stderr, flush=True)
        except ValueError as e:  # e.g. a train split too small or silent: the model stands
            print(f"[ms2dist] warning: no attribute vectors ({e}); fit them later with "
                  f"`ms2dist attributes --model {out} --data TRAIN_SPLIT`",
                  file=sys.stderr, flush=True)
    # Both stages end with previews of real samples (stage 1: its BVAEs' reconstructions
    # and prior samples; stage 2: restores and generations, played by the thresholds the
    # model ships with).
    rule = rule_for_model({"calibration": cal}) if stage.calibrates() else None
    with torch.random.fork_rng(devices=[]):
        log_previews(tracker, model, stage, stage.total_steps(cfg), job.data / "val",
                     layout, rule=rule, tracks=stage.trained_tracks(job))
    tracker.log_model(out, stage.name)
    print(f"[ms2dist] {stage.name} model written to {out}", file=sys.stderr, flush=True)
