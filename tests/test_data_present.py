"""Datasets take the classes that are there, and variants that cannot apply to the data at hand are named
before any run starts (with the variants that can)."""
import pytest
import torch

from ablations.cli import main
from ablations.registry import DATASETS

from test_transfer import PRE, cfg, make_folder, make_pets  # noqa: F401  (its fixtures isolate the cache)
from test_transfer import _isolated, _one_thread  # noqa: F401


def test_partial_pets_copy_gives_the_breeds_present(tmp_path):
    """A Pets copy with only some breeds (class ids 2 and 4 of 37 here) is a 2-breed problem, labels 0..1."""
    root = make_pets(tmp_path / "pets")
    for split in ("trainval", "test"):  # keep Bengal (id 2) and pug (id 4) only
        f = root / "annotations" / f"{split}.txt"
        f.write_text("".join(ln + "\n" for ln in f.read_text().splitlines() if ln.split()[1] in ("2", "4")))
    raw = DATASETS.get("pets")(cfg(**{"data.name": "pets", "data.path": str(root)}).data, PRE)
    assert raw.classes == ["Bengal", "pug"]
    assert sorted(raw.train_y.unique().tolist()) == [0, 1] and len(raw.train_y) == 10
    assert torch.equal(raw.test_y, torch.tensor([0, 0, 0, 1, 1, 1]))


def test_binary_variants_on_a_folder_without_species_are_named_at_load(tmp_path, capsys):
    folder = make_folder(tmp_path / "woof", splits=("train", "test"))  # 3 dog breeds, no species column
    out = tmp_path / "out"
    argv = ["run", "pets-transfer", "--preset", "smoke", "--out", str(out), "--set", f"data.path={folder}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "binary_zeroshot, binary_head, binary_unfreeze_1 cannot run here" in err
    assert "folder of 3 classes" in err and "Variants that can: head, head_bce" in err
    assert not out.exists()  # nothing started
