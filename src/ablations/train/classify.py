"""The image-classification loop (from-scratch ConvNets and fine-tuned pretrained backbones).

Data lives on the device as uint8 tensors; each step slices a batch, augments it there (batched),
normalises it and runs one optimiser step. Epoch e's randomness (order, augmentation, dropout) is a
pure function of (seed, e), so a run resumed from an epoch checkpoint equals one that never stopped."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..config import RunConfig
from ..data.images import ImageData, augment, center_crop, is_augmenting, normalize
from ..registry import DATASETS, LOSSES, MODELS, TASKS
from . import Task, runtime as rt
from .optim import build_optimizer, lr_factor, set_lr


def _stats(cfg: RunConfig, data: ImageData, pre: dict | None) -> tuple[tuple, tuple]:
    if cfg.data.normalize == "unit":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if cfg.data.normalize == "model":
        if not pre:
            raise rt.RunError(f"data.normalize=model but model {cfg.model.name!r} has no preprocessing of its own")
        return tuple(pre["mean"]), tuple(pre["std"])
    return data.mean, data.std


@torch.no_grad()
def evaluate(forward, xs: torch.Tensor, ys: torch.Tensor, prep, bs: int, loss_fn, ls: float):
    """Mean loss, accuracy (%) and predictions over a split; `prep` turns a stored batch into model input."""
    total, correct, preds = 0.0, 0, []
    for sl in rt.batches(len(xs), bs):
        out = forward(prep(xs[sl])).float()
        y = ys[sl]
        total += float(loss_fn(out, y, ls)) * len(y)
        pred = out.argmax(1)
        correct += int((pred == y).sum())
        preds.append(pred.cpu())
    n = max(1, len(xs))
    return total / n, 100.0 * correct / n, torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def fit(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict:
    run_dir, tc = Path(run_dir), cfg.train
    t_start = time.time()
    device, dtype = rt.setup(tc, cfg.seed)
    cl = rt.use_channels_last(tc, device)
    builder = MODELS.get(cfg.model.name)
    pre = getattr(builder, "preprocess", None)  # pretrained backbones carry their own input recipe
    data: ImageData = DATASETS.get(cfg.data.name)(cfg, preprocess=pre)
    model = builder(cfg.model, len(data.classes)).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    size = cfg.data.image_size or (pre["size"] if pre else data.train_x.shape[-1])
    mean, std = _stats(cfg, data, pre)
    loss_fn, ls = LOSSES.get(tc.loss), tc.label_smoothing
    if not resume:  # the record of what runs, before the first step
        rt.write_json(run_dir / rt.CONFIG, cfg.to_dict())
        rt.write_json(run_dir / rt.ENV, {**rt.environment(device, dtype, cl), "data_source": data.source,
                                         "splits": data.splits, "classes": data.classes})
    # all splits on the device once: CIFAR-10 is 150 MB as uint8
    tx, ty = data.train_x.to(device), data.train_y.to(device)
    vx, vy = data.val_x.to(device), data.val_y.to(device)

    dc = cfg.data
    geometric = dc.crop_scale < 1.0 or dc.rotate > 0 or dc.scale > 0  # augment() picks the window itself

    def prep(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (B,3,H,W) -> normalised float (B,3,size,size); augmented when `gen` is given.
        Without a geometric augmentation, training sees the same central window as evaluation
        (images may be stored larger than the input: pretrained backbones)."""
        if gen is None or not geometric:
            x = center_crop(x, size)
        if gen is not None:
            x = augment(x, dc, gen, size)
        x = normalize(x, mean, std)
        return x.contiguous(memory_format=torch.channels_last) if cl else x

    # a frozen backbone without augmentation: compute its features once, train only the head on them
    cached = hasattr(model, "backbone_frozen") and model.backbone_frozen() and not is_augmenting(cfg.data)
    if cached:
        from .features import cached_features

        fstats: dict = {}  # seconds spent, backbone compute seconds, whether read from the disk cache
        feats = [cached_features(model, x, prep, device, dtype, tc.eval_batch_size, stats=fstats) for x in (tx, vx)]
        tx, vx, net = feats[0], feats[1], model.head
        prep_train = prep_eval = (lambda x, gen=None: x)
    else:
        net, prep_train, prep_eval = model, prep, prep

    def forward(x: torch.Tensor) -> torch.Tensor:
        with rt.autocast(device, dtype):
            return net(x)

    opt = build_optimizer(cfg.optim, net)
    # fp16 autocast (CUDA without bf16) needs loss scaling; bf16 and fp32 do not
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    bs = min(tc.batch_size, len(tx))
    spe = tc.steps_per_epoch or max(1, len(tx) // bs)  # drop the last partial batch: steady BN statistics
    total = spe * tc.epochs
    log = rt.MetricsLog(run_dir / rt.METRICS)
    start_epoch, step, best = 1, 0, {"val_acc": -1.0, "epoch": 0}
    if resume:
        start_epoch, step, best = rt.restore_training_state(run_dir, model, opt, log, scaler)
    elapsed = sum(r.get("epoch_time", 0.0) for r in log.read())
    for epoch in range(start_epoch, tc.epochs + 1):
        t0 = time.time()
        torch.manual_seed(rt.epoch_seed(cfg.seed, epoch))  # dropout and anything else drawing from torch
        gen = torch.Generator(device=device).manual_seed(rt.epoch_seed(cfg.seed, epoch))
        # one or more fresh permutations, enough for spe batches (steps_per_epoch may exceed one pass)
        order = torch.cat([torch.randperm(len(tx), generator=gen, device=device)
                           for _ in range(math.ceil(spe * bs / len(tx)))])
        if hasattr(model, "set_epoch"):  # gradual unfreezing (pretrained backbones)
            model.set_epoch(epoch)
        net.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        bar = rt.Progress(spe, f"{cfg.variant} epoch {epoch}/{tc.epochs}", tc.log_every)
        for i in range(spe):
            idx = order[i * bs:(i + 1) * bs]
            x, y = prep_train(tx[idx], gen), ty[idx]
            lr = set_lr(opt, cfg.optim, lr_factor(step, total, spe, cfg.optim))
            out = forward(x)
            loss = loss_fn(out, y, ls)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.clip_grad:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.clip_grad)
            scaler.step(opt)
            scaler.update()
            step += 1
            lv = rt.check_finite(loss, step, epoch)
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            bar.update(1, loss=lv, lr=lr)
        bar.close()
        train_time = time.time() - t0
        net.eval()
        val_loss, val_acc, _ = evaluate(forward, vx, vy, prep_eval, tc.eval_batch_size, loss_fn, ls)
        elapsed += time.time() - t0
        rec = {"epoch": epoch, "step": step, "lr": lr, "train_loss": float(loss_sum) / seen,
               "train_acc": 100.0 * float(correct) / seen, "val_loss": val_loss, "val_acc": val_acc,
               "epoch_time": time.time() - t0, "time": elapsed, "img_per_s": seen / train_time}
        if val_acc > best["val_acc"]:
            best = {"val_acc": val_acc, "epoch": epoch}
        log.append(rec)
        if epoch % tc.checkpoint_every == 0 or epoch == tc.epochs:
            rt.save_training_state(run_dir, model, opt, epoch, step, best, scaler)
    result = {"epochs": tc.epochs, "steps": step, "best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
              "params": rt.count_params(model), "trainable_params": rt.count_params(net, trainable_only=True),
              "device": str(device), "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
              "data_source": data.source, "splits": data.splits}
    records = log.read()
    last = records[-1] if records else {}
    result.update({k: last.get(k) for k in ("val_acc", "val_loss", "train_acc", "train_loss", "img_per_s")})
    if cached:
        result["feature_cache"] = fstats  # seconds spent, backbone compute seconds, from_disk
    if tc.eval_test:
        net.eval()
        test_x = data.test_x.to(device)
        if cached:
            from .features import cached_features

            test_x = cached_features(model, test_x, prep, device, dtype, tc.eval_batch_size)
        test_loss, test_acc, pred = evaluate(forward, test_x, data.test_y.to(device), prep_eval,
                                             tc.eval_batch_size, loss_fn, ls)
        result.update(test_loss=test_loss, test_acc=test_acc)
        torch.save({"y": data.test_y.cpu(), "pred": pred, "classes": data.classes}, run_dir / "test_predictions.pt")
    result["train_time"] = elapsed  # seconds in epochs (train + val), summed over resumes
    result["wall_time"] = time.time() - t_start  # this invocation, data loading and test included
    result["resumed"] = resume
    rt.save_final(run_dir, model, {"study": cfg.study, "variant": cfg.variant, "seed": cfg.seed})
    rt.write_json(run_dir / rt.RESULT, result)  # written last: its presence marks a finished run
    return result


TASKS.add("classify", Task(fit=fit))
