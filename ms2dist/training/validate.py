"""Validation over the val split through the exact-once evaluation stream.

Every rank evaluates its share; sums (not means) are reduced across ranks so that
padding (``valid=False``) and uneven shares cannot bias the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ms2dist import TRACKS
from ms2dist.data import eval_loader, unpack_phrases

__all__ = ["validate", "f1_from_counts"]


def f1_from_counts(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> tuple:
    p = tp / (tp + fp).clamp_min(1)
    r = tp / (tp + fn).clamp_min(1)
    f1 = 2 * p * r / (p + r).clamp_min(1e-12)
    return p, r, f1


def _counts(probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(3,) tensor of tp, fp, fn over the valid rows."""
    pred = probs > 0.5
    tgt = target > 0.5
    m = valid.view(-1, *([1] * (pred.dim() - 1)))
    tp = (pred & tgt & m).sum()
    fp = (pred & ~tgt & m).sum()
    fn = (~pred & tgt & m).sum()
    return torch.stack([tp, fp, fn]).double()


def _matched_counts(probs: torch.Tensor, target: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor:
    """tp, fp, fn when the k most probable cells are played, k = the true notes' count.

    Threshold-free: it measures whether the model puts its mass in the right places even
    while every probability is still below 0.5 (early training, the all-silent start)."""
    p = probs[valid].flatten().float()
    y = target[valid].flatten() > 0.5
    k = int(y.sum())
    if k == 0:
        return torch.zeros(3, dtype=torch.float64, device=probs.device)
    tp = y[torch.topk(p, k).indices].sum()
    return torch.stack([tp, k - tp, k - tp]).double()


def validate(*args: Any, **kwargs: Any) -> dict[str, float]:
    """See :func:`_validate`. Runs on a forked RNG: validating (which samples latents)
    must not shift the training stream's randomness, or a run that validated at step k
    (e.g. before a stop) would diverge from one that did not."""
    with torch.random.fork_rng(devices=[]):
        return _validate(*args, **kwargs)


@torch.no_grad()
def _validate(stage: str, model: Any, objective: Any, split_dir: Path, accelerator: Any,
             track_ids: list[int], cfg: Any, kl_weight: float) -> dict[str, float]:
    """Reconstruction note P/R/F1 per track (+ the stage's loss) on the val split."""
    from ms2dist.training.objectives import bvae_posteriors

    was_training = model.training
    model.eval()
    device = accelerator.device
    nt = len(TRACKS)
    # [track, (raw, refined, refined top-k matched), tp/fp/fn]
    counts = torch.zeros(nt, 3, 3, dtype=torch.float64, device=device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # [loss*n, n]
    # per track: [vrae_bce, refine_bce, kl, 1] x valid rows
    losses = torch.zeros(nt, 4, dtype=torch.float64, device=device)
    loader = eval_loader(split_dir, cfg.data.batch_size, rank=accelerator.process_index,
                         world_size=accelerator.num_processes)
    for i, batch in enumerate(loader):
        if cfg.data.val_batches and i >= cfg.data.val_batches:
            break
        x = unpack_phrases(batch["phrases"].to(device), device)
        valid = batch["valid"].to(device)
        n_valid = valid.sum()
        if stage == "stage1":
            if n_valid > 0:
                from ms2dist.models.losses import stage1_loss

                for t in track_ids:
                    _, m = stage1_loss(model, x[valid], t, phase="joint", kl_weight=kl_weight,
                                       free_bits=0.0)
                    losses[t] += torch.tensor([m["vrae_bce"], m["refine_bce"], m["kl"], 1.0],
                                              dtype=torch.float64, device=device) * n_valid
            for t in track_ids:
                bvae = model.bvae(t)
                for j, refine in enumerate((False, True)):
                    probs, _, _ = bvae(x[..., t], sample=False, refine=refine)
                    counts[t, j] += _counts(probs, x[..., t], valid)
                counts[t, 2] += _matched_counts(probs, x[..., t], valid)
        else:
            mu, logvar = bvae_posteriors(model, x)
            probs = model.restore(x, sample=False)
            probs_raw = model.restore(x, sample=False, refine=False)
            for t in range(nt):
                counts[t, 0] += _counts(probs_raw[..., t], x[..., t], valid)
                counts[t, 1] += _counts(probs[..., t], x[..., t], valid)
                counts[t, 2] += _matched_counts(probs[..., t], x[..., t], valid)
            if n_valid > 0:
                from ms2dist.models.losses import stage2_loss_from_latents

                rows = valid.repeat_interleave(len(mu) // len(x))
                loss, _ = stage2_loss_from_latents(model, mu[rows], logvar[rows],
                                                   kl_weight=kl_weight, free_bits=0.0)
                loss_sum += torch.stack([loss.double() * n_valid, n_valid.double()])
    counts = accelerator.reduce(counts, reduction="sum")
    loss_sum = accelerator.reduce(loss_sum, reduction="sum")
    losses = accelerator.reduce(losses, reduction="sum")
    out: dict[str, float] = {}
    ids = track_ids if stage == "stage1" else range(nt)
    f1s = []
    for t in ids:
        name = TRACKS[t]
        out[f"val/f1_matched/{name}"] = float(f1_from_counts(*counts[t, 2])[2])
        for j, suffix in enumerate(("_raw", "")):
            p, r, f1 = f1_from_counts(*counts[t, j])
            out[f"val/precision{suffix}/{name}"] = float(p)
            out[f"val/recall{suffix}/{name}"] = float(r)
            out[f"val/f1{suffix}/{name}"] = float(f1)
            if suffix == "":
                f1s.append(float(f1))
    out["val/f1_mean"] = sum(f1s) / max(1, len(f1s))
    matched = [out[f"val/f1_matched/{TRACKS[t]}"] for t in ids]
    out["val/f1_matched_mean"] = sum(matched) / max(1, len(matched))
    if stage == "stage1":
        for t in track_ids:
            if losses[t, 3] > 0:
                vb, rb, kl, n = losses[t].tolist()
                name = TRACKS[t]
                out[f"val/vrae_bce/{name}"], out[f"val/refine_bce/{name}"] = vb / n, rb / n
                out[f"val/kl/{name}"] = kl / n
        bces = [out[k] for k in out if k.startswith("val/refine_bce/")]
        if bces:
            out["val/refine_bce_mean"] = sum(bces) / len(bces)
    if stage == "stage2" and loss_sum[1] > 0:
        out["val/mfg_loss"] = float(loss_sum[0] / loss_sum[1])
    if was_training:
        model.train()
    return out
