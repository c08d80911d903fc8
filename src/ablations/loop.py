"""The one training loop: every method runs through `run()`.

It owns what all algorithms share: the run directory's files, the lock, the optimiser and its schedule
(a pure function of the step), autocast and fp16 loss scaling, gradient clipping, the NaN stop, the
metrics log, atomic epoch checkpoints (model, optimiser, method state, RNG, step) and exact resume:
every epoch's randomness is a pure function of (seed, epoch), so a resumed run equals one that never
stopped. What is special about an algorithm lives in its Method (methods/*.py).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from . import distributed
from . import rundir as rd
from . import runtime
from .config import RunConfig
from .ema import WeightEMA
from .errors import RunError
from .optim import build_optimizer, lr_factor, set_lr
from .registry import METHODS


def run(cfg: RunConfig, run_dir: Path, resume: bool = False, refs: Optional[dict[str, Path]] = None,
        overwrite: bool = False, restart: bool = False, on_epoch: Optional[Callable[[dict], None]] = None) -> dict:
    """Train (or evaluate) cfg into run_dir and return result.json's content. Holds the run dir's lock
    throughout: a second process on the same run refuses with one line naming the holder. `overwrite`
    may replace a finished run; `restart` an unfinished one (both decided again under the lock, so a run
    another process finished meanwhile is never replaced without --overwrite). `on_epoch(record)` sees each
    epoch's metrics record after its checkpoint (benches, early stops: an exception it raises stops the run
    there, resumable like a crash). In a distributed run (distributed.py) every process calls this; only
    rank 0 locks, writes and evaluates."""
    run_dir = Path(run_dir)
    t_start, started = time.time(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    main = distributed.current().main
    why = METHODS.get(cfg.method.name).unshardable(cfg) if distributed.current().active else None
    if why:  # before the run dir is touched (--overwrite would have deleted a finished run)
        raise RunError(f"method {cfg.method.name} cannot run over several processes: {why}")
    with contextlib.ExitStack() as held:
        error = None
        if main:  # rank 0 alone prepares the run dir; the others raise its error with it (distributed.agree)
            try:
                _prepare(run_dir, refs, held, overwrite=overwrite, restart=restart, resume=resume)
            except RunError as e:
                error = str(e)
        distributed.agree(error)
        rt = runtime.setup(cfg.train, cfg.seed)
        method = METHODS.get(cfg.method.name)(cfg, rt, run_dir, refs or {})
        if not resume and main:  # the record of what runs, before the first step
            rd.write_json(run_dir / rd.CONFIG, cfg.to_dict())
            rd.write_json(run_dir / rd.ENV, {**runtime.environment(rt), **method.env()})
            method.write_inputs()
        done, began = False, {}  # began: set once training starts (a refused resume writes no record)
        try:
            result = _train(method, cfg, rt, run_dir, resume, began, on_epoch)
            if not main:
                return result
            result.update(method.finish(result))
            result["wall_time"] = time.time() - t_start  # this invocation; Run.wall_time sums them all
            result["resumed"] = resume
            rd.save_final(run_dir, method.final_state(), {"study": cfg.study, "variant": cfg.variant,
                                                          "seed": cfg.seed})
            rd.write_json(run_dir / rd.RESULT, result)  # written last: its presence marks a finished run
            done = True
        finally:
            if began and main:
                rd.record_invocation(run_dir, {"started": started, "wall_time": time.time() - t_start,
                                               "resumed_from_epoch": began["epoch"] - 1 if resume else None,
                                               "finished": done})
    return result


def _prepare(run_dir: Path, refs: Optional[dict[str, Path]], held: contextlib.ExitStack, overwrite: bool,
             restart: bool, resume: bool) -> None:
    """Check the referenced runs, take the run dir's lock (held until `held` closes) and make the dir ready."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot write to output dir {run_dir}: {e.strerror or e}") from None
    for key, d in (refs or {}).items():
        if not (d / rd.RESULT).exists():
            raise RunError(f"{key} needs the finished run {d}, which has no {rd.RESULT}; run that variant first")
    held.enter_context(rd.RunLock(run_dir))
    if (run_dir / rd.RESULT).exists() and not overwrite:
        raise RunError(f"{run_dir} already holds a finished run; pass --overwrite to replace it")
    rd.prepare_run_dir(run_dir, overwrite=overwrite or restart, resume=resume)


def _train(method, cfg: RunConfig, rt: runtime.Runtime, run_dir: Path, resume: bool, began: dict,
           on_epoch: Optional[Callable[[dict], None]] = None) -> dict:
    tc = cfg.train
    main = distributed.current().main
    log = rd.MetricsLog(run_dir / rd.METRICS)
    key, goal = method.best
    best = {key: float("-inf") if goal == "max" else float("inf"), "epoch": 0}
    base = {"steps": 0, "params": runtime.count_params(method.model), "device": str(rt.device),
            "precision": rt.precision}
    if not method.trains:  # evaluation only: one record, epoch 0
        began["epoch"] = 1
        if not main:
            return {}
        t0 = time.time()
        rec = {"epoch": 0, "step": 0, **method.evaluate("val")}
        rec.update(epoch_time=time.time() - t0, time=time.time() - t0)
        log.append(rec)
        return {"epochs": 0, **base, "best_epoch": 0, f"best_{key}": rec.get(key), "trainable_params": 0,
                **{k: v for k, v in rec.items() if k.startswith("val_")}, "train_time": 0.0}
    net = method.trainable()
    opt = build_optimizer(cfg.optim, net)
    ema = WeightEMA(net, tc.ema) if tc.ema else None  # train.ema: validation, test and export see the average
    # fp16 autocast (CUDA without bf16) needs loss scaling; bf16 and fp32 do not
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16)
    spe = method.steps_per_epoch()
    total = spe * tc.epochs
    start_epoch, step = 1, 0
    # train.keep=best: a copy of the trainable module's weights at the best validation epoch so far (tested and
    # exported at the end; in every checkpoint, so a resumed run keeps the same epoch)
    keep_best, best_state = tc.keep == "best", None
    if resume:
        ck = rd.load_checkpoint(run_dir / rd.CHECKPOINT)
        method.model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        method.load_state_dict(ck.get("method", {}))
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        runtime.set_rng_state(ck["rng"])
        if main:
            log.truncate_after(ck["epoch"])
        start_epoch, step, best = ck["epoch"] + 1, ck["step"], ck["best"]
        best_state = ck.get("best_state")
    distributed.broadcast_module(method.model)
    began["epoch"] = start_epoch
    elapsed = sum(r.get("epoch_time", 0.0) for r in log.read())
    lr = cfg.optim.lr
    for epoch in range(start_epoch, tc.epochs + 1):
        t0 = time.time()
        es = runtime.epoch_seed(cfg.seed, epoch)
        torch.manual_seed(es)  # dropout and anything else drawing from torch's global generator
        gen = torch.Generator(device=method.generator_device or rt.device).manual_seed(es)
        method.start_epoch(epoch)
        method.train_mode(True)
        sums: dict[str, torch.Tensor] = {}
        bar = runtime.Progress(spe, f"{cfg.variant} epoch {epoch}/{tc.epochs}", tc.log_every, quiet=not main)
        for batch in method.batches(epoch, gen):
            lr = set_lr(opt, cfg.optim, lr_factor(step, total, spe, cfg.optim))
            with rt.autocast():
                loss, stats = method.train_step(distributed.shard(batch))  # the whole batch in one process
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            loss = distributed.average_gradients(net, loss)  # over the processes (no-op in one process)
            if cfg.optim.clip_grad:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.clip_grad)
            scaler.step(opt)
            scaler.update()
            step += 1
            lv = runtime.check_finite(loss, step, epoch)
            method.after_step(step)
            if ema is not None:
                ema.update(net)
            for k, v in stats.items():  # summed on the device: no sync per step
                sums[k] = sums[k] + v if k in sums else v
            bar.update(1, loss=lv, lr=lr)
        bar.close()
        train_time = time.time() - t0
        method.train_mode(False)
        sums = distributed.sum_stats(sums)
        with ema.swapped_in(net) if ema is not None and main else contextlib.nullcontext():
            val = method.evaluate("val") if main else {}
        rec = {"epoch": epoch, "step": step, "lr": lr,
               **method.summarize({k: float(v) for k, v in sums.items()}, train_time), **val}
        elapsed += time.time() - t0
        rec.update(epoch_time=time.time() - t0, time=elapsed)
        v = rec.get(key)
        if keep_best and main and v is None:  # after the first epoch, not at the end of a long run
            raise RunError(f"train.keep=best: epoch {epoch} recorded no {key} to pick the best epoch by "
                           "(no validation split? set data.val_fraction > 0)")
        if v is not None and (v > best[key] if goal == "max" else v < best[key]):
            best = {key: v, "epoch": epoch}
            if keep_best:
                live = ema.avg if ema is not None else net.state_dict()  # the weights that were validated
                best_state = {k: t.detach().clone() for k, t in live.items()}
        if main:
            log.append(rec)
            runtime.log_epoch(cfg.variant, rec, tc.epochs)
        if main and (epoch % tc.checkpoint_every == 0 or epoch == tc.epochs):
            state = {"model": method.model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                     "step": step, "best": best, "rng": runtime.rng_state(), "method": method.state_dict()}
            if scaler.is_enabled():
                state["scaler"] = scaler.state_dict()
            if keep_best:
                state["best_state"] = best_state
            if ema is not None:
                state["ema"] = ema.state_dict()
            rd.save_checkpoint(run_dir / rd.CHECKPOINT, state)
        if on_epoch is not None:
            on_epoch(rec)
    raw = {}
    if ema is not None and main:  # the raw (last) weights on validation: the average's paired comparison
        raw = {f"raw_{k}": v for k, v in method.evaluate("val").items()}
    if keep_best and best_state is not None:  # the test and final.safetensors see the best epoch's weights
        net.load_state_dict(best_state)
    elif ema is not None:
        net.load_state_dict(ema.avg)
    records = log.read()
    last = records[-1] if records else {}
    # no validation split (val_fraction 0): no best epoch, not -inf
    result = {"epochs": tc.epochs, **base, "steps": step, "best_epoch": best["epoch"] or None,
              f"best_{key}": best[key] if best["epoch"] else None,
              "kept_epoch": best["epoch"] if keep_best and best_state is not None else tc.epochs,
              "trainable_params": runtime.count_params(net, trainable_only=True),
              **{k: v for k, v in last.items() if k.startswith(("train_", "val_")) or k.endswith("_per_s")},
              **raw, "train_time": elapsed}  # seconds in epochs (train + val), summed over resumes
    return result
