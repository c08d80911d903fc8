"""RandAugment / TrivialAugment batched per image (ablations.data.randaugment): each op against torchvision's
functional op at the same magnitude, per-image draws, determinism, config errors."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from ablations.config import ConfigError, make
from ablations.data.augment import build_pipeline
from ablations.data.randaugment import OPS, RandOps, apply_op, op_magnitude


def _images(n: int = 4, side: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish images with a full range of values, uint8 (N, 3, side, side)
    x = torch.rand(n, 3, side // 4, side // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8)


def _ours(x: torch.Tensor, op: str, m: float) -> torch.Tensor:
    y = apply_op(x.float(), op, torch.full((len(x),), m), 255.0)
    return y.clamp(0, 255).round().to(torch.uint8)


# (op, our magnitude, torchvision call): enhance ops take a factor 1 + m
REFERENCE = [
    ("brightness", 0.5, lambda x: TF.adjust_brightness(x, 1.5)),
    ("brightness", -0.6, lambda x: TF.adjust_brightness(x, 0.4)),
    ("color", 0.7, lambda x: TF.adjust_saturation(x, 1.7)),
    ("contrast", -0.5, lambda x: TF.adjust_contrast(x, 0.5)),
    ("sharpness", 0.9, lambda x: TF.adjust_sharpness(x, 1.9)),
    ("posterize", 3, lambda x: TF.posterize(x, 3)),
    ("solarize", 0.5, lambda x: TF.solarize(x, 127.5)),
    ("autocontrast", 0.0, lambda x: TF.autocontrast(x)),
    ("equalize", 0.0, lambda x: TF.equalize(x)),
]


@pytest.mark.parametrize("op,m,ref", REFERENCE, ids=[f"{r[0]}{r[1]}" for r in REFERENCE])
def test_ops_match_torchvision(op, m, ref):
    """Same result as torchvision's op on uint8 up to one level of rounding (torchvision truncates where
    we round, and uses 0.2989 for red's luma weight)."""
    x = _images()
    diff = (_ours(x, op, m).int() - ref(x).int()).abs()
    assert diff.max() <= 2 and diff.float().mean() < 1.0, (op, diff.max(), diff.float().mean())


@pytest.mark.parametrize("op", ["shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
                                "color", "contrast", "sharpness"])
def test_magnitude_zero_is_identity(op):
    x = _images().float()
    assert torch.allclose(apply_op(x, op, torch.zeros(len(x)), 255.0), x, atol=1e-3)


def test_translate_moves_by_whole_pixels():
    x = _images(side=16).float()
    y = apply_op(x, "translate_x", torch.full((len(x),), 3.0), 255.0)  # content moves 3 px right
    assert torch.allclose(y[..., 3:], x[..., :-3], atol=1e-3)
    y = apply_op(x, "translate_y", torch.full((len(x),), -2.0), 255.0)  # 2 px up
    assert torch.allclose(y[..., :-2, :], x[..., 2:, :], atol=1e-3)


def test_rotate_quarter_turn():
    x = _images(side=16).float()
    y = apply_op(x, "rotate", torch.full((len(x),), 90.0), 255.0)
    assert torch.allclose(y, torch.rot90(x, 1, dims=(2, 3)), atol=1e-2)  # counter-clockwise, as torchvision
    ref = TF.rotate(x, 90.0)
    assert torch.allclose(y, ref, atol=1e-2)


def test_per_image_magnitudes():
    """Each image gets its own magnitude in one call: image i equals the op applied to it alone."""
    x = _images(n=3).float()
    m = torch.tensor([0.0, 0.5, -0.5])
    y = apply_op(x, "contrast", m, 255.0)
    for i in range(3):
        assert torch.allclose(y[i:i + 1], apply_op(x[i:i + 1], "contrast", m[i:i + 1], 255.0))


def test_magnitude_ranges_are_torchvisions():
    lv = torch.arange(31)
    assert op_magnitude("rotate", lv, 31, False, 32)[-1] == pytest.approx(30.0)
    assert op_magnitude("rotate", lv, 31, True, 32)[-1] == pytest.approx(135.0)
    assert op_magnitude("translate_x", lv, 31, False, 32)[-1] == 14  # int(150 / 331 * 32 = 14.5)
    assert op_magnitude("posterize", lv, 31, False, 32).tolist()[::10] == [8, 7, 5, 4]
    assert op_magnitude("posterize", lv, 31, True, 32)[-1] == 2
    assert op_magnitude("solarize", lv, 31, False, 32)[0] == 1.0


@pytest.mark.parametrize("spec", [["randaugment"], ["trivialaugment"], [{"randaugment": {"n_ops": 3,
                                                                                        "magnitude": 20}}]])
def test_every_image_draws_its_own_op(spec):
    """A batch of one image repeated: the outputs differ between images (torchvision's batched transform
    would give one op to all), the result is a pure function of the generator, and dtype/shape are kept."""
    x = _images(n=1).expand(64, -1, -1, -1).contiguous()
    pipe = build_pipeline(spec)
    y = pipe(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == torch.uint8
    distinct = {bytes(img.numpy().tobytes()) for img in y}
    assert len(distinct) > 8
    assert torch.equal(y, pipe(x, torch.Generator().manual_seed(1)))


def test_every_op_is_applied_about_equally_often(monkeypatch):
    """RandOps gives each op (identity aside, which it skips) about 1/14 of the images per round, and
    magnitudes within torchvision's range for its bins (random bins for TrivialAugment)."""
    from ablations.data import randaugment as R

    seen: dict[str, int] = {}
    mags: dict[str, list] = {}
    real = R.apply_op

    def spy(x, op, m, top):
        seen[op] = seen.get(op, 0) + len(x)
        mags.setdefault(op, []).append(m)
        return real(x, op, m, top)

    monkeypatch.setattr(R, "apply_op", spy)
    x = _images(n=1400, side=8)
    R.RandOps(2, 9, 31, False)(x, torch.Generator().manual_seed(0))
    assert set(seen) == set(OPS) - {"identity"}
    assert all(150 < n < 250 for n in seen.values()), seen  # 2 rounds x 1400 / 14 = 200 each
    rot = torch.cat(mags["rotate"])
    assert torch.allclose(rot.abs(), torch.full_like(rot, 9 / 30 * 30.0)) and (rot < 0).any() and (rot > 0).any()
    seen.clear(), mags.clear()
    R.RandOps(1, -1, 31, True)(x, torch.Generator().manual_seed(0))  # TrivialAugment: bins vary per image
    rot = torch.cat(mags["rotate"]).abs()
    assert rot.max() <= 135.0 and len(rot.unique()) > 10


def test_translate_magnitude_is_whole_pixels_along_its_own_axis():
    lv = torch.tensor([9])
    assert op_magnitude("translate_x", lv, 31, False, 32).item() == 4.0  # 9/30 * 150/331 * 32 = 4.35 -> 4
    assert op_magnitude("translate_y", lv, 31, False, 64).item() == 8.0  # the height's own range


def test_bad_magnitude_names_the_key():
    with pytest.raises(ConfigError, match="magnitude"):
        make({"data": {"name": "cifar10", "aug": {"train": [{"randaugment": {"magnitude": 31}}]}}})
