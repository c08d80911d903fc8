"""Parameter groups, the optimiser (built by its registry entry, ablations/optimizers/) and learning-rate schedules.

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


def param_groups(model: nn.Module, cfg: OptimConfig, biases_as_norms: bool = False) -> list[dict]:
    """Groups with their own lr multiplier ('lr_scale'). Models that offer `lr_groups()` (a list of
    parameter lists from the head down) get discriminative lrs: group k has lr * layer_decay**k.
    Weight decay is not applied to biases and norm parameters (1-d tensors) unless cfg.decay_biases.
    Parameters of normalisation layers get lr * cfg.norm_lr_scale and weight decay / norm_lr_scale (the
    decay per step, lr * wd, stays that of the other parameters: airbench's bias_scaler). biases_as_norms (the
    optimiser's registry metadata, e.g. muon): every 1-d parameter counts as a norm parameter here."""
    if hasattr(model, "lr_groups") and cfg.layer_decay != 1.0:
        levels = [list(ps) for ps in model.lr_groups()]
    else:
        levels = [list(model.parameters())]
    norm_ids = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    if biases_as_norms:  # airbench94_muon: every bias (the whitening layer's too) at the bias lr
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


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser optim.name picks (registry OPTIMIZERS: ablations/optimizers/*.py) over param_groups."""
    from .registry import OPTIMIZERS

    entry = OPTIMIZERS.entry(cfg.name)
    opt = entry.obj(param_groups(model, cfg, entry.meta.get("biases_as_norms", False)), cfg)
    set_lr(opt, cfg, 1.0)
    return opt


def set_lr(opt: torch.optim.Optimizer, cfg: OptimConfig, factor: float) -> float:
    for g in opt.param_groups:
        g["lr"] = cfg.lr * factor * g.get("lr_scale", 1.0)
    return cfg.lr * factor
