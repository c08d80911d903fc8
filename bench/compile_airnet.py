"""Does torch.compile pay for the fast CIFAR network's training step on this CPU? One optimiser step of the
airnet of cifar10-fast's `muon_fast` variant (bf16 autocast where the CPU has AVX512-BF16/AMX, channels_last),
eager vs `nn.Module.compile()` (inductor), on synthetic inputs. Prints the first (compiling) step's time and
the steady step time of each, and writes bench/results/compile_airnet.md.

    .venv/bin/python bench/compile_airnet.py [--batch 1024] [--res 32] [--steps 5] [--threads 2]

Run it on a quiet machine (the two modes run one after the other, never at once)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from ablations import runtime
from ablations.models.airnet import AirNet
from ablations.study import get_study


def measure(cfg, mode: str, batch: int, res: int, steps: int, bf16: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    net = AirNet(cfg.model, 10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    if mode == "compiled":
        net.compile()
    x = torch.randn(batch, 3, res, res).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(net(x), y, label_smoothing=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t0 = time.time()
    step()  # compiles, in the compiled mode
    first = time.time() - t0
    step()
    t0 = time.time()
    for _ in range(steps):
        step()
    return first, (time.time() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile_airnet.md"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = next(c for c in get_study("cifar10-fast").resolve("headline", ["muon_fast"]) if c.variant == "muon_fast")
    bf16 = runtime.cpu_has_bf16()
    rows = []
    for mode in ("eager", "compiled"):
        first, dt = measure(cfg, mode, a.batch, a.res, a.steps, bf16)
        rows.append((mode, first, dt))
        print(f"{mode}: first step {first:.1f} s, then {dt * 1000:.0f} ms/step = {a.batch / dt:.0f} img/s", flush=True)
    flags = ", ".join(f for f in runtime.cpu_flags() if f.startswith(("avx512_bf16", "amx", "avx2")))
    text = ["# torch.compile for airnet's training step", "",
            f"{runtime.cpu_model()} ({flags}), {a.threads} threads, "
            f"{'bf16 autocast' if bf16 else 'fp32'}, torch {torch.__version__}, batch {a.batch}, {a.res} px, "
            f"{a.steps} timed steps after 2. Command: `python bench/compile_airnet.py --batch {a.batch} --res {a.res}`.",
            "", "| mode | first step s | step ms | img/s |", "|---|---|---|---|"]
    text += [f"| {m} | {f:.1f} | {d * 1000:.0f} | {a.batch / d:.0f} |" for m, f, d in rows]
    ratio = rows[0][2] / rows[1][2]
    text += ["", f"Compiled / eager throughput: {ratio:.2f}x" + (" (compile does not pay)" if ratio < 1 else "")]
    Path(a.out).write_text("\n".join(text) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
