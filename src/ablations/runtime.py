"""What every run shares besides the loop: device and precision, seeding, the environment record and
progress output. (Run-directory files live in rundir.py.)"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from . import distributed
from .config import TrainConfig
from .errors import RunError


@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes: handed to the method."""
    device: torch.device
    dtype: Optional[torch.dtype]  # autocast dtype; None: plain fp32
    channels_last: bool

    def autocast(self):
        return autocast(self.device, self.dtype)

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """How run records and bench files name an autocast dtype: "bfloat16", "float16", or "fp32" for None."""
    return str(dtype).replace("torch.", "") if dtype else "fp32"


# ---------------------------------------------------------------- device, precision, seeds

def select_device(tc: TrainConfig) -> torch.device:
    if tc.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if tc.device == "cuda" and not torch.cuda.is_available():
        raise RunError("train.device=cuda but no CUDA device is available")
    if tc.device == "mps" and not torch.backends.mps.is_available():
        raise RunError("train.device=mps but MPS is not available")
    return torch.device(tc.device)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for every number we record."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The matrix-relevant CPU flags (AVX2, AVX512*, AMX*): they decide fp32 vs bf16 speed."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(f for f in set(flags) if f.startswith(("avx2", "avx512", "amx", "fma")))


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(tc: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for this run, or None for plain fp32."""
    p = tc.precision
    if p == "fp32":
        return None
    if p == "bf16":
        return torch.bfloat16
    if p == "fp16":
        return torch.float16
    # auto
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def use_channels_last(tc: TrainConfig, device: torch.device) -> bool:
    if tc.channels_last == "auto":
        # measured (bench/cifar_speed.py): channels_last helps bf16 convolutions on CPU and CUDA
        return True
    return tc.channels_last == "on"


def setup(tc: TrainConfig, seed: int) -> Runtime:
    """The first lines of every run: torch threads, device, autocast dtype, seeds."""
    if tc.threads:  # the processes of a distributed run on this machine share them
        torch.set_num_threads(max(1, tc.threads // distributed.local_world()))
    device = distributed.device_for(select_device(tc))  # a distributed CUDA run: this process's GPU
    seed_all(seed)
    return Runtime(device, amp_dtype(tc, device), use_channels_last(tc, device))


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch's randomness (data order, augmentation, dropout) is a pure function of
    (seed, epoch), so a run resumed at an epoch boundary replays exactly the same epochs."""
    return (seed * 1_000_003 + epoch * 7919 + 12345) % 2**63


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- run directory

def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(rt: Runtime) -> dict:
    device, dtype, channels_last = rt.device, rt.dtype, rt.channels_last
    from importlib import metadata

    versions = {}
    for pkg in ("ablations", "torch", "torchvision", "numpy", "safetensors", "efficientnet-lite-pytorch"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    env = {
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "versions": versions,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "precision": precision_name(dtype),
        "channels_last": channels_last,
        "hostname": platform.node(),
        # one run over several processes (distributed.py): how many, and how they talk
        "processes": distributed.current().world,
        "process_backend": distributed.current().backend,
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return env


class Progress:
    """A tqdm bar on a terminal; a plain line every `log_every` steps otherwise; nothing when `quiet` (the
    processes of a distributed run other than rank 0)."""

    def __init__(self, total: int, desc: str, log_every: int = 50, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.log_every, self.quiet = total, desc, max(1, log_every), quiet
        self.n = 0
        self.t0 = time.time()
        self.bar = None
        if self.stream.isatty() and not os.environ.get("ABLATIONS_PLAIN") and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: float) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        elif not self.quiet and (self.n % self.log_every == 0 or self.n == self.total):
            rate = self.n / max(time.time() - self.t0, 1e-9)
            extra = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
            print(f"{self.desc} step {self.n}/{self.total} {extra} ({rate:.1f} it/s)", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_finite(loss: torch.Tensor, step: int, epoch: int) -> float:
    """The loss as a float; a NaN/inf loss stops the run with a message naming the step."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise RunError(f"loss became {value} at step {step} (epoch {epoch}); stopping the run")
    return value


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def batches(n: int, batch_size: int) -> Iterable[slice]:
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))


def log_epoch(variant: str, rec: dict, epochs: int) -> None:
    """One line per epoch on stderr: the epoch record's train/val numbers and its time."""
    nums = ", ".join(f"{k} {v:.4g}" for k, v in rec.items()
                     if k.startswith(("train_", "val_")) and isinstance(v, (int, float)))
    print(f"{variant} epoch {rec['epoch']}/{epochs}: {nums} ({rec.get('epoch_time', 0):.1f} s)",
          file=sys.stderr, flush=True)
