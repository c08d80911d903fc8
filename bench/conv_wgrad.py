"""Why a training step of the fast CIFAR network costs 3.6x its forward pass in backward on a bf16 CPU
(bench/results/cifar100_fast_profile_bf16_amx.txt): the speed of each part of a 3 x 3 convolution's backward
at the network's shapes (batch 512, channels_last, bf16), and of three other ways to compute the weight
gradient: the model's own `shifted_wgrad` (9 tap-wise matrix products; airnet's conv_wgrad switch), an
im2col matrix product, and a convolution with batch and channels swapped.

    .venv/bin/python bench/conv_wgrad.py [--out bench/results/conv_wgrad.md] [--repeats 4]
    .venv/bin/python bench/conv_wgrad.py --widths 64 256 256 --batch 1024 --side 24   # cifar10-fast's 24 px phase
    .venv/bin/python bench/conv_wgrad.py --step --widths 64 256 256 --batch 1024 --side 32 [--classes 10]

--step times whole training steps of airnet instead (bf16 autocast where the CPU has it, SGD-Nesterov, random
inputs) with conv_wgrad=native and conv_wgrad=auto in alternating rounds (the machine drifts: only interleaved
rounds compare), and appends the rounds and the median ratio to --out.

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
from ablations.models.airnet import AirNet, AirNetConfig, shifted_wgrad

CL = torch.channels_last


def shapes(widths: tuple[int, int, int], side: int) -> list[tuple[int, int, int]]:
    """airnet's 3x3 convs as (C_in, C_out, map side), each once: the 2x2 whitening stem (24 channels) shrinks
    the side by 1, and each group pools by 2 after its first conv."""
    w1, w2, w3 = widths
    s = side - 1
    out = [(24, w1, s), (w1, w1, s // 2), (w1, w2, s // 2), (w2, w2, s // 4), (w2, w3, s // 4), (w3, w3, s // 8)]
    return list(dict.fromkeys(out))


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


def step_rounds(widths, side: int, batch: int, classes: int, steps: int, rounds: int, dtype) -> list[dict]:
    """Images per second of airnet's training step, conv_wgrad native vs auto, `rounds` alternating rounds
    of `steps` timed steps each (after 2 untimed ones per model: oneDNN builds its kernels on the first),
    under autocast to `dtype` (None: fp32)."""
    cpu = torch.device("cpu")
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=CL)
    y = torch.randint(0, classes, (batch,))
    nets = {}
    for mode in ("native", "auto"):
        torch.manual_seed(0)
        net = AirNet(AirNetConfig(widths=tuple(widths), conv_wgrad=mode), classes).to(memory_format=CL)
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.85, nesterov=True)
        nets[mode] = (net, opt)

    def step(mode):
        net, opt = nets[mode]
        with runtime.autocast(cpu, dtype):
            loss = F.cross_entropy(net(x).float(), y, label_smoothing=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for mode in nets:
        step(mode), step(mode)
    out = []
    for r in range(rounds):
        row = {"round": r + 1}
        for mode in (("native", "auto") if r % 2 == 0 else ("auto", "native")):  # alternate who goes first
            t = time.perf_counter()
            for _ in range(steps):
                step(mode)
            row[mode] = batch * steps / (time.perf_counter() - t)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "conv_wgrad.md"))
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--widths", type=int, nargs=3, default=(128, 384, 384),
                    help="airnet's group widths (default: cifar100-fast's budget30_bf16, airbench95's)")
    ap.add_argument("--side", type=int, default=32, help="input image side, px (24: the low-resolution phase)")
    ap.add_argument("--shapes", type=int, default=6, help="the first N shapes only (tests: 1)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--step", action="store_true", help="time whole airnet training steps, native vs auto")
    ap.add_argument("--classes", type=int, default=100, help="--step: classes of the head")
    ap.add_argument("--steps", type=int, default=4, help="--step: timed steps per round")
    ap.add_argument("--rounds", type=int, default=4, help="--step: alternating rounds")
    a = ap.parse_args()
    if a.step:
        amp = torch.bfloat16 if runtime.cpu_has_bf16() else None
        rows = step_rounds(a.widths, a.side, a.batch, a.classes, a.steps, a.rounds, amp)
        ratios = sorted(r["auto"] / r["native"] for r in rows)
        text = (f"\n`python bench/conv_wgrad.py {' '.join(sys.argv[1:])}` on {runtime.cpu_model()}, "
                f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
                f"{runtime.precision_name(amp)}, {time.strftime('%Y-%m-%d %H:%M')}: airnet "
                f"{tuple(a.widths)}, {a.classes} classes, batch {a.batch}, {a.side} px, {a.steps} steps per round; "
                "training images per second, conv_wgrad native vs auto.\n\n| round | native | auto | auto / native |\n"
                "|---|---|---|---|\n"
                + "".join(f"| {r['round']} | {r['native']:.0f} | {r['auto']:.0f} | {r['auto'] / r['native']:.3f} |\n"
                          for r in rows)
                + f"\nMedian ratio {statistics.median(ratios):.3f} (range {ratios[0]:.3f}-{ratios[-1]:.3f}).\n")
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(text)
        print(text)
        return
    dtype = torch.bfloat16 if runtime.cpu_has_bf16() else torch.float32
    bw = torch.ops.aten.convolution_backward
    rows = []
    B = a.batch
    for C, Co, H in shapes(tuple(a.widths), a.side)[:a.shapes]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, C, H, H, generator=g).to(dtype).contiguous(memory_format=CL)
        w = torch.randn(Co, C, 3, 3, generator=g).to(dtype).contiguous(memory_format=CL)
        go = torch.randn(B, Co, H, H, generator=g).to(dtype).contiguous(memory_format=CL)
        args = (go, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
        ref = bw(*args, [False, True, False])[1].float()
        scale = ref.abs().max().item()
        err = {k: (f(x, go).float() - ref).abs().max().item() / scale
               for k, f in (("shifted", shifted_wgrad), ("im2col", wgrad_im2col), ("swapped", wgrad_swapped))}
        t = {"forward": ms(lambda: F.conv2d(x, w, padding=1), a.repeats),
             "grad input": ms(lambda: bw(*args, [True, False, False]), a.repeats),
             "grad weight": ms(lambda: bw(*args, [False, True, False]), a.repeats),
             "grad weight, shifted": ms(lambda: shifted_wgrad(x, go), a.repeats),
             "grad weight, im2col": ms(lambda: wgrad_im2col(x, go), a.repeats),
             "grad weight, swapped": ms(lambda: wgrad_swapped(x, go), a.repeats)}
        gflop = 2 * B * C * Co * 9 * H * H / 1e9
        rows.append((f"{C}->{Co} at {H}x{H}", gflop, t, err))
    head = (f"`python bench/conv_wgrad.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` on {runtime.cpu_model()} "
            f"({' '.join(runtime.cpu_flags())}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"{runtime.precision_name(dtype)}, batch {B}, channels_last, "
            f"{time.strftime('%Y-%m-%d %H:%M')}. ms per call (median of {a.repeats}) and GFLOP/s; the "
            "alternatives' largest deviation from the native weight gradient, relative to its largest entry, "
            "in brackets.\n\n")
    cols = list(rows[0][2])
    table = ["| 3x3 conv | GFLOP | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, gflop, t, err in rows:
        cells = []
        for k in cols:
            e = f" [{err[k.split(', ')[1]]:.0e}]" if k.startswith("grad weight,") else ""
            cells.append(f"{t[k]:.1f} ms ({gflop / t[k] * 1e3:.0f}){e}")
        table.append(f"| {name} | {gflop:.1f} | " + " | ".join(cells) + " |")
    text = head + "\n".join(table) + "\n"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
