"""The two training stages as strategy objects: what differs between them, in one place.

Stage 1 trains the BVAEs of the chosen tracks (VRAE phase, then refine phase, or both
jointly) on phrases from the training stream. Stage 2 freezes a complete stage-1 model and
trains only the MFG-VAE on the BVAEs' posteriors (from the latent cache by default). The
loop (:mod:`ms2dist.training.loop`) asks the stage and never compares stage names.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from safetensors.torch import load_file

from ms2dist import TRACKS
from ms2dist.configs import RunConfig
from ms2dist.dataset.batch import unpack_phrases
from ms2dist.dataset.train_stream import train_loader
from ms2dist.inference.modelio import WEIGHTS_FILE, read_model_config, resolve_model_dir
from ms2dist.layout import PhraseLayout
from ms2dist.models import MidiSandwich2
from ms2dist.training.job import StageMismatch, TrainJob, endless, epoch_steps
from ms2dist.training.latents import LatentCache
from ms2dist.training.objectives import (
    Stage1Objective,
    Stage2Objective,
    bvae_posteriors,
    stage1_param_groups,
)

__all__ = ["Stage", "Stage1", "Stage2", "STAGES"]


class Stage:
    """The interface; see :class:`Stage1` and :class:`Stage2`."""

    name = ""
    find_unused_parameters = False  # DDP: parameters without a gradient in some steps

    def build(self, job: TrainJob, layout: PhraseLayout
              ) -> tuple[MidiSandwich2, RunConfig, dict[str, Any]]:
        """(model, the config it was built from, extra metadata for the exported model)."""
        raise NotImplementedError

    def trainable(self, model: MidiSandwich2, cfg: RunConfig, track_ids: list[int],
                  device: torch.device) -> tuple[torch.nn.Module, list[dict]]:
        """Unfreeze what this stage trains; (objective module, optimiser param groups)."""
        raise NotImplementedError

    def total_steps(self, cfg: RunConfig) -> int:
        raise NotImplementedError

    def phase(self, step: int, cfg: RunConfig) -> str:
        raise NotImplementedError

    def phase_clock(self, step: int, cfg: RunConfig) -> tuple[int, int]:
        """(step within the phase, the phase's length): what the LR schedule runs on."""
        return step, self.total_steps(cfg)

    def kl_weight(self, cfg: RunConfig) -> float:
        raise NotImplementedError

    def batches(self, job: TrainJob, cfg: RunConfig, model: MidiSandwich2, accelerator: Any,
                start: int, layout: PhraseLayout) -> Iterator[Any]:
        """Endless micro-batches from micro-batch ``start`` on (a pure function of it)."""
        raise NotImplementedError

    def loss(self, objective: torch.nn.Module, model: MidiSandwich2, batch: Any,
             device: torch.device, layout: PhraseLayout, phase: str, kl_weight: float,
             free_bits: float) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def trained_tracks(self, job: TrainJob) -> list[str]:
        raise NotImplementedError

    def load_trained(self, model: MidiSandwich2, state: dict[str, torch.Tensor]) -> None:
        """Copy the engine's final state (the objective's) into ``model`` for export."""

    def previews(self, model: MidiSandwich2, x: torch.Tensor, step: int,
                 tracks: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Note probabilities to picture, by file prefix (``target`` = the phrases).

        ``tracks``: the track indices this job trains (``None``: all).
        """
        raise NotImplementedError

    def calibrates(self) -> bool:
        """Whether the exported model is calibrated (only a full model generates)."""
        return False


class Stage1(Stage):
    name = "stage1"
    # The VRAE and the refine net train in turns: the idle half has no gradient.
    find_unused_parameters = True

    def build(self, job: TrainJob, layout: PhraseLayout
              ) -> tuple[MidiSandwich2, RunConfig, dict[str, Any]]:
        cfg = replace(job.cfg, model=replace(job.cfg.model, **layout.model_dims()))
        return MidiSandwich2(cfg.model), cfg, {}

    def trainable(self, model: MidiSandwich2, cfg: RunConfig, track_ids: list[int],
                  device: torch.device) -> tuple[torch.nn.Module, list[dict]]:
        vrae_p, refine_p = stage1_param_groups(model, track_ids)
        for p in vrae_p + refine_p:
            p.requires_grad_(True)
        groups = [{"params": vrae_p, "lr": cfg.optim.lr, "name": "vrae"},
                  {"params": refine_p, "lr": cfg.optim.refine_lr, "name": "refine"}]
        return Stage1Objective(model, track_ids, cfg.train.grouped_refine), groups

    def total_steps(self, cfg: RunConfig) -> int:
        t = cfg.train
        return t.vrae_steps + (t.refine_steps if t.stage1_mode == "sequential" else 0)

    def phase(self, step: int, cfg: RunConfig) -> str:
        if cfg.train.stage1_mode == "joint":
            return "joint"
        return "vrae" if step < cfg.train.vrae_steps else "refine"

    def phase_clock(self, step: int, cfg: RunConfig) -> tuple[int, int]:
        # In sequential mode the VRAE and the refine phase each get their own warm-up and
        # cosine (the refine net would otherwise train at the VRAE's fully decayed rate).
        t = cfg.train
        if t.stage1_mode == "sequential":
            if step < t.vrae_steps:
                return step, t.vrae_steps
            return step - t.vrae_steps, t.refine_steps
        return step, self.total_steps(cfg)

    def kl_weight(self, cfg: RunConfig) -> float:
        return cfg.train.kl_weight

    def batches(self, job: TrainJob, cfg: RunConfig, model: MidiSandwich2, accelerator: Any,
                start: int, layout: PhraseLayout) -> Iterator[Any]:
        world, bs = accelerator.num_processes, cfg.data.batch_size
        train = job.data / "train"
        return endless(train_loader(train, bs, seed=cfg.train.seed,
                                    rank=accelerator.process_index, world_size=world,
                                    num_workers=cfg.data.num_workers,
                                    shuffle_buffer=cfg.data.shuffle_buffer,
                                    epoch_steps=epoch_steps(train, bs, world), start_step=start,
                                    skip_corrupt=cfg.data.skip_corrupt,
                                    max_corrupt_fraction=cfg.data.max_corrupt_fraction))

    def loss(self, objective: torch.nn.Module, model: MidiSandwich2, batch: Any,
             device: torch.device, layout: PhraseLayout, phase: str, kl_weight: float,
             free_bits: float) -> tuple[torch.Tensor, dict[str, float]]:
        x = unpack_phrases(batch["phrases"].to(device), device, shape=layout.shape)
        return objective(x, phase, kl_weight, free_bits)

    def trained_tracks(self, job: TrainJob) -> list[str]:
        return job.tracks

    def previews(self, model: MidiSandwich2, x: torch.Tensor, step: int,
                 tracks: list[int] | None = None) -> dict[str, torch.Tensor]:
        # Each BVAE on its own track (the MFG-VAE is untrained in stage 1): the val phrases
        # rebuilt track by track, and phrases whose every track is drawn from its BVAE's own
        # prior (seeded by the step), both assembled into multi-track phrases. A track this
        # job does not train stays silent rather than showing an untrained decoder's noise.
        rec = torch.stack([model.bvae(t)(x[..., t], sample=False)[0]
                           for t in range(len(TRACKS))], -1)
        prior = model.generate_no_fusion(len(x), seed=step)
        if tracks is not None:
            off = [t for t in range(len(TRACKS)) if t not in tracks]
            rec[..., off] = 0.0
            prior[..., off] = 0.0
        return {"recon": rec, "target": x, "prior": prior}


class Stage2(Stage):
    name = "stage2"

    def build(self, job: TrainJob, layout: PhraseLayout
              ) -> tuple[MidiSandwich2, RunConfig, dict[str, Any]]:
        if not job.stage1:
            raise StageMismatch("stage2 needs --stage1 (a stage-1 output directory or MLflow "
                                "URI)")
        src = resolve_model_dir(job.stage1)
        s1_cfg, meta = read_model_config(src)
        missing = [t for t in TRACKS if t not in meta.get("trained_tracks", [])]
        if missing:
            raise StageMismatch(f"stage-1 model {job.stage1} has untrained BVAEs for {missing}; "
                                f"train them or assemble the per-track outputs first "
                                f"(`ms2dist train assemble`)")
        dims = {k: getattr(s1_cfg, k) for k in layout.model_dims()}
        if dims != layout.model_dims():
            raise StageMismatch(f"stage-1 model {job.stage1} reads phrases {dims}, but "
                                f"{job.data} holds {layout.model_dims()}; train stage 2 on "
                                f"data packed like stage 1's")
        # BVAE shapes come from stage 1; the MFG-VAE part from this run's config.
        cfg = replace(job.cfg, model=replace(s1_cfg, mfg=job.cfg.model.mfg))
        model = MidiSandwich2(cfg.model)
        state = load_file(str(src / WEIGHTS_FILE))
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("mfg.")},
                              strict=False)
        return model, cfg, {"stage1_source": str(job.stage1),
                            "stage1_version": meta.get("registered_version")}

    def trainable(self, model: MidiSandwich2, cfg: RunConfig, track_ids: list[int],
                  device: torch.device) -> tuple[torch.nn.Module, list[dict]]:
        model.to(device)  # the frozen BVAEs stay outside the engine, on the device
        for p in model.mfg.parameters():
            p.requires_grad_(True)
        groups = [{"params": list(model.mfg.parameters()), "lr": cfg.optim.lr, "name": "mfg"}]
        return Stage2Objective(model.mfg), groups

    def total_steps(self, cfg: RunConfig) -> int:
        return cfg.train.stage2_steps

    def phase(self, step: int, cfg: RunConfig) -> str:
        return "mfg"

    def kl_weight(self, cfg: RunConfig) -> float:
        return cfg.train.stage2_kl_weight

    def batches(self, job: TrainJob, cfg: RunConfig, model: MidiSandwich2, accelerator: Any,
                start: int, layout: PhraseLayout) -> Iterator[Any]:
        if not cfg.data.latent_cache:  # phrases, encoded by the frozen BVAEs at every step
            return Stage1.batches(self, job, cfg, model, accelerator, start, layout)
        t0 = time.perf_counter()
        cache = LatentCache.build(model, job.data / "train", accelerator, cfg.data.batch_size,
                                  layout.shape, cfg.data)
        if accelerator.is_main_process:
            print(f"[ms2dist] latent cache: {cache.size} phrases on rank 0 in "
                  f"{time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        return cache.batches(cfg.data.batch_size, seed=cfg.train.seed,
                             rank=accelerator.process_index, start=start)

    def loss(self, objective: torch.nn.Module, model: MidiSandwich2, batch: Any,
             device: torch.device, layout: PhraseLayout, phase: str, kl_weight: float,
             free_bits: float) -> tuple[torch.Tensor, dict[str, float]]:
        if isinstance(batch, dict):  # phrases (no latent cache)
            x = unpack_phrases(batch["phrases"].to(device), device, shape=layout.shape)
            mu, logvar = bvae_posteriors(model, x)
        else:
            mu, logvar = batch[0].to(device), batch[1].to(device)
        return objective(mu, logvar, kl_weight, free_bits)

    def trained_tracks(self, job: TrainJob) -> list[str]:
        return list(TRACKS)

    def load_trained(self, model: MidiSandwich2, state: dict[str, torch.Tensor]) -> None:
        model.mfg.load_state_dict({k.removeprefix("mfg."): v for k, v in state.items()})

    def previews(self, model: MidiSandwich2, x: torch.Tensor, step: int,
                 tracks: list[int] | None = None) -> dict[str, torch.Tensor]:
        return {"recon": model.restore(x, sample=False), "target": x,
                "generated": model.generate(len(x), seed=step)}

    def calibrates(self) -> bool:
        return True


STAGES: dict[str, Stage] = {"stage1": Stage1(), "stage2": Stage2()}
