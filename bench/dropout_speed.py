"""What the CPU dropout of models/dropout.py saves: torch's nn.Dropout against it, one call (forward and
backward) at a text model's activation shape, and whole training steps of textgen-shakespeare models with
either dropout in the same model (the rest unchanged), alternated round by round so that drift in the
machine's speed hits both alike.

    .venv/bin/python bench/dropout_speed.py [--variants lstm3-512-long-ema lstm2] [--rounds 3] [--steps 6]
    .venv/bin/python bench/dropout_speed.py --smoke      # seconds: the smoke preset's tiny models (tests)

Writes bench/results/dropout_speed.md (and .json): the CPU model and flags, threads, torch, the date.
Needs tiny-shakespeare: $ABLATIONS_DATA or ../shared/datasets. Never run by tests except --smoke.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
SHARED = ROOT.parent / "shared" / "datasets"

from conv_wgrad import ms  # noqa: E402  (median ms per call after 2 warm-up calls)
from textgen_speed import train_step  # noqa: E402

from ablations import runtime as rt  # noqa: E402
from ablations.data.base import DataSpec  # noqa: E402
from ablations.data.text import batch_at, sample_offsets  # noqa: E402
from ablations.models.dropout import Dropout  # noqa: E402
from ablations.registry import DATASETS, MODELS  # noqa: E402
from ablations.study import get_study  # noqa: E402


def one_call(shape: tuple, dtype, p: float, repeats: int) -> dict:
    """ms per forward + backward of each dropout on a (shape) tensor of dtype."""
    x = torch.randn(shape).to(dtype).requires_grad_()
    g = torch.randn(shape).to(dtype)
    out = {}
    for name, mod in (("nn.Dropout", nn.Dropout(p)), ("ours", Dropout(p))):
        mod.train()
        out[name] = ms(lambda: mod(x).backward(g), repeats)
    return out


def swap_dropout(model: nn.Module, to_torch: bool) -> None:
    """Every dropout module of `model` as nn.Dropout (to_torch) or as ours, same p."""
    for name, child in model.named_children():
        if isinstance(child, nn.Dropout):
            if getattr(child, "shared_dim", None) is not None:  # nn.Dropout has no such twin
                raise ValueError(f"{name}: locked dropout (shared_dim) has no nn.Dropout to compare with")
            setattr(model, name, (nn.Dropout if to_torch else Dropout)(child.p))
        else:
            swap_dropout(child, to_torch)


def steps_per_s(model, opt, data, cfg, dtype, steps: int, offs) -> float:
    B, T = cfg.train.batch_size, cfg.data.seq_len
    train_step(model, opt, *batch_at(data.train, offs[0], T), dtype)  # warm-up (oneDNN builds kernels)
    t = time.perf_counter()
    for i in range(1, steps + 1):
        train_step(model, opt, *batch_at(data.train, offs[i], T), dtype)
    return steps / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="*", default=["lstm3-512-long-ema", "lstm2"])
    ap.add_argument("--preset", default="full")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two dropouts per variant")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per round")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls in the one-call part")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="the smoke preset, 1 round of 1 step (seconds)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dropout_speed.json"))
    a = ap.parse_args()
    if a.smoke:
        a.preset, a.rounds, a.steps, a.repeats = "smoke", 1, 1, 1
    if not os.environ.get("ABLATIONS_DATA") and (SHARED / "README.md").exists():
        os.environ["ABLATIONS_DATA"] = str(SHARED)
    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if rt.cpu_has_bf16() else None  # None: fp32 (autocast off)
    study = get_study("textgen-shakespeare")
    cfgs = {c.variant: c for c in study.resolve(a.preset, a.variants, seeds=1, sets={})}
    data = DATASETS.get("tinyshakespeare")(next(iter(cfgs.values())).data)
    first = cfgs[a.variants[0]]
    shape = (first.train.batch_size, first.data.seq_len, first.model.hidden)  # (B, T, H): one layer's output
    calls = {rt.precision_name(dt): one_call(shape, dt, first.model.dropout or 0.3, a.repeats)
             for dt in (torch.float32, torch.bfloat16)}
    print("one call, ms:", calls, flush=True)
    rows = []
    for v in a.variants:
        cfg = cfgs[v]
        torch.manual_seed(0)
        model = MODELS.get(cfg.model.name)(cfg.model, DataSpec(vocab_size=len(data.vocab))).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        offs = sample_offsets(len(data.train), cfg.data.seq_len, cfg.train.batch_size, a.steps + 1,
                              torch.Generator().manual_seed(0))
        rates = {"nn.Dropout": [], "ours": []}
        for _ in range(a.rounds):
            for name in rates:
                swap_dropout(model, to_torch=name == "nn.Dropout")
                rates[name].append(steps_per_s(model, opt, data, cfg, dtype, a.steps, offs))
        chars = cfg.train.batch_size * cfg.data.seq_len
        row = {"variant": v, "model": f"{cfg.model.name} {cfg.model.layers}x{cfg.model.hidden}, dropout "
                                      f"{cfg.model.dropout}", "chars_per_step": chars}
        # the fastest round of each is the least disturbed by whatever else the machine did (its step times
        # drift by up to 30 % between rounds on a shared cloud CPU); the medians are kept beside it
        for name, r in rates.items():
            row[name] = {"s_per_step": [round(1 / x, 4) for x in r],
                         "s_per_million_chars": round(1e6 / (max(r) * chars), 1),
                         "s_per_million_chars_median": round(1e6 / (statistics.median(r) * chars), 1)}
        row["speedup"] = round(max(rates["ours"]) / max(rates["nn.Dropout"]), 3)
        row["speedup_median"] = round(statistics.median(rates["ours"]) / statistics.median(rates["nn.Dropout"]), 3)
        rows.append(row)
        print(row, flush=True)
    result = {"cpu": rt.cpu_model(), "cpu_flags": rt.cpu_flags(), "threads": a.threads, "torch": torch.__version__,
              "precision": rt.precision_name(dtype), "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": "python bench/dropout_speed.py " + " ".join(sys.argv[1:]),
              "one_call_shape": list(shape), "one_call_ms": calls, "training": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# Dropout on the CPU: nn.Dropout vs models/dropout.py ({result['date']})", "",
          f"`{result['command'].strip()}` on {result['cpu']} ({' '.join(result['cpu_flags'])}), {a.threads} threads, "
          f"torch {torch.__version__}.", "",
          f"One call, forward + backward, on a {tuple(shape)} tensor (median of {a.repeats}):", "",
          "| dtype | nn.Dropout | ours |", "|---|---|---|"]
    md += [f"| {k} | {c['nn.Dropout']:.1f} ms | {c['ours']:.1f} ms |" for k, c in calls.items()]
    md += ["", f"Training steps of textgen-shakespeare `{a.preset}` models ({result['precision']}; forward, "
           f"backward, clipping, AdamW), {a.rounds} alternating rounds of {a.steps} steps each; seconds per million "
           "characters in the fastest round of each (the least disturbed by other load), and the speed-up from "
           "the median rounds beside it; every round's seconds per step are in the .json:", "",
           "| variant | model | nn.Dropout | ours | speed-up | speed-up (medians) |", "|---|---|---|---|---|---|"]
    md += [f"| {r['variant']} | {r['model']} | {r['nn.Dropout']['s_per_million_chars']} s | "
           f"{r['ours']['s_per_million_chars']} s | {r['speedup']:.3f}x | {r['speedup_median']:.3f}x |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
