"""Optimisers, parameter groups and learning-rate schedules.

Schedules are pure functions of the step: `lr_factor(step, total, steps_per_epoch, cfg)` returns the
multiplier of the peak lr (cfg.lr) for that optimiser step, so resuming needs no scheduler state."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig


def lr_factor(step: int, total: int, steps_per_epoch: int, cfg: OptimConfig) -> float:
    """Multiplier in [min_lr, 1] (warm-up starts near 0) for optimiser step `step` of `total`."""
    spe = max(1, steps_per_epoch)
    floor = cfg.min_lr
    warm = int(round(cfg.warmup * spe))
    s = cfg.schedule
    if s == "constant":
        return 1.0 if step >= warm else (step + 1) / warm
    if s == "step":
        # x gamma every step_every epochs
        f = cfg.gamma ** (step // max(1, int(round(cfg.step_every * spe))))
        return max(f, floor)
    if s == "triangle":  # airbench: linear from start_lr up to the peak, then linear down to min_lr at the end
        if step < warm:
            return cfg.start_lr + (1 - cfg.start_lr) * step / warm
        return floor + (1 - floor) * max(0.0, (total - step) / max(1, total - warm))
    if s in ("cosine", "warmup_cosine", "onecycle"):
        if s == "onecycle":  # linear ramp up to the peak, then linear down to the floor (Smith & Topin)
            warm = warm or max(1, int(0.25 * total))
            if step < warm:
                return (step + 1) / warm
            return floor + (1 - floor) * max(0.0, (total - step) / max(1, total - warm))
        if s == "warmup_cosine" and step < warm:
            return (step + 1) / warm
        start = warm if s == "warmup_cosine" else 0
        t = min(1.0, (step - start) / max(1, total - start))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    if s == "cosine_restarts":  # SGDR (Loshchilov & Hutter): cycles of step_every epochs, each x gamma longer
        if step < warm:
            return (step + 1) / warm
        length = max(1.0, cfg.step_every * spe)
        t = float(step - warm)
        mult = cfg.gamma if cfg.gamma >= 1 else 1.0
        while t >= length:
            t -= length
            length *= mult
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / length))
    raise ValueError(f"optim.schedule: unknown schedule {s!r}")


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Groups with their own lr multiplier ('lr_scale'). Models that offer `lr_groups()` (a list of
    parameter lists from the head down) get discriminative lrs: group k has lr * layer_decay**k.
    Weight decay is not applied to biases and norm parameters (1-d tensors) unless cfg.decay_biases.
    Parameters of normalisation layers get lr * cfg.norm_lr_scale and weight decay / norm_lr_scale (the
    decay per step, lr * wd, stays that of the other parameters: airbench's bias_scaler). With muon, every 1-d
    parameter counts as a norm parameter here, and conv filters move to Muon's group in build_optimizer."""
    if hasattr(model, "lr_groups") and cfg.layer_decay != 1.0:
        levels = [list(ps) for ps in model.lr_groups()]
    else:
        levels = [list(model.parameters())]
    norm_ids = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    if cfg.name == "muon":  # airbench94_muon: every bias (the whitening layer's too) at the bias lr
        norm_ids |= {id(p) for p in model.parameters() if p.ndim == 1}
    ns = cfg.norm_lr_scale
    groups = []
    for k, params in enumerate(levels):
        params = [p for p in params if p.requires_grad]
        scale = cfg.layer_decay ** k
        norms = [p for p in params if id(p) in norm_ids] if ns != 1.0 else []
        rest = [p for p in params if not (ns != 1.0 and id(p) in norm_ids)]
        decay = [p for p in rest if p.ndim > 1 or cfg.decay_biases]
        no_decay = [p for p in rest if not (p.ndim > 1 or cfg.decay_biases)]
        if decay:
            groups.append({"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": scale, "level": k})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": scale, "level": k})
        if norms:
            wd = cfg.weight_decay / ns if cfg.decay_biases else 0.0
            groups.append({"params": norms, "weight_decay": wd, "lr_scale": scale * ns, "level": k})
    if not groups:
        from .errors import ConfigError

        raise ConfigError("the model has no trainable parameters (check method.train_stages / method.bn)")
    return groups


def newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise a (rows, cols) matrix: U S' V^T with S' ~ 0.5-1.5 in place of the singular values
    of g = U S V^T (Keller Jordan's quintic Newton-Schulz iteration, coefficients chosen for the steepest slope at
    0; airbench94_muon uses 3 steps in bf16). The result has g's shape; its spectral norm is about 1."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    x = x / (x.norm() + eps)  # Frobenius norm >= spectral norm: every singular value starts <= 1
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T  # (rows, rows) with rows <= cols: the cheaper side
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon (Keller Jordan 2024, as in airbench94_muon) for the groups marked muon=True: Nesterov momentum, then the
    update (out_channels, in*kh*kw) is orthogonalised by `newton_schulz`, and before each step the filter tensor is
    rescaled to Frobenius norm sqrt(out_channels) (so its scale, which batch norm ignores, cannot drift and the lr
    is a relative step). Groups without the mark take plain Nesterov SGD with L2 weight decay (torch's formula), so
    one optimiser (one state_dict, one lr schedule) serves the whole network."""

    def __init__(self, groups: list[dict], lr: float, momentum: float, muon_momentum: float):
        super().__init__(groups, {"lr": lr, "momentum": momentum, "muon_momentum": muon_momentum,
                                  "weight_decay": 0.0, "muon": False})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            m = group["muon_momentum"] if group["muon"] else group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if group["muon"] or not wd else p.grad.add(p, alpha=wd)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(m).add_(g)
                d = g.add(state["momentum_buffer"], alpha=m)  # Nesterov
                if group["muon"]:
                    p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))
                    d = newton_schulz(d.reshape(len(d), -1)).view_as(p)
                p.add_(d, alpha=-lr)
        return loss


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.name == "muon":
        # each group's conv filters (>= 3-d) move to a Muon group of their own: lr muon_lr (times the group's
        # layer-decay factor), so its scale is muon_lr / lr; no weight decay (the filter norm is fixed instead)
        split = []
        for g in groups:
            filters = [p for p in g["params"] if p.ndim >= 3]
            rest = [p for p in g["params"] if p.ndim < 3]
            if rest:
                split.append({**g, "params": rest})
            if filters:
                split.append({**g, "params": filters, "weight_decay": 0.0, "muon": True,
                              "lr_scale": g["lr_scale"] * cfg.muon_lr / cfg.lr})
        groups = split
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    if cfg.name == "muon":
        return Muon(groups, lr=cfg.lr, momentum=cfg.momentum, muon_momentum=cfg.muon_momentum)
    if cfg.name in ("sgd", "nesterov"):
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.name == "nesterov")
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    raise ValueError(f"optim.name: unknown optimiser {cfg.name!r}")


def set_lr(opt: torch.optim.Optimizer, cfg: OptimConfig, factor: float) -> float:
    for g in opt.param_groups:
        g["lr"] = cfg.lr * factor * g.get("lr_scale", 1.0)
    return cfg.lr * factor
