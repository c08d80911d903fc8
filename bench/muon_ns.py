"""What Muon's Newton-Schulz orthogonalisation costs per optimiser step on this CPU, in bf16 (airbench94_muon's
choice) and in fp32, against the training step it belongs to. The network is the airnet of cifar10-fast's
`muon_fast` (or --study/--variant's), its conv filters the matrices Muon orthogonalises; the training step is
forward + backward + a Muon step at --batch and --res px, in the precision our runs pick on this CPU (bf16
autocast where it has AVX512-BF16/AMX, fp32 elsewhere), on synthetic inputs. The two dtypes alternate in
--rounds rounds (the machine drifts: only interleaved timings compare). Writes bench/results/muon_ns.md
(appends a section: one per machine).

    .venv/bin/python bench/muon_ns.py [--rounds 3] [--batch 1024] [--res 32] [--threads 2]

Why: on a 2-core AVX2 CPU (no native bf16) `muon_fast`'s 32 px epochs ran at 105 img/s where airbench94, the
same network with SGD and Lookahead, ran 136 img/s (bench/results/cifar_fast_muon_avx2.md); NS in emulated bf16
was 29 % of its step there (bench/results/muon_ns.md)."""
from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from ablations import runtime
from ablations.models.airnet import AirNet
from ablations.optim import build_optimizer
from ablations.optimizers import muon
from ablations.study import get_study


def ns_seconds(mats: list[torch.Tensor], dtype: torch.dtype, reps: int) -> float:
    """Seconds to orthogonalise every filter once (one optimiser step's worth), the median of reps."""
    times = []
    for _ in range(reps + 1):  # the first builds the kernels
        t = time.perf_counter()
        for m in mats:
            muon.newton_schulz(m, dtype=dtype)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def muon_filters(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters the optimiser's Muon groups orthogonalise (the conv filters): its own split, not a copy."""
    return [p for g in opt.param_groups if g["muon"] for p in g["params"]]


def step_seconds(cfg, amp, dtype: torch.dtype, batch: int, res: int, steps: int) -> float:
    """Seconds per training step (forward, backward, Muon step with its NS in `dtype`) under autocast `amp`
    (None: fp32), the median of steps."""
    torch.manual_seed(0)
    net = AirNet(cfg.model, 10).to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optim, net)
    x = torch.randn(batch, 3, res, res).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    saved = muon.ns_dtype
    muon.ns_dtype = lambda device_type: dtype  # the optimiser's NS in the dtype under test
    try:
        times = []
        for _ in range(steps + 1):  # the first builds oneDNN's kernels
            t = time.perf_counter()
            with runtime.autocast(torch.device("cpu"), amp):
                loss = nn.functional.cross_entropy(net(x).float(), y, label_smoothing=0.2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
    finally:
        muon.ns_dtype = saved
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", default="cifar10-fast")
    ap.add_argument("--preset", default="headline")
    ap.add_argument("--variant", default="muon_fast")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5, help="NS repetitions per round and dtype")
    ap.add_argument("--steps", type=int, default=3, help="training steps per round and dtype (0: NS only)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "muon_ns.md"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = next(c for c in get_study(a.study).resolve(a.preset, [a.variant]) if c.variant == a.variant)
    if cfg.optim.name != "muon":
        raise SystemExit(f"bench/muon_ns.py: {a.study} {a.variant} trains with optim.name={cfg.optim.name}, not muon")
    net = AirNet(cfg.model, 10)
    # the matrices Muon orthogonalises: each filter of its groups as (out, in * kh * kw), as Muon.step reshapes it
    mats = [torch.randn(len(p), p[0].numel()) for p in muon_filters(build_optimizer(cfg.optim, net))]
    amp = runtime.amp_dtype(cfg.train, torch.device("cpu"))
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    rows = []
    for r in range(a.rounds):
        order = list(dtypes) if r % 2 == 0 else list(dtypes)[::-1]
        row = {"round": r + 1}
        for name in order:
            row[f"ns_{name}"] = ns_seconds(mats, dtypes[name], a.reps)
            if a.steps:
                row[f"step_{name}"] = step_seconds(cfg, amp, dtypes[name], a.batch, a.res, a.steps)
            print(f"round {r + 1} {name}: NS {1e3 * row[f'ns_{name}']:.1f} ms"
                  + (f", training step {row[f'step_{name}']:.2f} s" if a.steps else ""), flush=True)
        rows.append(row)

    shapes = ", ".join(f"{m.shape[0]}x{m.shape[1]}" for m in mats)
    cmd = "python bench/muon_ns.py " + " ".join(f"--{k} {v}" for k, v in (
        ("rounds", a.rounds), ("batch", a.batch), ("res", a.res), ("steps", a.steps)))
    lines = [f"\n## {runtime.cpu_model()}, {a.threads} threads, {datetime.now():%Y-%m-%d %H:%M}\n",
             f"`{cmd}`. Flags: {' '.join(runtime.cpu_flags())}; torch {torch.__version__}; training in "
             f"{runtime.precision_name(amp)}. {a.study} {a.variant}: model {cfg.model.name} "
             f"{getattr(cfg.model, 'widths', '')}, {len(mats)} filters ({shapes}), "
             f"{muon.newton_schulz.__defaults__[0]} NS iterations each; batch {a.batch}, {a.res} px; medians.\n",
             "| round | NS bf16 ms | NS fp32 ms | " + ("step with NS bf16 s | step with NS fp32 s |" if a.steps else ""),
             "|---|---|---|" + ("---|---|" if a.steps else "")]
    for row in rows:
        lines.append(f"| {row['round']} | {1e3 * row['ns_bf16']:.1f} | {1e3 * row['ns_fp32']:.1f} | "
                     + (f"{row['step_bf16']:.2f} | {row['step_fp32']:.2f} |" if a.steps else ""))
    ratio = statistics.median(r["ns_bf16"] / r["ns_fp32"] for r in rows)
    summary = f"\nNS bf16 / fp32: median {ratio:.2f}x over {a.rounds} rounds"
    if a.steps:
        sr = statistics.median(r["step_bf16"] / r["step_fp32"] for r in rows)
        share = statistics.median(r["ns_bf16"] / r["step_bf16"] for r in rows)
        summary += (f"; the training step with NS in bf16 / in fp32: median {sr:.2f}x; NS in bf16 is "
                    f"{100 * share:.0f} % of its step")
    lines.append(summary + ".\n")
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text("# Muon's Newton-Schulz step: bf16 vs fp32 on the CPU\n\nWritten by bench/muon_ns.py; "
                       "one section per run.\n")
    with out.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
