"""Validation over the val split through the exact-once evaluation stream.

Every rank evaluates its share; counts and sums (not means) are reduced across ranks so
that padding (``valid=False``) and uneven shares cannot bias the result. Precision, recall
and F1 come from :func:`ms2dist.metrics.prf_from_counts` (the one F1 and its convention
for empty tracks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ms2dist import TRACKS
from ms2dist.dataset.batch import unpack_phrases
from ms2dist.dataset.eval_stream import eval_loader
from ms2dist.metrics import prf_from_counts
from ms2dist.models.losses import stage1_loss, stage2_loss_from_latents

__all__ = ["validate"]

_KINDS = 3  # raw (no refine), refined, refined top-k matched


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
def _validate(stage: str, model: Any, split_dir: Path, accelerator: Any, track_ids: list[int],
              cfg: Any, kl_weight: float, shape: Sequence[int]) -> dict[str, float]:
    """Reconstruction note P/R/F1 per track (+ the stage's loss) on the val split."""
    was_training = model.training
    model.eval()
    device = accelerator.device
    nt = len(TRACKS)
    # [track, kind, tp/fp/fn]
    counts = torch.zeros(nt, _KINDS, 3, dtype=torch.float64, device=device)
    sums = torch.zeros(nt, 4, dtype=torch.float64, device=device)  # stage losses x valid rows
    loader = eval_loader(split_dir, cfg.data.batch_size, rank=accelerator.process_index,
                         world_size=accelerator.num_processes,
                         skip_corrupt=cfg.data.skip_corrupt,
                         max_corrupt_fraction=cfg.data.max_corrupt_fraction)
    batch_fn = _stage1_batch if stage == "stage1" else _stage2_batch
    for i, batch in enumerate(loader):
        if cfg.data.val_batches and i >= cfg.data.val_batches:
            break
        x = unpack_phrases(batch["phrases"].to(device), device, shape=shape)
        batch_fn(model, x, batch["valid"].to(device), track_ids, kl_weight, counts, sums)
    counts = accelerator.reduce(counts, reduction="sum")
    sums = accelerator.reduce(sums, reduction="sum")
    ids = track_ids if stage == "stage1" else range(nt)
    out = _f1_metrics(counts.cpu().numpy(), ids)
    out.update(_stage1_losses(sums, track_ids) if stage == "stage1" else _stage2_loss(sums))
    model.train(was_training)
    return out


def _stage1_batch(model: Any, x: torch.Tensor, valid: torch.Tensor, track_ids: list[int],
                  kl_weight: float, counts: torch.Tensor, sums: torch.Tensor) -> None:
    """Each trained BVAE on its own track; sums[t] = (vrae_bce, refine_bce, kl, 1) x rows."""
    n_valid = valid.sum()
    for t in track_ids:
        if n_valid > 0:
            _, m = stage1_loss(model, x[valid], t, phase="joint", kl_weight=kl_weight,
                               free_bits=0.0)
            sums[t] += torch.tensor([m["vrae_bce"], m["refine_bce"], m["kl"], 1.0],
                                    dtype=torch.float64, device=x.device) * n_valid
        bvae = model.bvae(t)
        for j, refine in enumerate((False, True)):
            probs, _, _ = bvae(x[..., t], sample=False, refine=refine)
            counts[t, j] += _counts(probs, x[..., t], valid)
        counts[t, 2] += _matched_counts(probs, x[..., t], valid)


def _stage2_batch(model: Any, x: torch.Tensor, valid: torch.Tensor, track_ids: list[int],
                  kl_weight: float, counts: torch.Tensor, sums: torch.Tensor) -> None:
    """Restores through the whole model; sums[0, :2] = (MFG loss x rows, rows)."""
    mu, logvar = model.encode_tracks(x)
    probs = model.restore(x, sample=False)
    probs_raw = model.restore(x, sample=False, refine=False)
    for t in range(len(TRACKS)):
        counts[t, 0] += _counts(probs_raw[..., t], x[..., t], valid)
        counts[t, 1] += _counts(probs[..., t], x[..., t], valid)
        counts[t, 2] += _matched_counts(probs[..., t], x[..., t], valid)
    n_valid = valid.sum()
    if n_valid > 0:
        rows = valid.repeat_interleave(len(mu) // len(x))
        loss, _ = stage2_loss_from_latents(model, mu[rows], logvar[rows],
                                           kl_weight=kl_weight, free_bits=0.0)
        sums[0, :2] += torch.stack([loss.double() * n_valid, n_valid.double()])


def _f1_metrics(counts: Any, ids: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    f1s, matched = [], []
    for t in ids:
        name = TRACKS[t]
        out[f"val/f1_matched/{name}"] = float(prf_from_counts(*counts[t, 2])[2])
        matched.append(out[f"val/f1_matched/{name}"])
        for j, suffix in enumerate(("_raw", "")):
            p, r, f1 = prf_from_counts(*counts[t, j])
            out[f"val/precision{suffix}/{name}"] = float(p)
            out[f"val/recall{suffix}/{name}"] = float(r)
            out[f"val/f1{suffix}/{name}"] = float(f1)
        f1s.append(out[f"val/f1/{name}"])
    out["val/f1_mean"] = sum(f1s) / max(1, len(f1s))
    out["val/f1_matched_mean"] = sum(matched) / max(1, len(matched))
    return out


def _stage1_losses(sums: torch.Tensor, track_ids: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in track_ids:
        if sums[t, 3] > 0:
            vb, rb, kl, n = sums[t].tolist()
            name = TRACKS[t]
            out[f"val/vrae_bce/{name}"], out[f"val/refine_bce/{name}"] = vb / n, rb / n
            out[f"val/kl/{name}"] = kl / n
    bces = [v for k, v in out.items() if k.startswith("val/refine_bce/")]
    if bces:
        out["val/refine_bce_mean"] = sum(bces) / len(bces)
    return out


def _stage2_loss(sums: torch.Tensor) -> dict[str, float]:
    return {"val/mfg_loss": float(sums[0, 0] / sums[0, 1])} if sums[0, 1] > 0 else {}
