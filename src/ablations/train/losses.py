"""Classification losses: (logits (B,C), targets (B,) int64) -> scalar."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import LOSSES


@LOSSES.register("ce")
def cross_entropy(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)


@LOSSES.register("bce")
def one_vs_rest_bce(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Each class an independent sigmoid (one-vs-rest); mean over classes and examples."""
    target = F.one_hot(y, logits.shape[1]).float()
    if label_smoothing:
        target = target * (1 - label_smoothing) + label_smoothing / logits.shape[1]
    return F.binary_cross_entropy_with_logits(logits.float(), target)


@LOSSES.register("hinge")
def multiclass_hinge(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Crammer-Singer-style multi-class SVM loss with margin 1 (summed over wrong classes, as
    torch's multi_margin_loss, which divides by the number of classes)."""
    return F.multi_margin_loss(logits.float(), y, margin=1.0)
