"""Training under label noise: the run dir keeps the labels as given and true, the supervised method records
how much of the clean and the corrupted training examples the model fits, and the report shows it."""
from __future__ import annotations

import torch

from ablations import loop
from ablations import rundir as rd
from ablations.config import make
from ablations.report.render import write_report


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
