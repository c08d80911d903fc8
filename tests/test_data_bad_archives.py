"""Bad image archives through the CLI: one line naming the file or the class count, exit 2, nothing cached."""
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from ablations.cli import main

CLASSES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _img(fmt: str, side: int = 32, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def _archive(path, classes, fmt="WEBP", ext="webp", special=None):
    """cifar10/{train,test}/<class>/0000.<ext>; `special` maps a member name to its bytes."""
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            for c in classes:
                name = f"cifar10/{split}/{c}/0000.{ext}"
                data = (special or {}).get(name) or _img(fmt, seed=len(name))
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _study(tmp_path, archive):
    p = tmp_path / "s.yaml"
    p.write_text(f"""
name: s
base:
  data: {{name: cifar10, path: "{archive}"}}
  model: {{name: vgg1, width: 4, dense: 8}}
  train: {{epochs: 1, batch_size: 4}}
presets: {{smoke: {{}}}}
variants: {{v: {{}}}}
""")
    return p


@pytest.mark.parametrize("case", ["undecodable", "cifar100_as_cifar10", "mixed_sizes"])
def test_bad_archive_one_line_exit_2_nothing_cached(tmp_path, monkeypatch, capsys, case):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ABLATIONS_CACHE", str(cache))
    arc = tmp_path / "cifar10-lossless.tar.gz"
    if case == "undecodable":
        _archive(arc, CLASSES10, special={"cifar10/train/dog/0000.webp": b"RIFF\x00\x00\x00\x00WEBPgarbage"})
        words = [str(arc), "cannot decode image cifar10/train/dog/0000.webp"]
    elif case == "cifar100_as_cifar10":
        _archive(arc, [f"class{i:03d}" for i in range(100)], fmt="PNG", ext="png")
        words = [str(arc), "found 100 classes, CIFAR-10 has 10"]
    else:
        _archive(arc, CLASSES10, fmt="PNG", ext="png",
                 special={"cifar10/test/cat/0000.png": _img("PNG", side=24)})
        words = [str(arc), "cifar10/test/cat/0000.png", "(24, 24)", "expected (32, 32)"]
    assert main(["run", str(_study(tmp_path, arc)), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.splitlines()  # progress lines ("[data] decoding ..."), then the error
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    for w in words:
        assert w in errors[0], (w, errors[0])
    assert not list(cache.rglob("*.pt"))  # nothing cached: the next try decodes again
