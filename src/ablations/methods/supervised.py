"""Supervised image classification: the base of every image method (fine-tuning, zero-shot, and the
semi-supervised, distillation and MixUp-style methods to come).

Data lives on the device as uint8 tensors; each step slices a batch, runs the data.aug 'train'
pipeline on it (batched, on the device), normalises it and returns the loss of the model's logits."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from ..config import FieldError, MethodConfig, RunConfig, RunRef, opt
from ..data.augment import build_pipeline, center_crop, normalize
from .. import rundir as rd
from ..data.base import DataSpec, Splits
from ..data.splits import make_splits
from ..errors import RunError
from ..registry import DATASETS, LOSSES, METHODS, MODELS
from ..runtime import Runtime, batches
from .base import Method


@dataclass(frozen=True)
class SupervisedConfig(MethodConfig):
    """Plain supervised training on the labeled training split."""
    init_from: RunRef = opt(RunRef(""), "another variant of the study whose final weights this run starts from "
                            "(it runs first; same seed); empty: the model's own initialisation")
    altflip: bool = opt(False, "deterministic flips (airbench): each image flipped at random in epoch 1, then "
                        "the other way every next epoch (replaces the random `flip` augmentation)")
    tta: int = opt(0, "test-time augmentation: 0 none, 1 mean of the image and its mirror, 2 also the mirrored "
                   "pair shifted 1 px up-left and down-right (airbench's level 2 weighting)", ge=0, le=2)
    lookahead: bool = opt(False, "Lookahead (airbench): every lookahead_every steps the weights move to an EMA of "
                          "themselves with decay 0.95^5 * (step/total)^3; the last step ends on the EMA")
    lookahead_every: int = opt(5, "optimiser steps between Lookahead updates", ge=1)
    low_res: int = opt(0, "progressive resizing: train the first low_res_epochs epochs at this side, px (0: off)",
                       ge=0)
    low_res_epochs: int = opt(0, "epochs trained at low_res", ge=0)
    test_each_epoch: bool = opt(False, "also record the test accuracy (no TTA) after every epoch: time-to-accuracy "
                                "curves; nothing is chosen by it")
    score_examples: bool = opt(False, "a core-set proxy: score every training example (least confidence, entropy, "
                               "margin and EL2N of the model, forgetting events during training) into scores.pt")
    el2n_epoch: int = opt(2, "epoch after which EL2N (the error's L2 norm) is measured (score_examples); at or "
                          "after the last epoch, the final model's, from the pass that gives the other scores", ge=1)

    def check(self) -> None:
        if (self.low_res > 0) != (self.low_res_epochs > 0):
            raise FieldError("low_res", "low_res and low_res_epochs go together (both > 0, or both 0), got "
                             f"{self.low_res} and {self.low_res_epochs}")


def build_data(cfg: RunConfig, preprocess: Optional[dict], refs: Optional[dict[str, Path]] = None) -> Splits:
    """The dataset's raw splits -> seeded splits (data/splits.py: the one place that carves them); a core-set
    proxy's scores come from its run dir (refs["data.coreset_proxy"])."""
    raw = DATASETS.get(cfg.data.name)(cfg.data, preprocess)
    scores, where = None, ""
    proxy = (refs or {}).get("data.coreset_proxy")
    if getattr(cfg.data, "coreset_keep", 1.0) < 1 and getattr(cfg.data, "coreset_score", "random") != "random":
        if proxy is None:
            raise RunError(f"data.coreset_proxy={cfg.data.coreset_proxy!r} names a run this call was not given (run "
                           "the study, which passes it, or loop.run(..., refs={'data.coreset_proxy': DIR}))")
        f = Path(proxy) / rd.SCORES
        if not f.is_file():
            raise RunError(f"{f}: missing; the proxy run {proxy} must train with method.score_examples=true")
        scores, where = torch.load(f, weights_only=True), str(proxy)
    return make_splits(raw, cfg.data, cfg.seed, scores, where)


@METHODS.register("supervised")
class Supervised(Method):
    Config = SupervisedConfig
    input = "images"
    # the last three: only where there is something to show (TTA runs, label noise, explained runs)
    report_sections = ("results", "curves", "training", "tta", "noisy_labels", "explanations")
    uses_all_train = False  # keep Splits.all_train_x (a reference to the dataset's train split) after __init__

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        super().check(cfg)
        mc = cfg.method
        if getattr(mc, "altflip", False) and any(
                a == "flip" or (isinstance(a, dict) and "flip" in a) for a in cfg.data.aug.get("train", [])):
            raise FieldError("method.altflip", "altflip replaces the random flip: drop `flip` from data.aug.train")
        if getattr(mc, "low_res_epochs", 0) >= cfg.train.epochs > 0:
            raise FieldError("method.low_res_epochs", f"must be below train.epochs ({cfg.train.epochs}): the last "
                             f"epochs train at the test resolution, got {mc.low_res_epochs}")

    def __init__(self, cfg: RunConfig, rt: Runtime, run_dir: Path, refs: dict[str, Path]):
        super().__init__(cfg, rt, run_dir, refs)
        entry = MODELS.entry(cfg.model.name)
        self.pre = entry.meta.get("preprocess")  # a pretrained backbone's own input recipe (size, mean, std)
        self.data = build_data(cfg, self.pre, refs)
        d = self.data
        self.size = cfg.data.image_size or (self.pre["size"] if self.pre else d.train_x.shape[-1])
        self.model = self.build_model(entry, DataSpec(classes=list(d.classes), image_size=self.size))
        if getattr(cfg.method, "init_from", ""):
            if "method.init_from" not in refs:
                raise RunError(f"method.init_from={cfg.method.init_from!r} names a run this call was not given "
                               "(run the study, which passes it, or loop.run(..., refs={'method.init_from': DIR}))")
            self.load_weights(refs["method.init_from"])
        if rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mean, self.std = self._stats()
        self.loss_fn = LOSSES.get(cfg.loss.name)(cfg.loss)
        self.aug = build_pipeline(cfg.data.aug.get("train", []))
        self.init_s = 0.0  # seconds of data-dependent initialisation
        if hasattr(self.model, "init_from_data") and not getattr(cfg.method, "init_from", ""):
            # data-dependent initialisation (patch whitening) from 5000 training images, unaugmented, drawn at
            # random (seeded): the stored order may be by class, and 5000 airplanes are not CIFAR's patches
            t0 = time.perf_counter()
            pick = torch.randperm(len(d.train_x), generator=torch.Generator().manual_seed(cfg.seed))[:5000]
            self.model.init_from_data(self.prep(d.train_x[pick].to(rt.device)).float())
            self.init_s = time.perf_counter() - t0
        dev = rt.device
        if not self.uses_all_train:  # the dataset's whole train split: only the semi-supervised views read it
            d.all_train_x = None
        # every split on the device once: CIFAR-10 is 150 MB as uint8
        self.tx, self.ty = d.train_x.to(dev), d.train_y.to(dev)
        self.vx, self.vy = d.val_x.to(dev), d.val_y.to(dev)
        self.bs = min(cfg.train.batch_size, len(self.tx))
        dc = cfg.data
        if (getattr(dc, "labeled_per_class", 0) or getattr(dc, "labeled_fraction", 1.0) < 1) and len(self.tx) < len(d.classes):
            # fewer labeled images than classes: some class is never seen with its label
            key = "data.labeled_per_class" if dc.labeled_per_class else "data.labeled_fraction"
            raise RunError(f"{key}={getattr(dc, key.split('.')[1])}: {len(self.tx)} labeled training images for "
                           f"{len(d.classes)} classes; label at least one image per class")
        if self.bs < 1:
            raise RunError(f"data {cfg.data.name}: the training split is empty")
        mc = cfg.method
        # altflip: each training image's flip in epoch 1 (seeded); later epochs alternate it
        self.flip0 = (torch.rand(len(self.tx), generator=torch.Generator().manual_seed(cfg.seed * 7919 + 11)) < 0.5
                      ).to(dev) if getattr(mc, "altflip", False) else None
        # label noise: a fixed seeded sample of up to NOISE_PROBE clean and NOISE_PROBE corrupted training
        # examples, evaluated (no augmentation) after every epoch: how much of each the model fits
        self.probe: Optional[dict[str, torch.Tensor]] = None
        if d.train_y_true is not None:
            corrupted = d.train_y != d.train_y_true
            g = torch.Generator().manual_seed(cfg.seed * 7919 + 23)
            pick = {}
            for name, mask in (("clean", ~corrupted), ("noisy", corrupted)):
                idx = mask.nonzero().flatten()
                pick[name] = idx[torch.randperm(len(idx), generator=g)[:NOISE_PROBE]].sort().values
            self.probe = {k: v.to(dev) for k, v in pick.items()}
            self.ty_true = d.train_y_true.to(dev)
        # core-set proxy: forgetting events over the minibatch presentations (Toneva et al. 2019) and EL2N
        self.forget: Optional[dict[str, torch.Tensor]] = None
        if getattr(mc, "score_examples", False):
            n = len(self.tx)
            self.forget = {"last": torch.zeros(n, dtype=torch.bool, device=dev),  # correct at last presentation
                           "learned": torch.zeros(n, dtype=torch.bool, device=dev),  # ever correct
                           "count": torch.zeros(n, dtype=torch.int64, device=dev),  # correct -> wrong transitions
                           "el2n": torch.full((n,), float("nan"), device=dev)}
        self.epoch = 0
        self.ema: Optional[dict[str, torch.Tensor]] = None  # Lookahead's slow weights
        if getattr(mc, "lookahead", False):
            self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def build_model(self, entry, spec: DataSpec) -> torch.nn.Module:
        return entry.obj(self.cfg.model, spec).to(self.rt.device)

    def load_weights(self, run_dir: Path) -> None:
        """Start from another run's final weights (a warm start, a second training stage)."""
        from safetensors.torch import load_file

        from ..rundir import FINAL

        path = Path(run_dir) / FINAL
        try:
            state = load_file(str(path))
            self.model.load_state_dict(state)
        except (OSError, RuntimeError) as e:
            raise RunError(f"method.init_from: cannot load {path} into model {self.cfg.model.name} "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None

    def _stats(self) -> tuple[tuple, tuple]:
        norm = self.cfg.data.normalize
        if norm == "unit":
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if norm == "model":
            if not self.pre:
                raise RunError(f"data.normalize=model but model {self.cfg.model.name!r} has no preprocessing of its own")
            return tuple(self.pre["mean"]), tuple(self.pre["std"])
        return self.data.mean, self.data.std

    def env(self) -> dict:
        d = self.data
        return {"data_source": d.source, "splits": d.splits, "classes": d.classes,
                **({"weights": self.model.info["weights"]} if hasattr(self.model, "info") else {})}

    # -- inputs
    def prep(self, x: torch.Tensor, gen: Optional[torch.Generator] = None, pipeline=None) -> torch.Tensor:
        """uint8 (B,3,H,W) -> normalised float (B,3,size,size); augmented by `pipeline` when `gen` is given.
        Without a geometric augmentation, training sees the same central window as evaluation (images
        may be stored larger than the input: pretrained backbones)."""
        pipeline = pipeline if pipeline is not None else self.aug
        if gen is None or not pipeline.geometric:
            x = center_crop(x, self.size)
        if gen is not None:
            x = pipeline(x, gen, self.size)
        x = normalize(x, self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.rt.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trainable()(x)

    # -- training
    def steps_per_epoch(self) -> int:
        # drop the last partial batch: steady BN statistics
        return self.cfg.train.steps_per_epoch or max(1, len(self.tx) // self.bs)

    def epoch_order(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Enough fresh permutations of range(n) for an epoch's batches (steps_per_epoch may exceed a pass)."""
        need = self.steps_per_epoch() * self.bs
        return torch.cat([torch.randperm(n, generator=gen, device=self.rt.device) for _ in range(math.ceil(need / n))])

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        hook = getattr(self.model, "on_epoch", None)  # model-carried schedules (the whitening bias freeze)
        if hook is not None:
            hook(epoch)

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_order(len(self.tx), gen)
        mc = self.cfg.method
        low = getattr(mc, "low_res", 0) if epoch <= getattr(mc, "low_res_epochs", 0) else 0
        for i in range(self.steps_per_epoch()):
            idx = order[i * self.bs:(i + 1) * self.bs]
            x = self.tx[idx]
            if self.flip0 is not None:  # flipped in odd epochs as drawn, in even ones the other way
                f = self.flip0[idx] ^ (epoch % 2 == 0)
                x = torch.where(f[:, None, None, None], x.flip(-1), x)
            x = self.prep(x, gen)
            if low:  # progressive resizing: fewer pixels, fewer FLOPs, in the first epochs
                x = F.interpolate(x, size=(low, low), mode="bilinear", antialias=True, align_corners=False)
            # a core-set proxy also needs which examples these are (forgetting events)
            yield (x, self.ty[idx], idx) if self.forget is not None else (x, self.ty[idx])

    def after_step(self, step: int) -> None:
        if self.ema is None:
            return
        every, total = self.cfg.method.lookahead_every, self.steps_per_epoch() * self.cfg.train.epochs
        # airbench's Lookahead: every `every` steps slow = lerp(slow, fast, 1 - decay) and fast = slow, decay
        # growing from 0 to 0.95^5 ~ 0.77 as (step/total)^3; after the last step (blended first if it is an
        # update step) the run ends on the slow weights
        if step % every == 0:
            self._lookahead(0.95 ** 5 * (min(step, total) / total) ** 3)
        if step >= total:
            self._lookahead(1.0)

    @torch.no_grad()
    def _lookahead(self, decay: float) -> None:
        for slow, fast in zip(self.ema.values(), self.model.state_dict().values()):
            if fast.is_floating_point():  # BN running stats too; not num_batches_tracked
                slow.lerp_(fast, 1 - decay)
                fast.copy_(slow)

    def state_dict(self) -> dict:
        out = {"lookahead": self.ema} if self.ema is not None else {}
        if self.forget is not None:
            out["forget"] = self.forget
        return out

    def load_state_dict(self, state: dict) -> None:
        if self.ema is not None and "lookahead" in state:
            for k, v in state["lookahead"].items():
                self.ema[k].copy_(v)
        if self.forget is not None and "forget" in state:
            for k, v in state["forget"].items():
                self.forget[k].copy_(v)

    @classmethod
    def unshardable(cls, cfg: RunConfig) -> Optional[str]:
        if getattr(cfg.method, "score_examples", False):  # self.forget: see __init__
            return "forgetting events are counted per example in train_step, which sees one shard of each batch"
        return None

    def train_step(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch[0], batch[1]
        out = self.forward(x)
        loss = self.loss_fn(out, y)
        hard = y if y.ndim == 1 else y.argmax(1)  # soft targets: accuracy against their top class
        if self.forget is not None:
            with torch.no_grad():
                idx, ok, f = batch[2], out.argmax(1) == hard, self.forget
                f["count"][idx] += (f["last"][idx] & ~ok).long()
                f["last"][idx] = ok
                f["learned"][idx] |= ok
        return loss, {"n": torch.tensor(float(len(y))), "loss": loss.detach() * len(y),
                      "acc": 100.0 * (out.argmax(1) == hard).sum()}

    def summarize(self, sums: dict[str, float], train_time: float) -> dict[str, float]:
        n = max(sums["n"], 1.0)
        return {"train_loss": sums["loss"] / n, "train_acc": sums["acc"] / n, "img_per_s": sums["n"] / train_time,
                "epoch_train_s": train_time, "epoch_images": int(sums["n"])}

    # -- evaluation
    def eval_inputs(self, split: str) -> tuple[torch.Tensor, torch.Tensor, object]:
        """(stored images or features, labels, prep) of a split."""
        if split == "val":
            return self.vx, self.vy, self.prep
        return self.data.test_x.to(self.rt.device), self.data.test_y.to(self.rt.device), self.prep

    @torch.no_grad()
    def predict(self, split: str, tta: Optional[int] = None) -> tuple[float, float, torch.Tensor, dict[int, float]]:
        """Mean loss, accuracy (%) and predictions over a split with test-time augmentation `tta` (default the
        method's), and the accuracy (%) at every lower TTA level too: {level: acc}, from the same forward passes
        (a level's views are a prefix of the next level's, so the no-TTA and mirror-only numbers cost nothing)."""
        xs, ys, prep = self.eval_inputs(split)
        level = getattr(self.cfg.method, "tta", 0) if tta is None else tta
        total, correct, preds = 0.0, [0] * (level + 1), []
        for sl in batches(len(xs), self.cfg.train.eval_batch_size):
            with self.rt.autocast():
                outs = [o.float() for o in tta_levels(self.forward, prep(xs[sl]), level)]
            y = ys[sl]
            for lv, o in enumerate(outs):
                correct[lv] += int((o.argmax(1) == y).sum())
            out = outs[-1]
            total += float(self.loss_fn(out, y)) * len(y)
            preds.append(out.argmax(1).cpu())
        n = max(1, len(xs))
        accs = {lv: 100.0 * c / n for lv, c in enumerate(correct)}
        return (total / n, accs[level], torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long), accs)

    def write_inputs(self) -> None:
        d = self.data
        if d.train_y_true is not None:  # the labels trained on, beside the true ones: which examples were corrupted
            rd.save_tensors(self.run_dir / rd.LABELS, {
                "given": d.train_y.cpu(), "true": d.train_y_true.cpu(),
                "index": self._train_index()})

    def _train_index(self) -> torch.Tensor:
        """Each training example's index in the dataset's train split (what labels.pt and scores.pt key on)."""
        d = self.data
        return d.train_index.cpu() if d.train_index is not None else torch.arange(len(d.train_y))

    @torch.no_grad()
    def _noise_fit(self) -> dict[str, float]:
        """Accuracy (%) of the current model on the probe's clean examples, and on its corrupted ones against
        the labels trained on (memorised) and against the true labels."""
        out = {}
        for name, idx in self.probe.items():
            if not len(idx):
                continue
            pred = self._train_logits(idx).argmax(1)
            given = (pred == self.ty[idx]).float().mean().item() * 100
            if name == "clean":
                out["fit_clean"] = given
            else:
                out["fit_noisy_given"] = given
                out["fit_noisy_true"] = (pred == self.ty_true[idx]).float().mean().item() * 100
        return out

    @torch.no_grad()
    def _train_logits(self, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(n, C) fp32 logits of the current model on the training examples `idx` (default: all), unaugmented."""
        idx = torch.arange(len(self.tx), device=self.tx.device) if idx is None else idx
        out = []
        for sl in batches(len(idx), self.cfg.train.eval_batch_size):
            with self.rt.autocast():
                out.append(self.forward(self.prep(self.tx[idx[sl]])).float())
        return torch.cat(out)

    def _el2n(self, p: torch.Tensor) -> torch.Tensor:
        """EL2N (Paul et al. 2021): ||p - onehot(y)||_2 per training example, p (N, C) probabilities."""
        return (p - F.one_hot(self.ty, p.shape[1]).float()).norm(dim=1)

    def example_scores(self) -> dict[str, torch.Tensor]:
        """Per training example, higher = harder (kept first in a core-set): 1 - max p (least confidence),
        entropy, -(p_top1 - p_top2) (margin), forgetting events (never-learned examples count as the
        most forgotten: count + epochs), and EL2N = ||p - onehot(y)||_2 at el2n_epoch (else at the end)."""
        p = F.softmax(self._train_logits(), 1)
        top2 = p.topk(2, dim=1).values if p.shape[1] > 1 else torch.cat([p, torch.zeros_like(p)], 1)
        f = self.forget
        el2n = f["el2n"].clone()
        if bool(el2n.isnan().any()):  # el2n_epoch >= the epochs trained: the final model's
            el2n = self._el2n(p)
        forgetting = f["count"].double() + (~f["learned"]).double() * (self.cfg.train.epochs + 1)
        return {"index": self._train_index(),
                "least_confidence": (1 - top2[:, 0]).cpu(), "entropy": -(p * p.clamp(min=1e-12).log()).sum(1).cpu(),
                "margin": -(top2[:, 0] - top2[:, 1]).cpu(), "forgetting": forgetting.cpu(), "el2n": el2n.cpu()}

    def evaluate(self, split: str) -> dict[str, float]:
        self.train_mode(False)
        out = {}
        # early in training; at the last epoch the final scoring pass gives it: a pass over the 50,000 training
        # images took ~3 s, a whole 2-epoch quarter-width proxy 20 s (2-core AMX Xeon, bf16, 2026-12-07)
        if (split == "val" and self.forget is not None and self.epoch == self.cfg.method.el2n_epoch
                and self.epoch < self.cfg.train.epochs):
            self.forget["el2n"] = self._el2n(F.softmax(self._train_logits(), 1))
        if split == "val" and self.probe is not None:
            out.update(self._noise_fit())
        if len(self.eval_inputs(split)[1]):  # an empty split (val_fraction 0) has no metrics, not 0 %
            loss, acc, _, _ = self.predict(split)
            out.update({f"{split}_loss": loss, f"{split}_acc": acc})
        if split == "val" and getattr(self.cfg.method, "test_each_epoch", False):
            out["test_acc_no_tta"] = self.predict("test", tta=0)[1]
        return out

    def finish(self, result: dict) -> dict:
        d = self.data
        out = {"data_source": d.source, "splits": d.splits, "init_s": self.init_s,
               # the label budget (the few-labels report's x axis): labeled and unlabeled training images
               "n_labeled": len(d.train_y), "n_unlabeled": len(d.unlabeled_y) if d.unlabeled_y is not None else 0}
        if self.forget is not None:
            self.train_mode(False)
            rd.save_tensors(self.run_dir / rd.SCORES, self.example_scores())
        info = getattr(self.model, "info", None)  # what a pretrained backbone loaded (the report's caveats)
        if isinstance(info, dict):
            out.update({k: info[k] for k in ("weights", "bn_folded") if k in info})
        if self.cfg.train.eval_test:
            self.train_mode(False)
            t0 = time.perf_counter()
            loss, acc, pred, accs = self.predict("test")
            out.update(test_loss=loss, test_acc=acc, test_time_s=time.perf_counter() - t0)  # with its TTA
            # the lower TTA levels from the same forward passes (report section "tta")
            out.update(tta_test_accs(accs))
            y = d.test_y.cpu()
            wrong = (y != pred).nonzero().flatten()
            # up to 24 misclassified images, spread evenly over the wrong ones (they are ordered by class),
            # kept as stored so the report needs nothing but the run dir
            keep = wrong[torch.linspace(0, len(wrong) - 1, min(24, len(wrong))).round().long()] if len(wrong) else wrong
            torch.save({"y": y, "pred": pred, "classes": d.classes, "wrong_idx": keep,
                        "wrong_x": d.test_x[keep].cpu()}, self.run_dir / "test_predictions.pt")
        return out


# result keys of the test accuracy at the TTA levels below a run's own (its own is test_acc)
TTA_KEYS = {0: "test_acc_no_tta", 1: "test_acc_mirror"}


def tta_test_accs(accs: dict[int, float]) -> dict[str, float]:
    """predict()'s {level: accuracy} under result.json's names: test_acc for the run's own (highest) level, then
    the lower levels from high to low (test_acc_mirror, test_acc_no_tta)."""
    top = max(accs)
    return {"test_acc": accs[top], **{TTA_KEYS[lv]: accs[lv] for lv in sorted(accs, reverse=True) if lv < top}}


NOISE_PROBE = 1000  # training examples per group (clean / corrupted) in the label-noise fit curves


def tta_weights(level: int) -> list[float]:
    """The weights of tta_views(x, level), in its order; they sum to 1."""
    return [[1.0], [0.5, 0.5], [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]][level]


def tta_views(x: torch.Tensor, level: int) -> list[tuple[float, torch.Tensor]]:
    """(weight, view) pairs whose weighted logits make the TTA prediction; weights sum to 1.
    Level 1: the image and its mirror, 1/2 each. Level 2 (airbench): those two at 1/4 each, and the
    mirrored pair of the image shifted by 1 px up-left and by 1 px down-right (reflection) at 1/8 each.
    A level's views are a prefix of the next level's (tta_levels measures every level from one pass)."""
    views = [x] if level == 0 else [x, x.flip(-1)]
    if level == 2:
        H, W = x.shape[-2:]
        p = F.pad(x, (1, 1, 1, 1), mode="reflect")
        views += [v for s in (p[..., 0:H, 0:W], p[..., 2:H + 2, 2:W + 2]) for v in (s, s.flip(-1))]
    return list(zip(tta_weights(level), views))


def tta_levels(forward, x: torch.Tensor, level: int) -> list[torch.Tensor]:
    """The TTA logits (B, classes) of x (B, C, H, W) at every level 0..level, one forward pass per view of
    `level`: the views of a level are a prefix of the next level's views, each level weights its own."""
    logits = [forward(v).float() for _, v in tta_views(x, level)]  # one view at a time: memory of one batch
    return [sum(w * o for w, o in zip(tta_weights(lv), logits)) for lv in range(level + 1)]


def tta_logits(forward, x: torch.Tensor, level: int) -> torch.Tensor:
    """The weighted mean of `forward`'s logits over the TTA views of x (B, C, H, W) -> (B, classes)."""
    return tta_levels(forward, x, level)[-1]
