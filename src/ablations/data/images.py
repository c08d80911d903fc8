"""Image datasets as uint8 tensors (decoded once, cached), seeded validation splits, and batched
augmentation that runs on the training device.

Data flow for CIFAR-10/100:
    source (explicit path / $ABLATIONS_DATA / official download)
      -> decode once -> cache file <cache_dir>/<name>-<key>.pt  {train_x, train_y, test_x, test_y, classes, source}
      -> split (seeded val carve, limits, label noise) -> ImageData (uint8 NCHW + mean/std)
    per training batch: augment(x_uint8, cfg.data, generator) -> normalize(x, mean, std) -> model
"""
from __future__ import annotations

import math
import os
import pickle
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import DataConfig, RunConfig
from ..registry import DATASETS
from .sources import DataError, DataNotFound, cache_dir, identity, iter_tar, offline, search_dirs

# torchvision 0.29 (pinned) warns on every decode call that its decoders will move to TorchCodec;
# they are the fastest CPU JPEG path we have (see _decode_chunk), and PIL is the fallback.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

CACHE_VERSION = 1  # bump when the decoded layout changes: old cache files are then ignored
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@dataclass
class ImageData:
    train_x: torch.Tensor  # (N, 3, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]  # per-channel mean of the training split, [0,1] units
    std: tuple[float, float, float]
    source: str  # where the bytes came from (path / URL), for the report
    splits: dict = field(default_factory=dict)  # what each split is, e.g. {"val": "5000 held out of train (seed 0)"}


# ---------------------------------------------------------------- dataset specs

@dataclass(frozen=True)
class CifarSpec:
    name: str  # registry key
    title: str  # for messages and the report
    batches: str  # the official pickle folder
    archive: str  # the official archive holding that folder
    jpeg_archive: str  # an image-folder archive like ../shared/datasets/cifar10-jpeg.tar.gz
    jpeg_root: str  # its top folder: <root>/{train,test}/<class>/*.jpg
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    n_classes: int
    torchvision_cls: str
    url: str


CIFAR10 = CifarSpec(
    "cifar10", "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz", "cifar10-jpeg.tar.gz", "cifar10",
    tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta", b"labels", b"label_names",
    10, "CIFAR10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
CIFAR100 = CifarSpec(
    "cifar100", "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", "cifar100-jpeg.tar.gz", "cifar100",
    ("train",), ("test",), "meta", b"fine_labels", b"fine_label_names",
    100, "CIFAR100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")


def not_found_message(spec: CifarSpec) -> str:
    return (f"{spec.title} not found: no network and no local copy. Put {spec.archive}, a {spec.batches} folder, "
            f"or {spec.jpeg_archive} ({spec.jpeg_root}/{{train,test}}/<class>/*.jpg) in $ABLATIONS_DATA "
            f"or pass --data-dir DIR")


# ---------------------------------------------------------------- decoding

def _log(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        return pickle.loads(blob, encoding="bytes")
    except Exception as e:  # truncated or not a CIFAR batch
        raise DataError(f"{where}: not a readable CIFAR batch file ({type(e).__name__}: {e})") from None


def _from_batches(files: dict[str, bytes], spec: CifarSpec, where: str) -> dict:
    """Official pickle batches {basename: bytes} -> decoded dict. Rows of 'data' are 3072 bytes:
    1024 R, then G, then B, each row-major 32x32, so a reshape to (N, 3, 32, 32) is exact."""
    missing = [f for f in (*spec.train_files, *spec.test_files, spec.meta) if f not in files]
    if missing:
        raise DataError(f"{where}: incomplete {spec.batches} (missing {', '.join(missing)})")
    meta = _unpickle(files[spec.meta], f"{where}/{spec.meta}")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[spec.names_key]]
    out = {}
    for split, names in (("train", spec.train_files), ("test", spec.test_files)):
        xs, ys = [], []
        for n in names:
            d = _unpickle(files[n], f"{where}/{n}")
            try:
                data = torch.frombuffer(bytearray(d[b"data"].tobytes() if hasattr(d[b"data"], "tobytes")
                                                  else d[b"data"]), dtype=torch.uint8)
                xs.append(data.view(-1, 3, 32, 32))
                ys.append(torch.tensor(list(d[spec.label_key]), dtype=torch.int64))
            except (KeyError, RuntimeError, ValueError) as e:
                raise DataError(f"{where}/{n}: unexpected batch layout ({type(e).__name__}: {e})") from None
        out[f"{split}_x"], out[f"{split}_y"] = torch.cat(xs), torch.cat(ys)
        if len(out[f"{split}_x"]) != len(out[f"{split}_y"]):
            raise DataError(f"{where}: {split} images and labels differ in count")
    out["classes"] = classes
    return out


def _batch_names(spec: CifarSpec) -> set[str]:
    return {*spec.train_files, *spec.test_files, spec.meta}


def _read_batches_dir(folder: Path, spec: CifarSpec) -> dict:
    files = {}
    for n in _batch_names(spec):
        p = folder / n
        if p.is_file():
            files[n] = p.read_bytes()
    return _from_batches(files, spec, str(folder))


def _decode_chunk(items: list[tuple[str, bytes]], where: str) -> torch.Tensor:
    """(name, encoded bytes) list -> (k, 3, H, W) uint8. An all-JPEG chunk goes to torchvision's
    batched decode_jpeg (one C++ call, ~25 us per 32x32 image, GIL released); anything else (PNG,
    or a chunk with a bad file, to name it) is decoded one by one (~120 us each)."""
    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    except ImportError:  # a torchvision without its image decoders: PIL, one by one
        return _decode_pil(items, where)

    tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for _, blob in items]
    imgs = None
    if all(n.lower().endswith((".jpg", ".jpeg")) for n, _ in items):
        try:
            imgs = decode_jpeg(tensors, mode=ImageReadMode.RGB)
        except Exception:
            imgs = None  # find and name the bad file below
    if imgs is None:
        imgs = []
        for (name, _), t in zip(items, tensors):
            try:
                imgs.append(decode_image(t, mode=ImageReadMode.RGB))
            except Exception as e:
                raise DataError(f"{where}: cannot decode image {name} ({type(e).__name__}: {e})") from None
    return _stack(items, imgs, where)


def _decode_pil(items: list[tuple[str, bytes]], where: str) -> torch.Tensor:
    import io

    import numpy as np
    from PIL import Image

    imgs = []
    for name, blob in items:
        try:
            arr = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))  # (H, W, 3)
        except Exception as e:
            raise DataError(f"{where}: cannot decode image {name} ({type(e).__name__}: {e})") from None
        imgs.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    return _stack(items, imgs, where)


def _stack(items: list[tuple[str, bytes]], imgs: list[torch.Tensor], where: str) -> torch.Tensor:
    for (name, _), img in zip(items, imgs):
        if img.shape != imgs[0].shape:
            raise DataError(f"{where}: image {name} is {tuple(img.shape[1:])}, expected {tuple(imgs[0].shape[1:])}")
    return torch.stack(imgs) if imgs else torch.empty(0, 3, 0, 0, dtype=torch.uint8)


class _NoImages(DataError):
    pass


def _image_folder_key(name: str) -> Optional[tuple[str, str, str]]:
    """'cifar10/train/cat/0001.jpg' -> ('train', 'cat', '0001.jpg'); None for non-image members."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_EXT) or parts[-1].startswith("."):
        return None
    if parts[-3] not in ("train", "test"):
        return None
    return parts[-3], parts[-2], parts[-1]


def _decode_image_folder(members: Iterable[tuple[str, bytes]], spec: CifarSpec, where: str,
                         workers: int) -> dict:
    """Image-folder members (train|test)/<class>/<file> -> decoded dict. Classes are sorted (for
    CIFAR-10/100 the official label order is alphabetical); within a class, files keep name order
    (NNNN = the class's original order). Decoding is overlapped with reading: chunks go to `workers`
    decode threads as soon as they are read, so gunzip+tar parsing (main thread, mostly Python) runs
    on one core while libjpeg decodes (C++, GIL released) on the other. Measured on 2 shared cores:
    one decode thread is as fast as two (the reader is the bottleneck)."""
    chunk = 2000  # images per decode task: large enough to amortise scheduling, small for overlap
    keys: list[tuple[str, str, str]] = []
    futures = []
    pending: list[tuple[str, bytes]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for name, blob in members:
            k = _image_folder_key(name)
            if k is None:
                continue
            keys.append(k)
            pending.append((name, blob))
            if len(pending) >= chunk:
                futures.append(pool.submit(_decode_chunk, pending, where))
                pending = []
        if pending:
            futures.append(pool.submit(_decode_chunk, pending, where))
        decoded = [f.result() for f in futures]
    if not keys:
        raise _NoImages(f"{where}: no images found (expected {spec.jpeg_root}/{{train,test}}/<class>/*.jpg)")
    shapes = {tuple(d.shape[1:]) for d in decoded}
    if len(shapes) != 1:
        raise DataError(f"{where}: images of different sizes {sorted(shapes)}")
    x_all = torch.cat(decoded)  # (M, 3, H, W) in archive order
    classes = sorted({k[1] for k in keys})
    by_split = {s: sorted({k[1] for k in keys if k[0] == s}) for s in ("train", "test")}
    for s, cs in by_split.items():
        if not cs:
            raise DataError(f"{where}: no {s} images (expected {spec.jpeg_root}/{s}/<class>/*.jpg)")
        if cs != classes:
            raise DataError(f"{where}: {s} has classes {cs}, other split has {classes}")
    if len(classes) != spec.n_classes:
        raise DataError(f"{where}: found {len(classes)} classes, {spec.title} has {spec.n_classes}")
    cidx = {c: i for i, c in enumerate(classes)}
    out = {"classes": classes}
    for s in ("train", "test"):
        sel = [i for i, k in enumerate(keys) if k[0] == s]
        sel.sort(key=lambda i: (cidx[keys[i][1]], keys[i][2]))
        idx = torch.tensor(sel, dtype=torch.int64)
        out[f"{s}_x"] = x_all[idx]
        out[f"{s}_y"] = torch.tensor([cidx[keys[i][1]] for i in sel], dtype=torch.int64)
    return out


def _iter_folder(folder: Path) -> Iterable[tuple[str, bytes]]:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            yield p.relative_to(folder).as_posix(), p.read_bytes()


def _decode_tar(archive: Path, spec: CifarSpec, workers: int) -> dict:
    """An archive holding either the official pickle batches or an image folder (detected by content)."""
    wanted = _batch_names(spec)
    batch_files: dict[str, bytes] = {}

    def images() -> Iterable[tuple[str, bytes]]:
        for name, blob in iter_tar(archive):
            base = PurePosixPath(name).name
            if base in wanted and PurePosixPath(name).parent.name == spec.batches:
                batch_files[base] = blob
            else:
                yield name, blob

    try:
        return _decode_image_folder(images(), spec, str(archive), workers)
    except _NoImages:
        if batch_files:
            return _from_batches(batch_files, spec, str(archive))
        raise DataError(f"{archive}: holds neither {spec.batches}/ nor {spec.jpeg_root}/{{train,test}}/<class>/*.jpg"
                        ) from None


# ---------------------------------------------------------------- locating and caching

def locate(spec: CifarSpec, explicit: Optional[str] = None) -> Optional[tuple[str, Path]]:
    """(kind, path) of the first local copy, kind in {'batches', 'archive', 'folder'}; None if none."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise DataNotFound(f"data path {p} does not exist; " + not_found_message(spec).split(". ", 1)[1])
        if p.is_file():
            return "archive", p
        # a folder: the copy itself, or a folder that holds one
        if (p / spec.meta).is_file() and p.name != spec.jpeg_root:
            return "batches", p
        if (p / "train").is_dir() and (p / "test").is_dir():
            return "folder", p
    for d in search_dirs(explicit):
        if not d.is_dir():
            continue
        for n, kind in ((spec.batches, "batches"), (spec.archive, "archive"),
                        (spec.jpeg_archive, "archive"), (spec.jpeg_root, "folder")):
            c = d / n
            if kind == "batches" and (c / spec.meta).is_file():
                return kind, c
            if kind == "archive" and c.is_file():
                return kind, c
            if kind == "folder" and (c / "train").is_dir():
                return kind, c
    return None


def _download(spec: CifarSpec) -> tuple[str, Path]:
    """The official archive via torchvision (which verifies its md5) into <cache>/downloads."""
    root = cache_dir() / "downloads"
    folder = root / spec.batches
    if all((folder / n).is_file() for n in _batch_names(spec)):
        return "batches", folder
    if offline():
        raise DataNotFound(not_found_message(spec))
    import torchvision

    _log(f"downloading {spec.title} from {spec.url} into {root}")
    try:
        getattr(torchvision.datasets, spec.torchvision_cls)(str(root), train=True, download=True)
    except Exception as e:  # URLError, socket errors, md5 mismatch: all mean "no usable download"
        raise DataNotFound(not_found_message(spec) + f" (download failed: {type(e).__name__}: {e})") from None
    return "batches", folder


def _cache_path(spec: CifarSpec, kind: str, path: Path) -> Path:
    return cache_dir() / f"{spec.name}-{kind}-{identity(path)}-v{CACHE_VERSION}.pt"


def _load_cache(p: Path) -> Optional[dict]:
    try:
        d = torch.load(p, map_location="cpu", weights_only=True)
        ok = (isinstance(d, dict) and d.get("version") == CACHE_VERSION
              and all(k in d for k in ("train_x", "train_y", "test_x", "test_y", "classes", "source"))
              and d["train_x"].dtype == torch.uint8 and len(d["train_x"]) == len(d["train_y"]))
        if ok:
            return d
        _log(f"cache file {p} has an unexpected layout; rebuilding it")
    except Exception as e:  # truncated / corrupt: the cache is only a cache, rebuild it
        _log(f"cache file {p} is unreadable ({type(e).__name__}); rebuilding it")
    return None


def _save_cache(p: Path, d: dict) -> None:
    """Atomic: a crash (or a concurrent reader) never sees a half-written cache file."""
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    try:
        torch.save(d, tmp)
        os.replace(tmp, p)
    except OSError as e:  # a read-only cache is not fatal: next run just decodes again
        _log(f"cannot write cache {p} ({e.strerror or e}); continuing without it")
        tmp.unlink(missing_ok=True)


def load_cifar(spec: CifarSpec, explicit: Optional[str] = None, workers: Optional[int] = None) -> dict:
    """The full decoded dataset {train_x (50000,3,32,32) uint8, train_y (50000,) int64, test_x, test_y,
    classes, source}, from the cache when its source is unchanged, else decoded and cached."""
    found = locate(spec, explicit) or _download(spec)
    kind, path = found
    cpath = _cache_path(spec, kind, path)
    if cpath.exists():
        d = _load_cache(cpath)
        if d is not None:
            return d
    workers = workers or 1  # decode threads besides the reading thread (see _decode_image_folder)
    t0 = time.time()
    _log(f"decoding {spec.title} from {path} (once; cached in {cpath.parent})")
    if kind == "batches":
        d = _read_batches_dir(path, spec)
    elif kind == "folder":
        d = _decode_image_folder(_iter_folder(path), spec, str(path), workers)
    else:
        d = _decode_tar(path, spec, workers)
    if len(d["classes"]) != spec.n_classes:
        raise DataError(f"{path}: found {len(d['classes'])} classes, {spec.title} has {spec.n_classes}")
    d["source"] = str(path.resolve())
    d["version"] = CACHE_VERSION
    _save_cache(cpath, d)
    _log(f"decoded {len(d['train_x'])}+{len(d['test_x'])} images in {time.time() - t0:.1f} s")
    return d


# ---------------------------------------------------------------- splits

def _gen(seed: int, stream: int) -> torch.Generator:
    """Independent seeded streams (split, limit, noise) so changing one knob never shifts another."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream * 7_919 + 17) % 2**63)


def _subsample(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """k sorted indices out of range(n) (all when k <= 0 or k >= n)."""
    if k <= 0 or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=g)[:k].sort().values


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images (N, C, H, W), [0,1] units, from a byte
    histogram per channel: no float copy of the data set (45k CIFAR images would be 550 MB as fp32)."""
    if len(x) == 0:
        return (0.0,) * x.shape[1], (1.0,) * x.shape[1]
    v = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        h = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = h.sum()
        m = (h * v).sum() / n
        var = (h * (v - m) ** 2).sum() / n
        means.append(float(m))
        stds.append(max(float(var.sqrt()), 1e-6))
    return tuple(means), tuple(stds)


def symmetric_noise(y: torch.Tensor, rate: float, n_classes: int, g: torch.Generator) -> torch.Tensor:
    """Replace round(rate * N) labels, chosen at random, by a uniformly random *different* class, so
    the share of wrong labels is exactly `rate` (not rate * (K-1)/K)."""
    y = y.clone()
    k = int(round(rate * len(y)))
    if k <= 0 or n_classes < 2:
        return y
    idx = torch.randperm(len(y), generator=g)[:k]
    shift = torch.randint(1, n_classes, (k,), generator=g)
    y[idx] = (y[idx] + shift) % n_classes
    return y


def make_splits(raw: dict, dc: DataConfig, seed: int, title: str = "") -> ImageData:
    """Full decoded data -> ImageData: a seeded val carve from train, seeded limits, label noise on
    train labels only, and the training split's mean/std."""
    tx, ty = raw["train_x"], raw["train_y"]
    n = len(tx)
    if not 0.0 <= dc.val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in [0, 1), got {dc.val_fraction}")
    if not 0.0 <= dc.label_noise <= 1.0:
        raise DataError(f"data.label_noise must be in [0, 1], got {dc.label_noise}")
    n_val = int(round(dc.val_fraction * n))
    perm = torch.randperm(n, generator=_gen(seed, 1))
    val_idx, tr_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    tr_idx = tr_idx[_subsample(len(tr_idx), dc.limit, _gen(seed, 2))]
    val_idx = val_idx[_subsample(len(val_idx), dc.limit_eval, _gen(seed, 3))]
    te_idx = _subsample(len(raw["test_x"]), dc.limit_eval, _gen(seed, 4))
    classes = list(raw["classes"])
    train_y = ty[tr_idx]
    if dc.label_noise > 0:
        train_y = symmetric_noise(train_y, dc.label_noise, len(classes), _gen(seed, 5))
    train_x = tx[tr_idx]
    mean, std = channel_stats(train_x)
    lim = f", limited to {len(tr_idx)} (seed {seed})" if dc.limit and dc.limit < n - n_val else ""
    noise = f", {dc.label_noise:.0%} of labels replaced by a random other class (seed {seed})" if dc.label_noise else ""
    splits = {
        "train": f"{len(tr_idx)} of the {n} {title} training images{lim}{noise}".replace("  ", " "),
        "val": f"{len(val_idx)} held out of the training images (val_fraction {dc.val_fraction}, seed {seed})",
        "test": f"{len(te_idx)} of the {len(raw['test_x'])} official test images"
                + (f" (limit_eval, seed {seed})" if len(te_idx) < len(raw["test_x"]) else ""),
    }
    return ImageData(train_x=train_x, train_y=train_y, val_x=tx[val_idx], val_y=ty[val_idx],
                     test_x=raw["test_x"][te_idx], test_y=raw["test_y"][te_idx], classes=classes,
                     mean=mean, std=std, source=raw["source"], splits=splits)  # type: ignore[arg-type]


def _builder(spec: CifarSpec):
    def build(cfg: RunConfig, preprocess: Optional[dict] = None) -> ImageData:
        # `preprocess` (a pretrained backbone's recipe: size, mean, std, ...) is accepted but the
        # images stay 32 px: 60k images stored at 224 px would take 9 GB, so upsampling happens per
        # batch in augment(..., size) / center_crop(x, size) instead.
        raw = load_cifar(spec, cfg.data.path)
        return make_splits(raw, cfg.data, cfg.seed, spec.title)

    build.__name__ = f"build_{spec.name}"
    build.__doc__ = f"{spec.title}: (cfg, preprocess=None) -> ImageData (uint8 NCHW, seeded splits)."
    return build


DATASETS.add("cifar10", _builder(CIFAR10))
DATASETS.add("cifar100", _builder(CIFAR100))


# ---------------------------------------------------------------- batched augmentation
# All functions take (N, C, H, W) batches on any device, uint8 (0..255) or float ([0,1] units, before
# normalisation), and return the same dtype. Randomness comes only from the explicit generator: it
# is drawn on the generator's device (a CPU generator for a CUDA batch is fine: only N numbers move),
# so the result is a pure function of (batch, config, generator state).

def _rand(n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device).to(device)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect indices into [0, n-1] without repeating the edge (like F.pad mode='reflect'); valid for
    overshoot < n."""
    return (n - 1) - ((n - 1) - i.abs()).abs()


def flip_translate(x: torch.Tensor, flip: bool, pad: int, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip (p=0.5) then a random shift of dy, dx in [-pad, pad] pixels, as ONE
    gather over H*W. Padding is by reflection rather than zeros: after normalisation a zero pixel is
    not "nothing" but a black (far-from-mean) border the net can key on, and reflection keeps the
    image statistics (what airbench-style CIFAR pipelines do; Keras' tutorial default 'nearest' is
    similar in spirit)."""
    if not flip and pad <= 0:
        return x
    N, C, H, W = x.shape
    dev = x.device
    pad = min(int(pad), H - 1, W - 1)
    f = _rand(N, g, dev) < 0.5 if flip else torch.zeros(N, dtype=torch.bool, device=dev)
    if pad > 0:
        dy = torch.randint(-pad, pad + 1, (N,), generator=g, device=g.device).to(dev)
        dx = torch.randint(-pad, pad + 1, (N,), generator=g, device=g.device).to(dev)
    else:
        dy = dx = torch.zeros(N, dtype=torch.int64, device=dev)
    rows = _reflect(torch.arange(H, device=dev)[None, :] + dy[:, None], H)  # (N, H) source row
    cols = _reflect(torch.arange(W, device=dev)[None, :] + dx[:, None], W)  # (N, W) source col
    cols = torch.where(f[:, None], (W - 1) - cols, cols)  # flip the source: out(i,j) = x(r, W-1-c)
    idx = (rows[:, :, None] * W + cols[:, None, :]).reshape(N, 1, H * W).expand(N, C, H * W)
    return x.reshape(N, C, H * W).gather(2, idx).view(N, C, H, W)


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _to_float(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Float working copy and its full-scale value (255 for uint8, 1 for float)."""
    return (x.float(), 255.0) if x.dtype == torch.uint8 else (x, 1.0)


def _back(y: torch.Tensor, like: torch.Tensor, top: float) -> torch.Tensor:
    y = y.clamp(0.0, top)
    return y.round().to(torch.uint8) if like.dtype == torch.uint8 else y.to(like.dtype)


def random_affine_crop(x: torch.Tensor, size: int | Sequence[int], crop_scale: float, rotate: float,
                       scale: float, g: torch.Generator, ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random-resized-crop (area fraction in [crop_scale, 1], aspect ratio log-uniform in `ratio`),
    rotation (uniform in +-rotate degrees) and zoom (1 +- scale), all as one affine_grid + grid_sample
    to (N, C, size, size). Bilinear sampling with reflection at the borders; no antialiasing, so keep
    downscaling modest (fine for ~160 px sources -> 128..224 px)."""
    N, C, H, W = x.shape
    oh, ow = _as_size(size)
    dev = x.device
    if crop_scale < 1.0:
        area = (crop_scale + (1 - crop_scale) * _rand(N, g, dev)) * H * W  # pixels^2
        lo, hi = math.log(ratio[0]), math.log(ratio[1])
        r = torch.exp(lo + (hi - lo) * _rand(N, g, dev))
        cw = (area * r).sqrt().clamp(max=W)  # crop width, pixels
        ch = (area / r).sqrt().clamp(max=H)
    else:
        cw = torch.full((N,), float(W), device=dev)
        ch = torch.full((N,), float(H), device=dev)
    cx = cw / 2 + (W - cw) * _rand(N, g, dev)  # crop centre, pixels (image spans [0, W])
    cy = ch / 2 + (H - ch) * _rand(N, g, dev)
    th = (2 * _rand(N, g, dev) - 1) * math.radians(rotate) if rotate > 0 else torch.zeros(N, device=dev)
    z = 1 + (2 * _rand(N, g, dev) - 1) * scale if scale > 0 else torch.ones(N, device=dev)
    cos, sin = th.cos(), th.sin()
    # output u in [-1,1]^2 -> input pixel p = c + R(th) diag(cw/2, ch/2) u / z -> normalised 2p/W - 1
    theta = torch.zeros(N, 2, 3, device=dev)
    theta[:, 0, 0] = cos * cw / z / W
    theta[:, 0, 1] = -sin * ch / z / W
    theta[:, 1, 0] = sin * cw / z / H
    theta[:, 1, 1] = cos * ch / z / H
    theta[:, 0, 2] = 2 * cx / W - 1
    theta[:, 1, 2] = 2 * cy / H - 1
    xf, top = _to_float(x)
    grid = F.affine_grid(theta.to(xf.dtype), [N, C, oh, ow], align_corners=False)
    y = F.grid_sample(xf, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return _back(y, x, top)


def color_jitter(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors each uniform in [1-s, 1+s] per image (ITU-R 601
    luma for grey), applied in that order, clamped to the valid range."""
    if strength <= 0:
        return x
    N = x.shape[0]
    dev = x.device
    xf, top = _to_float(x)
    b, c, s = ((1 + (2 * _rand(N, g, dev) - 1) * strength).clamp(min=0).view(N, 1, 1, 1) for _ in range(3))
    w = torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=xf.dtype).view(1, 3, 1, 1)
    y = (xf * b).clamp(0, top)
    m = (y * w).sum(1, keepdim=True).mean((2, 3), keepdim=True)  # (N,1,1,1) mean luma
    y = ((y - m) * c + m).clamp(0, top)
    grey = (y * w).sum(1, keepdim=True)  # (N,1,H,W)
    y = (y - grey) * s + grey
    return _back(y, x, top)


def is_augmenting(dc: DataConfig) -> bool:
    """Whether augment() is random for this config (else training inputs are a fixed function of
    the stored images, e.g. so a frozen backbone's features can be computed once)."""
    return bool(dc.flip or dc.translate > 0 or dc.rotate > 0 or dc.scale > 0 or dc.crop_scale < 1.0
                or dc.color_jitter > 0)


def augment(x: torch.Tensor, dc: DataConfig, g: torch.Generator,
            size: Optional[int | Sequence[int]] = None) -> torch.Tensor:
    """The training-time augmentation of cfg.data on a batch (N, C, H, W) -> (N, C, h, w), where
    (h, w) = size, else dc.image_size, else unchanged. Order: geometric crop/rotate/zoom and resize
    (one grid_sample, only when needed), flip + translate (one gather), colour jitter. Without any
    random option and at the same size this returns x itself."""
    hw = _as_size(size or dc.image_size or tuple(x.shape[-2:]))
    if dc.crop_scale < 1.0 or dc.rotate > 0 or dc.scale > 0 or hw != tuple(x.shape[-2:]):
        x = random_affine_crop(x, hw, dc.crop_scale, dc.rotate, dc.scale, g)
    x = flip_translate(x, dc.flip, dc.translate, g)
    return color_jitter(x, dc.color_jitter, g)


def center_crop(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """The central h x w window of (N, C, H, W). Images smaller than the window are first upsampled
    (bilinear, aspect kept) so their shorter side fits: 32 px CIFAR for a 224 px backbone."""
    h, w = _as_size(size)
    H, W = x.shape[-2:]
    if h > H or w > W:
        k = max(h / H, w / W)
        x = resize(x, (max(h, math.ceil(H * k - 1e-6)), max(w, math.ceil(W * k - 1e-6))))
        H, W = x.shape[-2:]
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


def resize(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinear resize with antialiasing (for downscaling) to (N, C, *size); keeps the dtype."""
    xf, top = _to_float(x)
    y = F.interpolate(xf, size=_as_size(size), mode="bilinear", align_corners=False, antialias=True)
    return _back(y, x, top)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (0..255) or float ([0,1]) images -> float32 (x/255 - mean)/std per channel; mean/std in
    [0,1] units (use mean=0, std=1 for plain [0,1] scaling). Keeps the memory format (channels_last)."""
    C = x.shape[1]
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, C, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, C, 1, 1)
    unit = 255.0 if x.dtype == torch.uint8 else 1.0
    # one multiply-add: x * (1/(unit*std)) - mean/std
    return torch.addcmul(-m / s, x.float(), 1.0 / (unit * s))
