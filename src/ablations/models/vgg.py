"""VGG-style ConvNets from the CIFAR-10 tutorial the course points to (Brownlee, "How to Develop a CNN
From Scratch for CIFAR-10 Photo Classification"): 1-3 blocks of two 3x3 'same' convs (32/64/128
filters), ReLU, optional batch norm after each activation, 2x2 max-pool and dropout; then a 128-unit
dense layer and the classifier. He-uniform initialisation as in the tutorial (Keras he_uniform)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config import ModelConfig, opt
from ..registry import MODELS


@dataclass(frozen=True)
class VGGConfig(ModelConfig):
    width: int = opt(32, "filters of the first block; each next block doubles them (32/64/128)", ge=1)
    dense: int = opt(128, "units of the hidden dense layer", ge=1)
    dropout: float = opt(0.0, "dropout rate (of the first block when increasing)", ge=0, lt=1)
    dropout_schedule: Literal["constant", "increasing"] = opt(
        "constant", "increasing: +0.1 per block, the dense layer min(first + 0.1 * blocks, 0.5)")
    batch_norm: bool = opt(False, "batch norm after every activation")
    norm_order: Literal["bn_dropout", "dropout_bn"] = opt(
        "bn_dropout", "order of the BN and dropout that close a block")


def dropout_rates(cfg: VGGConfig, n_blocks: int) -> tuple[list[float], float]:
    """Per-block rates and the dense layer's rate. 'increasing' is the tutorial's 0.2/0.3/0.4 + 0.5 dense,
    generalised to start at cfg.dropout and add 0.1 per block."""
    if cfg.dropout <= 0:
        return [0.0] * n_blocks, 0.0
    if cfg.dropout_schedule == "increasing":
        blocks = [round(cfg.dropout + 0.1 * i, 3) for i in range(n_blocks)]
        return blocks, round(min(cfg.dropout + 0.1 * n_blocks, 0.5), 3)
    return [cfg.dropout] * n_blocks, cfg.dropout


def _norm_drop(cfg: VGGConfig, channels: int, p: float, dim: int) -> list[nn.Module]:
    """The BN and dropout that close a block (or the dense layer), in the configured order."""
    bn = [nn.BatchNorm2d(channels) if dim == 2 else nn.BatchNorm1d(channels)] if cfg.batch_norm else []
    drop = [nn.Dropout(p)] if p > 0 else []
    return bn + drop if cfg.norm_order == "bn_dropout" else drop + bn


class VGG(nn.Module):
    def __init__(self, cfg: VGGConfig, num_classes: int, n_blocks: int, in_size: int = 32):
        super().__init__()
        rates, dense_rate = dropout_rates(cfg, n_blocks)
        layers: list[nn.Module] = []
        c_in = 3
        for b in range(n_blocks):
            c = cfg.width * 2**b
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(inplace=True)]
            if cfg.batch_norm:
                layers.append(nn.BatchNorm2d(c))
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True)]
            # bn_dropout: conv-relu-BN, pool, dropout (the tutorial); dropout_bn moves this BN after dropout
            if cfg.norm_order == "bn_dropout" and cfg.batch_norm:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.MaxPool2d(2))
            if rates[b] > 0:
                layers.append(nn.Dropout(rates[b]))
            if cfg.norm_order == "dropout_bn" and cfg.batch_norm:
                layers.append(nn.BatchNorm2d(c))
            c_in = c
        self.features = nn.Sequential(*layers)
        side = in_size // 2**n_blocks
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * side * side, cfg.dense), nn.ReLU(inplace=True),
            *_norm_drop(cfg, cfg.dense, dense_rate, dim=1),
            nn.Linear(cfg.dense, num_classes),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")  # Keras he_uniform
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,3,32,32) -> (B,classes) logits
        return self.head(self.features(x))


for _n in (1, 2, 3):
    def _build(cfg: VGGConfig, spec, _n=_n) -> VGG:
        return VGG(cfg, spec.num_classes, n_blocks=_n, in_size=spec.image_size or 32)

    _build.__doc__ = f"{_n}-block VGG (two 3x3 convs per block)"
    MODELS.add(f"vgg{_n}", _build, VGGConfig, input="images")
