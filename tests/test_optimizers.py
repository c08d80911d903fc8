"""Every registered optimiser (enumerated from OPTIMIZERS: a new file is covered without a new test) builds over
the loop's parameter groups with each group at lr * lr_scale, lowers the loss of a fixed batch, and resumes
exactly from its state_dict (what a checkpoint holds)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ablations.config import OptimConfig
from ablations.optim import build_optimizer
from ablations.registry import OPTIMIZERS


def _net() -> nn.Module:
    torch.manual_seed(0)
    # conv filters (Muon's), a norm layer (norm_lr_scale), biases and a dense head: every kind of group
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def _step(net, opt, x, y) -> float:
    opt.zero_grad()
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _cfg(name: str) -> OptimConfig:
    lr = 0.05 if name in ("sgd", "nesterov", "muon") else 0.01
    return OptimConfig(name=name, lr=lr, weight_decay=1e-3, norm_lr_scale=4.0, muon_lr=0.05)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_sets_group_lrs_and_lowers_the_loss(name):
    net, (x, y) = _net(), _batch()
    cfg = _cfg(name)
    opt = build_optimizer(cfg, net)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(cfg.lr * g["lr_scale"])
    bn = set(map(id, net[1].parameters()))
    scales = {g["lr_scale"] for g in opt.param_groups if any(id(p) in bn for p in g["params"])}
    assert scales == {4.0}  # the norm layer's parameters at lr * norm_lr_scale
    losses = [_step(net, opt, x, y) for _ in range(8)]
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_resumes_exactly_from_its_state_dict(name):
    (x, y), cfg = _batch(), _cfg(name)
    a = _net()
    opt_a = build_optimizer(cfg, a)
    for _ in range(4):
        _step(a, opt_a, x, y)
    b = _net()
    opt_b = build_optimizer(cfg, b)
    for _ in range(2):
        _step(b, opt_b, x, y)
    # a fresh model and optimiser loaded from the state after 2 steps, as a resume from a checkpoint
    c = _net()
    c.load_state_dict(b.state_dict())
    opt_c = build_optimizer(cfg, c)
    opt_c.load_state_dict(opt_b.state_dict())
    for _ in range(2):
        _step(c, opt_c, x, y)
    for pa, pc in zip(a.parameters(), c.parameters()):
        assert torch.equal(pa, pc)
