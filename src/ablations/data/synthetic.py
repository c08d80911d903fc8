"""`synthetic`: a small learnable image-classification problem made on the fly (no files, no network).
Each class is a fixed random low-frequency colour pattern; examples are that pattern plus noise. For
tests, smoke runs and trying a config with no dataset at hand."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import opt
from ..registry import DATASETS
from .base import ImageDataConfig, RawData


@dataclass(frozen=True)
class SyntheticConfig(ImageDataConfig):
    """A learnable toy problem made on the fly: one low-frequency colour pattern per class plus noise."""
    n_train: int = opt(2000, "training images made (validation is carved from them)", ge=2)
    n_test: int = opt(500, "test images made", ge=1)
    n_classes: int = opt(10, "classes", ge=2)
    side: int = opt(32, "image side, pixels", ge=4)
    noise: float = opt(0.25, "std of the Gaussian pixel noise on each class pattern, [0,1] units", ge=0)
    data_seed: int = opt(1234, "seed of the patterns and examples (the data is the same for every run seed)", ge=0)


@DATASETS.register("synthetic", SyntheticConfig, input="images")
def synthetic(cfg: SyntheticConfig, preprocess: Optional[dict] = None) -> RawData:
    """n_train + n_test images of n_classes patterns (the same for every run seed: data_seed)."""
    g = torch.Generator().manual_seed(cfg.data_seed)
    protos = F.interpolate(torch.rand(cfg.n_classes, 3, 4, 4, generator=g), size=(cfg.side, cfg.side),
                           mode="bilinear", align_corners=False)  # (K, 3, side, side) in [0,1]

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, cfg.n_classes, (n,), generator=g)
        x = protos[y] + cfg.noise * torch.randn(n, 3, cfg.side, cfg.side, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    tx, ty = make(cfg.n_train)
    sx, sy = make(cfg.n_test)
    return RawData(tx, ty, sx, sy, [f"class{i}" for i in range(cfg.n_classes)], "synthetic (made on the fly)",
                   "synthetic", test_name="synthetic test")
