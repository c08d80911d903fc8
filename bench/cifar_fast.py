"""Our fast CIFAR-10 recipe against its peer, airbench94 (PyPI airbench==0.1.8, Keller Jordan), trained one
after the other in ONE invocation on the same machine and the same lossless CIFAR-10 copy. Writes
bench/results/cifar_fast.json (and .md) with, for each: final test accuracy with and without TTA, training
seconds, time to 93 % and 94 %, img/s, achieved GFLOP/s against the CPU's nominal peak, the CPU model and flags.

    .venv/bin/pip install airbench==0.1.8            # a bench-only dependency (not in pyproject)
    ABLATIONS_DATA=../shared/datasets .venv/bin/python bench/cifar_fast.py
    .venv/bin/python bench/cifar_fast.py --smoke     # a minute: 2,048 images, both nets, temp --out
    .venv/bin/python bench/cifar_fast.py --profile [--profile-study cifar100-fast --variant budget30_bf16_muon]
        # seconds: where a training step's time goes, per convolution shape, forward vs backward

The peer runs its own `train94` with its own network and hyper-parameters; `AirbenchOnCPU` (below) changes
only what ties it to CUDA: the device (its loader gets gpu='cpu'), the dtype (fp32 where its code says
.half(), or bf16 autocast, without the weight-cast cache, when our run uses bf16), the timers (torch.cuda.Event -> a perf_counter clock)
and where its loader reads the data (airbench's own train.pt/test.pt format, written from our lossless copy).

Timing follows airbench: the clock covers the whitening init, the training steps and the final TTA
evaluation; the per-epoch test evaluations (no TTA) that draw the accuracy curve are outside it. Ours is
timed the same way from its run records (train seconds per epoch + the final test evaluation).
"Time to X %" is the clock when the final TTA accuracy reaches X (each schedule is built for its whole
length, so the end of the run is where X is first reached with TTA); "at epoch end, no TTA" is the first
epoch whose plain test accuracy reaches X, a lower bound that needs no TTA evaluation per epoch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ablations import loop, runtime
from ablations.config import make
from ablations.registry import DATASETS, MODELS, load_plugins
from ablations.study import get_study

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- FLOPs and the CPU's peak

def train_flops_per_image(model: nn.Module, size: int, n: int = 8) -> float:
    """FLOPs of one training step (forward + backward) per image at side `size` (torch's counter: 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(n, 3, size, size)
    was = model.training
    model.train()
    saved = {k: v.clone() for k, v in model.state_dict().items()}  # BN running stats: leave the net untouched
    with FlopCounterMode(display=False) as fc:
        model(x).float().sum().backward()
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    model.train(was)
    return fc.get_total_flops() / n


def cpu_peak_gflops(bf16: bool) -> dict:
    """Nominal peak: cores x max GHz x FLOPs per cycle per core. FLOPs/cycle assumed: fp32 with AVX-512 64,
    AVX2+FMA 32 (two FMA units); bf16 with AMX 1024, with AVX512-BF16 128. An upper bound, not a promise."""
    flags = set(runtime.cpu_flags())
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    mhz = re.search(r"CPU max MHz:\s*([\d.]+)", text) or re.search(r"CPU MHz:\s*([\d.]+)", text)
    if mhz is None:
        try:
            mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text())
        except OSError:
            mhz = None
    ghz = float(mhz.group(1)) / 1000 if mhz else float("nan")
    if bf16:
        per = 1024 if "amx_bf16" in flags else 128 if "avx512_bf16" in flags else 32
    else:
        per = 64 if "avx512f" in flags else 32 if "fma" in flags else 16
    cores = torch.get_num_threads()
    return {"gflops": cores * ghz * per, "cores": cores, "ghz": ghz, "flops_per_cycle": per,
            "precision": "bf16" if bf16 else "fp32"}


# ---------------------------------------------------------------- the peer on the CPU

class _CPUEvent:
    """torch.cuda.Event stand-in: record() reads a perf_counter; elapsed_time() returns ms, and adds them to a
    running total so the per-epoch hook knows the peer's clock (its own total is a local of airbench.train)."""
    total_s = 0.0

    def __init__(self, **_):
        self.t = 0.0

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end: "_CPUEvent") -> float:
        dt = end.t - self.t
        _CPUEvent.total_s += dt
        return 1000.0 * dt


class AirbenchOnCPU:
    """Runs airbench.train94 unchanged on the CPU (see the module docstring for what is adapted)."""

    def __init__(self, data: dict, workdir: Path, bf16: bool):
        self.data, self.workdir, self.bf16 = data, Path(workdir), bf16
        self.curve: list[dict] = []

    def _write(self) -> None:
        # airbench's own cache format: uint8 NHWC images, int64 labels, class names
        for split in ("train", "test"):
            x = self.data[f"{split}_x"].permute(0, 2, 3, 1).contiguous()
            torch.save({"images": x, "labels": self.data[f"{split}_y"], "classes": list(self.data["classes"])},
                       self.workdir / f"{split}.pt")

    def run(self, seed: int, epochs: float | None = None) -> tuple[nn.Module, dict]:
        import airbench.lib_airbench94 as a94
        import airbench.utils as au

        self._write()
        workdir, curve = str(self.workdir), self.curve
        base = au.CifarLoader

        class CPULoader(base):
            def __init__(self, path, train=True, batch_size=500, aug=None, drop_last=None, shuffle=None,
                         altflip=False, gpu=0):
                super().__init__(workdir, train, batch_size, aug, drop_last, shuffle, altflip, gpu="cpu")
                raw = torch.load(Path(workdir) / ("train.pt" if train else "test.pt"))
                # fp32 from the bytes (its .half() copy would round the pixels first)
                self.images = (raw["images"].float() / 255).permute(0, 3, 1, 2).to(memory_format=torch.channels_last)

        evaluate = au.evaluate

        def evaluate_logged(model, loader, tta_level=0):
            acc = evaluate(model, loader, tta_level)
            curve.append({"time": _CPUEvent.total_s, "tta_level": tta_level, "test_acc": 100.0 * acc})
            return acc

        def make_net_cpu():
            # its make_net94 ends in .half().cuda(): identities here, so the network is built by its own code
            with _patched(nn.Module, half=lambda self: self, cuda=lambda self, *a, **k: self):
                return a94.make_net94()

        _CPUEvent.total_s = 0.0
        torch.manual_seed(seed)
        # One autocast region around all of train94, so its weight-cast cache must be off: with it on, the bf16
        # copies of the trainable weights made at the first forward are reused until the region exits, and the
        # network never sees its own updates (it stays at ~13 % test accuracy)
        amp = (torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False) if self.bf16
               else contextlib.nullcontext())
        whiten = au.init_whitening_conv

        def whiten_fp32(*args, **kw):  # the covariance and eigh in fp32 even under bf16 autocast (as ours)
            with torch.autocast("cpu", enabled=False):
                return whiten(*args, **kw)

        with _patched(au, CifarLoader=CPULoader, evaluate=evaluate_logged, init_whitening_conv=whiten_fp32), \
                _patched(torch.cuda, Event=_CPUEvent, synchronize=lambda *a, **k: None), amp:
            loader = CPULoader("cifar10", train=True, batch_size=a94.hyp["opt"]["batch_size"], aug=a94.hyp["aug"],
                               altflip=True)
            kw = {} if epochs is None else {"epochs": epochs}
            model = a94.train94(loader, make_net=make_net_cpu, run=0, verbose=True, **kw)
        return model, {"total_s": _CPUEvent.total_s, "curve": list(curve)}


@contextlib.contextmanager
def _patched(obj, **attrs):
    old = {k: getattr(obj, k) for k in attrs}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


# ---------------------------------------------------------------- summaries

def time_to(curve: list[dict], final_acc: float, total_s: float, goal: float) -> dict:
    """Clock when `goal` % is reached: with TTA (the run's end) and, as a lower bound, at an epoch end without TTA."""
    plain = next((c["time"] for c in curve if c["test_acc"] >= goal), None)
    return {"with_tta_s": total_s if final_acc >= goal else None, "epoch_end_no_tta_s": plain}


def summarize(name: str, final: float, final_plain: float, total_s: float, train_s: float, images: int,
              flops: float, curve: list[dict], peak: dict, target: float) -> dict:
    return {"name": name, "test_acc_tta": round(final, 2), "test_acc_no_tta": round(final_plain, 2),
            "time_s": round(total_s, 1), "train_s": round(train_s, 1), "images_trained": images,
            "img_per_s": round(images / train_s, 1), "train_tflop": round(flops / 1e12, 2),
            "achieved_gflops": round(flops / train_s / 1e9, 1),
            "share_of_peak": round(flops / train_s / 1e9 / peak["gflops"], 3) if peak["gflops"] == peak["gflops"] else None,
            "time_to_93": time_to(curve, final, total_s, 93.0), "time_to_94": time_to(curve, final, total_s, 94.0),
            f"time_to_{target:.2f}": time_to(curve, final, total_s, target), "curve": curve}


def run_ours(study: str, preset: str, variant: str, seed: int, out: Path, sets: dict) -> tuple[dict, object]:
    cfg = get_study(study).resolve(preset, [variant], seeds=1, sets={"method.test_each_epoch": True, **sets})[0]
    import dataclasses
    cfg = dataclasses.replace(cfg, seed=seed)
    run_dir = out / f"{variant}-seed{seed}"
    records: list[dict] = []
    result = loop.run(cfg, run_dir, overwrite=True, on_epoch=records.append)
    return {"cfg": cfg, "records": records, "result": result, "run_dir": run_dir}, cfg


def ours_summary(r: dict, peak: dict, target: float) -> dict:
    cfg, recs, res = r["cfg"], r["records"], r["result"]
    # FLOPs per image at each epoch's resolution, counted on the run's own network
    from ablations.data.base import DataSpec

    net = MODELS.get(cfg.model.name)(cfg.model, DataSpec(classes=[str(i) for i in range(10)], image_size=32))
    mc = cfg.method
    flops, t, images, curve = 0.0, res.get("init_s", 0.0), 0, []
    per = {}
    for rec in recs:
        size = mc.low_res if rec["epoch"] <= mc.low_res_epochs else 32
        if size not in per:
            per[size] = train_flops_per_image(net, size)
        n = rec["epoch_images"]
        flops += per[size] * n
        images += n
        t += rec["epoch_train_s"]
        curve.append({"epoch": rec["epoch"], "time": t, "tta_level": 0, "test_acc": rec["test_acc_no_tta"]})
    train_s = t
    total = t + res["test_time_s"]
    return summarize(f"ours ({cfg.study} {cfg.variant})", res["test_acc"], res.get("test_acc_no_tta", res["test_acc"]),
                     total, train_s, images, flops, curve, peak, target)


def profile(out: Path, study: str = "cifar10-fast", preset: str = "headline", variant: str = "recipe",
            batch: int = 512, steps: int = 2) -> str:
    """Where a training step of a study's network goes (convolutions vs the rest, and per convolution shape
    forward vs backward), torch's profiler, on random inputs at 32 px, in the precision our runs pick on
    this CPU (bf16 autocast where it has AVX512-BF16 or AMX): the answer to "what limits it". Writes the op
    tables to `out`."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from ablations.data.base import DataSpec
    from ablations.data.images import CIFAR10, CIFAR100

    cfg = get_study(study).resolve(preset, [variant], sets={"train.device": "cpu"})[0]
    classes = {s.name: s.n_classes for s in (CIFAR10, CIFAR100)}[cfg.data.name]
    net = MODELS.get(cfg.model.name)(cfg.model, DataSpec(classes=[str(i) for i in range(classes)], image_size=32))
    net = net.to(memory_format=torch.channels_last)
    cpu = torch.device("cpu")
    dtype = runtime.amp_dtype(cfg.train, cpu)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.85, nesterov=True)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))

    def step():
        with runtime.autocast(cpu, dtype):
            loss = nn.functional.cross_entropy(net(x).float(), y, label_smoothing=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):  # oneDNN builds its kernels on the first calls
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    img_s = batch * steps / (time.perf_counter() - t)  # unprofiled: the profiler adds its own overhead
    with tprofile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    fwd = sum(e.self_cpu_time_total for e in ev if e.key == "aten::mkldnn_convolution")
    bwd = sum(e.self_cpu_time_total for e in ev if e.key == "aten::convolution_backward")
    head = (f"python bench/cifar_fast.py --profile --profile-study {study} --preset {preset} --variant {variant}\n"
            f"{runtime.cpu_model()} ({' '.join(runtime.cpu_flags())}), {torch.get_num_threads()} threads, "
            f"{runtime.precision_name(dtype)}{'' if dtype is None else ' autocast'}, model {cfg.model.name} "
            f"{getattr(cfg.model, 'widths', '')}, {classes} classes, batch {batch}, {steps} steps, "
            f"{img_s:.0f} img/s unprofiled (an SGD step; the study's own optimiser is not profiled): convolution forward {100 * fwd / total:.1f} % and backward "
            f"{100 * bwd / total:.1f} % of the CPU time (backward / forward {bwd / max(fwd, 1):.2f}), the rest "
            f"{100 - 100 * (fwd + bwd) / total:.1f} %\n\n")
    shapes = prof.key_averages(group_by_input_shape=True)
    convs = [e for e in shapes if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward")]
    per = "\n".join(f"{e.key:<28} {e.self_cpu_time_total / 1e3 / steps:8.1f} ms/step  inputs {e.input_shapes[:3]}"
                     for e in sorted(convs, key=lambda e: -e.self_cpu_time_total))
    text = (head + ev.table(sort_by="self_cpu_time_total", row_limit=15)
            + "\n\nPer convolution shape (self CPU time per step; inputs: grad/input, weight...):\n" + per)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default=None, help="our cifar10-fast variant (default: muon_fast; the "
                    "AVX2 result file was made with low_res, the default before muon_fast; with --profile: recipe)")
    ap.add_argument("--preset", default=None, help="default: headline (with --profile: the study's headline "
                    "preset if it has one, else full)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["ours", "peer"], help="one side only (the goal needs both in one run)")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/cifar_fast.json)")
    ap.add_argument("--smoke", action="store_true", help="2,048 training images, 1 epoch each: checks the plumbing")
    ap.add_argument("--profile", action="store_true", help="only profile a training step of our network "
                    "(writes bench/results/cifar_fast_profile.txt, or --out) in the precision our runs pick here")
    ap.add_argument("--profile-study", default="cifar10-fast", help="with --profile: the study whose --variant "
                    "network to profile (default cifar10-fast)")
    a = ap.parse_args()
    load_plugins()
    if a.profile:
        preset = a.preset or ("headline" if "headline" in get_study(a.profile_study).presets else "full")
        print(profile(Path(a.out) if a.out else HERE / "results" / "cifar_fast_profile.txt", a.profile_study,
                      preset, a.variant or "recipe"))
        return
    a.preset, a.variant = a.preset or "headline", a.variant or "muon_fast"
    smoke = a.smoke
    out_path = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="cifar_fast_")) / "cifar_fast.json" if smoke
                                          else HERE / "results" / "cifar_fast.json")
    work = Path(tempfile.mkdtemp(prefix="cifar_fast_runs_"))
    sets = {"train.device": "cpu"}  # the peer runs on the CPU: so does ours, even on a GPU host
    sets |= {"data.limit": 2048, "data.limit_eval": 1000, "train.epochs": 2, "optim.warmup": 0.5,
            "method.low_res_epochs": 1} if smoke else {}
    variant = get_study("cifar10-fast").variants.get(a.variant)
    if smoke and not (variant and "method.low_res" in variant.set):  # only a resizing variant has low_res epochs
        sets.pop("method.low_res_epochs")
    probe = make({"data": {"name": "cifar10"}, "train": {"device": "cpu"}})  # precision the way our runs pick it
    rt = runtime.setup(probe.train, 0)
    bf16 = rt.dtype == torch.bfloat16
    peak = cpu_peak_gflops(bf16)
    target = 94.01
    report = {"machine": runtime.cpu_model(), "cpu_flags": runtime.cpu_flags(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "precision": rt.precision, "peak": peak,
              "date": time.strftime("%Y-%m-%d %H:%M"), "smoke": smoke,
              "command": " ".join(["python bench/cifar_fast.py", *sys.argv[1:]]), "results": {}}

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2) + "\n")
        out_path.with_suffix(".md").write_text(markdown(report))

    if a.only != "ours":
        from importlib import metadata

        import airbench.lib_airbench94 as a94

        if metadata.version("airbench") != "0.1.8":
            sys.exit(f"bench/cifar_fast.py: the peer is airbench==0.1.8; installed: {metadata.version('airbench')} "
                     "(pip install airbench==0.1.8)")
        report["peer_version"] = "airbench==0.1.8"

        raw = DATASETS.get("cifar10")(make({"data": {"name": "cifar10"}}).data)
        # the lossless copy is stored class by class; airbench's own data (the official batches) is in random
        # order and it whitens from the first 5000 images: one fixed shuffle gives it what it expects
        g = torch.Generator().manual_seed(0)
        tr, te = torch.randperm(len(raw.train_x), generator=g), torch.randperm(len(raw.test_x), generator=g)
        if smoke:
            tr, te = tr[:2048], te[:1000]
        data = {"train_x": raw.train_x[tr], "train_y": raw.train_y[tr], "test_x": raw.test_x[te],
                "test_y": raw.test_y[te], "classes": raw.classes}
        peer = AirbenchOnCPU(data, work, bf16)
        epochs = 2 if smoke else None
        model, info = peer.run(a.seed, epochs)
        curve = info["curve"]
        final = [c for c in curve if c["tta_level"] > 0][-1]["test_acc"]
        plain = [c for c in curve if c["tta_level"] == 0]
        n_train = len(data["train_x"])
        bs = a94.hyp["opt"]["batch_size"]
        ep = epochs or a94.hyp["opt"]["train_epochs"]
        images = math.ceil(n_train // bs * ep) * bs
        fl = train_flops_per_image(model.float(), 32)
        # the peer's clock at each epoch end is a train time; its last entry (after TTA) is the total
        train_s = plain[-1]["time"] if plain else info["total_s"]
        report["results"]["airbench94"] = summarize(
            "airbench94 (airbench==0.1.8 train94, unchanged)", final, plain[-1]["test_acc"] if plain else float("nan"),
            info["total_s"], train_s, images, fl * images, plain, peak, target)
        report["results"]["airbench94"]["epochs"] = ep
        save()
    if a.only != "peer":
        r, cfg = run_ours("cifar10-fast", a.preset, a.variant, a.seed, work, sets)
        report["results"]["ours"] = ours_summary(r, peak, target)
        report["results"]["ours"]["config"] = {"study": "cifar10-fast", "preset": a.preset, "variant": a.variant,
                                              "sets": sets}
        save()
    res = report["results"]
    if "ours" in res and "airbench94" in res:
        peer_acc = res["airbench94"]["test_acc_tta"]
        goal = min(peer_acc, 94.0)
        t_peer, t_ours = time_to_goal(res["airbench94"], goal), time_to_goal(res["ours"], goal)
        report["goal"] = {"accuracy": goal, "peer_s": t_peer, "ours_s": t_ours,
                          "ratio": round(t_ours / t_peer, 3) if t_ours and t_peer else None,
                          "met": bool(t_ours and t_peer and t_ours <= 0.7 * t_peer)}
        save()
    print(markdown(report))
    print(f"wrote {out_path}")


def time_to_goal(r: dict, goal: float) -> float | None:
    return r["time_s"] if r["test_acc_tta"] >= goal else None


def markdown(rep: dict) -> str:
    p = rep["peak"]
    lines = [f"# Fast CIFAR-10: ours vs airbench94 on one machine{' (SMOKE: plumbing only)' if rep['smoke'] else ''}",
             "", f"{rep['machine']}, {p['cores']} threads, {rep['precision']}; flags: {', '.join(rep['cpu_flags'])}; "
             f"torch {rep['torch']}; {rep['date']}. Nominal peak {p['gflops']:.0f} GFLOP/s ({p['cores']} x "
             f"{p['ghz']:.2f} GHz x {p['flops_per_cycle']} FLOP/cycle). Command: `{rep['command']}`.", "",
             "| run | test % (TTA) | test % (no TTA) | time s | train s | img/s | achieved GFLOP/s (of peak) | "
             "to 93 % (TTA) | to 94 % (TTA) |", "|---|---|---|---|---|---|---|---|---|"]

    def fmt(x):
        return "not reached" if x is None else f"{x:.0f} s"

    for r in rep["results"].values():
        share = f" ({100 * r['share_of_peak']:.0f} %)" if r.get("share_of_peak") is not None else ""
        lines.append(f"| {r['name']} | {r['test_acc_tta']:.2f} | {r['test_acc_no_tta']:.2f} | {r['time_s']:.0f} | "
                     f"{r['train_s']:.0f} | {r['img_per_s']:.0f} | {r['achieved_gflops']:.0f}{share} | "
                     f"{fmt(r['time_to_93']['with_tta_s'])} | {fmt(r['time_to_94']['with_tta_s'])} |")
    g = rep.get("goal")
    if g:
        lines += ["", f"Goal: reach min(airbench94's final accuracy of this run, 94 %) = {g['accuracy']:.2f} % in <= 0.7x "
                  f"its time. Peer {fmt(g['peer_s'])}, ours {fmt(g['ours_s'])}: ratio "
                  f"{g['ratio'] if g['ratio'] is not None else 'n/a'} -> {'MET' if g['met'] else 'MISSED'}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
