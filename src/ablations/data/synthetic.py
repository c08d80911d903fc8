"""`synthetic`: a small learnable image-classification problem made on the fly (no files, no network).
Each class is a fixed random low-frequency colour pattern; examples are that pattern plus noise and a
random shift. For tests, smoke runs and trying a config with no dataset at hand."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..registry import DATASETS
from .images import ImageData, channel_stats


@DATASETS.register("synthetic")
def synthetic(cfg: RunConfig, preprocess: Optional[dict] = None) -> ImageData:
    side = cfg.data.image_size or 32
    n_classes = 10
    n_train = cfg.data.limit or 2000
    n_eval = cfg.data.limit_eval or 500
    g = torch.Generator().manual_seed(1234)  # the classes are the same for every seed
    protos = F.interpolate(torch.rand(n_classes, 3, 4, 4, generator=g), size=(side, side), mode="bilinear",
                           align_corners=False)  # (C,3,side,side) in [0,1]
    gs = torch.Generator().manual_seed(cfg.seed)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, n_classes, (n,), generator=gs)
        x = protos[y] + 0.25 * torch.randn(n, 3, side, side, generator=gs)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    n_val = max(1, int(round(n_train * cfg.data.val_fraction)))
    tx, ty = make(n_train - n_val)
    vx, vy = make(n_val)
    sx, sy = make(n_eval)
    mean, std = channel_stats(tx)
    return ImageData(tx, ty, vx, vy, sx, sy, [f"class{i}" for i in range(n_classes)], mean, std,
                     source="synthetic (made on the fly)",
                     splits={"train": f"{len(tx)} synthetic", "val": f"{n_val} synthetic",
                             "test": f"{n_eval} synthetic"})
