"""Augmentation registry and pipelines (ablations.data.augment): every registered entry's config and op,
spec parsing errors, fusion, and draw-for-draw equality with the old data.flip/translate/crop_scale/
rotate/scale/color_jitter augmentation (a frozen copy of which is at the bottom of this file)."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ablations import registry
from ablations.config import FieldError, type_section
from ablations.data import augment as A
from ablations.registry import AUGS


def _names() -> list[str]:
    """Every registered augmentation; while some plugin module fails to import (mid-refactor), the ones
    registered so far (this module's)."""
    try:
        return AUGS.names()
    except Exception:
        return sorted(AUGS._items)


NAMES = _names()
_PLUGINS_OK: list[bool] = []


@pytest.fixture(autouse=True)
def _registry_usable(monkeypatch):
    """AUGS.entry() loads every plugin module first; if that fails (not this file's concern), look up
    the entries registered so far."""
    if not _PLUGINS_OK:
        try:
            registry.load_plugins()
            _PLUGINS_OK.append(True)
        except Exception:
            _PLUGINS_OK.append(False)
    if not _PLUGINS_OK[0]:
        monkeypatch.setattr(registry, "_loaded", True)


def _batch(dtype=torch.uint8, n=6, h=16, w=20, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- every registered entry

def test_builtin_entries_registered():
    assert {"flip", "translate", "crop", "rotate", "zoom", "color_jitter", "cutout"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_default_config_valid_and_documented(name):
    entry = AUGS._items[name]
    assert entry.Config is not None and issubclass(entry.Config, A.AugConfig)
    assert dataclasses.is_dataclass(entry.Config) and entry.Config.__dataclass_params__.frozen
    cfg = entry.Config()
    assert cfg.name == name
    cfg.check()
    typed = type_section(name, {"name": name}, entry.Config, {}, "")
    assert typed == cfg
    assert A.parse_pipeline([name]) == [cfg]
    for f in dataclasses.fields(entry.Config):
        assert f.metadata.get("doc", "").strip(), f"{name}.{f.name} has no doc"
    assert isinstance(cfg.describe(), str) and cfg.describe()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_op_shape_dtype_determinism(name, dtype):
    x = _batch(dtype)
    before = x.clone()
    p = A.build_pipeline([name])
    assert len(p) == 1 and p.random
    y = p(x, _gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.equal(x, before), "the input batch must not be modified"
    if dtype != torch.uint8:
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.equal(p(x, _gen(1)), y), "same generator state -> same output"
    assert not torch.equal(p(x, _gen(2)), y), "another seed -> another output"
    # a resize request: geometric entries produce it, the others keep the batch's size
    z = p(x, _gen(1), size=(12, 14))
    assert z.dtype == x.dtype
    assert tuple(z.shape[-2:]) == ((12, 14) if p.geometric else tuple(x.shape[-2:]))
    assert z.shape[:2] == x.shape[:2]


@pytest.mark.parametrize("name", NAMES)
def test_op_randomness_only_from_generator(name):
    x = _batch()
    p = A.build_pipeline([name])
    torch.manual_seed(0)
    a = p(x, _gen(5))
    torch.manual_seed(123)
    b = p(x, _gen(5))
    assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_op_cuda_batch_cpu_generator(name):
    x = _batch()
    p = A.build_pipeline([name])
    y = p(x.cuda(), _gen(3))
    assert y.device.type == "cuda" and y.dtype == x.dtype
    cpu = p(x, _gen(3))
    assert (y.cpu().int() - cpu.int()).abs().max() <= 1  # sampling may round differently


# ---------------------------------------------------------------- parsing

def test_spec_forms():
    assert A.parse_pipeline([]) == []
    t = A.TranslateConfig(pad=3)
    assert A.parse_pipeline([{"translate": 3}]) == [t]
    assert A.parse_pipeline([{"translate": {"pad": 3}}]) == [t]
    assert A.parse_pipeline([t]) == [t]
    assert A.parse_pipeline([{"translate": None}]) == [A.TranslateConfig()]
    assert A.parse_pipeline(("flip",)) == [A.FlipConfig()]
    assert A.parse_pipeline([{"crop": 0.5}])[0].min_area == 0.5
    assert A.parse_pipeline([{"rotate": 10}])[0].degrees == 10.0
    assert isinstance(A.parse_pipeline([{"rotate": 10}])[0].degrees, float)
    assert A.parse_pipeline([{"zoom": 0.2}])[0].scale == 0.2
    assert A.parse_pipeline([{"color_jitter": 0.3}])[0].strength == 0.3
    assert A.parse_pipeline([{"cutout": 4}])[0].size == 4


@pytest.mark.parametrize("spec, key, words", [
    (["flip", "translat"], "[1]", ["unknown augmentation 'translat'", "did you mean translate"]),
    ([{"crop": {"min_are": 0.5}}], "[0]", ["no key 'min_are'", "crop.min_area"]),
    (["flip", "flip", {"translate": -1}], "[2]", ["translate.pad", ">= 0", "-1"]),
    ([{"crop": 0}], "[0]", ["crop.min_area", "> 0"]),
    ([{"crop": 1.5}], "[0]", ["crop.min_area", "<= 1"]),
    ([{"zoom": 1.0}], "[0]", ["zoom.scale", "< 1"]),
    ([{"cutout": 0}], "[0]", ["cutout.size", ">= 1"]),
    ([{"translate": "four"}], "[0]", ["translate.pad", "expected an integer"]),
    ([{"translate": 2.5}], "[0]", ["translate.pad", "expected an integer"]),
    (["flip", {"flip": 3}], "[1]", ["flip takes no options"]),
    ([{"flip": 1, "translate": 4}], "[0]", ["one name per item"]),
    ([3], "[0]", ["expected a name"]),
    ([{"crop": {"name": "rotate"}}], "[0]", ["'name' is not an option"]),
    ("flip", "", ["expected a list like [flip, {translate: 4}]"]),
    ({"flip": True}, "", ["expected a list"]),
])
def test_parse_errors(spec, key, words):
    with pytest.raises(FieldError) as ei:
        A.parse_pipeline(spec)
    e = ei.value
    assert e.key == key
    assert "\n" not in str(e) and "\x00" not in str(e)
    assert str(e).startswith(f"{key}: ")
    for w in words:
        assert w in e.message, (w, e.message)
    with pytest.raises(FieldError):
        A.build_pipeline(spec)


def test_data_config_check_names_role_and_item():
    from ablations.data.base import ImageDataConfig

    ImageDataConfig(aug={"train": ["flip", {"translate": 4}]}).check()
    with pytest.raises(FieldError) as ei:
        ImageDataConfig(aug={"train": ["flip"], "strong": ["flip", {"rotate": -5}]}).check()
    assert ei.value.key == "aug.strong[1]"
    assert "rotate.degrees" in ei.value.message


def test_describe():
    assert A.describe(["flip", {"translate": 4}]) == "flip, translate 4 px"
    assert A.describe([]) == "none"
    text = A.describe([{"crop": 0.5}, {"rotate": 10}, {"zoom": 0.1}, {"color_jitter": 0.4}, {"cutout": 8}])
    assert text == "crop 0.5-1 of the area, rotate +-10 deg, zoom +-10%, color jitter 0.4, cutout 8 px"
    assert A.build_pipeline(["flip"]).describe() == "flip"


# ---------------------------------------------------------------- pipelines and fusion

def test_empty_pipeline_is_identity():
    p = A.build_pipeline([])
    x = _batch()
    assert len(p) == 0 and not p.random and not p.geometric
    assert p(x, _gen(0)) is x
    assert p(x, _gen(0), size=8) is x  # no geometric entry: no resize (the caller center-crops)


def test_geometric_flag_and_size():
    x = _batch(h=16, w=16)
    for spec, geo in [(["flip"], False), ([{"translate": 2}, {"color_jitter": 0.2}, "cutout"], False),
                      ([{"crop": 0.5}], True), (["flip", {"rotate": 5}], True), ([{"zoom": 0.1}], True)]:
        p = A.build_pipeline(spec)
        assert p.geometric is geo, spec
        y = p(x, _gen(0), size=12)
        assert tuple(y.shape[-2:]) == ((12, 12) if geo else (16, 16)), spec
        assert tuple(p(x, _gen(0)).shape[-2:]) == (16, 16), spec


def test_fusion():
    p = A.build_pipeline(["flip", {"translate": 4}])
    assert len(p) == 2 and p.ops == [A.FlipTranslate(True, 4)]
    p = A.build_pipeline([{"crop": 0.5}, {"rotate": 10}, {"zoom": 0.1}, "flip", {"translate": 2}, "color_jitter"])
    assert len(p) == 6
    assert p.ops == [A.Affine(0.5, 10.0, 0.1), A.FlipTranslate(True, 2), A.ColorJitter(0.4)]
    # not fused: translate before flip, a repeated geometric part, entries in between
    assert len(A.build_pipeline([{"translate": 4}, "flip"]).ops) == 2
    assert len(A.build_pipeline([{"rotate": 5}, {"rotate": 5}]).ops) == 2
    assert len(A.build_pipeline([{"crop": 0.5}, "flip", {"rotate": 5}]).ops) == 3
    assert len(A.build_pipeline(["flip", "flip"]).ops) == 2


def test_fused_equals_one_call():
    x = _batch(h=16, w=16)
    got = A.build_pipeline(["flip", {"translate": 3}])(x, _gen(4))
    assert torch.equal(got, A.flip_translate(x, True, 3, _gen(4)))
    got = A.build_pipeline([{"crop": 0.4}, {"zoom": 0.2}])(x, _gen(4), size=12)
    assert torch.equal(got, A.random_affine_crop(x, 12, 0.4, 0.0, 0.2, _gen(4)))


def test_unfused_entries_apply_in_order():
    x = _batch(h=16, w=16)
    g = _gen(9)
    ref = A.flip_translate(A.flip_translate(x, False, 3, g), True, 0, g)
    assert torch.equal(A.build_pipeline([{"translate": 3}, "flip"])(x, _gen(9)), ref)


def test_flip_and_translate_semantics():
    x = _batch(dtype=torch.float32, n=64, h=8, w=8)
    y = A.build_pipeline(["flip"])(x, _gen(0))
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    same = (y == x).flatten(1).all(1)
    assert bool((flipped | same).all()) and 10 < int(flipped.sum()) < 54
    y = A.build_pipeline([{"translate": 2}])(x, _gen(0))
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(8):  # each output is some 8x8 window of the reflection-padded image
        assert any(torch.equal(y[i], padded[i, :, a:a + 8, b:b + 8]) for a in range(5) for b in range(5))


# ---------------------------------------------------------------- cutout

@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_cutout_fills_one_clipped_square_with_the_mean(dtype):
    size, H, W = 8, 24, 20
    x = _batch(dtype, n=48, h=H, w=W, seed=3)
    y = A.build_pipeline([{"cutout": size}])(x, _gen(0))
    fill = x.float().mean((2, 3))  # (N, C)
    if dtype == torch.uint8:
        fill = fill.round()
    full = clipped = 0
    for i in range(x.shape[0]):
        changed = (y[i] != x[i]).any(0)
        rows = changed.any(1).nonzero().flatten()
        cols = changed.any(0).nonzero().flatten()
        assert len(rows) > 0, f"image {i}: no square"
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert h <= size and w <= size, f"image {i}: {h}x{w} region"
        r0, c0 = int(rows[0]), int(cols[0])
        box = y[i, :, r0:r0 + h, c0:c0 + w].float()
        assert torch.allclose(box, fill[i].view(3, 1, 1).expand_as(box), atol=1e-6)
        outside = torch.ones(H, W, dtype=torch.bool)
        outside[r0:r0 + h, c0:c0 + w] = False
        assert torch.equal(y[i][:, outside], x[i][:, outside])
        full += (h, w) == (size, size)
        clipped += (h < size or w < size) and (r0 == 0 or c0 == 0 or r0 + h == H or c0 + w == W)
    assert full > 0 and clipped > 0  # squares inside the image and squares clipped at a border


# ---------------------------------------------------------------- draw-order compatibility with the old options

OLD = dict(flip=False, translate=0, rotate=0.0, scale=0.0, crop_scale=1.0, color_jitter=0.0, image_size=0)


@pytest.mark.parametrize("old, spec, size", [
    (dict(flip=True, translate=4), ["flip", {"translate": 4}], None),
    (dict(flip=True, translate=2), ["flip", {"translate": 2}], None),
    (dict(flip=True), ["flip"], None),
    (dict(translate=3), [{"translate": 3}], None),
    (dict(crop_scale=0.35, flip=True), [{"crop": 0.35}, "flip"], 24),
    (dict(crop_scale=0.5, flip=True), [{"crop": 0.5}, "flip"], None),
    (dict(rotate=15.0), [{"rotate": 15}], None),
    (dict(scale=0.1, flip=True, translate=2), [{"zoom": 0.1}, "flip", {"translate": 2}], None),
    (dict(crop_scale=0.4, rotate=10.0, scale=0.2, flip=True, translate=4, color_jitter=0.4),
     [{"crop": 0.4}, {"rotate": 10}, {"zoom": 0.2}, "flip", {"translate": 4}, {"color_jitter": 0.4}], 28),
    (dict(flip=True, translate=4, color_jitter=0.3), ["flip", {"translate": 4}, {"color_jitter": 0.3}], None),
    (dict(color_jitter=0.5), [{"color_jitter": 0.5}], None),
])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_same_draws_as_old_options(old, spec, size, dtype):
    x = _batch(dtype, n=16, h=32, w=32, seed=7)
    dc = SimpleNamespace(**{**OLD, **old})
    for seed in (0, 1):
        g_old, g_new = _gen(seed), _gen(seed)
        want = old_augment(x, dc, g_old, size)
        got = A.build_pipeline(spec)(x, g_new, size)
        assert got.dtype == want.dtype and torch.equal(got, want), (old, spec, seed)
        # the same number of draws: the generators are in the same state afterwards
        assert torch.equal(torch.rand(4, generator=g_old), torch.rand(4, generator=g_new))
    assert not torch.equal(got, A.build_pipeline(spec)(x, _gen(0), size))


def test_old_reference_is_sensitive_to_order():
    """The comparison above can fail: the same entries in another order draw differently."""
    x = _batch(n=16, h=32, w=32, seed=7)
    dc = SimpleNamespace(**{**OLD, "crop_scale": 0.5, "flip": True})
    want = old_augment(x, dc, _gen(0), None)
    assert not torch.equal(A.build_pipeline(["flip", {"crop": 0.5}])(x, _gen(0)), want)


# ---------------------------------------------------------------- the old augmentation, frozen (reference only)
# Verbatim from ablations/data/images.py before the AUGS registry, so the test keeps comparing against the
# old draws whatever happens to the library's copies.

def _old_rand(n, g, device):
    return torch.rand(n, generator=g, device=g.device).to(device)


def _old_reflect(i, n):
    return (n - 1) - ((n - 1) - i.abs()).abs()


def old_flip_translate(x, flip, pad, g):
    if not flip and pad <= 0:
        return x
    N, C, H, W = x.shape
    dev = x.device
    pad = min(int(pad), H - 1, W - 1)
    f = _old_rand(N, g, dev) < 0.5 if flip else torch.zeros(N, dtype=torch.bool, device=dev)
    if pad > 0:
        dy = torch.randint(-pad, pad + 1, (N,), generator=g, device=g.device).to(dev)
        dx = torch.randint(-pad, pad + 1, (N,), generator=g, device=g.device).to(dev)
    else:
        dy = dx = torch.zeros(N, dtype=torch.int64, device=dev)
    rows = _old_reflect(torch.arange(H, device=dev)[None, :] + dy[:, None], H)
    cols = _old_reflect(torch.arange(W, device=dev)[None, :] + dx[:, None], W)
    cols = torch.where(f[:, None], (W - 1) - cols, cols)
    idx = (rows[:, :, None] * W + cols[:, None, :]).reshape(N, 1, H * W).expand(N, C, H * W)
    return x.reshape(N, C, H * W).gather(2, idx).view(N, C, H, W)


def _old_as_size(size):
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _old_to_float(x):
    return (x.float(), 255.0) if x.dtype == torch.uint8 else (x, 1.0)


def _old_back(y, like, top):
    y = y.clamp(0.0, top)
    return y.round().to(torch.uint8) if like.dtype == torch.uint8 else y.to(like.dtype)


def old_random_affine_crop(x, size, crop_scale, rotate, scale, g, ratio=(3 / 4, 4 / 3)):
    N, C, H, W = x.shape
    oh, ow = _old_as_size(size)
    dev = x.device
    if crop_scale < 1.0:
        area = (crop_scale + (1 - crop_scale) * _old_rand(N, g, dev)) * H * W
        lo, hi = math.log(ratio[0]), math.log(ratio[1])
        r = torch.exp(lo + (hi - lo) * _old_rand(N, g, dev))
        cw = (area * r).sqrt().clamp(max=W)
        ch = (area / r).sqrt().clamp(max=H)
    else:
        cw = torch.full((N,), float(W), device=dev)
        ch = torch.full((N,), float(H), device=dev)
    cx = cw / 2 + (W - cw) * _old_rand(N, g, dev)
    cy = ch / 2 + (H - ch) * _old_rand(N, g, dev)
    th = (2 * _old_rand(N, g, dev) - 1) * math.radians(rotate) if rotate > 0 else torch.zeros(N, device=dev)
    z = 1 + (2 * _old_rand(N, g, dev) - 1) * scale if scale > 0 else torch.ones(N, device=dev)
    cos, sin = th.cos(), th.sin()
    theta = torch.zeros(N, 2, 3, device=dev)
    theta[:, 0, 0] = cos * cw / z / W
    theta[:, 0, 1] = -sin * ch / z / W
    theta[:, 1, 0] = sin * cw / z / H
    theta[:, 1, 1] = cos * ch / z / H
    theta[:, 0, 2] = 2 * cx / W - 1
    theta[:, 1, 2] = 2 * cy / H - 1
    xf, top = _old_to_float(x)
    grid = F.affine_grid(theta.to(xf.dtype), [N, C, oh, ow], align_corners=False)
    y = F.grid_sample(xf, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return _old_back(y, x, top)


def old_color_jitter(x, strength, g):
    if strength <= 0:
        return x
    N = x.shape[0]
    dev = x.device
    xf, top = _old_to_float(x)
    b, c, s = ((1 + (2 * _old_rand(N, g, dev) - 1) * strength).clamp(min=0).view(N, 1, 1, 1) for _ in range(3))
    w = torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=xf.dtype).view(1, 3, 1, 1)
    y = (xf * b).clamp(0, top)
    m = (y * w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    y = ((y - m) * c + m).clamp(0, top)
    grey = (y * w).sum(1, keepdim=True)
    y = (y - grey) * s + grey
    return _old_back(y, x, top)


def old_augment(x, dc, g, size=None):
    hw = _old_as_size(size or dc.image_size or tuple(x.shape[-2:]))
    if dc.crop_scale < 1.0 or dc.rotate > 0 or dc.scale > 0 or hw != tuple(x.shape[-2:]):
        x = old_random_affine_crop(x, hw, dc.crop_scale, dc.rotate, dc.scale, g)
    x = old_flip_translate(x, dc.flip, dc.translate, g)
    return old_color_jitter(x, dc.color_jitter, g)
