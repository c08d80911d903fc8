"""Muon (Keller Jordan 2024, as in airbench94_muon): orthogonalised Nesterov updates for the conv filters, Nesterov
SGD for everything else, in one optimiser (one state_dict, one lr schedule)."""
from __future__ import annotations

import functools

import torch

from ..config import OptimConfig
from ..registry import OPTIMIZERS
from ..runtime import cpu_has_bf16


@functools.lru_cache(maxsize=None)
def ns_dtype(device_type: str) -> torch.dtype:
    """The dtype of the Newton-Schulz matmuls: bf16 (airbench94_muon's, for speed) where the hardware multiplies
    bf16 natively (CUDA GPUs that support it; CPUs with AVX512-BF16 or AMX), fp32 elsewhere: on a 2-core AVX2 CPU
    the bf16 NS took 44x the fp32 one's time, 29 % of a training step (bench/results/muon_ns.md)."""
    if device_type == "cpu":
        native = cpu_has_bf16()
    else:
        native = device_type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float32


def newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately orthogonalise a (rows, cols) matrix: U S' V^T with S' ~ 0.5-1.5 in place of the singular values
    of g = U S V^T (Keller Jordan's quintic Newton-Schulz iteration, coefficients chosen for the steepest slope at
    0; airbench94_muon uses 3 steps in bf16). Arithmetic in `dtype` (default: ns_dtype of g's device). The result
    has g's shape and dtype; its spectral norm is about 1."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype or ns_dtype(g.device.type))
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


@OPTIMIZERS.register("muon", biases_as_norms=True)
def muon(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Muon on the conv filters (>= 3-d; lr optim.muon_lr, momentum optim.muon_momentum, no weight decay: the
    filter norm is fixed instead), Nesterov SGD on the rest (lr on matrices, lr * norm_lr_scale on every 1-d
    parameter, momentum optim.momentum)."""
    # each group's conv filters move to a Muon group of their own at lr muon_lr times the group's layer-decay
    # factor: lr_scale is relative to optim.lr, so theirs is muon_lr / lr
    split = []
    for g in groups:
        filters = [p for p in g["params"] if p.ndim >= 3]
        rest = [p for p in g["params"] if p.ndim < 3]
        if rest:
            split.append({**g, "params": rest})
        if filters:
            split.append({**g, "params": filters, "weight_decay": 0.0, "muon": True,
                          "lr_scale": g["lr_scale"] * cfg.muon_lr / cfg.lr})
    return Muon(split, lr=cfg.lr, momentum=cfg.momentum, muon_momentum=cfg.muon_momentum)
