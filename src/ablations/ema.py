"""Weight averaging shared by every method (train.ema): an exponential moving average of the trainable module's
weights and floating-point buffers (batch-norm statistics), updated after every optimiser step. Validation, the
test and final.safetensors then see the average; the loop also records the last epoch's validation metrics of
the raw weights (`raw_val_*`), a paired comparison within the same run that costs one extra evaluation.

The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates (the classic TensorFlow rule), so the first
steps' random weights are forgotten quickly: after 90 updates the effective decay is 0.91, after 990 0.991.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class WeightEMA:
    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        # a copy of every state tensor: non-float buffers (BN's num_batches_tracked) are copied, not averaged
        self.avg = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self._floats = [k for k, a in self.avg.items() if a.is_floating_point()]  # split once, not every step
        self._others = [k for k, a in self.avg.items() if not a.is_floating_point()]

    def rate(self) -> float:
        """The decay of the next update (after `updates` updates so far)."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = self.rate()
        self.updates += 1
        live = module.state_dict()  # detached tensors sharing the module's storage
        # avg <- d * avg + (1 - d) * live, one fused call over all float tensors
        torch._foreach_lerp_([self.avg[k] for k in self._floats], [live[k] for k in self._floats], 1.0 - d)
        for k in self._others:
            self.avg[k].copy_(live[k])

    @contextlib.contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[None]:
        """Within the block, `module` holds the averaged weights; the live ones come back after it."""
        live = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.avg)
        try:
            yield
        finally:
            module.load_state_dict(live)

    def state_dict(self) -> dict:
        return {"avg": self.avg, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for k, v in state["avg"].items():
            self.avg[k].copy_(v)
