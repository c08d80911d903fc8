"""RandAugment (Cubuk et al. 2020) and TrivialAugment (Mueller & Hutter 2021), batched per sample.

torchvision's v2.RandAugment / TrivialAugmentWide draw ONE op and magnitude per call, so on a batch every
image gets the same op; a Python loop over images is too slow for CIFAR training. Here every image draws its
own op (and, for TrivialAugment, its own magnitude), and each op runs once on the images that drew it, with
per-image parameters: one affine grid_sample for the geometric ops, blends for the colour ops, a gathered
look-up table for equalize.

Op set and magnitude ranges follow torchvision (v0.29 `_augmentation_space`): RandAugment's 14 ops with
magnitude `magnitude` of `bins` (31) bins, TrivialAugment's "wide" ranges with a uniformly drawn bin; signed
ops (shear, translate, rotate, the enhance factors) take a random sign. Differences from torchvision, on
purpose: geometric ops reflect at the borders instead of filling black (as translate/crop in augment.py: a
black border is far from the data's mean after normalisation), sampling is bilinear, and shear is about the
image centre (torchvision shears about the top-left corner, so its bottom row moves up to m * H, ours
+-m * H / 2). Values stay float between an image's ops (torchvision rounds to uint8 after each).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import opt
from ..registry import AUGS
from .augment import Aug, AugConfig, _back, _rand, _to_float

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
       "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL (torchvision: 0.2989 for red)


def op_magnitude(op: str, level: torch.Tensor, bins: int, wide: bool, side: int) -> torch.Tensor:
    """Per-image magnitude of `op` at integer bin `level` (0..bins-1), torchvision's ranges (units: shear
    as tan, translate in whole pixels (truncated, as torchvision) of an image `side` pixels along the shift
    (width for translate_x, height for translate_y), rotate in degrees, enhance as a factor offset,
    posterize in bits kept, solarize as a 0..1 threshold)."""
    f = level.float() / (bins - 1)  # 0..1
    if op in ("shear_x", "shear_y"):
        return f * (0.99 if wide else 0.3)
    if op in ("translate_x", "translate_y"):
        return (f * (32.0 if wide else 150.0 / 331.0 * side)).trunc()
    if op == "rotate":
        return f * (135.0 if wide else 30.0)
    if op in ("brightness", "color", "contrast", "sharpness"):
        return f * (0.99 if wide else 0.9)
    if op == "posterize":  # wide: 8 - round(level / ((bins-1)/6)) -> 8..2; RandAugment: 8..4
        return 8 - (level.float() / ((bins - 1) / (6 if wide else 4))).round()
    if op == "solarize":
        return 1.0 - f
    return torch.zeros_like(f)


def _affine(x: torch.Tensor, op: str, m: torch.Tensor) -> torch.Tensor:
    """Shear / translate / rotate each image of x (float) by its own signed magnitude m (N,), about the
    centre, reflection at the borders. theta maps output to input in normalised [-1, 1] coordinates."""
    N, C, H, W = x.shape
    theta = torch.zeros(N, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    if op == "shear_x":
        theta[:, 0, 1] = m * H / W
    elif op == "shear_y":
        theta[:, 1, 0] = m * W / H
    elif op == "translate_x":
        theta[:, 0, 2] = -2 * m / W
    elif op == "translate_y":
        theta[:, 1, 2] = -2 * m / H
    else:  # rotate, degrees
        a = torch.deg2rad(m)
        theta[:, 0, 0], theta[:, 0, 1] = a.cos(), -a.sin() * H / W
        theta[:, 1, 0], theta[:, 1, 1] = a.sin() * W / H, a.cos()
    grid = F.affine_grid(theta, [N, C, H, W], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor, top: float) -> torch.Tensor:
    """PIL ImageEnhance: b + factor * (a - b), per image factor (N,)."""
    return (b + factor.view(-1, 1, 1, 1) * (a - b)).clamp(0, top)


def _equalize(x: torch.Tensor, top: float) -> torch.Tensor:
    """Histogram equalisation per image and channel on 256 levels (PIL's ImageOps.equalize: the lut
    (cdf - count of the first level) // step, where step = (pixels - count of the last non-zero level) // 255;
    a channel with a single level is left as is)."""
    N, C, H, W = x.shape
    v = (x * (255.0 / top)).round().clamp(0, 255).long().reshape(N * C, H * W)
    hist = torch.zeros(N * C, 256, device=x.device).scatter_add_(1, v, torch.ones_like(v, dtype=torch.float))
    idx = torch.arange(256, device=x.device).expand_as(hist)
    last = torch.where(hist > 0, idx, -1).amax(1)  # highest level present
    step = ((H * W - hist.gather(1, last[:, None]).squeeze(1)) // 255)  # (N*C,)
    cdf = hist.cumsum(1)
    # PIL: lut[i] = (step // 2 + count below level i) // step
    lut = ((cdf - hist + (step // 2)[:, None]) // step.clamp(min=1)[:, None]).clamp(0, 255)
    out = lut.gather(1, v).float()
    out = torch.where((step > 0)[:, None], out, v.float())
    return (out.reshape(N, C, H, W) * (top / 255.0)).to(x.dtype)


def apply_op(x: torch.Tensor, op: str, m: torch.Tensor, top: float) -> torch.Tensor:
    """One op on float images x (N, C, H, W) in [0, top], magnitudes m (N,) (already signed)."""
    if op == "identity":
        return x
    if op in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        return _affine(x, op, m)
    if op == "brightness":
        return _blend(x, torch.zeros_like(x), 1 + m, top)
    if op == "color":
        return _blend(x, _grey(x).expand_as(x), 1 + m, top)
    if op == "contrast":
        return _blend(x, _grey(x).mean((2, 3), keepdim=True).expand_as(x), 1 + m, top)
    if op == "sharpness":  # PIL's 3x3 smoothing kernel, border pixels kept
        k = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device, dtype=x.dtype) / 13
        C = x.shape[1]
        blur = x.clone()
        blur[..., 1:-1, 1:-1] = F.conv2d(x, k.expand(C, 1, 3, 3), groups=C)
        return _blend(x, blur, 1 + m, top)
    if op == "posterize":  # keep the top m bits of each 8-bit value
        bits = m.long().clamp(1, 8).view(-1, 1, 1, 1)
        q = 2 ** (8 - bits)
        return torch.div((x * (255.0 / top)).round(), q, rounding_mode="floor") * q * (top / 255.0)
    if op == "solarize":  # invert values at or above the threshold
        t = (m * top).view(-1, 1, 1, 1)
        return torch.where(x >= t, top - x, x)
    if op == "autocontrast":  # stretch each channel to the full range
        lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
        scale = torch.where(hi > lo, top / (hi - lo).clamp(min=1e-12), torch.ones_like(hi))
        return torch.where(hi > lo, (x - lo) * scale, x).clamp(0, top)
    if op == "equalize":
        return _equalize(x, top)
    raise ValueError(f"unknown op {op!r}")


_SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
           "sharpness"}


@dataclass(frozen=True)
class RandOps(Aug):
    """`n_ops` rounds; in each, every image draws one of OPS uniformly and applies it at its magnitude bin
    (fixed `magnitude`, or uniform in [0, bins-1] when magnitude < 0) with a random sign where signed.
    Draws per round: op index, bin (only when random), sign."""
    n_ops: int
    magnitude: int  # bin, or -1: uniform per image
    bins: int
    wide: bool

    def __call__(self, x, g, size=None):
        N = x.shape[0]
        xf, top = _to_float(x)
        y = xf.clone()
        for _ in range(self.n_ops):
            which = torch.randint(0, len(OPS), (N,), generator=g, device=g.device).to(x.device)
            if self.magnitude < 0:
                level = torch.randint(0, self.bins, (N,), generator=g, device=g.device).to(x.device)
            else:
                level = torch.full((N,), self.magnitude, device=x.device)
            sign = torch.where(_rand(N, g, x.device) < 0.5, -1.0, 1.0)
            for k, op in enumerate(OPS):
                idx = (which == k).nonzero().squeeze(1)
                if idx.numel() == 0 or op == "identity":
                    continue
                side = x.shape[-2] if op == "translate_y" else x.shape[-1]
                m = op_magnitude(op, level[idx], self.bins, self.wide, side)
                if op in _SIGNED:
                    m = m * sign[idx]
                y[idx] = apply_op(y[idx], op, m.to(y.dtype), top)
        return _back(y, x, top)


@dataclass(frozen=True)
class RandAugmentConfig(AugConfig):
    """RandAugment: n_ops random ops per image at one global magnitude (torchvision's ranges)."""
    name: str = opt("randaugment", "registry key")
    n_ops: int = opt(2, "ops applied one after another to every image", ge=1)
    magnitude: int = opt(9, "magnitude bin, 0..bins-1 (9 of 31: torchvision's default)", ge=0)
    bins: int = opt(31, "number of magnitude bins", ge=2)

    def check(self) -> None:
        from ..config import FieldError

        if self.magnitude >= self.bins:
            raise FieldError("magnitude", f"must be < bins ({self.bins}), got {self.magnitude}")

    def describe(self) -> str:
        return f"RandAugment {self.n_ops} ops, magnitude {self.magnitude}/{self.bins - 1}"


@dataclass(frozen=True)
class TrivialAugmentConfig(AugConfig):
    """TrivialAugment (wide): one random op per image at a uniformly random magnitude bin."""
    name: str = opt("trivialaugment", "registry key")
    bins: int = opt(31, "number of magnitude bins", ge=2)

    def describe(self) -> str:
        return "TrivialAugment (wide)"


@AUGS.register("randaugment", RandAugmentConfig)
def build_randaugment(cfg: RandAugmentConfig) -> Aug:
    return RandOps(cfg.n_ops, cfg.magnitude, cfg.bins, wide=False)


@AUGS.register("trivialaugment", TrivialAugmentConfig)
def build_trivialaugment(cfg: TrivialAugmentConfig) -> Aug:
    return RandOps(1, -1, cfg.bins, wide=True)


__all__ = ["OPS", "RandOps", "apply_op", "op_magnitude", "RandAugmentConfig", "TrivialAugmentConfig"]
