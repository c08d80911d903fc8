"""Fine-tuning a pretrained backbone: which stages train (and from which epoch: gradual unfreezing),
what batch norm does, and, when nothing in the backbone ever changes and the inputs are not augmented,
training the head alone on features computed once (methods/features.py). Discriminative learning
rates come from optim.layer_decay over the model's lr_groups()."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch

from ..config import FieldError, RunConfig, opt
from ..registry import METHODS, MODELS
from ..runtime import Runtime
from .supervised import Supervised, SupervisedConfig


@dataclass(frozen=True)
class FinetuneConfig(SupervisedConfig):
    """Which backbone stages train and when, what batch norm does, whether features are cached."""
    train_stages: int = opt(0, "backbone stages trained, counted from the top (0: head only, -1: all)", ge=-1)
    unfreeze_every: int = opt(0, "epochs between unfreezing one more of those stages (gradual); 0: all at once",
                              ge=0)
    bn: Literal["train", "frozen", "only"] = opt(
        "frozen", "batch norm of the backbone: train (update stats and affine of training stages) | frozen | "
        "only (train the BN parameters of every stage and nothing else in the backbone)")
    cache_features: Literal["auto", "off"] = opt(
        "auto", "auto: when the backbone never changes and inputs are not augmented, compute its features once "
        "and train the head on them (equal to training through the frozen backbone, minutes faster)")

    def check(self) -> None:
        if self.bn == "only" and self.train_stages != 0:
            raise FieldError("bn", "bn=only trains the BN parameters of every stage (and nothing else in the "
                             f"backbone); leave method.train_stages at 0, got {self.train_stages}")


@METHODS.register("finetune")
class Finetune(Supervised):
    """Supervised training of a pretrained backbone with freezing, gradual unfreezing and cached features."""
    Config = FinetuneConfig
    report_sections = ("results", "curves", "transfer", "explanations")
    caches_views = False  # a subclass that caches augmented views itself (semisup.py): no plain train cache
    scratch_ok = False  # a subclass that also trains from-scratch networks (semisup.py): every option here is then moot

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        super().check(cfg)
        if not cls.scratch_ok:
            require_pretrained(cfg)
        elif not is_pretrained(cfg):  # a from-scratch network trains whole: the transfer options mean nothing
            mc, default = cfg.method, cls.Config()
            for key in ("train_stages", "unfreeze_every", "bn"):
                if getattr(mc, key) != getattr(default, key):
                    raise FieldError(f"method.{key}", f"applies to pretrained backbones; {cfg.model.name!r} trains "
                                     f"from scratch, whole (got {getattr(mc, key)!r})")

    def __init__(self, cfg: RunConfig, rt: Runtime, run_dir: Path, refs: dict[str, Path]):
        super().__init__(cfg, rt, run_dir, refs)
        mc = cfg.method
        self.transfer = is_pretrained(cfg)  # False: a from-scratch network (semi-supervised methods only)
        if self.transfer:
            self.model.configure(mc.train_stages, mc.unfreeze_every, mc.bn)
        # a frozen backbone without augmentation: features once, the head trains on them
        self.cached = self.frozen_inputs() and not self.aug.random and not self.caches_views
        self.cache_stats: dict = {}  # train + val features: what every epoch would recompute without the cache
        self.test_cache_stats: dict = {}
        if self.cached:
            self.tx = self.features(self.tx)
            self.vx = self.features(self.vx)

    def frozen_inputs(self) -> bool:
        """Whether the backbone is a fixed function of the stored images (so its features can be cached):
        nothing in it trains and nothing changes its inputs but the augmentation pipeline."""
        mc = self.cfg.method
        return (self.transfer and mc.cache_features == "auto" and self.model.backbone_frozen()
                and not (mc.altflip or mc.low_res or mc.tta))

    def features(self, x: torch.Tensor, stats: Optional[dict] = None) -> torch.Tensor:
        """The frozen backbone's (N, D) features of stored images (disk-cached); timings into `stats`."""
        from .features import cached_features

        return cached_features(self.model, x, self.prep, self.rt.device, self.rt.dtype,
                               self.cfg.train.eval_batch_size, stats=self.cache_stats if stats is None else stats)

    def trainable(self) -> torch.nn.Module:
        return self.model.head if self.cached else self.model

    def prep(self, x, gen=None, pipeline=None):
        if getattr(self, "cached", False) and x.is_floating_point():  # cached features are the inputs
            return x
        return super().prep(x, gen, pipeline)

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)  # the model's own per-epoch hook, if it has one
        if self.transfer:
            self.model.set_epoch(epoch)  # gradual unfreezing

    def eval_inputs(self, split: str):
        if split == "test" and self.cached:  # once, after training: kept out of the per-epoch cache stats
            f = self.features(self.data.test_x.to(self.rt.device), self.test_cache_stats)
            return f, self.data.test_y.to(self.rt.device), self.prep
        return super().eval_inputs(split)

    def finish(self, result: dict) -> dict:
        out = super().finish(result)
        if self.cached:
            out["feature_cache"] = self.cache_stats  # seconds spent, backbone compute seconds, from_disk
            out["feature_cache_test"] = self.test_cache_stats
        return out


def is_pretrained(cfg: RunConfig) -> bool:
    """Whether the model is a pretrained backbone + head (models/pretrained.py), whatever model.pretrained says."""
    return bool(MODELS.entry(cfg.model.name).meta.get("pretrained"))


def require_pretrained(cfg: RunConfig) -> None:
    """The methods that start from ImageNet weights (finetune, zeroshot) refuse any other model at load."""
    if not is_pretrained(cfg):
        names = [e.name for e in MODELS.entries() if e.meta.get("pretrained")]
        raise FieldError("model.name", f"method {cfg.method.name} needs a pretrained backbone; {cfg.model.name!r} "
                         f"is not one (choices: {', '.join(names)})")
