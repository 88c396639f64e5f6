"""The modules handed to ``accelerator.prepare``: each forward returns the loss.

DDP (and DeepSpeed) synchronise gradients through the wrapped module's forward, so
the loss must be computed inside it. Stage 2 wraps only the MFG-VAE: the frozen
BVAEs stay outside the engine and run under ``no_grad``.
"""

from __future__ import annotations

import torch
from torch import nn

from ms2dist import TRACKS
from ms2dist.models.losses import mfg_loss, stage1_losses

__all__ = ["Stage1Objective", "Stage2Objective", "stage1_param_groups", "bvae_posteriors"]


class Stage1Objective(nn.Module):
    def __init__(self, model: nn.Module, tracks: list[int], grouped: bool | None = None
                 ) -> None:
        super().__init__()
        self.model = model
        self.tracks = tracks
        self.grouped = grouped  # refine nets as one grouped stack? (models/grouped.py)

    def forward(self, x: torch.Tensor, phase: str, kl_weight: float,
                free_bits: float) -> tuple[torch.Tensor, dict[str, float]]:
        losses, metrics = stage1_losses(self.model, x, self.tracks, phase=phase,
                                        kl_weight=kl_weight, free_bits=free_bits,
                                        grouped=self.grouped)
        logs = {f"{k}/{TRACKS[t]}": v
                for t, m in zip(self.tracks, metrics, strict=True) for k, v in m.items()}
        return torch.stack(losses).sum(), logs


class Stage2Objective(nn.Module):
    """The MFG-VAE alone: its parameters are all the engine sees (the BVAEs stay outside)."""

    def __init__(self, mfg: nn.Module) -> None:
        super().__init__()
        self.mfg = mfg

    def forward(self, mu: torch.Tensor, logvar: torch.Tensor, kl_weight: float,
                free_bits: float) -> tuple[torch.Tensor, dict[str, float]]:
        return mfg_loss(self.mfg, mu, logvar, kl_weight=kl_weight, free_bits=free_bits)


def stage1_param_groups(model: nn.Module, tracks: list[int]) -> tuple[list, list]:
    """(VRAE parameters, refine parameters) of the BVAEs of `tracks`, each once."""
    seen: set[int] = set()
    vrae, refine = [], []
    for t in tracks:
        bvae = model.bvae(t)
        for p in bvae.vrae.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                vrae.append(p)
        for p in bvae.refine.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                refine.append(p)
    return vrae, refine


@torch.no_grad()
def bvae_posteriors(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen BVAE (mu, logvar) for every track: (B, n_tracks, latent) each."""
    return model.encode_tracks(x)
