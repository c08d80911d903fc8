"""The classification loop on the synthetic dataset: learns, is deterministic, resumes exactly, stops on NaN."""
import json

import pytest
import torch
from safetensors.torch import load_file

from ablations.config import RunConfig, apply_overrides
from ablations.train import classify
from ablations.train import runtime as rt

BASE = {"data": {"name": "synthetic", "limit": 320, "limit_eval": 64},
        "model": {"name": "vgg2", "width": 8, "dense": 16, "dropout": 0.1, "batch_norm": True},
        "optim": {"name": "nesterov", "lr": 0.05, "schedule": "warmup_cosine", "warmup": 0.5},
        "train": {"epochs": 3, "batch_size": 32, "eval_batch_size": 64, "threads": 1},
        "data.flip": True, "data.translate": 2}


def cfg(**over) -> RunConfig:
    return apply_overrides(RunConfig(study="t", variant="v"), {**BASE, **over})


def run(c: RunConfig, d):
    rt.prepare_run_dir(d, c, overwrite=False, resume=False)
    return classify.fit(c, d)


def strip_time(records):
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "time", "img_per_s")} for r in records]


def test_learns_and_writes_run_files(tmp_path):
    res = run(cfg(**{"train.epochs": 4}), tmp_path / "r")
    d = tmp_path / "r"
    for f in (rt.CONFIG, rt.ENV, rt.METRICS, rt.CHECKPOINT, rt.FINAL, rt.RESULT):
        assert (d / f).exists(), f
    env = json.loads((d / rt.ENV).read_text())
    assert {"git_commit", "versions", "device", "torch_threads", "precision"} <= set(env)
    assert res["test_acc"] > 40  # 10 classes: chance is 10 %
    assert json.loads((d / rt.CONFIG).read_text())["train"]["epochs"] == 4
    assert len(rt.read_metrics(d / rt.METRICS)) == 4
    w = load_file(str(d / rt.FINAL))
    assert any(k.endswith("weight") for k in w)


def test_same_seed_same_metrics(tmp_path):
    a = run(cfg(), tmp_path / "a")
    b = run(cfg(), tmp_path / "b")
    assert strip_time(rt.read_metrics(tmp_path / "a" / rt.METRICS)) == \
        strip_time(rt.read_metrics(tmp_path / "b" / rt.METRICS))
    assert a["test_acc"] == b["test_acc"]
    c = run(cfg(seed=1), tmp_path / "c")
    assert strip_time(rt.read_metrics(tmp_path / "c" / rt.METRICS)) != \
        strip_time(rt.read_metrics(tmp_path / "a" / rt.METRICS))


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    full = run(cfg(), tmp_path / "full")
    real_save = rt.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # as if the machine stopped right after epoch 2's checkpoint

    monkeypatch.setattr(rt, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(cfg(), tmp_path / "cut")
    monkeypatch.setattr(rt, "save_checkpoint", real_save)
    assert not (tmp_path / "cut" / rt.RESULT).exists()
    resumed = classify.fit(cfg(), tmp_path / "cut", resume=True)
    assert strip_time(rt.read_metrics(tmp_path / "cut" / rt.METRICS)) == \
        strip_time(rt.read_metrics(tmp_path / "full" / rt.METRICS))
    assert resumed["test_acc"] == full["test_acc"]
    a, b = load_file(str(tmp_path / "full" / rt.FINAL)), load_file(str(tmp_path / "cut" / rt.FINAL))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_naming_the_step(tmp_path):
    c = cfg(**{"optim.lr": 1e12, "model.batch_norm": False, "model.dropout": 0.0, "optim.warmup": 0.0,
               "optim.schedule": "constant", "train.precision": "fp32"})
    with pytest.raises(rt.RunError, match=r"loss became (nan|inf) at step \d+"):
        run(c, tmp_path / "nan")
    assert (tmp_path / "nan" / rt.CONFIG).exists()  # what was written stays


def test_steps_per_epoch_beyond_one_pass(tmp_path):
    res = run(cfg(**{"train.steps_per_epoch": 20, "train.epochs": 1}), tmp_path / "r")
    assert res["steps"] == 20
