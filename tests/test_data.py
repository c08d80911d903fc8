"""Data: sources, decoding + cache, seeded splits, batched augmentation. Synthetic data made here;
the real CIFAR-10 copy under ../shared/datasets is used only when present (and only cheaply).
(tests/test_splits.py covers the splits module in depth, tests/test_augment.py the augmentation registry.)"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablations.config import ConfigError, RunConfig, make
from ablations.data import images as im
from ablations.data import sources as src
from ablations.data.augment import (build_pipeline, center_crop, color_jitter, flip_translate, normalize,
                                    random_affine_crop)
from ablations.data.base import ImageDataConfig, RawData, Splits
from ablations.data.images import CIFAR10, load_cifar
from ablations.data.sources import DataError, DataNotFound
from ablations.data.splits import channel_stats, make_splits
from ablations.registry import DATASETS

# torchvision 0.29 announces on each decode that its decoders move to TorchCodec (images.py filters
# it at import; pytest re-enables DeprecationWarnings per test)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
REAL_NAME = "cifar10-lossless.tar.gz"  # the shared copy (WebP lossless, official split; see its README)
REAL_CACHE_DIR = Path(os.environ.get("ABLATIONS_CACHE") or Path.home() / ".cache" / "ablations")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test: a private cache, no $ABLATIONS_DATA, and never the network."""
    monkeypatch.setenv("ABLATIONS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ABLATIONS_OFFLINE", "1")
    monkeypatch.delenv("ABLATIONS_DATA", raising=False)
    torch.set_num_threads(1)


def _img(cls: int, i: int, split: str) -> np.ndarray:
    """A 32x32 RGB image whose pixels encode (class, index, split): R=cls*20, G=i*10 (+100 on test),
    B = a horizontal ramp (so flips are visible)."""
    a = np.zeros((32, 32, 3), np.uint8)
    a[..., 0] = cls * 20
    a[..., 1] = i * 10 + (100 if split == "test" else 0)
    a[..., 2] = np.arange(32, dtype=np.uint8)[None, :] * 7
    return a


def _encode(a: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


N_TRAIN, N_TEST = 3, 2  # per class


def make_image_archive(path: Path, fmt: str = "PNG", root: str = "cifar10") -> Path:
    ext = "png" if fmt == "PNG" else "jpg"
    with tarfile.open(path, "w:gz") as tf:
        # written in a scrambled order: the loader must sort classes and file names itself
        for split, n in (("test", N_TEST), ("train", N_TRAIN)):
            for c in reversed(range(10)):
                for i in reversed(range(n)):
                    _add(tf, f"{root}/{split}/{CLASSES[c]}/{i:04d}.{ext}", _encode(_img(c, i, split), fmt))
    return path


def make_batches_dir(folder: Path, per_batch: int = 4, n_test: int = 6) -> tuple[Path, dict]:
    """A fake official cifar-10-batches-py: 5 train batches + test batch + meta, pickle format."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    truth = {}
    for name, n in [(f"data_batch_{b}", per_batch) for b in range(1, 6)] + [("test_batch", n_test)]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        (folder / name).write_bytes(pickle.dumps({b"data": x, b"labels": y, b"batch_label": name.encode()}))
        truth[name] = (x, y)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}))
    return folder, truth


def cfg_for(path=None, seed=0, **data) -> RunConfig:
    return make({"data": {"name": "cifar10", "path": str(path) if path else None, **data}}, seed=seed)


def load(cfg: RunConfig) -> Splits:
    """What a method trains on: the dataset's RawData, carved by the one splits module."""
    raw = DATASETS.get(cfg.data.name)(cfg.data, None)
    assert isinstance(raw, RawData)
    return make_splits(raw, cfg.data, cfg.seed)


# ---------------------------------------------------------------- sources and loading

def test_image_folder_archive(tmp_path):
    arc = make_image_archive(tmp_path / "cifar10-jpeg.tar.gz")
    raw = load_cifar(CIFAR10, str(arc))
    assert raw["classes"] == CLASSES
    assert raw["train_x"].shape == (10 * N_TRAIN, 3, 32, 32) and raw["train_x"].dtype == torch.uint8
    assert raw["test_x"].shape == (10 * N_TEST, 3, 32, 32)
    # class-major, file order within class; PNG is lossless so pixels are exact
    assert raw["train_y"].tolist() == [c for c in range(10) for _ in range(N_TRAIN)]
    for k, (c, i) in enumerate((c, i) for c in range(10) for i in range(N_TRAIN)):
        assert torch.equal(raw["train_x"][k], torch.from_numpy(_img(c, i, "train")).permute(2, 0, 1))
    assert torch.equal(raw["test_x"][N_TEST * 3 + 1], torch.from_numpy(_img(3, 1, "test")).permute(2, 0, 1))
    assert raw["source"] == str(arc.resolve())


def test_jpeg_archive_via_env_and_registry(tmp_path, monkeypatch):
    make_image_archive(tmp_path / "cifar10-jpeg.tar.gz", fmt="JPEG")
    monkeypatch.setenv("ABLATIONS_DATA", str(tmp_path))
    data = load(cfg_for(val_fraction=0.2))
    assert data.classes == CLASSES
    assert len(data.train_x) + len(data.val_x) == 10 * N_TRAIN and len(data.val_x) == 6
    assert data.test_y.tolist() == [c for c in range(10) for _ in range(N_TEST)]
    ref = torch.from_numpy(_img(4, 1, "test")).permute(2, 0, 1).float()
    assert (data.test_x[4 * N_TEST + 1].float() - ref).abs().mean() < 3  # JPEG q95: a few levels off
    # the statistics are those of the training images (not val/test: test images have G + 100), by hand from
    # _img: R = 20 * class, B = a ramp 0, 7, ..., 217 (mean 108.5) in every image; JPEG moves them slightly
    assert data.mean[0] == pytest.approx(20 * float(data.train_y.float().mean()) / 255, abs=0.01)
    assert data.mean[2] == pytest.approx(108.5 / 255, abs=0.01)
    assert data.std[2] == pytest.approx(float((torch.arange(32) * 7.0).std(unbiased=False)) / 255, abs=0.01)
    assert data.mean == pytest.approx((data.train_x.double() / 255).mean((0, 2, 3)).tolist(), abs=1e-9)
    assert set(data.splits) == {"train", "val", "test"}


def test_image_folder_on_disk(tmp_path):
    root = tmp_path / "cifar10"
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for c in range(10):
            d = root / split / CLASSES[c]
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i:04d}.png").write_bytes(_encode(_img(c, i, split), "PNG"))
    raw = load_cifar(CIFAR10, str(root))
    assert raw["train_y"].tolist() == [c for c in range(10) for _ in range(N_TRAIN)]


def _check_batches(raw, truth):
    x = np.concatenate([truth[f"data_batch_{b}"][0] for b in range(1, 6)])
    y = sum((truth[f"data_batch_{b}"][1] for b in range(1, 6)), [])
    assert raw["classes"] == CLASSES
    assert raw["train_x"].shape == (20, 3, 32, 32)
    assert torch.equal(raw["train_x"].reshape(20, -1), torch.from_numpy(x))  # R plane, G plane, B plane
    assert raw["train_y"].tolist() == y
    assert raw["test_y"].tolist() == truth["test_batch"][1] and raw["test_x"].shape == (6, 3, 32, 32)


def test_official_batches_folder_and_archive(tmp_path, monkeypatch):
    folder, truth = make_batches_dir(tmp_path / "data" / "cifar-10-batches-py")
    monkeypatch.setenv("ABLATIONS_DATA", str(tmp_path / "data"))
    _check_batches(load_cifar(CIFAR10), truth)
    _check_batches(load_cifar(CIFAR10, str(folder)), truth)  # the folder itself as data.path
    arc = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(folder, arcname="cifar-10-batches-py")
    _check_batches(load_cifar(CIFAR10, str(arc)), truth)


def test_cache_is_reused_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    arc = make_image_archive(tmp_path / "cifar10-jpeg.tar.gz")
    first = load_cifar(CIFAR10, str(arc))
    files = list((tmp_path / "cache").glob("cifar10-*.pt"))
    assert len(files) == 1

    def no_decode(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    with monkeypatch.context() as m:
        m.setattr(im, "_decode_tar", no_decode)
        second = load_cifar(CIFAR10, str(arc))
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(first[k], second[k])
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated cache file: silently rebuilt
    third = load_cifar(CIFAR10, str(arc))
    assert torch.equal(third["train_x"], first["train_x"])
    assert torch.load(files[0], weights_only=True)["version"] == im.CACHE_VERSION
    # a changed source (size/mtime) gets its own cache entry
    time.sleep(0.01)
    make_image_archive(arc, fmt="JPEG")
    load_cifar(CIFAR10, str(arc))
    assert len(list((tmp_path / "cache").glob("cifar10-*.pt"))) == 2
    assert not list((tmp_path / "cache").glob("*.tmp*"))  # atomic writes leave no temp files


def test_missing_data_is_a_clear_error_without_network(tmp_path, monkeypatch):
    import torchvision

    def boom(*a, **k):
        raise AssertionError("tried the network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", boom)
    with pytest.raises(DataNotFound) as e:
        DATASETS.get("cifar10")(cfg_for().data, None)
    msg = str(e.value)
    assert "CIFAR-10 not found" in msg and "$ABLATIONS_DATA" in msg and "--data-dir" in msg
    assert "cifar-10-python.tar.gz" in msg and "cifar-10-batches-py" in msg and "\n" not in msg
    monkeypatch.setenv("ABLATIONS_DATA", str(tmp_path))  # a folder without any copy
    with pytest.raises(DataNotFound):
        load_cifar(CIFAR10)
    with pytest.raises(DataNotFound, match="does not exist"):
        load_cifar(CIFAR10, str(tmp_path / "nope"))


def test_download_failure_becomes_data_not_found(monkeypatch):
    import torchvision

    def offline_download(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.delenv("ABLATIONS_OFFLINE")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline_download)
    with pytest.raises(DataNotFound, match="download failed: OSError: Network is unreachable"):
        load_cifar(CIFAR10)


def test_corrupt_archive_names_the_file(tmp_path):
    good = make_image_archive(tmp_path / "good.tar.gz")
    bad = tmp_path / "cifar10-jpeg.tar.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated download
    with pytest.raises(DataError, match=f"{bad}: corrupt or truncated archive") as e:
        load_cifar(CIFAR10, str(bad))
    assert "\n" not in str(e.value)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="junk.tar.gz: corrupt"):
        load_cifar(CIFAR10, str(junk))
    # a broken image inside a good archive
    broken = tmp_path / "broken.tar.gz"
    with tarfile.open(broken, "w:gz") as tf:
        _add(tf, "cifar10/train/cat/0000.jpg", b"\xff\xd8garbage")
    with pytest.raises(DataError, match="cannot decode image cifar10/train/cat/0000.jpg"):
        load_cifar(CIFAR10, str(broken))
    # an archive of something else
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tf:
        _add(tf, "readme.txt", b"hello")
    with pytest.raises(DataError, match="holds neither"):
        load_cifar(CIFAR10, str(other))


def test_unsafe_archive_members_are_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        _add(tf, "../escape.txt", b"x")
    with pytest.raises(DataError, match="unsafe member"):
        src.extract_tar(evil, tmp_path / "out")
    with pytest.raises(DataError, match="unsafe member"):
        list(src.iter_tar(evil))
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()
    ok = make_image_archive(tmp_path / "ok.tar.gz")
    dest = src.extract_tar(ok)
    assert dest.parent == tmp_path / "cache" / "extracted"
    assert (dest / "cifar10" / "train" / "cat" / "0002.png").is_file()


def test_find_local_and_cache_dir(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.tar.gz").write_bytes(b"")
    assert src.find_local(["a", "b.tar.gz"], str(tmp_path / "d")) == tmp_path / "d" / "b.tar.gz"
    assert src.find_local(["a"], None) is None
    monkeypatch.setenv("ABLATIONS_DATA", str(tmp_path / "d"))
    assert src.find_local(["b.tar.gz"], None) == tmp_path / "d" / "b.tar.gz"
    assert src.cache_dir() == tmp_path / "cache" and src.cache_dir().is_dir()
    monkeypatch.delenv("ABLATIONS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert src.cache_dir() == tmp_path / "home" / ".cache" / "ablations"


# ---------------------------------------------------------------- splits

def _raw(n=1000, n_test=200, k=10) -> RawData:
    """Synthetic decoded data whose pixel (0,0,0..1) encodes the example's index."""
    x = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = torch.arange(n) // 256, torch.arange(n) % 256
    tx = torch.zeros(n_test, 3, 4, 4, dtype=torch.uint8)
    tx[:, 0, 0, 0], tx[:, 0, 0, 1] = torch.arange(n_test) // 256, torch.arange(n_test) % 256
    return RawData(train_x=x, train_y=torch.arange(n) % k, test_x=tx, test_y=torch.arange(n_test) % k,
                   classes=[str(i) for i in range(k)], source="synthetic")


def _dc(**kw) -> ImageDataConfig:
    return ImageDataConfig(**kw)


def _ids(x):
    return (x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()).tolist()


def test_split_is_seeded_disjoint_and_complete():
    raw = _raw()
    a = make_splits(raw, _dc(val_fraction=0.1), seed=3)
    b = make_splits(raw, _dc(val_fraction=0.1), seed=3)
    c = make_splits(raw, _dc(val_fraction=0.1), seed=4)
    tr, va = _ids(a.train_x), _ids(a.val_x)
    assert len(va) == 100 and len(tr) == 900
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(1000))
    assert a.train_y.tolist() == [i % 10 for i in tr] and a.val_y.tolist() == [i % 10 for i in va]
    assert _ids(b.val_x) == va and torch.equal(a.train_x, b.train_x)
    assert _ids(c.val_x) != va
    assert len(make_splits(raw, _dc(val_fraction=0.0), 0).val_x) == 0
    # a validation share outside [0, 1) is refused when the config is typed, before any data is read
    # (it was a DataError from make_splits)
    with pytest.raises(ConfigError, match=r"data\.val_fraction must be < 1, got 1\.0"):
        make({"data": {"name": "cifar10", "val_fraction": 1.0}})
    with pytest.raises(ConfigError, match=r"data\.val_fraction must be >= 0"):
        make({"data.name": "synthetic", "data.val_fraction": -0.1})


def test_limits_are_seeded_subsets():
    raw = _raw()
    d = make_splits(raw, _dc(val_fraction=0.1, limit=50, limit_eval=20), seed=0)
    full = make_splits(raw, _dc(val_fraction=0.1), seed=0)
    assert len(d.train_x) == 50 and len(d.val_x) == 20 and len(d.test_x) == 20
    assert set(_ids(d.train_x)) <= set(_ids(full.train_x))  # limit does not move the val split
    assert set(_ids(d.val_x)) <= set(_ids(full.val_x))
    assert _ids(make_splits(raw, _dc(val_fraction=0.1, limit=50, limit_eval=20), 0).train_x) == _ids(d.train_x)
    assert "limit" in d.splits["train"] and "limit_eval" in d.splits["test"]


def test_label_noise_rate_and_only_train():
    raw = _raw(n=2000)
    clean = make_splits(raw, _dc(val_fraction=0.1), seed=1)
    noisy = make_splits(raw, _dc(val_fraction=0.1, label_noise=0.3), seed=1)
    assert torch.equal(clean.train_x, noisy.train_x)
    wrong = (clean.train_y != noisy.train_y).float().mean().item()
    assert wrong == pytest.approx(0.3, abs=1 / 1800)
    assert torch.equal(clean.val_y, noisy.val_y) and torch.equal(clean.test_y, noisy.test_y)
    assert noisy.train_y.min() >= 0 and noisy.train_y.max() < 10


def test_channel_stats_match_float_computation():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(x)
    xf = x.double() / 255
    assert mean == pytest.approx(xf.mean((0, 2, 3)).tolist(), abs=1e-9)
    assert std == pytest.approx(xf.std((0, 2, 3), unbiased=False).tolist(), abs=1e-9)


# ---------------------------------------------------------------- augmentation

def _batch(n=64, h=32, w=32, seed=0):
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_flip_is_an_exact_mirror():
    x = _batch()
    y = flip_translate(x, flip=True, pad=0, g=torch.Generator().manual_seed(0))
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54


def test_translate_shifts_content():
    pad = 4
    x = _batch(n=32)
    y = flip_translate(x, flip=False, pad=pad, g=torch.Generator().manual_seed(1))
    shifts = set()
    for n in range(len(x)):
        found = None
        for dy in range(-pad, pad + 1):
            for dx in range(-pad, pad + 1):
                # out(i, j) = x(i+dy, j+dx) wherever i+dy, j+dx are inside the image
                ys, xs = slice(max(0, -dy), 32 - max(0, dy)), slice(max(0, -dx), 32 - max(0, dx))
                src_ = x[n, :, max(0, dy):32 + min(0, dy), max(0, dx):32 + min(0, dx)]
                if torch.equal(y[n, :, ys, xs], src_):
                    found = (dy, dx)
                    break
            if found:
                break
        assert found is not None, f"image {n} is not a shifted copy"
        shifts.add(found)
    assert len(shifts) > 5  # shifts vary between images


def test_pipeline_shapes_dtypes_and_determinism():
    x = _batch()
    spec = cfg_for(aug={"train": ["flip", {"translate": 4}]}).data.aug["train"]  # as a run config holds it
    p = build_pipeline(spec)
    assert p.random and not build_pipeline([]).random  # (was is_augmenting)
    a = p(x, torch.Generator().manual_seed(5))
    b = p(x, torch.Generator().manual_seed(5))
    c = p(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert build_pipeline([])(x, torch.Generator()) is x  # nothing to do: no copy
    xf = x.float() / 255  # float input in [0,1] stays float, same geometry
    af = p(xf, torch.Generator().manual_seed(5))
    assert af.dtype == torch.float32 and torch.equal((af * 255).round().to(torch.uint8), a)
    # the transfer family: random-resized-crop to a target size, rotation, zoom, colour jitter
    dt = build_pipeline([{"crop": 0.35}, {"rotate": 10}, {"zoom": 0.1}, "flip", {"color_jitter": 0.3}])
    t1 = dt(x, torch.Generator().manual_seed(0), 48)
    t2 = dt(x, torch.Generator().manual_seed(0), 48)
    assert t1.shape == (64, 3, 48, 48) and t1.dtype == torch.uint8 and torch.equal(t1, t2)
    # Behaviour change: augment(x, image_size=24) used to resample every batch to 24 px even without a
    # geometric option. A pipeline resamples only through a geometric entry (crop/rotate/zoom); without one
    # it keeps the batch's size and the method center-crops to data.image_size first (Supervised.prep).
    assert build_pipeline([])(x, torch.Generator(), 24) is x
    assert center_crop(x, 24).shape == (64, 3, 24, 24)
    whole = build_pipeline([{"crop": 1.0}])(x, torch.Generator().manual_seed(0), 24)  # the old resize path
    assert whole.shape == (64, 3, 24, 24) and torch.equal(
        whole, random_affine_crop(x, 24, 1.0, 0.0, 0.0, torch.Generator().manual_seed(0)))


def test_affine_crop_identity_and_jitter_range():
    x = _batch(n=8)
    same = random_affine_crop(x, 32, crop_scale=1.0, rotate=0, scale=0, g=torch.Generator())
    assert torch.equal(same, x)  # the full-image grid samples pixel centres exactly
    j = color_jitter(x.float() / 255, 0.5, torch.Generator().manual_seed(0))
    assert j.min() >= 0 and j.max() <= 1 and j.shape == x.shape
    assert torch.equal(color_jitter(x, 0.0, torch.Generator()), x)


def test_normalize_and_center_crop():
    x = _batch(n=4)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    z = normalize(x, mean, std)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert z.dtype == torch.float32 and torch.allclose(z, ref, atol=1e-5)
    assert torch.allclose(normalize(x.float() / 255, mean, std), ref, atol=1e-5)
    assert normalize(x.contiguous(memory_format=torch.channels_last), mean, std).is_contiguous(
        memory_format=torch.channels_last)
    assert torch.equal(center_crop(x, 24), x[..., 4:28, 4:28])
    assert center_crop(x, 64).shape == (4, 3, 64, 64)  # smaller images are upsampled first


# ---------------------------------------------------------------- real data (when present)

def test_real_cifar10(monkeypatch, tmp_path, shared_datasets):
    """The shared lossless copy: decoded once (seconds on 2 cores, into a private cache unless the user's
    cache already holds it, then ~0.5 s)."""
    real = shared_datasets / REAL_NAME
    if not real.exists():
        pytest.skip(f"real CIFAR-10 not present at {real}")
    monkeypatch.setenv("ABLATIONS_CACHE", str(REAL_CACHE_DIR))
    if not im._cache_path(CIFAR10, "archive", real).exists():
        monkeypatch.setenv("ABLATIONS_CACHE", str(tmp_path / "real-cache"))
    t0 = time.time()
    data = load(cfg_for(real, limit_eval=0))
    assert time.time() - t0 < 60
    assert data.classes == CLASSES
    assert data.train_x.shape == (45000, 3, 32, 32) and data.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.test_y).tolist() == [1000] * 10
    assert torch.bincount(torch.cat([data.train_y, data.val_y])).tolist() == [5000] * 10
    assert data.mean == pytest.approx((0.491, 0.482, 0.447), abs=0.01)  # the published CIFAR-10 stats
    assert data.std == pytest.approx((0.247, 0.243, 0.261), abs=0.01)


def test_pil_fallback_decodes_the_same():
    items = [(f"cifar10/train/cat/{i:04d}.{e}", _encode(_img(3, i, "train"), f))
             for i, (e, f) in enumerate([("png", "PNG"), ("jpg", "JPEG"), ("jpg", "JPEG")])]
    assert torch.equal(im._decode_pil(items, "x"), im._decode_chunk(items, "x"))
    assert torch.equal(im._decode_chunk(items[1:], "x"), im._decode_pil(items[1:], "x"))  # batched JPEG path


def test_real_cifar100_says_its_split_is_not_official(monkeypatch, tmp_path, shared_datasets):
    """The shared CIFAR-100 copy (WebP q90, seeded 500/100 re-split): 100 classes, 500/100 per class, and the
    test split's description says it is not the official one (every report prints it)."""
    real = shared_datasets / "cifar100-webp90.tar.gz"
    if not real.exists():
        pytest.skip(f"real CIFAR-100 not present at {real}")
    monkeypatch.setenv("ABLATIONS_CACHE", str(REAL_CACHE_DIR))
    if not im._cache_path(im.CIFAR100, "archive", real).exists():
        monkeypatch.setenv("ABLATIONS_CACHE", str(tmp_path / "real-cache"))
    cfg = make({"data": {"name": "cifar100", "path": str(real)}})
    data = load(cfg)
    assert len(data.classes) == 100 and data.classes[:3] == ["apple", "aquarium_fish", "baby"]
    assert torch.bincount(data.test_y).tolist() == [100] * 100
    assert torch.bincount(torch.cat([data.train_y, data.val_y])).tolist() == [500] * 100
    assert "NOT the official CIFAR-100 split" in data.splits["test"]
