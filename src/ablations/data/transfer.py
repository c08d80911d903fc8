"""Image datasets for transfer learning: Oxford-IIIT Pets, Imagewoof, the cat/dog classes of
CIFAR-10, and any image folder ({train, val|test}/<class>/*).

Images of any size are decoded once into squares for the model that will read them: resized with
one scale factor (aspect ratio kept) so the shorter side is the stored side S, then center-cropped
to S x S, as uint8. S is the input size over the model's crop_pct (224 px input -> 256 px stored),
so the loop's batched augmentation can crop to the input size and evaluation center-crops it. The
decoded tensors are cached under $ABLATIONS_CACHE/transfer, keyed by source identity, S and the
resampling filter; splits (seeded validation carve, limits) are cut from the cache on each load.

    source -> decode + resize (once) -> cache {split: (x, y)} -> RawData -> splits.make_splits
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional

import torch
import torch.nn.functional as F

from dataclasses import dataclass
from typing import Literal

from ..config import opt
from ..registry import DATASETS
from .base import ImageDataConfig, RawData
from .images import CIFAR10, IMAGE_EXT, _log, load_cifar
from .sources import DataError, DataNotFound, cache_dir, find_local, identity, iter_tar, offline

CACHE_VERSION = 2  # bump when the cached layout changes (2: per-split file names)

# the 10 Imagewoof classes (fast.ai), as ImageNet WordNet ids = the folder names
IMAGEWOOF_WNIDS = ("n02086240", "n02087394", "n02088364", "n02089973", "n02093754",
                   "n02096294", "n02099601", "n02105641", "n02111889", "n02115641")
IMAGEWOOF_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz"


# ---------------------------------------------------------------- sizes

@dataclass(frozen=True)
class TransferDataConfig(ImageDataConfig):
    labels: Literal["default", "breed", "binary"] = opt(
        "default", "label set: default (the dataset's classes), breed (= default for pets), binary (cat vs dog)")


def stored_size(cfg: TransferDataConfig, preprocess: Optional[dict]) -> tuple[int, int, str]:
    """(input side, stored side, interpolation), px. The input side is data.image_size, else the
    model's own; it may not be below the model's min_size (its total downsampling)."""
    pre = preprocess or {}
    size = cfg.image_size or int(pre.get("size") or 0)
    if size <= 0:
        raise DataError(f"{cfg.name}: set data.image_size (pixels): the model has no input size of its own")
    if pre.get("min_size") and size < pre["min_size"]:
        raise DataError(f"data.image_size={size} is below the model's smallest input, {pre['min_size']} px "
                        "(its total downsampling)")
    crop_pct = float(pre.get("crop_pct", 1.0))
    return size, int(round(size / crop_pct)), str(pre.get("interpolation", "bilinear"))


# ---------------------------------------------------------------- decoding

def _decode_resized(blob: bytes, side: int, interpolation: str) -> torch.Tensor:
    """Encoded image -> (3, side, side) uint8: shorter side scaled to `side` (one factor, antialiased
    when shrinking), then the central square."""
    from torchvision.io import ImageReadMode, decode_image

    img = decode_image(torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=ImageReadMode.RGB)
    _, h, w = img.shape
    k = side / min(h, w)
    nh, nw = max(side, round(h * k)), max(side, round(w * k))
    if (nh, nw) != (h, w):
        x = F.interpolate(img[None].float(), size=(nh, nw), mode=interpolation, align_corners=False, antialias=True)
        img = x[0].clamp_(0, 255).round_().to(torch.uint8)
    top, left = (nh - side) // 2, (nw - side) // 2
    return img[:, top:top + side, left:left + side].contiguous()


def _decode_many(items: list[tuple[str, bytes]], side: int, interpolation: str, where: str) -> torch.Tensor:
    out = torch.empty(len(items), 3, side, side, dtype=torch.uint8)
    for i, (name, blob) in enumerate(items):
        try:
            out[i] = _decode_resized(blob, side, interpolation)
        except Exception as e:
            raise DataError(f"{where}: cannot decode image {name} ({type(e).__name__}: {e})") from None
    return out


def decode_all(items: Iterable[tuple[str, bytes]], side: int, interpolation: str, where: str,
               workers: int = 2) -> tuple[list[str], torch.Tensor]:
    """(names, (N, 3, side, side) uint8) in input order. Chunks go to a thread pool as they are read
    (libjpeg and interpolate release the GIL, tar parsing does not)."""
    chunk = 256  # images per task
    names: list[str] = []
    futures, pending = [], []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for name, blob in items:
            names.append(name)
            pending.append((name, blob))
            if len(pending) >= chunk:
                futures.append(pool.submit(_decode_many, pending, side, interpolation, where))
                pending = []
        if pending:
            futures.append(pool.submit(_decode_many, pending, side, interpolation, where))
        parts = [f.result() for f in futures]
    x = torch.cat(parts) if parts else torch.empty(0, 3, side, side, dtype=torch.uint8)
    return names, x


# ---------------------------------------------------------------- cache

def _cache_file(kind: str, src: Path, side: int, interpolation: str) -> Path:
    d = cache_dir() / "transfer"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{kind}-{identity(src)}-{side}px-{interpolation}-v{CACHE_VERSION}.pt"


def _cached(path: Path, build) -> dict:
    """Load the decoded dict at `path`, or build it (slow, once) and save it atomically."""
    if path.is_file():
        try:
            # mmap: the splits are cut by indexing (copies), so the file is never held twice in memory
            d = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(d, dict) and d.get("version") == CACHE_VERSION:
                return d
        except Exception as e:  # a truncated cache is only a cache: rebuild it
            _log(f"cache file {path} is unreadable ({type(e).__name__}); rebuilding it")
    t0 = time.time()
    d = build()
    d["version"] = CACHE_VERSION
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(d, tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        _log(f"cannot write cache {path} ({e.strerror or e}); continuing without it")
    n = sum(len(v["y"]) for v in d["splits"].values())
    _log(f"decoded {n} images in {time.time() - t0:.1f} s (cached in {path})")
    return d


# ---------------------------------------------------------------- image folders

_SPLIT_NAMES = ("train", "val", "test")


def _folder_key(name: str) -> Optional[tuple[str, str, str]]:
    """'<anything>/train/<class>/<file>' -> ('train', class, file); None for other members."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or parts[-3] not in _SPLIT_NAMES:
        return None
    if parts[-1].startswith(".") or not parts[-1].lower().endswith(IMAGE_EXT):
        return None
    return parts[-3], parts[-2], parts[-1]


def _iter_dir(folder: Path) -> Iterator[tuple[str, bytes]]:
    for p in sorted(folder.rglob("*")):
        if p.is_file() and _folder_key(p.relative_to(folder).as_posix()):
            yield p.relative_to(folder).as_posix(), p.read_bytes()


def _iter_source(src: Path) -> Iterator[tuple[str, bytes]]:
    if src.is_dir():
        return _iter_dir(src)
    if not src.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        raise DataError(f"{src}: expected a folder or a .tar/.tar.gz archive with {{train,val|test}}/<class>/*")
    return (m for m in iter_tar(src) if _folder_key(m[0]))


def decode_image_folder(src: Path, side: int, interpolation: str) -> dict:
    """{train, val|test}/<class>/<image> (under any top folder) -> {"classes": sorted class names,
    "splits": {split: {"x": (N,3,S,S) uint8, "y": (N,) int64}}, "source"}. Every split must hold
    the same classes; files are ordered by (class, file name)."""
    where = str(src)
    names, x = decode_all(_iter_source(src), side, interpolation, where)
    keys = [_folder_key(n) for n in names]
    by_split: dict[str, set[str]] = {}
    for k in keys:
        by_split.setdefault(k[0], set()).add(k[1])  # type: ignore[index]
    if "train" not in by_split:
        found = ", ".join(sorted(by_split)) or "no images at all"
        raise DataError(f"{where}: no train/<class>/<image> files (found {found}); expected the layout "
                        "{train, val|test}/<class>/*.jpg")
    if not ({"val", "test"} & set(by_split)):
        raise DataError(f"{where}: only a train split; expected val/<class>/* or test/<class>/* beside train/")
    classes = sorted(by_split["train"])
    for s, cs in by_split.items():
        if cs != set(classes):
            extra, missing = sorted(cs - set(classes)), sorted(set(classes) - cs)
            msg = []
            if extra:
                msg.append(f"{s} has classes not in train: {', '.join(extra[:5])}")
            if missing:
                msg.append(f"{s} lacks train classes: {', '.join(missing[:5])}")
            raise DataError(f"{where}: class mismatch between splits: {'; '.join(msg)}")
    cidx = {c: i for i, c in enumerate(classes)}
    out: dict = {"classes": classes, "splits": {}, "source": str(src.resolve())}
    for s in by_split:
        sel = sorted((i for i, k in enumerate(keys) if k[0] == s), key=lambda i: (cidx[keys[i][1]], keys[i][2]))
        idx = torch.tensor(sel, dtype=torch.int64)
        out["splits"][s] = {"x": x[idx], "y": torch.tensor([cidx[keys[i][1]] for i in sel], dtype=torch.int64),
                            "files": ["/".join(keys[i]) for i in sel]}  # 'train/<class>/<file>', for labels_csv
    return out


# ---------------------------------------------------------------- raw splits

def to_raw(raw: dict, test_split: str, title: str, classes: Optional[list[str]] = None, labels: str = "y") -> RawData:
    """Decoded splits {split: {x, y[, species]}} -> RawData. The test split is `test_split`; the folder's
    own 'val' is the validation split when it is not the test split (else make_splits carves one)."""
    sp = raw["splits"]
    val = sp.get("val") if test_split != "val" else None
    return RawData(sp["train"]["x"], sp["train"][labels], sp[test_split]["x"], sp[test_split][labels],
                   list(classes if classes is not None else raw["classes"]), raw["source"], title,
                   test_name=f"official {test_split}", val_x=val["x"] if val else None,
                   val_y=val[labels] if val else None, train_files=sp["train"].get("files"))


def _check_labels(cfg: TransferDataConfig, allowed: tuple[str, ...]) -> str:
    lab = cfg.labels
    if lab not in allowed:
        raise DataError(f"data.labels={lab!r} is not offered by dataset {cfg.name!r}; choices: {', '.join(allowed)}")
    return lab


# ---------------------------------------------------------------- datasets

def folder_classes(path: Optional[str]) -> Optional[list[str]]:
    """The class folders of an image-folder copy on disk (cheap: a directory listing; None for archives
    and anything else, which only decoding can tell)."""
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_dir() or _is_pets(p):
        return None
    for root in (p, *sorted(q for q in p.iterdir() if q.is_dir())):
        train = root / "train"
        if train.is_dir():
            return sorted(c.name for c in train.iterdir() if c.is_dir() and not c.name.startswith("."))
    return None


def binary_applicable(cfg: TransferDataConfig) -> Optional[str]:
    """Why this config cannot run on its data (None: it can, or only decoding can tell): cat/dog labels
    need Pets' species column or a folder with exactly two classes."""
    classes = folder_classes(cfg.path)
    if cfg.labels == "binary" and classes is not None and len(classes) != 2:
        return (f"data.labels=binary needs Pets' species column or a folder of exactly 2 classes; {cfg.path} is an "
                f"image folder of {len(classes)} classes")
    return None


@DATASETS.register("imagefolder", TransferDataConfig, input="images", applicable=binary_applicable)
def imagefolder(cfg: TransferDataConfig, preprocess: Optional[dict] = None) -> RawData:
    """Any image folder or archive: data.path = DIR or .tar.gz holding {train, val|test}/<class>/*.
    With both val/ and test/, each is used as is; with one of them, it is the test split and
    validation is carved from train. data.labels: default (= breed: the folder's classes), or
    binary, which a folder with exactly two classes satisfies as it is."""
    lab = _check_labels(cfg, ("default", "breed", "binary"))
    if not cfg.path:
        raise DataNotFound("dataset imagefolder needs data.path=DIR_OR_ARCHIVE holding {train, val|test}/<class>/*")
    src = Path(cfg.path).expanduser()
    if not src.exists():
        raise DataNotFound(f"data path {src} does not exist; expected a folder or .tar.gz with {{train, val|test}}/<class>/*")
    _, side, interp = stored_size(cfg, preprocess)
    raw = _cached(_cache_file("imagefolder", src, side, interp), lambda: decode_image_folder(src, side, interp))
    if lab == "binary" and len(raw["classes"]) != 2:
        raise DataError(f"data.labels=binary: {src} has {len(raw['classes'])} classes, not 2 (cat/dog labels come "
                        "from Pets' species column; an image folder only has its own classes): use data.labels=default")
    test = "test" if "test" in raw["splits"] else "val"
    return to_raw(raw, test, src.name)


@DATASETS.register("imagewoof", TransferDataConfig, input="images")
def imagewoof(cfg: TransferDataConfig, preprocess: Optional[dict] = None) -> RawData:
    """Imagewoof2 (fast.ai): 10 dog breeds of ImageNet, 160 px release. Its official val split is
    the test split here; validation is carved from train (seeded). Classes are WordNet ids."""
    _check_labels(cfg, ("default",))
    names = ["imagewoof2-160.tar.gz", "imagewoof2-160.tgz", "imagewoof2-160"]
    explicit = Path(cfg.path).expanduser() if cfg.path else None
    if explicit is not None and (explicit / "train").is_dir():
        src: Optional[Path] = explicit  # the layout itself, under any folder name
    else:
        src = find_local(names, cfg.path)
    if src is None:
        src = _download_imagewoof(names)
    _, side, interp = stored_size(cfg, preprocess)
    raw = _cached(_cache_file("imagewoof", src, side, interp), lambda: decode_image_folder(src, side, interp))
    if sorted(raw["classes"]) != sorted(IMAGEWOOF_WNIDS) or "val" not in raw["splits"]:
        raise DataError(f"{src}: not Imagewoof: expected train/ and val/ with the 10 classes "
                        f"{', '.join(IMAGEWOOF_WNIDS)}; found {', '.join(raw['classes'][:12])}")
    return to_raw(raw, "val", "Imagewoof")


def _download_imagewoof(names: list[str]) -> Path:
    root = cache_dir() / "downloads"
    folder = root / "imagewoof2-160"
    if (folder / "train").is_dir():
        return folder
    msg = (f"Imagewoof not found: put {' or '.join(names)} (layout imagewoof2-160/{{train,val}}/<wnid>/*.JPEG) "
           "in $ABLATIONS_DATA or pass data.path=FILE_OR_DIR")
    if offline():
        raise DataNotFound(msg)
    from torchvision.datasets.utils import download_and_extract_archive

    _log(f"downloading Imagewoof from {IMAGEWOOF_URL} into {root}")
    try:
        download_and_extract_archive(IMAGEWOOF_URL, str(root))
    except Exception as e:
        raise DataNotFound(f"{msg} (download failed: {type(e).__name__}: {e})") from None
    return folder


@DATASETS.register("cifar10-catdog", TransferDataConfig, input="images")
def cifar10_catdog(cfg: TransferDataConfig, preprocess: Optional[dict] = None) -> RawData:
    """The cat and dog classes of CIFAR-10 (5000 + 5000 train, 1000 + 1000 test), labels cat=0,
    dog=1: the offline stand-in for Pets' binary problem. Read through data/images.py's CIFAR
    loader (same sources, same cache); stays 32 px, upsampled per batch to the model's input."""
    _check_labels(cfg, ("default", "binary"))
    raw = load_cifar(CIFAR10, cfg.path)
    keep = [raw["classes"].index(c) for c in ("cat", "dog")]

    def pick(x, y):
        m = (y == keep[0]) | (y == keep[1])
        return {"x": x[m], "y": (y[m] == keep[1]).long()}

    sub = {"classes": ["cat", "dog"], "source": raw["source"],
           "splits": {"train": pick(raw["train_x"], raw["train_y"]), "test": pick(raw["test_x"], raw["test_y"])}}
    return to_raw(sub, "test", "CIFAR-10 cat+dog")


# ---------------------------------------------------------------- Oxford-IIIT Pets

PETS_DIR = "oxford-iiit-pet"


def _is_pets(p: Path) -> bool:
    return any((c / "images").is_dir() and (c / "annotations" / "trainval.txt").is_file() for c in (p, p / PETS_DIR))


def _pets_root(explicit: Optional[str]) -> Path:
    """The folder holding images/ and annotations/: data.path (the folder itself or its parent),
    then $ABLATIONS_DATA/oxford-iiit-pet, then a torchvision download into the cache."""
    def ok(p: Path) -> bool:
        return (p / "images").is_dir() and (p / "annotations" / "trainval.txt").is_file()

    layout = ("images/<name>.jpg, annotations/trainval.txt and annotations/test.txt "
              "(the official Oxford-IIIT Pets layout)")
    if explicit:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise DataNotFound(f"data path {p} does not exist; expected a folder with {layout}")
        for cand in (p, p / PETS_DIR):
            if ok(cand):
                return cand
        raise DataError(f"{p}: not an Oxford-IIIT Pets folder; expected {layout}")
    found = find_local([PETS_DIR])
    if found is not None and ok(found):
        return found
    root = cache_dir() / "downloads"
    if ok(root / PETS_DIR):
        return root / PETS_DIR
    msg = f"Oxford-IIIT Pets not found: put a folder {PETS_DIR}/ with {layout} in $ABLATIONS_DATA or pass data.path=DIR"
    if offline():
        raise DataNotFound(msg)
    import torchvision

    _log(f"downloading Oxford-IIIT Pets into {root}")
    try:
        for split in ("trainval", "test"):
            torchvision.datasets.OxfordIIITPet(str(root), split=split, download=True)
    except Exception as e:
        raise DataNotFound(f"{msg} (download failed: {type(e).__name__}: {e})") from None
    return root / PETS_DIR


def _read_pets_list(path: Path) -> list[tuple[str, int, int]]:
    """annotations/{trainval,test}.txt lines 'Abyssinian_100 1 1 1' -> (image, class id 1..37,
    species 1=cat 2=dog)."""
    if not path.is_file():
        raise DataError(f"{path} is missing (Oxford-IIIT Pets needs annotations/trainval.txt and test.txt)")
    rows = []
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            rows.append((parts[0], int(parts[1]), int(parts[2])))
        except (IndexError, ValueError):
            raise DataError(f"{path}:{ln}: expected 'IMAGE CLASS_ID SPECIES BREED_ID', got {line!r}") from None
    if not rows:
        raise DataError(f"{path}: no entries")
    return rows


def decode_pets(root: Path, side: int, interpolation: str) -> dict:
    lists = {s: _read_pets_list(root / "annotations" / f"{s}.txt") for s in ("trainval", "test")}
    breeds: dict[int, str] = {}
    for rows in lists.values():
        for name, cid, _ in rows:
            breeds.setdefault(cid, name.rsplit("_", 1)[0])
    # the breeds that are there (a partial copy may hold 3 of the 37, ids 5, 12, 30): labels 0..k-1 in id order
    ids = sorted(breeds)
    index = {cid: k for k, cid in enumerate(ids)}
    out: dict = {"classes": [breeds[i] for i in ids], "splits": {}, "source": str(root.resolve())}
    for split, rows in lists.items():
        def items():
            for name, _, _ in rows:
                p = root / "images" / f"{name}.jpg"
                if not p.is_file():
                    raise DataError(f"{p} is listed in annotations/{split}.txt but missing")
                yield p.name, p.read_bytes()

        _, x = decode_all(items(), side, interpolation, str(root))
        out["splits"]["train" if split == "trainval" else "test"] = {
            "x": x,
            "y": torch.tensor([index[cid] for _, cid, _ in rows], dtype=torch.int64),
            "species": torch.tensor([sp - 1 for _, _, sp in rows], dtype=torch.int64),  # 0 cat, 1 dog
        }
    return out


@DATASETS.register("pets", TransferDataConfig, input="images", applicable=binary_applicable)
def pets(cfg: TransferDataConfig, preprocess: Optional[dict] = None) -> RawData:
    """Oxford-IIIT Pets, official trainval/test split (validation carved from trainval, seeded).
    data.labels: 'breed' (37 classes; also 'default') or 'binary' (cat/dog, from the species column).
    A data.path in image-folder layout instead ({train, val|test}/<class>/*, folder or archive) is read
    as `imagefolder`, so the pets-transfer study runs unchanged on another dataset."""
    lab = _check_labels(cfg, ("default", "breed", "binary"))
    if cfg.path and not _is_pets(Path(cfg.path).expanduser()):
        p = Path(cfg.path).expanduser()
        if p.is_file() or (p.is_dir() and any(q.is_dir() for s in _SPLIT_NAMES for q in (*p.glob(s), *p.glob(f"*/{s}")))):
            # any dataset of comparable difficulty, in image-folder layout: the same study runs on it
            return imagefolder(cfg, preprocess)
    root = _pets_root(cfg.path)
    _, side, interp = stored_size(cfg, preprocess)
    raw = _cached(_cache_file("pets", root, side, interp), lambda: decode_pets(root, side, interp))
    if lab == "binary":
        return to_raw(raw, "test", "Oxford-IIIT Pets", classes=["cat", "dog"], labels="species")
    return to_raw(raw, "test", "Oxford-IIIT Pets")
