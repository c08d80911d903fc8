"""Semi-supervised fine-tuning: what every algorithm that learns from unlabeled images shares (USB's
AlgorithmBase, smaller). An algorithm file (pseudolabel.py, fixmatch.py, labelprop.py) subclasses
SemiSupervised and writes `unlabeled_loss` only; labeled batches, unlabeled batches, the warm-up of the
unlabeled weight and the pseudo-label bookkeeping live here, and the loop (loop.py) is the one every method uses.

The data: data.labeled_fraction / data.labeled_per_class split the training set (data/splits.py, seeded,
class-balanced) into a labeled part (train_x) and an unlabeled part whose labels are withheld (unlabeled_x;
their true labels are read only to measure the pseudo-labels). Each step takes B labeled and mu * B unlabeled
images. The `train` augmentation pipeline is the weak view, `strong` the strong one (FixMatch).

CPU feasibility (the design problem): with a frozen backbone (method.train_stages 0) nothing in the backbone
changes, so every view it will ever see can be computed once. `views` weak and (FixMatch) `views` strong views
of every train-split image the run touches are drawn (view k seeded by k alone: without data.limit every seed,
label budget and algorithm of a study shares them) and their features cached on disk (methods/features.py);
a step then picks one
cached view per image at random and trains the head on features: seconds per epoch instead of minutes. A
trainable backbone (train_stages > 0) augments and runs the backbone every step, as written in the papers.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Optional

import torch
import torch.nn.functional as F

from .. import distributed
from ..config import FieldError, RunConfig, opt
from ..data.augment import build_pipeline
from ..errors import RunError
from ..runtime import Runtime
from .finetune import Finetune, FinetuneConfig


@dataclass(frozen=True)
class SemiSupConfig(FinetuneConfig):
    """Options every semi-supervised algorithm shares."""
    mu: int = opt(7, "unlabeled images per labeled image in a step (FixMatch's mu)", ge=1)
    lambda_u: float = opt(1.0, "weight of the unlabeled loss", ge=0)
    tau: float = opt(0.95, "confidence threshold: a pseudo-label counts where the model's max probability >= tau",
                     gt=0, le=1)
    unsup_warmup: float = opt(0.0, "epochs over which the unlabeled weight ramps linearly from 0 to lambda_u", ge=0)
    views: int = opt(4, "frozen backbone: augmented views per image (per pipeline) whose features are computed once",
                     ge=1)
    dist_align: bool = opt(False, "distribution alignment (ReMixMatch; USB's FixMatch+DA): the weak view's class "
                           "probabilities times (labeled class prior / running mean of the predictions on unlabeled "
                           "images), renormalised, before the threshold; keeps pseudo-labels from collapsing onto a "
                           "few classes when labels are very few")
    align_momentum: float = opt(0.999, "dist_align: momentum of the running mean of the predictions (per step)",
                                ge=0, lt=1)
    threshold: Literal["fixed", "adaptive"] = opt(
        "fixed", "fixed: a pseudo-label counts where its probability reaches tau; adaptive: FreeMatch's self-adaptive "
        "threshold (Wang et al., ICLR 2023): the running mean of the unlabeled batches' max probability, times the "
        "class's running mean probability over the largest one (tau is then unused); it follows the head's own "
        "confidence, so no tau has to be tuned to how calibrated the head is")
    threshold_momentum: float = opt(0.999, "adaptive threshold: momentum of its running means (per step)", ge=0, lt=1)


class SemiSupervised(Finetune):
    """Labeled + unlabeled batches; subclasses define unlabeled_loss (and whether they need strong views)."""
    Config = SemiSupConfig
    uses_all_train = True
    caches_views = True
    aug_roles = ("train", "strong")
    report_sections = ("results", "curves", "transfer", "fewlabels", "explanations")
    needs_strong = False  # FixMatch: True (the `strong` pipeline must be set)
    scratch_ok = True  # a from-scratch network (e.g. airnet) trains whole, augmenting every step (cifar10-fewlabels)

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        super().check(cfg)
        d, mc = cfg.data, cfg.method
        if getattr(d, "labeled_fraction", 1.0) >= 1 and not getattr(d, "labeled_per_class", 0):
            raise FieldError("data.labeled_fraction", f"method {mc.name} learns from unlabeled images: set "
                             "data.labeled_fraction below 1 or data.labeled_per_class")
        if cls.needs_strong and not d.aug.get("strong"):
            raise FieldError("data.aug.strong", f"method {mc.name} trains on a strong view: name its "
                             "pipeline, e.g. [flip, {translate: 4}, randaugment, cutout]")
        # supervised options these batches and steps do not carry out: refused rather than silently ignored
        for key, on in (("data.label_noise", getattr(d, "label_noise", 0) > 0),
                        ("data.labels_csv", bool(getattr(d, "labels_csv", None))),
                        ("method.score_examples", mc.score_examples), ("method.altflip", mc.altflip),
                        ("method.low_res", mc.low_res > 0)):
            if on:
                raise FieldError(key, f"not supported by the semi-supervised method {mc.name}")

    def __init__(self, cfg: RunConfig, rt: Runtime, run_dir: Path, refs: dict[str, Path]):
        super().__init__(cfg, rt, run_dir, refs)  # caches nothing for the training split (caches_views)
        d, mc, dev = self.data, cfg.method, rt.device
        if d.unlabeled_x is None or not len(d.unlabeled_x):
            raise RunError(f"data {cfg.data.name}: no unlabeled training images (labeled_fraction "
                           f"{cfg.data.labeled_fraction}, labeled_per_class {cfg.data.labeled_per_class})")
        self.n_unlabeled = len(d.unlabeled_x)
        self.uy = d.unlabeled_y.to(dev)
        # distribution alignment: the labeled classes' shares (the target) and the running mean of the model's
        # predictions on unlabeled images (method state: checkpointed), both (C,)
        n_cls = len(d.classes)
        counts = torch.bincount(d.train_y.long(), minlength=n_cls).float().to(dev)
        self.p_prior = counts / counts.sum()
        self.p_model = torch.full((n_cls,), 1.0 / n_cls, device=dev)
        # adaptive threshold: the running means of the max probability (global, ()) and of each class's
        # probability (local, (C,)), both starting at 1 / C as in FreeMatch (method state: checkpointed)
        self.sat_global = torch.tensor(1.0 / n_cls, device=dev)
        self.sat_local = torch.full((n_cls,), 1.0 / n_cls, device=dev)
        self.strong = build_pipeline(cfg.data.aug.get("strong", []))
        # B labeled (fewer when the labeled set is smaller) and mu * batch_size unlabeled images per step
        self.ubs = mc.mu * cfg.train.batch_size
        # a frozen backbone: every view computed once
        self.view_mode = self.frozen_inputs()
        self.ux = None if self.view_mode else d.unlabeled_x.to(dev)  # view mode reads only the cached views
        self.tv = self.uw = self.us = None  # (K, N, D) features of the views
        self.view_stats: dict = {}  # seconds spent on the views (kept apart from the per-epoch feature cache)
        if self.view_mode:
            self.cached = True  # the head trains on features; evaluation reads plain features (Finetune)
            self.vx = self.features(self.vx)
            self.tv, self.uw = self.view_features(self.aug, "weak", d.train_index, d.unlabeled_index)
            if self.needs_strong:
                self.us = self.view_features(self.strong, "strong", d.unlabeled_index)[0]
        d.all_train_x = None

    # -- cached views
    def view_features(self, pipeline, role: str, *index: torch.Tensor) -> list[torch.Tensor]:
        """(K, len(i), D) for each index tensor i (into the dataset's train split): the frozen backbone's
        features of K augmented views of those images (one when the pipeline draws nothing at random).

        The views are computed for every train-split image the run touches (labeled, unlabeled, validation):
        without data.limit that is the whole split, the same for every seed and label budget, so a study
        computes them once (and every seed trains on the same views: the seed spread leaves out the spread
        of the augmentation draws). View k of a role is drawn with a generator seeded by (role, k) alone, in
        batches of eval_batch_size; the disk key is (those images, backbone, the parsed pipeline, role, k,
        batch size, device)."""
        from ..data.augment import parse_pipeline
        from .features import cached_features, content_key

        d = self.data
        used = torch.cat([i for i in (d.train_index, d.unlabeled_index, d.val_index) if i is not None]).unique()
        x = d.all_train_x[used].to(self.rt.device)  # (M, 3, H, W) uint8, M = the images the run touches
        pos = torch.full((len(d.all_train_x),), -1, dtype=torch.int64)
        pos[used] = torch.arange(len(used))
        k_views = self.cfg.method.views if pipeline.random else 1
        base = content_key(self.model.backbone, x, self.prep, self.rt.dtype)
        spec = repr(parse_pipeline(self.cfg.data.aug.get("train" if role == "weak" else "strong", [])))
        views = []
        for k in range(k_views):
            key = hashlib.blake2b(f"{base}|{role}|{spec}|view{k}|bs{self.cfg.train.eval_batch_size}|"
                                  f"{self.rt.device.type}".encode(), digest_size=16).hexdigest()
            # weak and strong view k must not share their draws (a strong pipeline starting with the weak
            # ops would otherwise repeat the weak view's crop and flip)
            seed = 1_000_003 * (k + 1) + (17 if role == "weak" else 7_919)
            gen = torch.Generator(device=self.rt.device).manual_seed(seed)
            views.append(cached_features(self.model, x, lambda xb, g=gen: self.prep(xb, g, pipeline), self.rt.device,
                                         self.rt.dtype, self.cfg.train.eval_batch_size, cache_key=key,
                                         stats=self.view_stats))
        v = torch.stack(views)  # (K, M, D)
        del views
        return [v[:, pos[i].to(v.device)] for i in index]

    # -- training
    def steps_per_epoch(self) -> int:
        # an epoch is one pass over the unlabeled images (the labeled ones cycle, as in FixMatch)
        return self.cfg.train.steps_per_epoch or max(1, self.n_unlabeled // self.ubs)

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[tuple]:
        steps, dev = self.steps_per_epoch(), self.rt.device
        lab = torch.cat([torch.randperm(len(self.tx), generator=gen, device=dev)
                         for _ in range(-(-steps * self.bs // len(self.tx)))])
        unl = torch.cat([torch.randperm(self.n_unlabeled, generator=gen, device=dev)
                         for _ in range(-(-steps * self.ubs // self.n_unlabeled))])
        for i in range(steps):
            li, ui = lab[i * self.bs:(i + 1) * self.bs], unl[i * self.ubs:(i + 1) * self.ubs]
            progress = epoch - 1 + i / steps  # epochs done: the unlabeled weight's warm-up
            if self.view_mode:  # one of the cached views per image, at random
                pick = lambda v, idx: v[torch.randint(len(v), (len(idx),), generator=gen, device=dev), idx]  # noqa: E731
                xl, uw = pick(self.tv, li), pick(self.uw, ui)
                us = pick(self.us, ui) if self.us is not None else None
            else:
                u = self.ux[ui]  # (mu*B, 3, H, W) uint8, gathered once for both views
                xl, uw = self.prep(self.tx[li], gen), self.prep(u, gen)
                us = self.prep(u, gen, self.strong) if self.needs_strong else None
            yield xl, self.ty[li], uw, us, self.uy[ui], ui, progress

    def pseudo_labels(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pseudo-labels (U,), mask (U,) bool) of the weak view's (U, C) logits: the argmax, and where its
        probability reaches tau; with dist_align, of the aligned probabilities. No gradient."""
        mc = self.cfg.method
        if not mc.dist_align and mc.threshold == "fixed":
            return confident(logits, mc.tau)
        p = F.softmax(logits.detach().float(), dim=1)  # (U, C)
        # called from train_step only: every training step moves the running means (over all the processes'
        # shards of a distributed run, so that every process keeps the same ones)
        if mc.dist_align:
            batch_mean = distributed.mean_over_processes(p.mean(0))
            self.p_model.mul_(mc.align_momentum).add_(batch_mean, alpha=1 - mc.align_momentum)
            p = p * (self.p_prior / self.p_model.clamp_min(1e-6))
            p = p / p.sum(1, keepdim=True)
        conf, pseudo = p.max(dim=1)
        if mc.threshold == "fixed":
            return pseudo, conf >= mc.tau
        m = mc.threshold_momentum
        self.sat_global.mul_(m).add_(distributed.mean_over_processes(conf.mean()), alpha=1 - m)
        self.sat_local.mul_(m).add_(distributed.mean_over_processes(p.mean(0)), alpha=1 - m)
        return pseudo, conf >= class_thresholds(self.sat_global, self.sat_local)[pseudo]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "p_model": self.p_model.clone(), "sat_global": self.sat_global.clone(),
                "sat_local": self.sat_local.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for key in ("p_model", "sat_global", "sat_local"):
            if key in state:
                getattr(self, key).copy_(state[key])

    def unlabeled_loss(self, uw: torch.Tensor, us: Optional[torch.Tensor], ui: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss (scalar, mean over the unlabeled batch), pseudo-labels (U,), mask (U,) bool: which count) of
        the weak (uw) and strong (us, or None) views of the unlabeled images ui (U,) (indices into
        data.unlabeled_x)."""
        raise NotImplementedError

    def train_step(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        xl, yl, uw, us, u_true, ui, progress = batch
        out = self.forward(xl)
        loss_s = self.loss_fn(out, yl)
        loss_u, pseudo, mask = self.unlabeled_loss(uw, us, ui)
        mc = self.cfg.method
        ramp = min(1.0, progress / mc.unsup_warmup) if mc.unsup_warmup > 0 else 1.0
        loss = loss_s + mc.lambda_u * ramp * loss_u
        right = pseudo == u_true
        n, nu = len(yl), len(u_true)
        sums = {"n": torch.tensor(float(n)), "loss": loss_s.detach() * n, "acc": 100.0 * (out.argmax(1) == yl).sum(),
                "nu": torch.tensor(float(nu)), "loss_u": loss_u.detach() * nu, "mask": mask.sum().float(),
                "pl_right": (right & mask).sum().float(), "pl_right_all": right.sum().float()}
        if mc.threshold == "adaptive":  # for the log: the thresholds this batch's pseudo-labels were held to
            sums["thr"] = class_thresholds(self.sat_global, self.sat_local)[pseudo].sum()
        return loss, sums

    def finish(self, result: dict) -> dict:
        out = super().finish(result)
        if self.view_mode:  # the views' one-time cost (the transfer section's time saved counts plain features only)
            out["view_cache"] = self.view_stats
        return out

    def summarize(self, sums: dict[str, float], train_time: float) -> dict[str, float]:
        out = super().summarize(sums, train_time)
        nu, m = max(sums["nu"], 1.0), sums["mask"]
        out.update({"train_loss_u": sums["loss_u"] / nu,
                    "pl_coverage": 100.0 * m / nu,  # % of unlabeled images whose pseudo-label counted
                    "pl_acc": 100.0 * sums["pl_right"] / m if m else float("nan"),  # % right among those
                    "pl_acc_all": 100.0 * sums["pl_right_all"] / nu,  # % right over all (threshold 0)
                    "unlabeled_per_s": sums["nu"] / max(train_time, 1e-9)})
        if "thr" in sums:  # adaptive threshold: its mean over the epoch's unlabeled images (a probability)
            out["pl_threshold"] = sums["thr"] / nu
        return out


def class_thresholds(sat_global: torch.Tensor, sat_local: torch.Tensor) -> torch.Tensor:
    """FreeMatch's (C,) per-class thresholds: the global running mean of the max probability (a scalar) scaled by
    each class's running mean probability over the largest one."""
    return sat_global * sat_local / sat_local.max()


def confident(logits: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pseudo-labels, mask) of (U, C) logits: the argmax, and where its probability is >= tau. No gradient."""
    p = F.softmax(logits.detach().float(), dim=1)
    conf, pseudo = p.max(dim=1)
    return pseudo, conf >= tau


__all__ = ["SemiSupConfig", "SemiSupervised", "class_thresholds", "confident"]
