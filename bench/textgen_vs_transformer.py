"""Our recurrent models against a small transformer at EQUAL WALL TIME on tiny-shakespeare, one machine,
one invocation: validation loss against seconds of training, and the final loss on the last 10 %.

    python bench/textgen_vs_transformer.py                   # 5 training minutes per model (~20 min in all)
    python bench/textgen_vs_transformer.py --minutes 10 --models lstm1 transformer
    python bench/textgen_vs_transformer.py --smoke           # seconds: tiny models, a temp --out
    python bench/textgen_vs_transformer.py --models lstm-h256 transformer --seeds 2   # mean +- std per model

The transformer is nanoGPT's README CPU recipe (the peer the issue measured: 4 layers x 128, 4 heads,
context 64, no biases, batch 12, AdamW lr 1e-3 with betas (0.9, 0.99), weight decay 0.1, 100 warm-up steps, cosine to
lr/10, dropout 0), run by the toolkit's model (models/transformer.py) through the same loop, split and
metric as the LSTMs (textgen-shakespeare's `full` recipe: 64 x 128 characters a batch, lr 5e-3). Each model
gets the same training time: its speed is measured first (a few steps), then its step count is set so the
optimiser steps take --minutes, and the whole schedule (warm-up, cosine) is laid over those steps, as a
run planned for that budget would be. Validation (next 5 %) runs --evals times per model at even steps
(so the transformer's many small steps are not charged more validations than the LSTMs' few large ones);
its time is not counted as training time. The final model is scored on the last 10 % (val + test), fp32.

Writes bench/results/textgen_vs_transformer.{json,md,png} with the CPU model, flags and threads. Needs
tiny-shakespeare ($ABLATIONS_DATA or ../shared/datasets). Never run by tests.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = ROOT.parent / "shared" / "datasets"

from ablations import loop  # noqa: E402
from ablations import rundir as rd  # noqa: E402
from ablations import runtime as rt  # noqa: E402
from ablations.config import make  # noqa: E402
from ablations.data.base import DataSpec  # noqa: E402
from ablations.data.text import batch_at, sample_offsets  # noqa: E402
from ablations.registry import DATASETS, MODELS  # noqa: E402
from ablations.study import get_study  # noqa: E402
from textgen_speed import train_step  # noqa: E402  (bench/: the same step as the speed bench)

NANOGPT_CPU = {  # nanoGPT README, "I only have a macbook" recipe, in the toolkit's keys
    "model": {"name": "transformer", "layers": 4, "heads": 4, "width": 128, "block": 64, "dropout": 0.0,
              "bias": False},
    "data.seq_len": 64, "train.batch_size": 12,
    "optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.1, "schedule": "warmup_cosine",
              "min_lr": 0.1, "clip_grad": 1.0},
    "warmup_steps": 100,
}
SMOKE_TRANSFORMER = {"model": {"name": "transformer", "layers": 1, "heads": 2, "width": 16, "block": 32},
                     "data.seq_len": 32, "train.batch_size": 8,
                     "optim": {"name": "adamw", "lr": 1e-2, "schedule": "warmup_cosine", "clip_grad": 1.0},
                     "warmup_steps": 2}


def configs(preset: str, names: list[str], threads: int) -> dict:
    """name -> (config dict without epochs, warm-up in steps): LSTMs from the study, the transformer from
    NANOGPT_CPU over the study's data/train sections."""
    study = get_study("textgen-shakespeare")
    rnn = [n for n in names if n != "transformer"]
    out = {}
    for c in study.resolve(preset, rnn or ["lstm1"], seeds=1, sets={"train.threads": threads}):
        d = c.to_dict()
        spe = c.train.steps_per_epoch or max(1, (len(DATASETS.get(c.data.name)(c.data).train) - 1)
                                             // (c.train.batch_size * c.data.seq_len))
        warm = round(c.optim.warmup * spe)  # the study's warm-up (epochs) in steps
        if c.variant in rnn:
            out[c.variant] = (d, warm)
    if "transformer" in names:
        base = d  # the last study config: same data, train and method sections
        spec = SMOKE_TRANSFORMER if preset == "smoke" else NANOGPT_CPU
        t = json.loads(json.dumps(base))
        t["variant"] = "transformer"
        t["model"] = dict(spec["model"])
        t["optim"] = {**spec["optim"]}
        t["data"]["seq_len"] = spec["data.seq_len"]
        t["train"]["batch_size"] = spec["train.batch_size"]
        out["transformer"] = (t, spec["warmup_steps"])
    return out


def probe_speed(cfg, data, dtype, seconds: float, warmup_s: float) -> float:
    """Training chars/s of cfg's model (forward, backward, AdamW step on real batches), timed over
    `seconds` after `warmup_s` of warm-up: a fixed number of steps misjudged the transformer's small
    batches by 28 % in a first run (kernel set-up and timer noise dominate a 1-second probe)."""
    torch.manual_seed(0)
    model = MODELS.get(cfg.model.name)(cfg.model, DataSpec(vocab_size=len(data.vocab))).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B, T = cfg.train.batch_size, cfg.data.seq_len
    gen = torch.Generator().manual_seed(0)
    steps, t0, timing = 0, time.perf_counter(), False
    while True:
        train_step(model, opt, *batch_at(data.train, sample_offsets(len(data.train), T, B, 1, gen)[0], T), dtype)
        now = time.perf_counter()
        if not timing and now - t0 >= warmup_s:
            timing, steps, t0 = True, 0, now
        elif timing:
            steps += 1
            if now - t0 >= seconds:
                return steps * B * T / (now - t0)


def curve_of(run_dir: Path, batch_chars: int, eval_every: int) -> list[dict]:
    """(step, training seconds so far, val nats/char) per validation, from the run's metrics.jsonl."""
    pts, train_s = [], 0.0
    for r in rd.read_metrics(run_dir / rd.METRICS):
        train_s += eval_every * batch_chars / r["tokens_per_s"]  # optimiser steps only
        pts.append({"step": r["step"], "train_seconds": round(train_s, 2), "val_loss": r["val_loss"]})
    return pts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=None, help="training minutes per model (default 5)")
    p.add_argument("--models", nargs="*", default=["lstm1", "lstm-h256", "transformer"],
                   help="textgen-shakespeare variants and/or 'transformer'")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--evals", type=int, default=None, help="validations per model over its budget (default 15)")
    p.add_argument("--probe-seconds", type=float, default=None, help="timed seconds of the speed probe, after "
                   "a quarter of that of warm-up (default 12)")
    p.add_argument("--seeds", type=int, default=1, help="runs per model (seeds 0..N-1: init, batches, dropout); "
                   "the table gives mean +- std and whether the best model's lead is larger than the seed spread")
    p.add_argument("--smoke", action="store_true", help="seconds: the smoke preset's tiny models, a temp --out")
    p.add_argument("--out", default=None, help="default bench/results/textgen_vs_transformer.json")
    args = p.parse_args()
    for k, full, smoke in (("minutes", 5.0, 0.05), ("evals", 15, 3), ("probe_seconds", 12.0, 1.0)):
        if getattr(args, k) is None:
            setattr(args, k, smoke if args.smoke else full)
    preset = "smoke" if args.smoke else "full"
    if args.out is None:
        args.out = str(Path(tempfile.mkdtemp(prefix="tvt_")) / "textgen_vs_transformer.json" if args.smoke
                       else ROOT / "bench" / "results" / "textgen_vs_transformer.json")
    if not os.environ.get("ABLATIONS_DATA") and (SHARED / "README.md").exists():
        os.environ["ABLATIONS_DATA"] = str(SHARED)
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    plans = configs(preset, args.models, args.threads)
    rows = []
    for name, seed in [(n, s) for n in args.models for s in range(args.seeds)]:
        d, warm_steps = plans[name]
        cfg = make(d)
        data = DATASETS.get(cfg.data.name)(cfg.data)
        # the speed the budget is planned with: the loop's own precision (bf16 where the CPU has it)
        dtype = torch.bfloat16 if rt.cpu_has_bf16() else None
        cps = probe_speed(cfg, data, dtype, args.probe_seconds, args.probe_seconds / 4)
        batch_chars = cfg.train.batch_size * cfg.data.seq_len
        budget = args.minutes * 60 * cps / batch_chars  # steps that fill the time at the probe's speed
        every = max(1, round(budget / args.evals))  # validation every `every` steps (an "epoch" of the loop)
        steps = every * max(1, round(budget / every))
        d = json.loads(json.dumps(d))
        d["train"].update(steps_per_epoch=every, epochs=steps // every, eval_test=True, checkpoint_every=10**6)
        d["optim"]["warmup"] = warm_steps / every  # the loop's warm-up is in epochs (of `every` steps)
        d["method"]["sampling"] = {"length": 10, "temperature": [0.8], "top_p": [], "beam": [1]}
        d["seed"] = seed
        cfg = make(d)
        print(f"{name} seed {seed}: {cps:,.0f} chars/s in the probe -> {steps} steps of {batch_chars} chars "
              f"({steps * batch_chars / 1e6:.2f} M chars) for {args.minutes} min", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            res = loop.run(cfg, Path(tmp) / name)
            curve = curve_of(Path(tmp) / name, batch_chars, every)
        m = cfg.model
        desc = (f"{m.name} {m.layers}x{m.hidden}" if hasattr(m, "hidden")
                else f"transformer {m.layers}x{m.width}, {m.heads} heads, context {m.block}")
        rows.append({"model": name, "seed": seed, "desc": desc, "params": res["params"], "steps": steps,
                     "batch": f"{cfg.train.batch_size} x {cfg.data.seq_len}", "lr": cfg.optim.lr,
                     "probe_chars_per_s": round(cps), "chars_trained": steps * batch_chars,
                     "train_seconds": curve[-1]["train_seconds"] if curve else None,
                     "val_loss": res["val_loss"], "last10_loss": res["last10_loss"], "curve": curve})
        print(f"  {name}: last10 {res['last10_loss']:.3f} nats/char after {rows[-1]['train_seconds']:.0f} s "
              f"of training", flush=True)
    result = {"machine": {"cpu": rt.cpu_model(), "cpu_flags": rt.cpu_flags(), "cpu_count": os.cpu_count(),
                          "precision": "bf16" if rt.cpu_has_bf16() else "fp32", "torch": torch.__version__,
                          "threads": args.threads, "load_average_at_start": round(load0, 2),
                          "load_average_at_end": round(os.getloadavg()[0], 2)},
              "minutes_per_model": args.minutes, "evals": args.evals, "seeds": args.seeds, "rows": rows,
              "command": "python bench/textgen_vs_transformer.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    png = out.with_suffix(".png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2))
        for r in rows:
            if r["seed"]:
                continue  # one curve per model (seed 0) keeps the plot readable
            ax.plot([c["train_seconds"] / 60 for c in r["curve"]], [c["val_loss"] for c in r["curve"]],
                    label=f"{r['model']} ({r['desc']})")
        ax.set_xlabel("training minutes (optimiser steps; validation excluded)")
        ax.set_ylabel("validation nats/char")
        ax.set_ylim(top=min(3.0, max(c["val_loss"] for r in rows for c in r["curve"][1:] or r["curve"])))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"tiny-shakespeare, equal wall time ({result['machine']['precision']}, {args.threads} threads)")
        fig.tight_layout()
        fig.savefig(png, dpi=110)
    except ImportError:
        png = None
    from ablations.report.render import mean_std
    from ablations.report.stats import verdict

    per = {n: [r["last10_loss"] for r in rows if r["model"] == n] for n in args.models}
    stats = {n: mean_std(v) for n, v in per.items()}  # model -> (mean, std) over its seeds
    mean, std = {n: m for n, (m, _) in stats.items()}, {n: sd for n, (_, sd) in stats.items()}
    best = min(args.models, key=mean.get)
    md = [f"# Recurrent models vs a small transformer at equal training time ({result['date']})", "",
          f"`{result['command']}`: {args.minutes} training minutes per model on {result['machine']['cpu']} "
          f"({result['machine']['precision']}, {args.threads} threads, {os.cpu_count()} cores; load average "
          f"{result['machine']['load_average_at_start']} -> {result['machine']['load_average_at_end']}). "
          f"tiny-shakespeare, first 90 % trains, metric nats/char on the last 10 % (final model, fp32). "
          f"CPU flags: {' '.join(result['machine']['cpu_flags']) or 'none of AVX2/AVX512/AMX'}.",
          "", "| model | seed | architecture | params | batch | lr | steps | chars trained | training s | val nats/char "
          "| last 10 % nats/char |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['seed']} | {r['desc']} | {r['params']:,} | {r['batch']} | {r['lr']:g} | {r['steps']:,} "
           f"| {r['chars_trained']:,} | {r['train_seconds']:.0f} | {r['val_loss']:.3f} | {r['last10_loss']:.3f} |"
           for r in rows]
    md += ["", "| model | runs | last 10 % nats/char, mean ± std | vs the best |", "|---|---|---|---|"]
    for n in sorted(args.models, key=mean.get):
        v, p = verdict(per[best], per[n]) if n != best else ("", None)
        md.append(f"| {n} | {len(per[n])} | {mean[n]:.3f} ± {std[n]:.3f} | "
                  + (f"{mean[n] - mean[best]:+.3f}, {v}" + (f" (p={p:.2f})" if p is not None else "") if v else "best")
                  + " |")
    md += ["", f"Best at equal time: **{best}** ({mean[best]:.3f} nats/char, mean of {len(per[best])}); a lead "
           "smaller than the seed spread is 'not significant' (report/stats.py). 'training s' is "
           "what the run's optimiser steps took; the budget was planned from a speed probe, so it can differ "
           "from --minutes by a few %."]
    if png:
        md += ["", f"![validation loss against training time]({png.name})"]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"results: {out}, {out.with_suffix('.md')}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
