"""Features of a frozen backbone, computed once.

When no backbone parameter trains, no BN statistic changes and the inputs are not augmented, every
epoch would push the same images through the same function. The fine-tuning and zero-shot methods
instead call `cached_features` once per split and train only the head on the (N, D) result: head-only
training on a CPU then takes seconds per epoch instead of minutes.

Features are also kept on disk (under $ABLATIONS_CACHE/features), so every head-only variant of a
study that shares backbone, images and preprocessing computes them only once. The disk key is
derived from the content (backbone weights, the images' bytes, the preprocessed first images,
precision), so a changed input can never reuse stale features.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

CACHE_VERSION = 1


def _features_dir() -> Path:
    from ..data.sources import cache_dir

    d = cache_dir() / "features"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bf16: hash the raw 16-bit words
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")


def content_key(backbone: nn.Module, x_uint8: torch.Tensor, normalize_fn: Callable, dtype) -> str:
    """A digest of everything the features depend on: backbone state (weights and BN statistics),
    the stored images, what normalize_fn makes of the first ones (input size, crop, mean/std,
    memory format) and the autocast dtype. About 1 s per GB of images."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"v{CACHE_VERSION}|{torch.__version__}|{dtype}|{tuple(x_uint8.shape)}|{type(backbone).__name__}".encode())
    for k, v in backbone.state_dict().items():
        h.update(k.encode())
        h.update(_tensor_bytes(v))
    h.update(_tensor_bytes(x_uint8))
    with torch.no_grad():
        probe = normalize_fn(x_uint8[:2])
    h.update(f"{tuple(probe.shape)}|{probe.is_contiguous(memory_format=torch.channels_last)}".encode())
    h.update(_tensor_bytes(probe.float()))
    return h.hexdigest()


@torch.no_grad()
def compute_features(backbone: nn.Module, x_uint8: torch.Tensor, normalize_fn: Callable, device: torch.device,
                     dtype: Optional[torch.dtype], batch_size: int) -> torch.Tensor:
    """backbone(normalize_fn(x)) over x in batches: (N, 3, H, W) uint8 -> (N, D) float32 on device.
    The backbone runs in eval mode (its mode is restored after)."""
    was = backbone.training
    backbone.eval()
    out = []
    try:
        for i in range(0, len(x_uint8), max(1, batch_size)):
            xb = normalize_fn(x_uint8[i:i + batch_size].to(device))
            if dtype is not None:
                with torch.autocast(device.type, dtype=dtype):
                    f = backbone(xb)
            else:
                f = backbone(xb)
            out.append(f.float())
    finally:
        backbone.train(was)
    if not out:
        dim = getattr(backbone, "out_dim", 0)
        return torch.zeros(0, dim, device=device)
    return torch.cat(out)


def cached_features(model: nn.Module, x_uint8: torch.Tensor, normalize_fn: Callable, device: torch.device,
                    dtype: Optional[torch.dtype], batch_size: int, cache_key: Optional[str] = None,
                    stats: Optional[dict] = None, persist: bool = True) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, D) float32 features of model.backbone, from the disk cache when
    the same computation was done before (key: cache_key, else derived from the content).

    stats (optional dict) is updated with: seconds (spent in this call), compute_seconds (time the
    backbone took over these images, now or when the cache was written), from_disk, n, dim.
    Summed over a run's splits, compute_seconds is what each extra epoch would have cost without
    the cache (see time_saved)."""
    t0 = time.time()
    backbone = model.backbone
    path = None
    if persist:
        key = cache_key or content_key(backbone, x_uint8, normalize_fn, dtype)
        path = _features_dir() / f"{key}.pt"
        if path.is_file():
            try:
                d = torch.load(path, map_location="cpu", weights_only=True)
                if d.get("version") == CACHE_VERSION and d["features"].shape[0] == len(x_uint8):
                    feats = d["features"].to(device)
                    _record(stats, t0, float(d["compute_seconds"]), True, feats)
                    return feats
            except Exception:  # unreadable cache: recompute and overwrite it
                pass
    t1 = time.time()
    feats = compute_features(backbone, x_uint8, normalize_fn, device, dtype, batch_size)
    compute = time.time() - t1
    if path is not None:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            torch.save({"version": CACHE_VERSION, "features": feats.cpu(), "compute_seconds": compute}, tmp)
            os.replace(tmp, path)
        except OSError:  # a read-only cache only costs the next run the recomputation
            tmp.unlink(missing_ok=True)
    _record(stats, t0, compute, False, feats)
    return feats


def _record(stats: Optional[dict], t0: float, compute: float, from_disk: bool, feats: torch.Tensor) -> None:
    if stats is None:
        return
    stats["seconds"] = stats.get("seconds", 0.0) + (time.time() - t0)
    stats["compute_seconds"] = stats.get("compute_seconds", 0.0) + compute
    stats["from_disk"] = bool(stats.get("from_disk", True) and from_disk)
    stats["n"] = stats.get("n", 0) + int(feats.shape[0])
    stats["dim"] = int(feats.shape[1]) if feats.ndim == 2 else 0


def time_saved(epoch_compute_seconds: float, epochs: int, seconds_spent: float, once_seconds: float = 0.0) -> float:
    """Seconds saved by caching: without it, the backbone would run over the per-epoch splits
    (train + val: epoch_compute_seconds) every epoch, and over the test split (once_seconds) once;
    with it, the run spent seconds_spent getting all features (computing or loading)."""
    return max(0.0, epochs * epoch_compute_seconds + once_seconds - seconds_spent)
