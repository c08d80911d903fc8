"""Training throughput of the CIFAR-10 VGG on this machine: fp32 vs bf16 autocast, NCHW vs channels_last,
with and without batch norm, at the batch sizes the presets use. Writes bench/results/cifar_speed.json.

    .venv/bin/python bench/cifar_speed.py [--threads N] [--steps 8]

Synthetic inputs (the data pipeline costs ~1 ms per 256-image batch: measured separately by the
`aug_ms` entry), so the number is the model's training step alone. Run it on a quiet machine."""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ablations.config import DataConfig, ModelConfig
from ablations.data.images import augment
from ablations.models.vgg import VGG


def measure(bn: bool, bf16: bool, cl: bool, bs: int, steps: int) -> float:
    torch.manual_seed(0)
    m = VGG(ModelConfig(batch_norm=bn, dropout=0.2), 10, 3)
    x = torch.randn(bs, 3, 32, 32)
    if cl:
        m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(m(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):  # oneDNN builds its kernels on the first calls
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return bs * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cifar_speed.json"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for bs in (64, 256):
        for bn in (False, True):
            for bf16 in (False, True):
                for cl in (False, True):
                    ips = measure(bn, bf16, cl, bs, a.steps)
                    rows.append({"batch": bs, "batch_norm": bn, "bf16": bf16, "channels_last": cl, "img_per_s": round(ips, 1),
                                 "s_per_epoch_45k": round(45000 / ips, 1)})
                    print(json.dumps(rows[-1]), flush=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    dc = DataConfig(flip=True, translate=3)
    t = time.perf_counter()
    for _ in range(20):
        augment(x, dc, g)
    aug_ms = (time.perf_counter() - t) / 20 * 1000
    out = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "aug_ms_per_256": round(aug_ms, 2),
           "rows": rows, "command": "python bench/cifar_speed.py" + (f" --threads {a.threads}" if a.threads else "")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
