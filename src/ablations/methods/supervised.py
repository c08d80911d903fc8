"""Supervised image classification: the base of every image method (fine-tuning, zero-shot, and the
semi-supervised, distillation and MixUp-style methods to come).

Data lives on the device as uint8 tensors; each step slices a batch, runs the data.aug 'train'
pipeline on it (batched, on the device), normalises it and returns the loss of the model's logits."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from ..config import MethodConfig, RunConfig, RunRef, opt
from ..data.augment import build_pipeline, center_crop, normalize
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


def build_data(cfg: RunConfig, preprocess: Optional[dict]) -> Splits:
    """The dataset's raw splits -> seeded splits (data/splits.py: the one place that carves them)."""
    raw = DATASETS.get(cfg.data.name)(cfg.data, preprocess)
    return make_splits(raw, cfg.data, cfg.seed)


@METHODS.register("supervised")
class Supervised(Method):
    Config = SupervisedConfig
    input = "images"

    def __init__(self, cfg: RunConfig, rt: Runtime, run_dir: Path, refs: dict[str, Path]):
        super().__init__(cfg, rt, run_dir, refs)
        entry = MODELS.entry(cfg.model.name)
        self.pre = entry.meta.get("preprocess")  # a pretrained backbone's own input recipe (size, mean, std)
        self.data = build_data(cfg, self.pre)
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
        dev = rt.device
        # every split on the device once: CIFAR-10 is 150 MB as uint8
        self.tx, self.ty = d.train_x.to(dev), d.train_y.to(dev)
        self.vx, self.vy = d.val_x.to(dev), d.val_y.to(dev)
        self.bs = min(cfg.train.batch_size, len(self.tx))
        if self.bs < 1:
            raise RunError(f"data {cfg.data.name}: the training split is empty")

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

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_order(len(self.tx), gen)
        for i in range(self.steps_per_epoch()):
            idx = order[i * self.bs:(i + 1) * self.bs]
            yield self.prep(self.tx[idx], gen), self.ty[idx]

    def train_step(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        out = self.forward(x)
        loss = self.loss_fn(out, y)
        hard = y if y.ndim == 1 else y.argmax(1)  # soft targets: accuracy against their top class
        return loss, {"n": torch.tensor(float(len(y))), "loss": loss.detach() * len(y),
                      "acc": 100.0 * (out.argmax(1) == hard).sum()}

    def summarize(self, sums: dict[str, float], train_time: float) -> dict[str, float]:
        n = max(sums["n"], 1.0)
        return {"train_loss": sums["loss"] / n, "train_acc": sums["acc"] / n, "img_per_s": sums["n"] / train_time}

    # -- evaluation
    def eval_inputs(self, split: str) -> tuple[torch.Tensor, torch.Tensor, object]:
        """(stored images or features, labels, prep) of a split."""
        if split == "val":
            return self.vx, self.vy, self.prep
        return self.data.test_x.to(self.rt.device), self.data.test_y.to(self.rt.device), self.prep

    @torch.no_grad()
    def predict(self, split: str) -> tuple[float, float, torch.Tensor]:
        """Mean loss, accuracy (%) and predictions over a split."""
        xs, ys, prep = self.eval_inputs(split)
        total, correct, preds = 0.0, 0, []
        for sl in batches(len(xs), self.cfg.train.eval_batch_size):
            with self.rt.autocast():
                out = self.forward(prep(xs[sl])).float()
            y = ys[sl]
            total += float(self.loss_fn(out, y)) * len(y)
            pred = out.argmax(1)
            correct += int((pred == y).sum())
            preds.append(pred.cpu())
        n = max(1, len(xs))
        return total / n, 100.0 * correct / n, torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)

    def evaluate(self, split: str) -> dict[str, float]:
        self.train_mode(False)
        loss, acc, _ = self.predict(split)
        return {f"{split}_loss": loss, f"{split}_acc": acc}

    def finish(self, result: dict) -> dict:
        d = self.data
        out = {"data_source": d.source, "splits": d.splits}
        info = getattr(self.model, "info", None)  # what a pretrained backbone loaded (the report's caveats)
        if isinstance(info, dict):
            out.update({k: info[k] for k in ("weights", "bn_folded") if k in info})
        if self.cfg.train.eval_test:
            self.train_mode(False)
            loss, acc, pred = self.predict("test")
            out.update(test_loss=loss, test_acc=acc)
            y = d.test_y.cpu()
            wrong = (y != pred).nonzero().flatten()
            # up to 24 misclassified images, spread evenly over the wrong ones (they are ordered by class),
            # kept as stored so the report needs nothing but the run dir
            keep = wrong[torch.linspace(0, len(wrong) - 1, min(24, len(wrong))).round().long()] if len(wrong) else wrong
            torch.save({"y": y, "pred": pred, "classes": d.classes, "wrong_idx": keep,
                        "wrong_x": d.test_x[keep].cpu()}, self.run_dir / "test_predictions.pt")
        return out
