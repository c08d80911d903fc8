"""The zero-shot floor of a transfer study: the pretrained backbone's own ImageNet classifier,
restricted to the dataset's classes (models/pretrained.py: zero_shot_model), evaluated on the val
and test splits. No training: one forward pass, through the same feature cache as the head-only
variants (so those reuse these features). A study variant selects it with `task: zeroshot`; its
run directory has the same files as a trained run (epochs = 0), so the report lists it as a row."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import RunConfig
from ..registry import DATASETS, MODELS, TASKS
from . import Task, runtime as rt


def fit(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict:
    from ..data.images import center_crop, normalize
    from ..models.pretrained import zero_shot_model
    from .features import cached_features

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    tc = cfg.train
    device, dtype = rt.setup(tc, cfg.seed)
    cl = rt.use_channels_last(tc, device)
    pre = getattr(MODELS.get(cfg.model.name), "preprocess", None)
    if not pre:
        raise rt.RunError(f"task zeroshot needs a pretrained backbone; {cfg.model.name!r} is not one")
    data = DATASETS.get(cfg.data.name)(cfg, preprocess=pre)
    try:
        model = zero_shot_model(cfg.model.name, cfg.model, data.classes).to(device)
    except ValueError as e:  # classes without an ImageNet counterpart
        raise rt.RunError(f"zero-shot on {cfg.data.name}: {e}") from None
    if cl:
        model = model.to(memory_format=torch.channels_last)
    size = cfg.data.image_size or pre["size"]
    rt.write_json(run_dir / rt.CONFIG, cfg.to_dict())
    rt.write_json(run_dir / rt.ENV, {**rt.environment(device, dtype, cl), "data_source": data.source,
                                     "splits": data.splits, "classes": data.classes, "weights": model.info["weights"]})

    def prep(x: torch.Tensor) -> torch.Tensor:  # the loop's evaluation input: center crop, model's mean/std
        x = normalize(center_crop(x, size), pre["mean"], pre["std"])
        return x.contiguous(memory_format=torch.channels_last) if cl else x

    out = {}
    stats: dict = {}
    for split, x, y in (("val", data.val_x, data.val_y), ("test", data.test_x, data.test_y)):
        if split == "test" and not tc.eval_test:
            continue
        f = cached_features(model, x, prep, device, dtype, tc.eval_batch_size, stats=stats)
        with torch.no_grad():
            logp = model.head(f)  # (N, classes) log ImageNet mass of each class
        pred = logp.argmax(1).cpu()
        y = y.cpu()
        out[split] = (100.0 * float((pred == y).float().mean()) if len(y) else 0.0,
                      float(torch.nn.functional.nll_loss(logp.cpu(), y)) if len(y) else 0.0, pred, y)
    rec = {"epoch": 0, "step": 0, "val_acc": out["val"][0], "val_loss": out["val"][1],
           "epoch_time": time.time() - t_start, "time": time.time() - t_start}
    rt.MetricsLog(run_dir / rt.METRICS).append(rec)
    result = {"epochs": 0, "steps": 0, "best_epoch": 0, "best_val_acc": out["val"][0],
              "val_acc": out["val"][0], "val_loss": out["val"][1],
              "params": rt.count_params(model), "trainable_params": 0, "device": str(device),
              "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
              "data_source": data.source, "splits": data.splits, "zero_shot": True,
              "weights": model.info["weights"], "feature_cache": stats}
    if "test" in out:
        acc, loss, pred, y = out["test"]
        result.update(test_acc=acc, test_loss=loss)
        torch.save({"y": y, "pred": pred, "classes": data.classes}, run_dir / "test_predictions.pt")
    result["train_time"] = 0.0
    result["wall_time"] = time.time() - t_start
    result["resumed"] = resume
    rt.write_json(run_dir / rt.RESULT, result)  # written last: marks a finished run
    return result


def _report(run_dirs, out_dir) -> str:
    from ..report.transfer import transfer_report

    return transfer_report(run_dirs, out_dir)


TASKS.add("zeroshot", Task(fit=fit, report=_report))
