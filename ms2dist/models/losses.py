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

from .grouped import refine_tracks
from .mfg import MFGVAE
from .sandwich import MidiSandwich2
from .vrae import gaussian_kl, reparameterize

__all__ = ["stage1_loss", "stage1_losses", "stage2_loss", "stage2_loss_from_latents",
           "mfg_loss", "note_prf", "kl_term"]


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
    (loss,), (metrics,) = stage1_losses(model, x, [track], phase=phase, kl_weight=kl_weight,
                                        free_bits=free_bits)
    return loss, metrics


def stage1_losses(
    model: MidiSandwich2,
    x: Tensor,
    tracks: list[int],
    *,
    phase: Literal["vrae", "refine", "joint"],
    kl_weight: float = 1.0,
    free_bits: float = 0.0,
    grouped: bool | None = None,
) -> tuple[list[Tensor], list[dict[str, float]]]:
    """Stage-1 loss and metrics of each of ``tracks``' BVAEs, one entry per track.

    ``grouped``: the refine nets of the tracks run as one grouped convolution stack
    (:mod:`.grouped`) when their BVAEs are distinct and alike; the losses, metrics and
    gradients are the per-track ones to float rounding. ``False`` forces one net at a time;
    ``None`` chooses by device (:func:`.grouped.refine_tracks`).
    """
    if phase not in ("vrae", "refine", "joint"):
        raise ValueError(f"phase must be 'vrae', 'refine' or 'joint', got {phase!r}")
    bvaes = [model.bvae(t) for t in tracks]
    xts = [x[..., t].contiguous() for t in tracks]  # strided slices slow every op reading them
    n_el = xts[0][0].numel()
    losses: list[Tensor] = []
    metrics: list[dict[str, float]] = [{} for _ in tracks]
    logits: list[Tensor] = []
    with torch.set_grad_enabled(torch.is_grad_enabled() and phase != "refine"):
        posts = [b.encode(xt) for b, xt in zip(bvaes, xts, strict=True)]
        logits = [b.decode_logits(reparameterize(mu, lv))
                  for b, (mu, lv) in zip(bvaes, posts, strict=True)]
    for i, (b, xt, (mu, logvar)) in enumerate(zip(bvaes, xts, posts, strict=True)):
        loss = logits[i].new_zeros(())
        if phase in ("vrae", "joint"):
            rec = _bce_sum(logits[i], xt)
            kl_cost, kl = kl_term(mu, logvar, free_bits)
            # KL is per latent sample (bar or phrase); x S makes it per phrase like the BCE.
            loss = loss + rec + kl_weight * kl_cost * b.n_segments
            metrics[i].update(vrae_bce=rec.item() / n_el, kl=kl.item(), kl_cost=kl_cost.item(),
                              recon=rec.item())
        losses.append(loss)
    outs = logits  # the outputs the note metrics judge: refined unless phase "vrae"
    if phase in ("refine", "joint"):
        probs = [torch.sigmoid(lg) for lg in logits]
        if phase == "refine":
            probs = [p.detach() for p in probs]
        outs = refine_tracks([b.refine for b in bvaes], probs, grouped)
        for i, xt in enumerate(xts):
            ref = _bce_sum(outs[i], xt)
            losses[i] = losses[i] + ref
            metrics[i]["refine_bce"] = ref.item() / n_el
    with torch.no_grad():
        for i, xt in enumerate(xts):
            p, r, f = note_prf(torch.sigmoid(outs[i]).unsqueeze(-1), xt.unsqueeze(-1))
            metrics[i].update(precision=p.item(), recall=r.item(), f1=f.item(),
                              loss=losses[i].item())
    return losses, metrics


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
