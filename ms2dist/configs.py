"""Named configurations: one name = a model, its training recipe and its data settings.

As magenta's ``music_vae/configs.py``: :data:`PRESETS` maps a name to a complete
:class:`RunConfig` (model tree + data + optimisation + schedule + tracking), so a preset
is read in one place. ``--config`` takes a preset name or a YAML file with any subset of
the sections (a YAML ``preset:`` key names the preset it starts from); every value can
then be overridden with ``--section.key=value``. Unknown keys are errors.

Presets:

- ``paper``: section IV of the paper. Each BVAE reads a whole 4-bar phrase of one track as a
  192-step sequence of 84-pitch vectors; BVAE latent 64, LSTM hidden 128; MFG-VAE latent 128,
  fusion strategy 3 (a VRAE over the (track, feature) matrix, "similar architecture as the
  BVAE", so hidden 128); epsilon std 0.01 at both levels; refine kernel (1, 3, 12). Trained
  with the recipe measured to learn on a CPU budget (bench/README.md): at KL weight 1 (or
  0.1 with free bits) the 192-step decoder, fed only the repeated z, stayed at F1 0; with a
  weak KL its matched val F1 rose 0.05 -> 0.19 in 900 steps.
- ``reference-code``: the published Keras code (LiangHsia/MIDI-S2). BVAEs read one bar
  (48 steps); BVAE latent/hidden 256; MFG-VAE hidden 128, latent 64, fused by an LSTM over
  the 5 track latents read as a length-5 sequence (z fed only by repetition, as Keras'
  RepeatVector); RMSprop at lr 1e-3, constant. The code switched the refiner off; we keep
  it on so the preset stays comparable (``--model.bvae.refine.n_units=0`` to mimic it).
- ``tiny``: the same code paths at toy width, so CPU tests train in seconds. Its recipe is
  the one that learns on real LPD songs (batch 32 and lr 3e-3 leave the all-silent start in
  a few hundred steps; batch 8 never did in 200; a weak BVAE KL keeps restores sharp); its
  step budget is a smoke run's. ``ms2dist demo`` trains it for 1600 + 40 stage-1 and 3000
  stage-2 steps, which restores unseen phrases at F1 >= 0.5.
- ``small``: the CPU-sized preset (the shipped pretrained model): bar-level BVAEs with a
  decoder clock (position embedding), latent 32 / hidden 96 per track, and a wide MFG-VAE
  (latent 64), so restores through the fusion level keep what the BVAEs encode.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ms2dist.models.config import BVAEConfig, MFGConfig, ModelConfig, RefineConfig
from ms2dist.yamlconfig import (
    ConfigError,
    apply_overrides,
    bounded,
    from_dict,
    read_yaml_mapping,
    to_dict,
)

__all__ = ["RunConfig", "DataSection", "OptimSection", "TrainSection", "TrackingSection",
           "PRESETS", "get_preset", "run_preset", "resolve_config"]


@dataclass
class DataSection:
    batch_size: int = bounded(32, 1)  # per process (the paper: 32 on one GPU)
    num_workers: int = bounded(2, 0, 64)  # DataLoader workers per process
    shuffle_buffer: int = bounded(2000, 0)  # phrases
    val_batches: int = bounded(0, 0)  # 0 = the whole val split (exact-once); >0 caps it for speed
    latent_cache: bool = True  # stage 2: encode once with the frozen BVAEs, train on (mu, logvar)
    # A shard that fails its checks is an error; true: skip it (warned, counted, logged)
    # while at most max_corrupt_fraction of the split's shards are skipped.
    skip_corrupt: bool = False
    max_corrupt_fraction: float = bounded(0.1, 0, 1)


@dataclass
class OptimSection:
    optimizer: Literal["adam", "adamw", "rmsprop"] = "adam"
    lr: float = bounded(1e-3, above=0)
    refine_lr: float = bounded(1e-3, above=0)
    weight_decay: float = bounded(0.0, 0)
    warmup_steps: int = bounded(100, 0)
    schedule: Literal["constant", "cosine"] = "cosine"
    min_lr_ratio: float = bounded(0.1, 0, 1)
    grad_clip: float = bounded(1.0, 0)  # 0 disables
    grad_accum: int = bounded(1, 1)


@dataclass
class TrainSection:
    seed: int = bounded(0, 0)
    # stage 1: `vrae_steps` of VRAE training, then `refine_steps` of refine training on the
    # frozen VRAE's output (the paper's order); "joint" trains both together for vrae_steps.
    stage1_mode: Literal["sequential", "joint"] = "sequential"
    vrae_steps: int = bounded(20000, 1)
    refine_steps: int = bounded(5000, 0)
    # The tracks' refine nets as one grouped convolution stack (models/grouped.py) or one
    # after another: the same result. Unset: grouped on CUDA (5x fewer kernel launches),
    # one after another elsewhere, which is 1.1-1.5x faster on CPU (bench/README.md).
    grouped_refine: bool | None = None
    stage2_steps: int = bounded(20000, 1)
    kl_weight: float = bounded(1.0, 0)  # stage 1 (the BVAEs)
    # Stage 2 (the MFG-VAE): its KL is what makes samples from noise land where real phrases
    # are encoded, so it is set apart from the BVAEs' (bench/sweep_mfg_kl.py measures it).
    stage2_kl_weight: float = bounded(1.0, 0)
    kl_warmup_steps: int = bounded(2000, 0)  # linear 0 -> the weight (avoids early collapse)
    free_bits: float = bounded(0.0, 0)  # nats per latent dimension below which KL is not penalised
    eval_every: int = bounded(1000, 1)
    eval_at_start: bool = True  # validate the untrained model once (the baseline)
    log_every: int = bounded(50, 1)
    checkpoint_every: int = bounded(1000, 1)
    keep_checkpoints: int = bounded(3, 1)
    dist_timeout_s: int = bounded(600, 1)  # a dead rank fails the job after at most this long


@dataclass
class TrackingSection:
    enabled: bool = True
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI or the embedded sqlite:///mlflow.db
    experiment: str = "ms2dist"
    sample_every: int = bounded(0, 0)  # 0 = only at the end; images + MIDI of samples as artifacts
    register: bool = True  # register ms2-bvae / midi-sandwich2 versions at the end


@dataclass
class RunConfig:
    preset: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)


# The CPU recipe shared by tiny and small (bench/README.md "learning"): batch 32, lr 3e-3,
# and a weak BVAE KL (generation goes through the MFG-VAE, whose KL makes prior samples music).
_CPU_OPTIM = {"lr": 3e-3, "refine_lr": 1e-3}
_CPU_KL = {"kl_weight": 1e-3, "stage2_kl_weight": 0.01}

PRESETS: dict[str, RunConfig] = {
    "paper": RunConfig(
        preset="paper",
        model=ModelConfig(),
        optim=OptimSection(lr=3e-3),
        train=TrainSection(kl_weight=1e-3, stage2_kl_weight=0.01, kl_warmup_steps=500),
    ),
    "reference-code": RunConfig(
        preset="reference-code",
        model=ModelConfig(
            bvae=BVAEConfig(latent=256, hidden=256, bar_level=True, z_to_state=False),
            mfg=MFGConfig(strategy="lstm", latent=64, hidden=128),
        ),
        optim=OptimSection(optimizer="rmsprop", schedule="constant"),
    ),
    "tiny": RunConfig(
        preset="tiny",
        model=ModelConfig(
            bvae=BVAEConfig(latent=16, hidden=64, bar_level=True,
                            decoder_position_dim=16,  # memorises 8 phrases ~5x faster
                            refine=RefineConfig(channels=4, n_units=1)),
            mfg=MFGConfig(latent=16, hidden=32, project_dim=8),
        ),
        data=DataSection(batch_size=32, num_workers=0, shuffle_buffer=500, val_batches=8),
        optim=OptimSection(warmup_steps=5, **_CPU_OPTIM),
        train=TrainSection(vrae_steps=40, refine_steps=20, stage2_steps=500, kl_warmup_steps=20,
                           eval_every=20, log_every=5, checkpoint_every=20, **_CPU_KL),
    ),
    "small": RunConfig(
        preset="small",
        model=ModelConfig(
            bvae=BVAEConfig(latent=32, hidden=96, bar_level=True, decoder_position_dim=16,
                            refine=RefineConfig(channels=4, n_units=1)),
            mfg=MFGConfig(latent=64, hidden=128, project_dim=16),
        ),
        data=DataSection(batch_size=32, num_workers=1, shuffle_buffer=2000),
        optim=OptimSection(warmup_steps=100, **_CPU_OPTIM),
        train=TrainSection(vrae_steps=4000, refine_steps=500, stage2_steps=6000,
                           kl_warmup_steps=500, eval_every=500, checkpoint_every=250,
                           log_every=50, **_CPU_KL),
    ),
}


def run_preset(name: str) -> RunConfig:
    """A fresh (deep-copied) preset, so callers may change it freely."""
    try:
        return copy.deepcopy(PRESETS[name])
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def get_preset(name: str) -> ModelConfig:
    """The model part of preset ``name`` (a fresh copy)."""
    return run_preset(name).model


def resolve_config(config: str, overrides: list[str] | None = None) -> RunConfig:
    """Preset name or YAML path -> RunConfig, then strict overrides.

    A YAML file may name a ``preset`` to start from; its other sections override it.
    """
    overrides = overrides or []
    if config in PRESETS:
        cfg = run_preset(config)
    else:
        path = Path(config)
        if not path.exists():
            raise ConfigError(
                f"--config {config!r} is neither a preset ({', '.join(PRESETS)}) nor a file"
            )
        data = read_yaml_mapping(path)
        base_name = str(data.get("preset", "paper"))
        if base_name not in PRESETS:
            raise ConfigError(f"{path}: preset {base_name!r} is not one of {', '.join(PRESETS)}")
        base = run_preset(base_name)
        merged = to_dict(base)
        for section, values in data.items():
            if section == "preset":
                continue
            if section not in merged:
                raise ConfigError(f"{path}: unknown section {section!r} "
                                  f"(valid: {', '.join(sorted(merged))})")
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping")
            merged[section] = _deep_merge(merged[section], values, f"{path}: {section}")
        cfg = from_dict(RunConfig, merged)
    return apply_overrides(cfg, overrides)


def _deep_merge(base: dict, new: dict, where: str) -> dict:
    out = dict(base)
    for k, v in new.items():
        if k not in out:
            raise ConfigError(f"{where}: unknown key {k!r} (valid: {', '.join(sorted(out))})")
        if isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = _deep_merge(out[k], v, f"{where}.{k}")
        else:
            out[k] = v
    return out
