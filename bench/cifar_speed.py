"""Training throughput of the CIFAR-10 VGG on this machine: fp32 vs bf16 autocast, NCHW vs channels_last,
with and without batch norm, at the batch sizes the presets use. Writes bench/results/cifar_speed.json.

    .venv/bin/python bench/cifar_speed.py [--threads N] [--steps 8]
    .venv/bin/python bench/cifar_speed.py --smoke      # seconds: tiny batches, one step, a temp --out

Synthetic inputs (the data pipeline costs ~1 ms per 256-image batch: measured separately by the
`aug_ms` entry), so the number is the model's training step alone. Run it on a quiet machine."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from ablations import runtime
from ablations.config import make
from ablations.data.augment import build_pipeline
from ablations.data.base import DataSpec
from ablations.registry import MODELS

CLASSES = [f"class{i}" for i in range(10)]
AUG = ["flip", {"translate": 3}]  # the cifar10 studies' data.aug.train


def measure(bn: bool, bf16: bool, cl: bool, bs: int, steps: int, warmup: int = 3) -> float:
    torch.manual_seed(0)
    mc = make({"model": {"name": "vgg3", "batch_norm": bn, "dropout": 0.2}}).model
    m = MODELS.get(mc.name)(mc, DataSpec(classes=CLASSES, image_size=32))
    x = torch.randn(bs, 3, 32, 32)
    if cl:
        m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    cpu = torch.device("cpu")

    def step():
        with runtime.autocast(cpu, torch.bfloat16 if bf16 else None):
            loss = torch.nn.functional.cross_entropy(m(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(warmup):  # oneDNN builds its kernels on the first calls
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return bs * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=None, help="default: bench/results/cifar_speed.json (--smoke: a temp dir)")
    ap.add_argument("--smoke", action="store_true",
                    help="check that the script works: batch 4 only, 1 timed step after 1 warm-up step, "
                         "2 augmentation repeats; writes to a temp dir unless --out is given")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    batch_sizes, steps, warmup, aug_reps = ((4,), 1, 1, 2) if a.smoke else ((64, 256), a.steps, 3, 20)
    out_path = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="cifar_speed_")) / "cifar_speed.json"
                                          if a.smoke else Path(__file__).parent / "results" / "cifar_speed.json")
    rows = []
    for bs in batch_sizes:
        for bn in (False, True):
            for bf16 in (False, True):
                for cl in (False, True):
                    ips = measure(bn, bf16, cl, bs, steps, warmup)
                    rows.append({"batch": bs, "batch_norm": bn, "bf16": bf16, "channels_last": cl, "img_per_s": round(ips, 1),
                                 "s_per_epoch_45k": round(45000 / ips, 1)})
                    print(json.dumps(rows[-1]), flush=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    aug = build_pipeline(AUG)
    t = time.perf_counter()
    for _ in range(aug_reps):
        aug(x, g)
    aug_ms = (time.perf_counter() - t) / aug_reps * 1000
    out = {"machine": runtime.cpu_model(), "cpu_flags": runtime.cpu_flags(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "aug_ms_per_256": round(aug_ms, 2),
           "rows": rows, "command": " ".join(["python bench/cifar_speed.py", *sys.argv[1:]])}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
