"""Model configuration: the dataclass tree every module of the model is built from.

The named presets (each one a model *and* the training recipe sized for it) live in
:mod:`ms2dist.configs`; the phrase dimensions default to :data:`ms2dist.layout.DEFAULT_LAYOUT`
and are taken from the data's manifest when a model is trained. Unknown keys are rejected
by :func:`ms2dist.yamlconfig.from_dict`, so YAML files and ``--model.bvae.latent=32`` style
overrides work on this tree unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ms2dist.layout import DEFAULT_LAYOUT
from ms2dist.yamlconfig import bounded

__all__ = [
    "RefineConfig",
    "BVAEConfig",
    "MFGConfig",
    "ModelConfig",
]

Strategy = Literal["concat", "project", "vrae", "lstm"]


@dataclass
class RefineConfig:
    channels: int = bounded(8, 1)  # paper gives no width; 8 keeps 5 tracks x 16k voxels affordable
    n_units: int = bounded(2, 0)  # residual units; 0 = identity-ish refiner (stem + head only)
    kernel: tuple[int, int, int] = bounded((1, 3, 12), 1)  # (bar, time, pitch), paper IV-A
    # Add the input's logit to the output (head scaled by 0.01): the refiner starts close to
    # the identity, so training it on a frozen VRAE can only improve on the VRAE. False = Fig. 2.
    skip: bool = True


@dataclass
class BVAEConfig:
    latent: int = bounded(64, 1)
    hidden: int = bounded(128, 1)
    bar_level: bool = False  # True: one 48-step sequence per bar (reference code)
    epsilon_std: float = bounded(0.01, above=0)  # paper's "standard epsilon"; see vrae.py
    encoder_bidirectional: bool = False  # the code's encoder is a plain LSTM
    z_to_state: bool = True  # z also sets the decoder LSTM's initial (h, c)
    # >0: a learned per-step embedding of this width joins z at every decoder step (not in
    # the paper, whose decoder sees only the repeated z; it speeds up learning a lot).
    decoder_position_dim: int = bounded(0, 0)
    # Initial bias of the decoder's output logits: the log-odds of the note density (LPD-5
    # phrases are ~1.9% ones, logit ~ -3.9), so training does not spend its first steps on it.
    output_bias_init: float = bounded(-4.0, -30, 30)
    refine: RefineConfig = field(default_factory=RefineConfig)


@dataclass
class MFGConfig:
    strategy: Strategy = "vrae"  # paper's strategy 3
    latent: int = bounded(128, 1)
    hidden: int = bounded(128, 1)  # LSTM hidden (vrae/lstm) or MLP width (concat/project)
    mlp_layers: int = bounded(2, 0)  # hidden layers of the MLP strategies, each side
    project_dim: int = bounded(32, 1)  # per-track projection width of strategy 2 ("project")
    epsilon_std: float = bounded(0.01, above=0)
    recon: Literal["mse", "kl"] = "mse"  # see mfg.py for the choice


@dataclass
class ModelConfig:
    n_tracks: int = bounded(DEFAULT_LAYOUT.n_tracks, 1, 16)
    n_bars: int = bounded(DEFAULT_LAYOUT.n_bars, 1)
    steps_per_bar: int = bounded(DEFAULT_LAYOUT.steps_per_bar, 1)
    n_pitches: int = bounded(DEFAULT_LAYOUT.n_pitches, 1, 128)
    shared_bvae: bool = False  # Fig. 9 ablation: one BVAE for every track
    bvae: BVAEConfig = field(default_factory=BVAEConfig)
    mfg: MFGConfig = field(default_factory=MFGConfig)
