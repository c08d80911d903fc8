"""Every registered loss on index and probability targets; the noise-robust losses against their papers'
formulas (losses/robust.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ablations.config import make
from ablations.registry import LOSSES


def _loss(name: str, **opts):
    cfg = make({"loss": {"name": name, **opts}}).loss
    return LOSSES.get(name)(cfg)


def _batch(seed: int = 0, b: int = 6, c: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * 2, torch.randint(0, c, (b,), generator=g)


@pytest.mark.parametrize("name", LOSSES.names())
def test_index_and_one_hot_targets_agree(name):
    z, y = _batch()
    fn = _loss(name)
    a, b = fn(z, y), fn(z, F.one_hot(y, 5).float())
    assert a.ndim == 0 and torch.isfinite(a) and torch.allclose(a, b, atol=1e-6)
    z = z.clone().requires_grad_()
    fn(z, y).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_sce_is_alpha_ce_plus_beta_reverse_ce():
    z, y = _batch()
    p = F.softmax(z, 1)
    py = p.gather(1, y[:, None]).squeeze(1)
    # one-hot target: RCE = -sum_{k != y} p_k * A = -A * (1 - p_y)
    for A in (-4.0, math.log(1e-4)):
        want = 0.1 * F.cross_entropy(z, y) + 1.0 * (-A * (1 - py)).mean()
        assert torch.allclose(_loss("sce", log_zero=A)(z, y), want, atol=1e-5)
    want = 0.5 * F.cross_entropy(z, y) + 2.0 * (4.0 * (1 - py)).mean()
    assert torch.allclose(_loss("sce", alpha=0.5, beta=2.0)(z, y), want, atol=1e-5)


def test_gce_between_ce_and_mae():
    z, y = _batch()
    py = F.softmax(z, 1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(_loss("gce", q=1.0)(z, y), (1 - py).mean(), atol=1e-6)  # q = 1: MAE
    assert torch.allclose(_loss("gce", q=0.7)(z, y), ((1 - py ** 0.7) / 0.7).mean(), atol=1e-6)
    assert torch.allclose(_loss("gce", q=1e-4)(z, y), F.cross_entropy(z, y), atol=1e-3)  # q -> 0: CE


def test_bootstrap():
    z, y = _batch()
    assert torch.allclose(_loss("bootstrap", beta=1.0)(z, y), F.cross_entropy(z, y), atol=1e-6)
    # hard, beta 0: trains to its own arg-max
    assert torch.allclose(_loss("bootstrap", kind="hard", beta=0.0)(z, y), F.cross_entropy(z, z.argmax(1)),
                          atol=1e-6)
    p = F.softmax(z, 1)
    t = 0.95 * F.one_hot(y, 5).float() + 0.05 * p
    assert torch.allclose(_loss("bootstrap")(z, y), -(t * F.log_softmax(z, 1)).sum(1).mean(), atol=1e-6)
    # soft: the gradient flows through the model's own term (Reed et al.: an entropy term), so it is NOT
    # cross-entropy's gradient scaled by beta (what detaching the prediction would give)
    zg = z.clone().requires_grad_()
    _loss("bootstrap")(zg, y).backward()
    zc = z.clone().requires_grad_()
    (0.95 * F.cross_entropy(zc, y)).backward()
    assert not torch.allclose(zg.grad, zc.grad, atol=1e-4)
    want = -(0.95 * F.one_hot(y, 5).float() * F.log_softmax(zc, 1) + 0.05 * F.softmax(zc, 1)
             * F.log_softmax(zc, 1)).sum(1).mean()
    zc.grad = None
    want.backward()
    assert torch.allclose(zg.grad, zc.grad, atol=1e-6)


@pytest.mark.parametrize("name,opts", [("sce", {}), ("gce", {}), ("gce", {"q": 1.0})])
def test_robust_losses_pull_less_on_a_confidently_contradicted_label(name, opts):
    """The point of the robust losses: an example whose (likely wrong) label the model confidently
    contradicts gets a smaller gradient than under CE (an MAE-like term saturates), relative to a
    correctly labelled, uncertain one."""
    wrong = torch.tensor([[8.0, 0.0, 0.0]], requires_grad=True)  # predicts 0 with p ~ 1, label 2
    unsure = torch.tensor([[0.5, 0.0, 0.0]], requires_grad=True)  # label 0, p ~ 0.45

    def ratio(fn):
        gw = torch.autograd.grad(fn(wrong, torch.tensor([2])), wrong)[0].norm()
        gu = torch.autograd.grad(fn(unsure, torch.tensor([0])), unsure)[0].norm()
        return (gw / gu).item()

    assert ratio(_loss(name, **opts)) < 0.5 * ratio(_loss("ce"))
