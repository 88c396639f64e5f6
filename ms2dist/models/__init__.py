"""MIDI-Sandwich2 in PyTorch: VRAE, BVAE (+ RefineNet), MFG-VAE, the full model, config, losses.

Pure modules: no I/O, no logging, no torch.distributed. See docs/architecture.md for the
phrase layout and each module's docstring for the design decisions.
"""

from .bvae import BVAE, RefineNet
from .config import BVAEConfig, MFGConfig, ModelConfig, RefineConfig
from .losses import note_prf, stage1_loss, stage2_loss, stage2_loss_from_latents
from .mfg import MFGVAE
from .sandwich import MidiSandwich2, binarize, slerp
from .vrae import VRAE, gaussian_kl, n_params, reparameterize

__all__ = [
    "VRAE",
    "BVAE",
    "RefineNet",
    "MFGVAE",
    "MidiSandwich2",
    "ModelConfig",
    "BVAEConfig",
    "MFGConfig",
    "RefineConfig",
    "binarize",
    "slerp",
    "n_params",
    "gaussian_kl",
    "reparameterize",
    "stage1_loss",
    "stage2_loss",
    "stage2_loss_from_latents",
    "note_prf",
]
