"""Training under label noise: the run dir keeps the labels as given and true, the supervised method records
how much of the clean and the corrupted training examples the model fits, and the report shows it."""
from __future__ import annotations

import re

import pytest
import torch

from ablations import loop
from ablations import rundir as rd
from ablations.config import make
from ablations.report.render import write_report
from test_transfer import _isolated, _one_thread  # noqa: F401  (autouse: a temporary decoded-data cache, 1 thread)


def _cfg(noise: float, kind: str = "symmetric", **extra):
    return make({"data": {"name": "synthetic", "n_train": 400, "n_test": 64, "val_fraction": 0.1,
                          "label_noise": noise, "noise_kind": kind, "normalize": "standard"},
                 "model": {"name": "vgg1", "width": 8, "dense": 16},
                 "method": {"name": "supervised", "test_each_epoch": True},
                 "optim": {"name": "adam", "lr": 0.003}, "train": {"epochs": 3, "batch_size": 32, "threads": 1},
                 "study": "noisy", "variant": f"ce{int(noise * 100)}", "preset": "smoke", **extra})


def test_noisy_run_records_labels_and_fit_curves(tmp_path):
    d = tmp_path / "noisy" / "smoke" / "ce40" / "seed0"
    loop.run(_cfg(0.4), d)
    labels = torch.load(d / rd.LABELS)
    wrong = labels["given"] != labels["true"]
    assert abs(wrong.float().mean().item() - 0.4) < 0.02  # symmetric: exactly round(0.4 n) replaced
    assert len(labels["index"]) == len(labels["given"]) and len(set(labels["index"].tolist())) == len(labels["index"])
    recs = [m for m in rd.read_metrics(d / rd.METRICS) if "fit_clean" in m]
    assert len(recs) == 3
    for m in recs:
        for k in ("fit_clean", "fit_noisy_given", "fit_noisy_true", "test_acc_no_tta"):
            assert 0 <= m[k] <= 100
        # a corrupted example cannot match both its wrong label and its true one
        assert m["fit_noisy_given"] + m["fit_noisy_true"] <= 100 + 1e-6
    text = write_report(tmp_path / "noisy" / "smoke").read_text()
    assert "## Label noise: memorisation" in text and "| ce40 | 40 % symmetric |" in text
    assert (tmp_path / "noisy" / "smoke" / "noise-fit.png").exists()


def test_clean_run_has_no_noise_files(tmp_path):
    d = tmp_path / "r"
    loop.run(_cfg(0.0), d)
    assert not (d / rd.LABELS).exists()
    assert not any("fit_clean" in m for m in rd.read_metrics(d / rd.METRICS))


# ---------------------------------------------------------------- labels from a CSV (fast.ai's noisy_imagenette)

def _csv(path, rows, columns=("path", "noisy_labels_0", "noisy_labels_25", "is_valid")):
    path.write_text(",".join(columns) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def test_labels_csv_replaces_training_labels_and_keeps_the_true_ones(tmp_path):
    from test_transfer import WNIDS, cfg, load, make_folder

    root = make_folder(tmp_path / "imagenette2-160", n=4)  # train: 3 classes x 4 images, val: 3 x 2
    rows = []
    for c, wnid in enumerate(WNIDS):
        for i in range(4):
            other = WNIDS[(c + 1) % len(WNIDS)] if i == 0 else wnid  # the first image of each class mislabelled
            rows.append((f"train/{wnid}/{wnid}_{i}.JPEG", wnid, other, "False"))
        rows.append((f"val/{wnid}/{wnid}_0.JPEG", wnid, wnid, "True"))
    csv = _csv(tmp_path / "noisy_imagenette.csv", rows)
    common = {"data.name": "imagefolder", "data.path": str(root), "data.labels_csv": str(csv),
              "data.val_fraction": 0.0}
    _, clean = load(cfg(**common))
    assert clean.train_y_true is not None and torch.equal(clean.train_y, clean.train_y_true)  # column _0: no noise
    _, noisy = load(cfg(**common, **{"data.labels_column": "noisy_labels_25"}))
    wrong = noisy.train_y != noisy.train_y_true
    assert int(wrong.sum()) == 3 and torch.equal(noisy.train_y_true, clean.train_y)
    assert torch.equal(noisy.train_y[wrong], (noisy.train_y_true[wrong] + 1) % 3)
    assert "column noisy_labels_25 (25% differ" in noisy.splits["train"]


@pytest.mark.parametrize("case,words", [
    ("missing_row", "1 of the 12 training images have no row, e.g. train/"),
    ("bad_label", "label 'n99999999' in column noisy_labels_0 is not one of the 3 classes"),
    ("bad_column", "needs the columns path and noisy_labels_5 (data.labels_column)"),
    ("with_noise", "set labels_csv (noise from a file) or label_noise (drawn), not both"),
])
def test_labels_csv_errors_name_the_file(tmp_path, case, words):
    from ablations.config import ConfigError
    from ablations.data.sources import DataError
    from test_transfer import WNIDS, cfg, load, make_folder

    root = make_folder(tmp_path / "f", n=4)
    rows = [(f"train/{w}/{w}_{i}.JPEG", w, w, "False") for w in WNIDS for i in range(4)]
    if case == "missing_row":
        rows = rows[1:]
    if case == "bad_label":
        rows[5] = (rows[5][0], "n99999999", rows[5][2], "False")
    csv = _csv(tmp_path / "labels.csv", rows)
    over = {"data.name": "imagefolder", "data.path": str(root), "data.labels_csv": str(csv)}
    if case == "bad_column":
        over["data.labels_column"] = "noisy_labels_5"
    if case == "with_noise":
        over["data.label_noise"] = 0.2
    with pytest.raises((DataError, ConfigError), match=re.escape(words)):
        load(cfg(**over))
