"""Losses for training under noisy labels. Each takes (logits (B, C), target (B,) indices or (B, C) probabilities).

  sce        Symmetric Cross Entropy (Wang et al., ICCV 2019): alpha * CE(t, p) + beta * RCE, the reverse
             cross-entropy RCE = -sum_k p_k log t_k with log 0 replaced by A (the paper: A = -4; its reference
             code clamps t at 1e-4, i.e. A = log 1e-4 = -9.21). For a one-hot target RCE = -A (1 - p_y), a scaled
             MAE, which is robust to label noise; CE keeps the fitting strength.
  gce        Generalised Cross Entropy (Zhang & Sabuncu, NeurIPS 2018): (1 - p_y^q) / q, between CE (q -> 0)
             and MAE (q = 1); the paper's q = 0.7.
  bootstrap  Bootstrapping (Reed et al., ICLR 2015 workshop): CE against beta * t + (1 - beta) * the model's own
             prediction. Soft (beta 0.95): the probabilities, gradient flowing through them (the (1 - beta) part
             is an entropy term: with them detached the loss would be CE scaled by beta); hard (beta 0.8): the
             arg-max one-hot (no gradient).

Soft targets (label smoothing, MixUp): CE, GCE and bootstrap take the expectation over the target
distribution; SCE's reverse term is -sum_k p_k log t_k against the soft target itself, with target
probabilities below exp(A) taken as log 0 = A.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..config import LossConfig, opt
from ..registry import LOSSES
from . import as_probs


@dataclass(frozen=True)
class SCEConfig(LossConfig):
    """Symmetric cross-entropy: alpha * CE + beta * reverse CE (CIFAR-10 in the paper: alpha 0.1, beta 1)."""
    alpha: float = opt(0.1, "weight of the cross-entropy term", ge=0)
    beta: float = opt(1.0, "weight of the reverse cross-entropy term", ge=0)
    log_zero: float = opt(-4.0, "value that replaces log 0 in the reverse term (the paper's A; its code: -9.21)",
                          lt=0)


@LOSSES.register("sce", SCEConfig)
def symmetric_ce(cfg: SCEConfig):
    floor = math.exp(cfg.log_zero)  # target probabilities below this count as log 0 = A

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        t = as_probs(target, z.shape[1], cfg.label_smoothing)  # (B, C)
        logp = F.log_softmax(z, 1)
        ce = -(t * logp).sum(1)
        rce = -(logp.exp() * t.clamp(min=floor).log()).sum(1)
        return (cfg.alpha * ce + cfg.beta * rce).mean()

    return loss


@dataclass(frozen=True)
class GCEConfig(LossConfig):
    """Generalised cross-entropy (1 - p_y^q) / q."""
    q: float = opt(0.7, "exponent: -> 0 gives cross-entropy, 1 gives MAE (1 - p_y)", gt=0, le=1)


@LOSSES.register("gce", GCEConfig)
def generalised_ce(cfg: GCEConfig):
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        t = as_probs(target, z.shape[1], cfg.label_smoothing)
        # p^q as exp(q log p): finite gradients where p underflows
        per_class = (1 - torch.exp(cfg.q * F.log_softmax(z, 1))) / cfg.q  # (B, C)
        return (t * per_class).sum(1).mean()

    return loss


@dataclass(frozen=True)
class BootstrapConfig(LossConfig):
    """Cross-entropy against a mix of the (noisy) target and the model's own prediction."""
    kind: Literal["soft", "hard"] = opt("soft", "soft: mix in the predicted probabilities; hard: the arg-max class")
    beta: float = opt(0.95, "weight of the given target (Reed et al.: 0.95 soft, 0.8 hard)", ge=0, le=1)


@LOSSES.register("bootstrap", BootstrapConfig)
def bootstrap_ce(cfg: BootstrapConfig):
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        C = z.shape[1]
        t = as_probs(target, C, cfg.label_smoothing)
        logp = F.log_softmax(z, 1)
        own = logp.exp() if cfg.kind == "soft" else F.one_hot(z.argmax(1), C).float()  # soft: not detached
        mixed = cfg.beta * t + (1 - cfg.beta) * own
        return -(mixed * logp).sum(1).mean()

    return loss
