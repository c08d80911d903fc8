"""Dropout whose mask is cheap to draw on a CPU (used by the text models, where it runs on every step's
largest activations).

torch's CPU dropout draws its mask with `bernoulli_`, which is slow: for the (64, 128, 512) activations of a
3x512 LSTM step it took 45 ms per bf16 call, forward and backward together, against 14 ms for this module
(2-core AMD EPYC with AVX512-BF16, 2 threads, torch 2.14.1; fp32 52 vs 18 ms; `python bench/dropout_speed.py`).
Three such calls are about 8 % of that LSTM's training step on that CPU (the bench measured 1.05-1.18x faster
steps; the machine's own speed drifted), more on a CPU whose matrix units make the rest faster. Here the mask
compares 16 random bits per element with a threshold (keep_mask): each element kept with probability 1 - p (to
2^-17), kept elements scaled by 1 / (1 - p) with one rounding (in fp32 bit for bit nn.Dropout's result; in bf16
nn.Dropout rounds the scale to bf16 first, this does not); a different random stream than nn.Dropout's, equally
seeded by torch's generator, so runs stay deterministic and resumable (the checkpoint holds the generator's
state). What the models learn did not change measurably: the study's 3x512 LSTM recipe gave 1.4011 +- 0.0044
nats/char over 3 seeds with this mask (its 32-bit version), 1.4006 with nn.Dropout's
(docs/results/textgen-intel-seeds.md).

On other devices (CUDA: fused kernel) and in evaluation it is nn.Dropout itself.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape`, each element True with probability 1 - p, independently: 16 random bits per
    element compared with a threshold, so P(keep) = 1 - round(p * 2^16) / 2^16 (off by at most 2^-17, e.g.
    0.7000 -> 0.69999695 for p = 0.3; a p below 2^-17 keeps everything). The bits come from torch's generator
    as 64-bit draws cut in four: one draw per four elements, against two 32-bit halves before (commit cc67477):
    in a profile of 8 training steps of the 3x512 LSTM the draws took 125 instead of 281 ms and the threshold
    test 62 instead of 97 ms (Intel Xeon with AMX, bf16, 2 threads; `python bench/textgen_ab.py TREE --profile 8`)."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None)  # uniform 64 bits
    threshold = round(p * 2 ** 16) - 2 ** 15  # int16 bits >= threshold: 2^15 - threshold of the 2^16 values
    return (bits.view(torch.int16)[:n] >= threshold).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool = True, shared_dim: Optional[int] = None) -> torch.Tensor:
    """F.dropout(x, p, training) with the cheaper mask on the CPU (not in place). shared_dim: one mask for
    every index along that dimension, broadcast over it (the time steps of a sequence: variational or
    "locked" dropout); its mask is (size of x) / (size of that dimension) elements, so drawing it costs
    next to nothing."""
    if not training or not 0.0 < p < 1.0 or (shared_dim is None and x.device.type != "cpu"):
        return F.dropout(x, p, training)
    shape = list(x.shape)
    if shared_dim is not None:
        shape[shared_dim] = 1  # one mask entry for every index along shared_dim, broadcast below
    keep = (keep_mask(torch.Size(shape), p, x.device) if x.device.type == "cpu"
            else torch.rand(shape, device=x.device) >= p)
    # the 0/1 mask in x's dtype (bf16 under autocast: 0 and 1 are exact there, a mask scaled by 1 / (1 - p)
    # would not be), then the scale as a float32 scalar: x * scale rounds once, as in nn.Dropout
    return (x * keep.to(x.dtype)).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """nn.Dropout with the CPU mask above; shared_dim as in dropout() (None: one mask entry per element)."""

    def __init__(self, p: float = 0.5, inplace: bool = False, shared_dim: Optional[int] = None):
        super().__init__(p, inplace)
        self.shared_dim = shared_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace and self.shared_dim is None:
            return super().forward(x)
        return dropout(x, self.p, self.training, self.shared_dim)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.shared_dim is None else f", shared_dim={self.shared_dim}")
