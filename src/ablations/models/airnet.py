"""A fast CIFAR network in the airbench94 family (Keller Jordan's cifar10-airbench, after David Page's
ResNet-9): a frozen 2x2 patch-whitening convolution, three conv groups (conv, max-pool, BN, GELU, conv, BN,
GELU) of 64/256/256 channels, a global max-pool and a linear classifier whose logits are scaled by 1/9.

Each trick is a switch, so a study can remove them one at a time:
  whiten      first layer = eigenvectors of the training patches' covariance scaled by 1/sqrt(eigenvalue),
              and their negatives (frozen; its bias trains for `whiten_bias_epochs` epochs)
  dirac       every 3x3 conv starts as the identity on its first C_in output channels
  residual    ResNet-ification: each group's second conv is a residual branch, y = h + act(bn(conv(h)))
  bn_weight   learn the BN scales (airbench freezes them at 1 and learns only the biases)
A speed switch that changes no maths (only bf16 rounding): `conv_wgrad` computes the 3x3 convolutions' weight gradient as 9 shifted
matrix products where oneDNN's own kernel is slow (small feature maps on AMX: bench/results/conv_wgrad.md).
The global pool is adaptive, so the net takes any input size (progressive resizing trains at 24 px).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FieldError, ModelConfig, opt
from ..registry import MODELS
from ..runtime import cpu_flags


@dataclass(frozen=True)
class AirNetConfig(ModelConfig):
    widths: tuple[int, int, int] = opt((64, 256, 256), "channels of the three conv groups")
    whiten: bool = opt(True, "patch-whitening initialisation of the (frozen) first layer; off: a learned conv")
    whiten_kernel: int = opt(2, "patch size of the first layer, pixels", ge=1)
    whiten_eps: float = opt(5e-4, "added to the patch covariance's eigenvalues before 1/sqrt", gt=0)
    whiten_bias_epochs: int = opt(3, "epochs the first layer's bias trains, then frozen (-1: always)", ge=-1)
    dirac: bool = opt(True, "identity (dirac) initialisation of the first C_in filters of every 3x3 conv")
    residual: bool = opt(False, "each group's second conv as a residual branch (ResNet-ification)")
    act: Literal["gelu", "relu"] = opt("gelu", "activation")
    bn_momentum: float = opt(0.6, "BN running-stat momentum, airbench's convention: new = m * old + (1-m) * batch",
                             ge=0, lt=1)
    bn_eps: float = opt(1e-12, "BN epsilon (airbench: 1e-12)", gt=0)
    bn_weight: bool = opt(False, "learn the BN scales (off: frozen at 1, only the biases learn)")
    scale: float = opt(1 / 9, "multiplier of the logits", gt=0)
    conv_wgrad: Literal["auto", "native", "shifted"] = opt(
        "auto", "how the 3x3 convs' weight gradient is computed: native (oneDNN/cuDNN), shifted (9 matrix "
        "products, shifted_wgrad), auto (shifted for maps of <= 8x8 in bf16 on a CPU with AMX, where measured "
        "faster; native elsewhere). Same maths, a speed switch; the bf16 rounding differs, so a seed's run "
        "does not repeat the other setting's bit for bit")

    def check(self) -> None:
        for i, w in enumerate(self.widths):
            if w < 1:
                raise FieldError(f"widths[{i}]", f"must be >= 1, got {w}")


def whitening_filters(x: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    """(2*C*k*k, C, k, k) filters that whiten the k x k patches of x (N, C, H, W): the eigenvectors of the
    patches' (uncentred) covariance, largest eigenvalue first, each divided by sqrt(eigenvalue + eps), then
    the same filters negated (so a following GELU keeps both signs). Applied to the patches, the first half
    gives outputs with covariance diag(lambda / (lambda + eps)) ~ identity."""
    c = x.shape[1]
    # every k x k window: (N, C, H-k+1, W-k+1, k, k) -> (P, C*k*k) in (C, kh, kw) order, like a conv weight
    p = x.float().unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
    cov = p.T @ p / len(p)
    lam, vec = torch.linalg.eigh(cov)  # ascending
    lam, vec = lam.flip(0), vec.flip(1)
    w = (vec.T / torch.sqrt(lam + eps)[:, None]).reshape(c * k * k, c, k, k)
    return torch.cat([w, -w])


def shifted_wgrad(x: torch.Tensor, go: torch.Tensor) -> torch.Tensor:
    """The weight gradient of a 3x3, stride-1, padding-1 convolution as 9 matrix products, one per tap:
    grad_w[:, :, i, j] = go^T @ xpad[:, i:i+H, j:j+W, :], both flattened to (B*H*W, channels) in NHWC.

    x (B, C, H, W) input, go (B, Co, H, W) output gradient -> (Co, C, 3, 3). Why: on AMX, oneDNN's weight
    gradient for small maps runs at a quarter of its forward pass's speed or less, while a plain bf16 matrix
    product with a long reduction (B*H*W = 25,088 rows at batch 512) runs at about half of it
    (bench/results/conv_wgrad.md, batch 512: 384->384 at 7x7 124 ms native, 78 ms shifted, 40 ms forward; at
    3x3 98, 16 and 20 ms). At 11x11 and larger, oneDNN's kernel is the faster. Each tap copies one shifted view
    of the padded input (B*H*W*C elements) into a buffer the 9 taps share."""
    B, C, H, W = x.shape
    Co = go.shape[1]
    xp = x.new_empty(B, H + 2, W + 2, C)  # the zero-padded input in NHWC; only its border is zeroed, not all
    xp[:, 0].zero_(), xp[:, -1].zero_(), xp[:, :, 0].zero_(), xp[:, :, -1].zero_()
    xp[:, 1:-1, 1:-1].copy_(x.permute(0, 2, 3, 1))
    g = go.permute(0, 2, 3, 1).reshape(B * H * W, Co)  # a view when go is channels_last
    out = torch.empty(Co, 3, 3, C, dtype=go.dtype, device=go.device)
    # one buffer for the 9 shifted copies: a fresh 10-100 MB allocation per tap costs page faults that ate
    # the gain in whole training steps
    xs = torch.empty(B, H, W, C, dtype=x.dtype, device=x.device)
    for i in range(3):
        for j in range(3):
            torch.mm(g.t(), xs.copy_(xp[:, i:i + H, j:j + W, :]).view(B * H * W, C), out=out[:, i, j, :])
    return out.permute(0, 3, 1, 2)  # (Co, C, 3, 3) with channels_last strides, like the weight's own layout


class _Conv3x3(torch.autograd.Function):
    """conv2d(x, w, padding=1) whose backward takes the input gradient from the native kernel and the weight
    gradient from shifted_wgrad. x and w arrive already in the compute dtype (autocast is off inside)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, padding=1)

    @staticmethod
    def backward(ctx, go: torch.Tensor):
        x, w = ctx.saved_tensors
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(go, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                     [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = shifted_wgrad(x, go)
        return gx, gw


@lru_cache(maxsize=1)
def _cpu_has_amx() -> bool:
    return "amx_bf16" in cpu_flags()


def _use_shifted(mode: str, x: torch.Tensor, dtype: torch.dtype) -> bool:
    if mode != "auto":
        return mode == "shifted"
    # measured faster only here (bench/results/conv_wgrad.md): bf16 on AMX, maps of <= 8x8; at 15x15 and
    # 31x31 oneDNN's kernel wins
    return x.device.type == "cpu" and dtype == torch.bfloat16 and max(x.shape[-2:]) <= 8 and _cpu_has_amx()


class _BN(nn.BatchNorm2d):
    def __init__(self, c: int, cfg: AirNetConfig):
        super().__init__(c, eps=cfg.bn_eps, momentum=1 - cfg.bn_momentum)  # torch's momentum is the new share
        self.weight.requires_grad_(cfg.bn_weight)


class _Conv(nn.Conv2d):
    def __init__(self, c_in: int, c_out: int, dirac: bool, wgrad: str = "native"):
        super().__init__(c_in, c_out, 3, padding=1, bias=False)
        self.wgrad = wgrad
        if dirac:  # the first c_in outputs pass their input through: a deep net that starts near shallow
            with torch.no_grad():
                nn.init.dirac_(self.weight[:min(c_in, c_out)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not self.weight.requires_grad:
            return super().forward(x)
        ac = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if ac else x.dtype
        if not _use_shifted(self.wgrad, x, dtype):
            return super().forward(x)
        # cast as autocast would (the cast's own backward returns the gradient in the weight's fp32), then
        # run the function with autocast off so that it sees exactly these dtypes
        with torch.autocast(x.device.type, enabled=False):
            return _Conv3x3.apply(x.to(dtype), self.weight.to(dtype))


class _Group(nn.Module):
    """conv -> 2x2 max-pool -> BN -> act -> conv -> BN -> act (the second half residual when asked)."""

    def __init__(self, c_in: int, c_out: int, cfg: AirNetConfig):
        super().__init__()
        act = nn.GELU if cfg.act == "gelu" else nn.ReLU
        self.conv1 = _Conv(c_in, c_out, cfg.dirac, cfg.conv_wgrad)
        self.pool, self.norm1, self.act1 = nn.MaxPool2d(2), _BN(c_out, cfg), act()
        self.conv2, self.norm2, self.act2 = _Conv(c_out, c_out, cfg.dirac, cfg.conv_wgrad), _BN(c_out, cfg), act()
        self.residual = cfg.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.norm1(self.pool(self.conv1(x))))
        y = self.act2(self.norm2(self.conv2(h)))
        return h + y if self.residual else y


class AirNet(nn.Module):
    def __init__(self, cfg: AirNetConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        k = cfg.whiten_kernel
        width = 2 * 3 * k * k  # airbench: the whitening layer has 2 x (patch dimension) outputs
        self.stem = nn.Conv2d(3, width, k, padding=0, bias=True)
        self.stem_act = nn.GELU() if cfg.act == "gelu" else nn.ReLU()
        if cfg.whiten:
            self.stem.weight.requires_grad_(False)  # set from the data by init_from_data
            nn.init.zeros_(self.stem.bias)
        w1, w2, w3 = cfg.widths
        self.groups = nn.Sequential(_Group(width, w1, cfg), _Group(w1, w2, cfg), _Group(w2, w3, cfg))
        self.pool = nn.AdaptiveMaxPool2d(1)  # = airbench's MaxPool2d(3) on its 3x3 map; any input size
        self.head = nn.Linear(w3, num_classes, bias=False)

    def fixed_by_design(self) -> list[str]:
        """Names of the parameters this configuration never trains (the whitening filters, frozen BN scales)."""
        names = ["stem.weight"] if self.cfg.whiten else []
        if not self.cfg.bn_weight:
            names += [n for n, m in self.named_modules() if isinstance(m, _BN) for n in [f"{n}.weight"]]
        return names

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Patch-whitening of the first layer from normalised training images x (N, 3, H, W)."""
        if self.cfg.whiten:
            w = whitening_filters(x, self.cfg.whiten_kernel, self.cfg.whiten_eps)
            self.stem.weight.copy_(w.to(self.stem.weight))

    def on_epoch(self, epoch: int) -> None:
        """Before epoch `epoch` (1-based): the whitening bias trains only in the first whiten_bias_epochs."""
        if self.cfg.whiten:
            n = self.cfg.whiten_bias_epochs
            self.stem.bias.requires_grad_(n < 0 or epoch <= n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, classes) logits
        h = self.groups(self.stem_act(self.stem(x)))
        return self.head(self.pool(h).flatten(1)) * self.cfg.scale


@MODELS.register("airnet", AirNetConfig, input="images")
def airnet(cfg: AirNetConfig, spec) -> nn.Module:
    """airbench94's network (whitening stem, 3 conv groups, 1/9 logits); every trick a switch."""
    return AirNet(cfg, len(spec.classes))
