"""The zero-shot floor of a transfer study: the pretrained backbone's own ImageNet classifier,
restricted to the dataset's classes (models/pretrained.py: zero_shot_model), evaluated on the val and
test splits. Trains nothing (epochs = 0), through the same feature cache as the head-only runs."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import MethodConfig, RunConfig
from ..data.base import DataSpec
from ..errors import RunError
from ..registry import METHODS
from .finetune import require_pretrained
from .supervised import Supervised


@dataclass(frozen=True)
class ZeroShotConfig(MethodConfig):
    """No options: the backbone's ImageNet head decides."""


@METHODS.register("zeroshot")
class ZeroShot(Supervised):
    Config = ZeroShotConfig
    uses_loss = False  # reports the NLL of the restricted ImageNet head
    aug_roles = ()
    report_sections = ("results", "curves", "transfer")
    trains = False

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        super().check(cfg)
        require_pretrained(cfg)

    def build_model(self, entry, spec: DataSpec) -> torch.nn.Module:
        from ..models.pretrained import zero_shot_model

        try:
            return zero_shot_model(self.cfg.model.name, self.cfg.model, spec.classes).to(self.rt.device)
        except ValueError as e:  # classes without an ImageNet counterpart
            raise RunError(f"zero-shot on {self.cfg.data.name}: {e}") from None

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.cache_stats: dict = {}
        self.mean, self.std = tuple(self.pre["mean"]), tuple(self.pre["std"])  # the backbone's own input recipe

    @torch.no_grad()
    def predict(self, split: str):
        from torch.nn import functional as F

        from .features import cached_features

        xs, ys, _ = self.eval_inputs(split)
        f = cached_features(self.model, xs, self.prep, self.rt.device, self.rt.dtype,
                            self.cfg.train.eval_batch_size, stats=self.cache_stats)
        logp = self.model.head(f)  # (N, classes): log ImageNet mass of each class
        pred, y = logp.argmax(1).cpu(), ys.cpu()
        if not len(y):
            return 0.0, 0.0, pred, {0: 0.0}
        acc = 100.0 * float((pred == y).float().mean())
        return float(F.nll_loss(logp.cpu(), y)), acc, pred, {0: acc}  # no TTA: one level

    def finish(self, result: dict) -> dict:
        out = super().finish(result)
        out.update(zero_shot=True, feature_cache=self.cache_stats)  # weights: recorded by Supervised.finish
        return out
