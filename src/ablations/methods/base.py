"""The Method interface: what is special about one training algorithm. The loop (loop.py) owns what every
algorithm shares (schedule, backward, clipping, AMP scaling, the NaN stop, metrics, checkpoints, resume).

A method file defines a Config (frozen dataclass of its options) and a Method subclass, and registers it:

    @METHODS.register("supervised")
    class Supervised(Method):
        Config = SupervisedConfig
        ...
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..config import FieldError, MethodConfig, RunConfig
from ..runtime import Runtime


class Method:
    Config: type[MethodConfig] = MethodConfig
    input: Optional[str] = None  # "images" | "text": the data and model it takes (checked at config time)
    trains: bool = True  # False: evaluation only (epochs may be 0; no optimiser)
    best: tuple[str, str] = ("val_acc", "max")  # the validation metric that picks the best epoch
    report_sections: tuple[str, ...] = ("results", "curves")
    generator_device: Optional[str] = None  # device of the epoch's generator (None: the run's device)
    uses_loss: bool = True  # False: a `loss` section other than the default is refused (it would be ignored)
    aug_roles: tuple[str, ...] = ("train",)  # the data.aug pipelines it reads (others are refused: a typo)

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """Rules across sections, at study load (before any data is read); raise FieldError(dotted key, msg)."""
        if cls.trains and cfg.train.epochs < 1:
            raise FieldError("train.epochs", f"must be >= 1 (method {cfg.method.name} trains), got {cfg.train.epochs}")
        if not cls.trains and cfg.train.epochs != 0:  # it would be ignored: say so rather than pretend
            raise FieldError("train.epochs", f"must be 0: method {cfg.method.name} trains nothing, got {cfg.train.epochs}")

    def __init__(self, cfg: RunConfig, rt: Runtime, run_dir: Path, refs: dict[str, Path]):
        """Build data and model. `refs`: {dotted config key: run dir} of the runs this one needs."""
        self.cfg, self.rt, self.run_dir, self.refs = cfg, rt, Path(run_dir), refs
        self.model: nn.Module

    # -- what the loop asks for
    def env(self) -> dict:
        """Extra fields of env.json (data source, splits, ...)."""
        return {}

    def write_inputs(self) -> None:
        """Files a fresh run writes next to config.json before the first step (a vocabulary, ...)."""

    @classmethod
    def unshardable(cls, cfg: RunConfig) -> Optional[str]:
        """Why a run of `cfg` cannot train over several processes (distributed.py), or None; asked before the
        run dir is touched. Per-example state kept in train_step (forgetting counts, ...) would see only one
        process's shard of each batch."""
        return None

    def trainable(self) -> nn.Module:
        """The module whose parameters the optimiser updates (param groups come from optim.param_groups)."""
        return self.model

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Before epoch `epoch` (1-based): gradual unfreezing, lottery rewinds, ..."""

    def train_mode(self, on: bool) -> None:
        self.trainable().train(on)

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[Any]:
        """steps_per_epoch() batches; all randomness from `gen` (seeded from (seed, epoch))."""
        raise NotImplementedError

    def train_step(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, sums): the loss to minimise (no backward here) and per-batch SUMS the epoch record is made
        of (with key 'n', the batch's count); runs under the run's autocast."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """After each optimiser step: EMA, teacher updates, pruning masks, ..."""

    def summarize(self, sums: dict[str, float], train_time: float) -> dict[str, float]:
        """An epoch's training record from the summed train_step stats (seconds in train_time)."""
        n = max(sums.get("n", 0.0), 1.0)
        out = {f"train_{k}": v / n for k, v in sums.items() if k != "n"}
        out["examples_per_s"] = sums.get("n", 0.0) / max(train_time, 1e-9)
        return out

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics of `split` ('val'), keys prefixed with the split name."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """The method's own training state beyond model and optimiser (saved in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def finish(self, result: dict) -> dict:
        """After the last epoch: test metrics, samples, predictions; returns extra result fields."""
        return {}

    def final_state(self) -> dict[str, torch.Tensor]:
        """The weights exported to final.safetensors."""
        return self.model.state_dict()
