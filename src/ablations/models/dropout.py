"""Dropout whose mask is cheap to draw on a CPU (used by the text models, where it runs on every step's
largest activations).

torch's CPU dropout draws its mask with `bernoulli_`, which is slow: for the (64, 128, 512) activations of a
3x512 LSTM step it took 42-48 ms per call, forward and backward together, against 19 ms for this module
(2-core AMD EPYC with AVX512-BF16, 2 threads, torch 2.14.1, fp32 and bf16 alike; `python bench/dropout_speed.py`).
Three such calls are several % of that LSTM's training step on that CPU, more on a CPU whose matrix units make
the rest faster (the bench measures the step). Here the mask is `torch.rand(...) >= p`: each element kept with
probability 1 - p (to float32's 2^-24 resolution), kept elements scaled by 1 / (1 - p) with one rounding (in
fp32 bit for bit nn.Dropout's result; in bf16 nn.Dropout rounds the scale to bf16 first, this does not); a
different random stream than nn.Dropout's, equally seeded by torch's generator, so runs stay deterministic and
resumable (the checkpoint holds the generator's state).

On other devices (CUDA: fused kernel) and in evaluation it is nn.Dropout itself.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout(x, p, training) with the cheaper mask on the CPU (not in place)."""
    if not training or not 0.0 < p < 1.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    # one float32 uniform per element; the 0/1 mask in x's dtype (bf16 under autocast: 0 and 1 are exact
    # there, a mask scaled by 1 / (1 - p) would not be), then the scale as a float32 scalar: x * scale
    # rounds once, as in nn.Dropout
    keep = (torch.rand(x.shape, device=x.device) >= p).to(x.dtype)
    return (x * keep).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.inplace else dropout(x, self.p, self.training)
