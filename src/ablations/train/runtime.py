"""What every training family shares: device and precision, seeding, the run directory's files
(config, environment, metrics, checkpoints, final weights) and progress output."""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from ..config import RunConfig, TrainConfig, UserError

CONFIG, ENV, METRICS, CHECKPOINT, FINAL, RESULT = (
    "config.json", "env.json", "metrics.jsonl", "checkpoint.pt", "final.safetensors", "result.json")


class RunError(UserError, RuntimeError):
    """A run cannot go on (NaN loss, finished run dir, ...): one line for the user."""


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


def setup(tc: TrainConfig, seed: int) -> tuple[torch.device, Optional[torch.dtype]]:
    """The first lines of every task: torch threads, device, autocast dtype, seeds."""
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = select_device(tc)
    dtype = amp_dtype(tc, device)
    seed_all(seed)
    return device, dtype


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


def environment(device: torch.device, dtype: Optional[torch.dtype], channels_last: bool) -> dict:
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
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
        "channels_last": channels_last,
        "hostname": platform.node(),
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return env


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file then rename: a crash never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def save_training_state(run_dir: Path, model, opt, epoch: int, step: int, best: dict, scaler=None) -> None:
    """The epoch checkpoint both loops write: everything resume needs to continue as if never stopped."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
             "best": best, "rng": rng_state()}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    save_checkpoint(Path(run_dir) / CHECKPOINT, state)


def restore_training_state(run_dir: Path, model, opt, log: "MetricsLog", scaler=None) -> tuple[int, int, dict]:
    """Load the epoch checkpoint into model/opt(/scaler), restore the RNGs and drop metric records written
    after it; returns (first epoch to run, optimiser steps done, best-so-far record)."""
    ck = load_checkpoint(Path(run_dir) / CHECKPOINT)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    if scaler is not None and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"])
    log.truncate_after(ck["epoch"])
    return ck["epoch"] + 1, ck["step"], ck["best"]


def save_final(run_dir: Path, model: torch.nn.Module, meta: dict | None = None) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    tmp = run_dir / (FINAL + ".tmp")
    save_file(state, str(tmp), metadata={k: str(v) for k, v in (meta or {}).items()})
    os.replace(tmp, run_dir / FINAL)


class MetricsLog:
    """Append-only JSONL; one record per epoch (and any extra events)."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()

    def read(self) -> list[dict]:
        return read_metrics(self.path)

    def truncate_after(self, epoch: int) -> None:
        """On resume: drop records of epochs after the checkpoint (they will be recomputed)."""
        keep = [r for r in self.read() if r.get("epoch", 0) <= epoch]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a crash: ignore it, the checkpoint is the truth
    return out


def prepare_run_dir(run_dir: Path, cfg: RunConfig, overwrite: bool, resume: bool) -> None:
    """Create run_dir, refusing to clobber a finished run unless overwrite; on resume the dir must exist."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / CONFIG).exists():
            raise RunError(f"{run_dir}: not a run directory (no {CONFIG})")
        return
    if (run_dir / RESULT).exists() and not overwrite:
        raise RunError(f"{run_dir} already holds a finished run; pass --overwrite to replace it")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite and (run_dir / CONFIG).exists():
            raise RunError(f"{run_dir} holds an unfinished run; use `ablations resume {run_dir}` or --overwrite")
        for name in (CONFIG, ENV, METRICS, CHECKPOINT, FINAL, RESULT):
            p = run_dir / name
            if p.exists():
                p.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write to output dir {run_dir}: {e.strerror or e}") from None


class Progress:
    """A tqdm bar on a terminal; a plain line every `log_every` steps otherwise."""

    def __init__(self, total: int, desc: str, log_every: int = 50, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.log_every = total, desc, max(1, log_every)
        self.n = 0
        self.t0 = time.time()
        self.bar = None
        if self.stream.isatty() and not os.environ.get("ABLATIONS_PLAIN"):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: float) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        elif self.n % self.log_every == 0 or self.n == self.total:
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
