"""Every registered model: builds from (cfg.model, DataSpec), forward shape, finite output, backward reaches
every trainable parameter."""
from dataclasses import fields

import pytest
import torch

from ablations.data.base import DataSpec
from ablations.models.vgg import VGGConfig
from ablations.registry import MODELS

# small options for every model family; each model's own Config takes the ones it has
SMALL = {"pretrained": False, "hidden": 16, "embed": 8, "width": 8, "dense": 16}


def example_input(name: str, batch: int = 2):
    """(input, DataSpec, outputs) for a model: token ids for language models, images otherwise (at the
    smallest size a pretrained backbone takes: its total downsampling)."""
    meta = MODELS.entry(name).meta
    if meta.get("input") == "text":
        return torch.randint(0, 20, (batch, 12)), DataSpec(vocab_size=20), 20  # (B, T) token ids, vocab 20
    pre = meta.get("preprocess")
    side = pre.get("min_size", pre["size"]) if pre else 32
    return torch.randn(batch, 3, side, side), DataSpec(classes=[f"c{i}" for i in range(5)], image_size=side), 5


def small_config(name: str):
    entry = MODELS.entry(name)
    own = {f.name for f in fields(entry.Config)}
    return entry.Config(name=name, **{k: v for k, v in SMALL.items() if k in own})


@pytest.mark.parametrize("name", MODELS.names())
def test_model_forward_backward(name):
    torch.manual_seed(0)
    x, spec, n_out = example_input(name)
    model = MODELS.get(name)(small_config(name), spec)
    # a model as its builder makes it trains everything (fine-tuning freezes parts: methods/finetune.py),
    # except what its design holds fixed: airnet's data-set whitening layer and BN scales (tests/test_fast.py)
    fixed = set(getattr(model, "fixed_by_design", lambda: [])())
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in fixed)
    model.train()
    out = model(x)
    if isinstance(out, tuple):  # language models return (logits, state)
        out = out[0]
    assert out.shape[0] == x.shape[0] and out.shape[-1] == n_out
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("opts", [{}, {"dropout": 0.2, "dropout_schedule": "increasing", "batch_norm": True},
                                  {"dropout": 0.2, "batch_norm": True, "norm_order": "dropout_bn"}])
def test_vgg_layout(blocks, opts):
    spec = DataSpec(classes=[str(i) for i in range(10)], image_size=32)
    m = MODELS.get(f"vgg{blocks}")(VGGConfig(**opts), spec)
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [w for b in range(blocks) for w in (32 * 2**b,) * 2]
    drops = [l.p for l in m.modules() if isinstance(l, torch.nn.Dropout)]
    if opts.get("dropout_schedule") == "increasing":
        assert drops == pytest.approx([0.2, 0.3, 0.4][:blocks] + [min(0.2 + 0.1 * blocks, 0.5)])
    n_bn = sum(isinstance(l, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)) for l in m.modules())
    assert n_bn == (2 * blocks + 1 if opts.get("batch_norm") else 0)
    assert m(torch.randn(4, 3, 32, 32)).shape == (4, 10)
