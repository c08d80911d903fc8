"""Classification losses. Each takes (logits (B, C), target (B,) indices or (B, C) probabilities)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import FieldError, LossConfig
from ..registry import LOSSES
from . import as_probs


@dataclass(frozen=True)
class CEConfig(LossConfig):
    """Softmax cross-entropy (label smoothing as in torch: eps/C on every class)."""


@LOSSES.register("ce", CEConfig)
def cross_entropy(cfg: CEConfig):
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # torch takes both index and probability targets; fp32 for a stable log-softmax under autocast
        return F.cross_entropy(logits.float(), target if target.ndim == 1 else target.float(),
                               label_smoothing=cfg.label_smoothing)

    return loss


@dataclass(frozen=True)
class BCEConfig(LossConfig):
    """One-vs-rest sigmoid binary cross-entropy, mean over classes and examples."""


@LOSSES.register("bce", BCEConfig)
def one_vs_rest_bce(cfg: BCEConfig):
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = as_probs(target, logits.shape[1], cfg.label_smoothing)
        return F.binary_cross_entropy_with_logits(logits.float(), p)

    return loss


@dataclass(frozen=True)
class HingeConfig(LossConfig):
    """Crammer-Singer multi-class SVM loss, margin 1 (torch's multi_margin_loss: the sum over wrong
    classes divided by the number of classes). Soft targets: the expectation over the target
    distribution of the per-class hinge. Label smoothing has no meaning here: refused."""

    def check(self) -> None:
        if self.label_smoothing:
            raise FieldError("label_smoothing", "the hinge loss cannot honour label smoothing; "
                             "set it to 0 or use loss ce / bce")


@LOSSES.register("hinge", HingeConfig)
def multiclass_hinge(cfg: HingeConfig):
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        if target.ndim == 1:
            return F.multi_margin_loss(z, target, margin=1.0)
        # soft target: sum_k p_k * hinge(z, k), hinge(z, k) = sum_{j != k} max(0, 1 - z_k + z_j) / C
        C = z.shape[1]
        m = (1 - z[:, :, None] + z[:, None, :]).clamp(min=0)  # (B, k, j)
        m = m * (1 - torch.eye(C, device=z.device))  # j != k
        per_k = m.sum(2) / C  # (B, k)
        return (per_k * target.float()).sum(1).mean()

    return loss
