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


def _convnet(**opts):
    from ablations.models.convnet import ConvNetConfig

    spec = DataSpec(classes=[str(i) for i in range(10)], image_size=32)
    return MODELS.get("convnet")(ConvNetConfig(name="convnet", **opts), spec)


@pytest.mark.parametrize("opts", [{}, {"head": "gap"}, {"head": "gap", "downsample": "stride"},
                                  {"head": "gap", "downsample": "stride", "residual": True},
                                  {"head": "gap", "downsample": "stride", "residual": True, "blocks": 4},
                                  {"blocks": 4}, {"residual": True, "norm": "batch", "dropout": 0.1}])
def test_convnet_steps_keep_the_resolutions(opts):
    """Max-pool and stride-2 run each block's convs at the same sizes (32/16/8/4 px): only the named change
    differs. Shortcuts are 1x1 projections exactly where the block changes shape (every block: 3->32->64...)."""
    m = _convnet(**opts)
    sizes = []
    for c in (l for l in m.modules() if isinstance(l, torch.nn.Conv2d) and l.kernel_size == (3, 3)):
        c.register_forward_hook(lambda mod, i, o: sizes.append((o.shape[1], o.shape[-1])))
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    blocks = opts.get("blocks", 3)
    assert sizes == [(32 * 2**b, 32 >> b) for b in range(blocks) for _ in range(2)]
    shortcuts = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d) and l.kernel_size == (1, 1)]
    assert len(shortcuts) == (blocks if opts.get("residual") else 0)  # every block changes the channels
    assert any(isinstance(l, torch.nn.Linear) and l.out_features == 128 for l in m.modules()) == \
        (opts.get("head", "dense") == "dense")


@pytest.mark.parametrize("norm,groups_of_32", [("batch", None), ("layer", 1), ("instance", 32), ("group", 8)])
def test_convnet_norms_normalise_what_they_say(norm, groups_of_32):
    m = _convnet(norm=norm, groups=8, head="gap", downsample="stride", residual=True)
    first = m.features[0].norm1
    if norm == "batch":
        assert isinstance(first, torch.nn.BatchNorm2d)
    else:
        assert isinstance(first, torch.nn.GroupNorm) and first.num_groups == groups_of_32
        # a group norm's output has zero mean and unit variance within each (sample, group)
        y = first(torch.randn(3, 32, 8, 8) * 5 + 2).reshape(3, groups_of_32, -1)
        assert torch.allclose(y.mean(-1), torch.zeros(3, groups_of_32), atol=1e-4)
        assert torch.allclose(y.var(-1, unbiased=False), torch.ones(3, groups_of_32), atol=1e-2)
    # every norm has per-channel affine parameters and the convs drop their biases: same parameter count
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in _convnet(
        norm="batch", head="gap", downsample="stride", residual=True).parameters())


def test_convnet_bad_groups_name_the_key():
    from ablations.config import ConfigError, make

    with pytest.raises(ConfigError, match="model.groups.*5 does not divide block 1's 32 channels"):
        make({"model": {"name": "convnet", "norm": "group", "groups": 5}})
