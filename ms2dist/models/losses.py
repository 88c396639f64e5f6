"""Loss functions the training loop calls; each returns ``(loss, {name: float})``.

Conventions:

- Reconstruction terms are summed over a sample's elements and averaged over the batch, so
  the KL (summed over latent dimensions) keeps its meaning as nats per sample; metrics also
  report per-element BCE (``*_bce``), which is comparable across presets.
- ``kl_weight`` multiplies the KL (beta / annealing is the caller's business).
- ``free_bits`` follows magenta MusicVAE: ``max(KL - free_bits * ln 2, 0)`` per latent
  *sample* (a phrase, or a bar for bar-level BVAEs), in bits; 0 disables it.
- Stage 1 (``stage1_loss``): one track's BVAE. ``phase="vrae"`` trains the VRAE (BCE on its
  logits + KL); ``"refine"`` trains only the refiner on the VRAE's *detached* output (the
  paper's order: VRAE first, refiner after); ``"joint"`` sums both with gradients flowing
  from the refine BCE into the VRAE too.
- Stage 2 (``stage2_loss``): the BVAEs are frozen: their encodings are computed under
  ``torch.no_grad`` so no BVAE parameter ever gets a gradient; only the MFG-VAE learns.
  The reconstruction term is ``MFGVAE.recon_loss`` (mfg.py explains the MSE/KL choice).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ms2dist.metrics.f1 import prf_from_counts

from .mfg import MFGVAE
from .sandwich import MidiSandwich2
from .vrae import gaussian_kl, reparameterize

__all__ = ["stage1_loss", "stage2_loss", "stage2_loss_from_latents", "mfg_loss", "note_prf",
           "kl_term"]


def kl_term(mu: Tensor, logvar: Tensor, free_bits: float) -> tuple[Tensor, Tensor]:
    """(KL cost with free bits, raw KL), both averaged over the leading (sample) axes.

    ``mu``/``logvar`` are ``(..., latent)``; every leading index is one latent sample.
    """
    kl = gaussian_kl(mu, logvar).sum(-1)
    cost = torch.clamp(kl - free_bits * math.log(2.0), min=0.0)
    return cost.mean(), kl.mean()


def _bce_sum(logits: Tensor, target: Tensor) -> Tensor:
    """BCE summed per sample, averaged over the batch (dim 0)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / target.shape[0]


def stage1_loss(
    model: MidiSandwich2,
    x: Tensor,
    track: int,
    *,
    phase: Literal["vrae", "refine", "joint"],
    kl_weight: float = 1.0,
    free_bits: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Stage-1 loss of ``track``'s BVAE on a phrase batch ``x`` (B, bars, T, P, tracks)."""
    if phase not in ("vrae", "refine", "joint"):
        raise ValueError(f"phase must be 'vrae', 'refine' or 'joint', got {phase!r}")
    bvae = model.bvae(track)
    xt = x[..., track]
    n_el = xt[0].numel()
    metrics: dict[str, float] = {}
    with torch.set_grad_enabled(torch.is_grad_enabled() and phase != "refine"):
        mu, logvar = bvae.encode(xt)
        logits = bvae.decode_logits(reparameterize(mu, logvar))
    loss = logits.new_zeros(())
    if phase in ("vrae", "joint"):
        rec = _bce_sum(logits, xt)
        kl_cost, kl = kl_term(mu, logvar, free_bits)
        # KL is per latent sample (bar or phrase); x S makes it per phrase like the BCE.
        loss = loss + rec + kl_weight * kl_cost * bvae.n_segments
        metrics.update(
            vrae_bce=rec.item() / n_el, kl=kl.item(), kl_cost=kl_cost.item(), recon=rec.item()
        )
    out_logits = logits  # the output the note metrics judge: refined unless phase "vrae"
    if phase in ("refine", "joint"):
        probs = torch.sigmoid(logits)
        out_logits = bvae.refine_logits(probs.detach() if phase == "refine" else probs)
        ref = _bce_sum(out_logits, xt)
        loss = loss + ref
        metrics["refine_bce"] = ref.item() / n_el
    with torch.no_grad():
        p, r, f = note_prf(torch.sigmoid(out_logits).unsqueeze(-1), xt.unsqueeze(-1))
        metrics.update(precision=p.item(), recall=r.item(), f1=f.item())
    metrics["loss"] = loss.item()
    return loss, metrics


def stage2_loss_from_latents(
    model: MidiSandwich2,
    mu: Tensor,
    logvar: Tensor,
    *,
    kl_weight: float = 1.0,
    free_bits: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """MFG-VAE loss (eq. 6) from frozen BVAE posteriors ``(N, tracks, bvae_latent)``."""
    return mfg_loss(model.mfg, mu, logvar, kl_weight=kl_weight, free_bits=free_bits)


def mfg_loss(
    mfg: MFGVAE,
    mu: Tensor,
    logvar: Tensor,
    *,
    kl_weight: float = 1.0,
    free_bits: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """:func:`stage2_loss_from_latents` given the MFG-VAE alone (what stage 2 trains)."""
    mu, logvar = mu.detach(), logvar.detach()
    mu_hat, logvar_hat, mu_z, logvar_z = mfg(mu, logvar)
    rec = mfg.recon_loss(mu_hat, logvar_hat, mu, logvar).mean()
    kl_cost, kl = kl_term(mu_z, logvar_z, free_bits)
    loss = rec + kl_weight * kl_cost
    with torch.no_grad():
        mse_mu = (mu_hat - mu).square().mean().item()
    return loss, {
        "loss": loss.item(),
        "recon": rec.item(),
        "kl": kl.item(),
        "kl_cost": kl_cost.item(),
        "mse_mu": mse_mu,
    }


def stage2_loss(
    model: MidiSandwich2,
    x: Tensor,
    *,
    kl_weight: float = 1.0,
    free_bits: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """MFG-VAE loss on a phrase batch; the BVAE encoders run frozen (no graph, no grads)."""
    with torch.no_grad():
        mu, logvar = model.encode_tracks(x)
    return stage2_loss_from_latents(model, mu, logvar, kl_weight=kl_weight, free_bits=free_bits)


@torch.no_grad()
def note_prf(
    probs: Tensor, target: Tensor, threshold: float = 0.5
) -> tuple[Tensor, Tensor, Tensor]:
    """Note-level precision, recall and F1 per track (last axis), pooled over everything else.

    ``probs``/``target`` are ``(..., tracks)``; a note is predicted where ``probs > threshold``.
    Returns three ``(tracks,)`` tensors, with :mod:`ms2dist.metrics.f1`'s convention for
    empty tracks (F1 = 1 when nothing is there and nothing is predicted).
    """
    pred = probs > threshold
    true = target > 0.5
    dims = tuple(range(pred.dim() - 1))
    tp = (pred & true).sum(dims)
    fp = (pred & ~true).sum(dims)
    fn = (~pred & true).sum(dims)
    prf = prf_from_counts(tp.cpu().numpy(), fp.cpu().numpy(), fn.cpu().numpy())
    return tuple(torch.from_numpy(np.asarray(v)).float().to(probs.device)
                 for v in prf)  # type: ignore[return-value]
