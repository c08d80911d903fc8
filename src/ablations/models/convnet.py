"""The course's VGG made ResNet-like one switch at a time (the `cifar10-resnetify` and `cifar10-norms` studies).

    head        dense: flatten -> `dense`-unit hidden layer -> classifier (the VGG's head)
                gap:   global average pool -> classifier (ResNet's head)
    downsample  maxpool: 2x2 max-pool after every block (the VGG)
                stride:  the first conv of every block after the first has stride 2 (ResNet)
    residual    each block is a basic block, y = act(branch(x) + shortcut(x)), the shortcut a 1x1 conv
                (stride 2 where the block downsamples, + its norm) where the shape changes, else identity
    blocks      1-4 blocks of `width * 2**b` channels (32/64/128/256)
    norm        none | batch | layer | instance | group after every conv (conv -> norm -> ReLU, ResNet's
                order); layer = GroupNorm(1, C) (over C, H, W), instance = GroupNorm(C, C), both with
                per-channel affine parameters, so every norm has the same parameter count

With head=dense, downsample=maxpool, residual=False, blocks=3 and norm=none this is the tutorial's VGG (vgg3)
up to the position of batch norm (vgg3 puts it after the ReLU, as the tutorial does). Both max-pool and stride
run every block's 3x3 convolutions at the same resolutions (32/16/8/4 px), so the 3x3 convs cost the same in
every step; what changes the compute is the head (with stride and a dense head, the head sees 8 px, not 4),
the skips' 1x1 projection convs, and a 4th block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config import FieldError, ModelConfig, opt
from ..registry import MODELS


@dataclass(frozen=True)
class ConvNetConfig(ModelConfig):
    width: int = opt(32, "channels of the first block; each next block doubles them", ge=1)
    blocks: int = opt(3, "number of blocks (two 3x3 convs each)", ge=1, le=4)
    head: Literal["dense", "gap"] = opt("dense", "dense: flatten + hidden dense layer; gap: global average pool")
    dense: int = opt(128, "units of the hidden dense layer (head=dense)", ge=1)
    downsample: Literal["maxpool", "stride"] = opt("maxpool", "2x2 max-pool after each block, or stride-2 convs")
    residual: bool = opt(False, "basic residual blocks (projection shortcuts where the shape changes)")
    norm: Literal["none", "batch", "layer", "instance", "group"] = opt("none", "normalisation after every conv")
    groups: int = opt(8, "groups of norm=group (must divide every block's channels)", ge=1)
    dropout: float = opt(0.0, "dropout rate at the end of every block and in the dense head", ge=0, lt=1)

    def check(self) -> None:
        if self.norm == "group":
            for b in range(self.blocks):
                c = self.width * 2**b
                if c % self.groups:
                    raise FieldError("groups", f"{self.groups} does not divide block {b + 1}'s {c} channels")


def make_norm(cfg: ConvNetConfig, c: int) -> nn.Module:
    if cfg.norm == "batch":
        return nn.BatchNorm2d(c)
    if cfg.norm == "layer":
        return nn.GroupNorm(1, c)
    if cfg.norm == "instance":
        return nn.GroupNorm(c, c)
    if cfg.norm == "group":
        return nn.GroupNorm(cfg.groups, c)
    return nn.Identity()


class Block(nn.Module):
    """Two 3x3 convs, each followed by the norm; ReLU after the first and after the sum (residual) or the
    second (plain). `stride` applies to the first conv."""

    def __init__(self, cfg: ConvNetConfig, c_in: int, c: int, stride: int):
        super().__init__()
        bias = cfg.norm == "none"  # a conv followed by a norm's shift needs no bias of its own
        self.conv1 = nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = make_norm(cfg, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=bias)
        self.norm2 = make_norm(cfg, c)
        self.act = nn.ReLU(inplace=True)
        self.residual = cfg.residual
        self.shortcut: nn.Module = nn.Identity()
        if cfg.residual and (stride != 1 or c_in != c):
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c, 1, stride=stride, bias=bias), make_norm(cfg, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        if self.residual:
            h = h + self.shortcut(x)
        return self.act(h)


class ConvNet(nn.Module):
    def __init__(self, cfg: ConvNetConfig, num_classes: int, in_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, side = 3, in_size
        for b in range(cfg.blocks):
            c = cfg.width * 2**b
            stride = 2 if cfg.downsample == "stride" and b > 0 else 1
            layers.append(Block(cfg, c_in, c, stride))
            side = -(-side // stride)  # a padded stride-2 conv gives ceil(side / 2)
            if cfg.downsample == "maxpool":
                layers.append(nn.MaxPool2d(2))
                side //= 2
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            c_in = c
        self.features = nn.Sequential(*layers)
        if cfg.head == "gap":
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))
        else:
            if side < 1:
                raise FieldError("blocks", f"{cfg.blocks} max-pooled blocks leave no pixels of a {in_size}-px input")
            drop = [nn.Dropout(cfg.dropout)] if cfg.dropout > 0 else []
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, cfg.dense), nn.ReLU(inplace=True),
                                      *drop, nn.Linear(cfg.dense, num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")  # as the VGG (Keras he_uniform)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,3,H,W) -> (B,classes) logits
        return self.head(self.features(x))


@MODELS.register("convnet", ConvNetConfig, input="images")
def build_convnet(cfg: ConvNetConfig, spec) -> ConvNet:
    """VGG-to-ResNet family: head, downsampling, skips, depth and normalisation as switches"""
    return ConvNet(cfg, spec.num_classes, in_size=spec.image_size or 32)
