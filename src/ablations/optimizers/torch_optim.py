"""torch's own optimisers: SGD with heavy-ball or Nesterov momentum, Adam and AdamW (decoupled decay)."""
from __future__ import annotations

import torch

from ..config import OptimConfig
from ..registry import OPTIMIZERS


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with heavy-ball momentum (optim.momentum) and L2 weight decay."""
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


@OPTIMIZERS.register("nesterov")
def nesterov(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (optim.momentum) and L2 weight decay."""
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


@OPTIMIZERS.register("adam")
def adam(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam (optim.betas) with L2 weight decay added to the gradient."""
    return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (optim.betas): weight decay decoupled from the adaptive step (Loshchilov & Hutter)."""
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
