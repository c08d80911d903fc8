"""Why a training step of the fast CIFAR network costs 3.6x its forward pass in backward on a bf16 CPU
(bench/results/cifar100_fast_profile_bf16_amx.txt): the speed of each part of a 3 x 3 convolution's backward
at the network's shapes (batch 512, channels_last, bf16), and of two other ways to compute the weight
gradient (an im2col matrix product, and a convolution with batch and channels swapped).

    .venv/bin/python bench/conv_wgrad.py [--out bench/results/conv_wgrad.md] [--repeats 4]

Prints and writes a markdown table: milliseconds per call (median of --repeats after 2 warm-up calls) and
GFLOP/s (2 FLOPs per multiply-add; forward and each backward part have the same FLOP count)."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ablations import runtime

SHAPES = [(512, 24, 128, 31), (512, 128, 384, 15), (512, 128, 128, 15), (512, 384, 384, 7), (512, 384, 384, 3)]
CL = torch.channels_last


def ms(f, repeats: int) -> float:
    f(), f()  # oneDNN builds its kernels on the first calls
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def wgrad_im2col(x, go):
    """grad_w (Co, C, 3, 3) as ONE matrix product: the 9 shifted copies of the padded input side by side,
    (B*H*W, 9*C), against the output gradient (B*H*W, Co)."""
    B, C, H, W = x.shape
    Co = go.shape[1]
    xp = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (B, H+2, W+2, C), contiguous in channels_last
    cols = torch.cat([xp[:, i:i + H, j:j + W, :] for i in range(3) for j in range(3)], -1).reshape(B * H * W, 9 * C)
    g = go.permute(0, 2, 3, 1).reshape(B * H * W, Co)
    return (g.t() @ cols).view(Co, 3, 3, C).permute(0, 3, 1, 2)


def wgrad_swapped(x, go):
    """grad_w[o, c, i, j] = sum_{b,h,w} go[b, o, h, w] * xpad[b, c, h+i, w+j]: a forward convolution of x with
    batch and channels swapped (C, B, H, W) by the output gradient as filters (Co, B, H, W)."""
    xt = x.transpose(0, 1).contiguous(memory_format=CL)
    gt = go.transpose(0, 1).contiguous(memory_format=CL)
    return F.conv2d(xt, gt, padding=1).transpose(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "conv_wgrad.md"))
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--shapes", type=int, default=len(SHAPES), help="the first N shapes only (tests: 1)")
    ap.add_argument("--batch", type=int, default=0, help="override the batch of 512 (tests: a small one)")
    a = ap.parse_args()
    dtype = torch.bfloat16 if runtime.cpu_has_bf16() else torch.float32
    bw = torch.ops.aten.convolution_backward
    rows = []
    for B, C, Co, H in SHAPES[:a.shapes]:
        B = a.batch or B
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, C, H, H, generator=g).to(dtype).contiguous(memory_format=CL)
        w = torch.randn(Co, C, 3, 3, generator=g).to(dtype).contiguous(memory_format=CL)
        go = torch.randn(B, Co, H, H, generator=g).to(dtype).contiguous(memory_format=CL)
        args = (go, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
        ref = bw(*args, [False, True, False])[1].float()
        scale = ref.abs().max().item()
        err = {k: (f(x, go).float() - ref).abs().max().item() / scale
               for k, f in (("im2col", wgrad_im2col), ("swapped", wgrad_swapped))}
        t = {"forward": ms(lambda: F.conv2d(x, w, padding=1), a.repeats),
             "grad input": ms(lambda: bw(*args, [True, False, False]), a.repeats),
             "grad weight": ms(lambda: bw(*args, [False, True, False]), a.repeats),
             "grad weight, im2col": ms(lambda: wgrad_im2col(x, go), a.repeats),
             "grad weight, swapped": ms(lambda: wgrad_swapped(x, go), a.repeats)}
        gflop = 2 * B * C * Co * 9 * H * H / 1e9
        rows.append((f"{C}->{Co} at {H}x{H}", gflop, t, err))
    head = (f"`python bench/conv_wgrad.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` on {runtime.cpu_model()} "
            f"({' '.join(runtime.cpu_flags())}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"{runtime.precision_name(dtype)}, batch {a.batch or 512}, channels_last, "
            f"{time.strftime('%Y-%m-%d %H:%M')}. ms per call (median of {a.repeats}) and GFLOP/s; the "
            "alternatives' largest deviation from the native weight gradient, relative to its largest entry, "
            "in brackets.\n\n")
    cols = list(rows[0][2])
    table = ["| 3x3 conv | GFLOP | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, gflop, t, err in rows:
        cells = []
        for k in cols:
            e = f" [{err['im2col' if 'im2col' in k else 'swapped']:.0e}]" if k.startswith("grad weight,") else ""
            cells.append(f"{t[k]:.1f} ms ({gflop / t[k] * 1e3:.0f}){e}")
        table.append(f"| {name} | {gflop:.1f} | " + " | ".join(cells) + " |")
    text = head + "\n".join(table) + "\n"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
