"""Text-generation training speed on this machine: throughput (chars/s) of the study's models in fp32
and bf16 autocast, and the wall time the 2-layer 512 LSTM needs to reach 1.6 nats/char on the
validation split of tiny-shakespeare (with the `full` preset's recipe).

    python bench/textgen_speed.py                      # both parts, 2 threads (~10-20 min on an idle machine)
    python bench/textgen_speed.py --throughput-only    # seconds per model
    python bench/textgen_speed.py --threads 1 --variants lstm2 rnn
    python bench/textgen_speed.py --smoke              # seconds: the `smoke` preset, a temp --out

Writes bench/results/textgen_speed.json and .md (machine, CPU model and flags, threads, load average,
numbers). Needs tiny-shakespeare: $ABLATIONS_DATA or ../shared/datasets (or it downloads when online).
Never run by tests.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = ROOT.parent / "shared" / "datasets"

from ablations import loop  # noqa: E402
from ablations import rundir as rd  # noqa: E402
from ablations import runtime as rt  # noqa: E402
from ablations.data.base import DataSpec  # noqa: E402
from ablations.data.text import batch_at, sample_offsets  # noqa: E402
from ablations.registry import DATASETS, MODELS  # noqa: E402
from ablations.study import get_study  # noqa: E402


def throughput(cfg, data, dtype, steps: int, warmup: int = 3) -> float:
    """Training chars/s of cfg's model: forward, backward and AdamW step on real batches."""
    torch.manual_seed(0)
    model = MODELS.get(cfg.model.name)(cfg.model, DataSpec(vocab_size=len(data.vocab))).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B, T = cfg.train.batch_size, cfg.data.seq_len
    offs = sample_offsets(len(data.train), T, B, steps + warmup, torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for i in range(steps + warmup):
        if i == warmup:
            t0 = time.perf_counter()
        train_step(model, opt, *batch_at(data.train, offs[i], T), dtype)
    return steps * B * T / (time.perf_counter() - t0)


def train_step(model, opt, x, y, dtype) -> None:
    """One language-model training step as the loop takes it: forward (autocast), loss, clip, AdamW."""
    with rt.autocast(torch.device("cpu"), dtype):
        logits, _ = model(x)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


class Reached(Exception):
    pass


def _show(rec: dict) -> None:
    print(f"  step {rec['step']}: val {rec['val_loss']:.3f} nats/char after {rec['time']:.0f} s", flush=True)


def time_to_target(study, preset: str, variant: str, threads: int, target: float, eval_every: int,
                   max_minutes: float) -> dict:
    """Run the language loop with validation every `eval_every` steps (the schedule keeps the full run's
    shape: same total steps and warm-up) until val_loss <= target or max_minutes of training."""
    sets = {"train.threads": threads}
    cfg = study.resolve(preset, [variant], seeds=1, sets=sets)[-1]
    spe_full = cfg.train.steps_per_epoch or max(1, (len(DATASETS.get(cfg.data.name)(cfg.data).train) - 1)
                                                // (cfg.train.batch_size * cfg.data.seq_len))
    total = spe_full * cfg.train.epochs
    cfg = study.resolve(preset, [variant], seeds=1, sets={
        **sets,
        "train.steps_per_epoch": eval_every, "train.epochs": math.ceil(total / eval_every),
        "optim.warmup": cfg.optim.warmup * spe_full / eval_every,
        "method.sampling": {"length": 10, "temperature": [], "top_p": [], "beam": [1]}})[-1]
    def stop_at_target(rec: dict) -> None:  # after each validation: stop once the target or the time is reached
        _show(rec)
        if rec["val_loss"] <= target or rec["time"] > max_minutes * 60:
            raise Reached

    with tempfile.TemporaryDirectory() as d:
        try:
            loop.run(cfg, Path(d), on_epoch=stop_at_target)
        except Reached:
            pass
        curve = [{k: rec[k] for k in ("step", "val_loss", "time", "tokens_per_s")}
                 for rec in rd.read_metrics(Path(d) / rd.METRICS) if "val_loss" in rec]
    hit = next((c for c in curve if c["val_loss"] <= target), None)
    chars = cfg.train.batch_size * cfg.data.seq_len
    upto = [c for c in curve if hit and c["step"] <= hit["step"]]
    return {"target_nats_per_char": target, "reached": hit is not None,
            "seconds": hit["time"] if hit else None,  # training + periodic validation
            "train_seconds": sum(eval_every * cfg.train.batch_size * cfg.data.seq_len / c["tokens_per_s"]
                                 for c in upto) if hit else None,  # optimiser steps only
            "chars_trained": hit["step"] * chars if hit else None,
            "epochs_of_corpus": hit["step"] / spe_full if hit else None,
            "eval_every_steps": eval_every, "curve": curve}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="*", default=["rnn", "gru", "lstm1", "lstm2", "lstm-h128", "lstm-h256",
                                                      "lstm3-reg"])
    p.add_argument("--steps", type=int, default=None, help="timed steps per throughput measurement (default 15)")
    p.add_argument("--throughput-only", action="store_true")
    p.add_argument("--target", type=float, default=1.6, help="nats/char on the validation split")
    p.add_argument("--target-variant", default="lstm2")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between validations (time-to-target; default 25)")
    p.add_argument("--max-minutes", type=float, default=None, help="default 25")
    p.add_argument("--preset", default=None, help="the study preset whose recipe runs (default full)")
    p.add_argument("--smoke", action="store_true",
                   help="check that the script works in seconds: the smoke preset (tiny models), 2 timed "
                        "steps, validation every 2 steps, at most 1 minute; writes to a temp dir unless --out")
    p.add_argument("--out", default=None, help="default: bench/results/textgen_speed.json (--smoke: a temp dir)")
    args = p.parse_args()
    for k, full, smoke in (("steps", 15, 2), ("eval_every", 25, 2), ("max_minutes", 25.0, 1.0),
                           ("preset", "full", "smoke")):
        if getattr(args, k) is None:
            setattr(args, k, smoke if args.smoke else full)
    if args.out is None:
        args.out = str(Path(tempfile.mkdtemp(prefix="textgen_speed_")) / "textgen_speed.json" if args.smoke
                       else ROOT / "bench" / "results" / "textgen_speed.json")
    if not os.environ.get("ABLATIONS_DATA") and (SHARED / "README.md").exists():
        os.environ["ABLATIONS_DATA"] = str(SHARED)
    torch.set_num_threads(args.threads)
    study = get_study("textgen-shakespeare")
    cfgs = {c.variant: c for c in study.resolve(args.preset, args.variants + [args.target_variant], seeds=1,
                                                sets={"train.threads": args.threads})}
    data = DATASETS.get("tinyshakespeare")(next(iter(cfgs.values())).data)
    load0 = os.getloadavg()[0]
    rows = []
    for v in args.variants:
        c = cfgs[v]
        row = {"variant": v, "model": f"{c.model.name} {c.model.layers}x{c.model.hidden}"}
        for name, dt in (("fp32", None), ("bf16", torch.bfloat16 if rt.cpu_has_bf16() else None)):
            if name == "bf16" and dt is None:
                continue
            cps = throughput(c, data, dt, args.steps)
            row[f"{name}_chars_per_s"] = round(cps)
            row[f"{name}_s_per_million_chars"] = round(1e6 / cps, 1)
        rows.append(row)
        print(row, flush=True)
    result = {"machine": {"cpu": rt.cpu_model(), "cpu_flags": rt.cpu_flags(), "cpu_count": os.cpu_count(),
                          "bf16": rt.cpu_has_bf16(), "torch": torch.__version__, "threads": args.threads,
                          "load_average_at_start": round(load0, 2), "load_average_at_end": None},
              "batch": {"batch_size": cfgs[args.variants[0]].train.batch_size,
                        "seq_len": cfgs[args.variants[0]].data.seq_len},
              "throughput": rows, "date": time.strftime("%Y-%m-%d %H:%M")}
    if not args.throughput_only:
        print(f"time to {args.target} nats/char ({args.target_variant}, {args.preset} recipe):", flush=True)
        result["time_to_target"] = {"variant": args.target_variant,
                                    **time_to_target(study, args.preset, args.target_variant, args.threads,
                                                     args.target, args.eval_every, args.max_minutes)}
    result["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# textgen training speed ({result['date']}, {args.threads} threads, load average "
          f"{result['machine']['load_average_at_start']} -> {result['machine']['load_average_at_end']})", "",
          f"batch {result['batch']['batch_size']} x {result['batch']['seq_len']} chars; `python bench/textgen_speed.py "
          + " ".join(sys.argv[1:]) + "`", "",
          "| variant | model | fp32 chars/s | bf16 chars/s | bf16 s per 1M chars |", "|---|---|---|---|---|"]
    md += [f"| {r['variant']} | {r['model']} | {r.get('fp32_chars_per_s', '')} | {r.get('bf16_chars_per_s', '')} "
           f"| {r.get('bf16_s_per_million_chars', '')} |" for r in rows]
    if "time_to_target" in result:
        t = result["time_to_target"]
        md += ["", f"Time to {t['target_nats_per_char']} nats/char (validation) for {t['variant']}: "
               + (f"{t['seconds']:.0f} s including validation every {t['eval_every_steps']} steps, "
                  f"{t['train_seconds']:.0f} s of training steps alone ({t['chars_trained']:,} chars, "
                  f"{t['epochs_of_corpus']:.1f} passes over the training split)"
                  if t["reached"] else f"not reached within {args.max_minutes} min")]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"results: {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
