"""Model configuration: a dataclass tree plus named presets (magenta music_vae style).

Three presets:

- ``paper``: section IV of the paper. Each BVAE reads a whole 4-bar phrase of one track as a
  192-step sequence of 84-pitch vectors; BVAE latent 64, LSTM hidden 128; MFG-VAE latent 128,
  fusion strategy 3 (a VRAE over the (track, feature) matrix, "similar architecture as the
  BVAE", so hidden 128); epsilon std 0.01 at both levels; refine kernel (1, 3, 12).
- ``reference-code``: the published Keras code (LiangHsia/MIDI-S2). BVAEs read one bar
  (48 steps); BVAE latent/hidden 256; MFG-VAE hidden 128, latent 64, fused by an LSTM over
  the 5 track latents read as a length-5 sequence (z fed only by repetition, as Keras'
  RepeatVector). The code switched the refiner off; we keep it on so the preset stays
  comparable (set ``bvae.refine.n_units=0`` and use ``refine=False`` paths to mimic it).
- ``tiny``: the same code paths at toy width, so CPU tests train in seconds.
- ``small``: the CPU-sized preset (the shipped pretrained model): bar-level BVAEs with a
  decoder clock (position embedding), latent 32 / hidden 96 per track, and a wide MFG-VAE
  (latent 64), so restores through the fusion level keep what the BVAEs encode.

Unknown keys are rejected by ``ms2dist.config.from_dict``, so YAML files and
``--model.bvae.latent=32`` style overrides work on this tree unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "RefineConfig",
    "BVAEConfig",
    "MFGConfig",
    "ModelConfig",
    "PRESETS",
    "get_preset",
]

Strategy = Literal["concat", "project", "vrae", "lstm"]


@dataclass
class RefineConfig:
    channels: int = 8  # paper gives no width; 8 keeps 5 tracks x 16k voxels affordable
    n_units: int = 2  # residual units; 0 = identity-ish refiner (stem + head only)
    kernel: tuple[int, int, int] = (1, 3, 12)  # (bar, time, pitch), paper IV-A
    # Add the input's logit to the output (head zero-initialised): the refiner starts as the
    # identity, so training it on a frozen VRAE can only improve on the VRAE. False = Fig. 2.
    skip: bool = True


@dataclass
class BVAEConfig:
    latent: int = 64
    hidden: int = 128
    bar_level: bool = False  # True: one 48-step sequence per bar (reference code)
    epsilon_std: float = 0.01  # paper's "standard epsilon"; see vrae.py for the mapping
    encoder_bidirectional: bool = False  # the code's encoder is a plain LSTM
    z_to_state: bool = True  # z also sets the decoder LSTM's initial (h, c)
    # >0: a learned per-step embedding of this width joins z at every decoder step (not in
    # the paper, whose decoder sees only the repeated z; it speeds up learning a lot).
    decoder_position_dim: int = 0
    # Initial bias of the decoder's output logits: the log-odds of the note density (LPD-5
    # phrases are ~1.9% ones, logit ~ -3.9), so training does not spend its first steps on it.
    output_bias_init: float = -4.0
    refine: RefineConfig = field(default_factory=RefineConfig)


@dataclass
class MFGConfig:
    strategy: Strategy = "vrae"  # paper's strategy 3
    latent: int = 128
    hidden: int = 128  # LSTM hidden (vrae/lstm) or MLP width (concat/project)
    mlp_layers: int = 2  # hidden layers of the MLP strategies, each side
    project_dim: int = 32  # per-track projection width of strategy 2 ("project")
    epsilon_std: float = 0.01
    recon: Literal["mse", "kl"] = "mse"  # see mfg.py for the choice


@dataclass
class ModelConfig:
    n_tracks: int = 5
    n_bars: int = 4
    steps_per_bar: int = 48
    n_pitches: int = 84
    shared_bvae: bool = False  # Fig. 9 ablation: one BVAE for every track
    bvae: BVAEConfig = field(default_factory=BVAEConfig)
    mfg: MFGConfig = field(default_factory=MFGConfig)


PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    "reference-code": ModelConfig(
        bvae=BVAEConfig(latent=256, hidden=256, bar_level=True, z_to_state=False),
        mfg=MFGConfig(strategy="lstm", latent=64, hidden=128),
    ),
    "tiny": ModelConfig(
        bvae=BVAEConfig(
            latent=16,
            hidden=64,
            bar_level=True,
            decoder_position_dim=16,  # memorises 8 phrases ~5x faster than without
            refine=RefineConfig(channels=4, n_units=1),
        ),
        mfg=MFGConfig(latent=16, hidden=32, project_dim=8),
    ),
    "small": ModelConfig(
        bvae=BVAEConfig(
            latent=32,
            hidden=96,
            bar_level=True,
            decoder_position_dim=16,
            refine=RefineConfig(channels=4, n_units=1),
        ),
        mfg=MFGConfig(latent=64, hidden=128, project_dim=16),
    ),
}


def get_preset(name: str) -> ModelConfig:
    """A fresh (deep-copied) preset, so callers may mutate it freely."""
    try:
        return copy.deepcopy(PRESETS[name])
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
