"""Learning-rate and KL-weight schedules: pure functions of the step."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["lr_at", "kl_weight_at"]


def lr_at(step: int, total: int, base: float, optim: Any) -> float:
    """Linear warm-up over ``optim.warmup_steps``, then constant or cosine down to
    ``min_lr_ratio * base`` at ``total``."""
    if step < optim.warmup_steps:
        return base * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return base
    frac = (step - optim.warmup_steps) / max(1, total - optim.warmup_steps)
    ratio = optim.min_lr_ratio
    return base * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def kl_weight_at(step: int, weight: float, warmup_steps: int) -> float:
    """Linear KL annealing 0 -> ``weight`` over ``warmup_steps`` (avoids early collapse)."""
    return weight * (min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0)
