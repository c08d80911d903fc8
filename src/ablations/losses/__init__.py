"""Losses: `@LOSSES.register(name, Config)` on a builder `(cfg) -> loss_fn(logits (B, C), target) -> scalar`.
`target` is either class indices (B,) int64 or class probabilities (B, C) float (MixUp, CutMix,
distillation); every loss takes both. Label smoothing is a field of the loss's config; a loss that
cannot honour it refuses it in its config's check()."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def as_probs(target: torch.Tensor, n_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) indices or (B, C) probabilities -> (B, C) fp32 probabilities, label smoothing applied
    (mass `smoothing` spread uniformly over all C classes, as torch's cross_entropy does)."""
    p = F.one_hot(target, n_classes).float() if target.ndim == 1 else target.float()
    return p * (1 - smoothing) + smoothing / n_classes if smoothing else p
