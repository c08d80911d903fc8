"""Every method through the one loop: learns, is deterministic, resumes exactly (its own state included),
stops on NaN; run references hand a finished run to the run that needs it."""
import json

import pytest
import torch
from safetensors.torch import load_file

from ablations import loop
from ablations import rundir as rd
from ablations.config import ConfigError, make
from ablations.errors import RunError
from ablations.registry import METHODS


def _corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    words = ["the", "king", "and", "queen", "of", "night", "sing", "a", "song", "to", "thee"]
    g = torch.Generator().manual_seed(0)
    p.write_text(" ".join(words[i] for i in torch.randint(0, len(words), (900,), generator=g).tolist()) + "\n")
    return str(p)


IMAGES = {"data": {"name": "synthetic", "n_train": 360, "n_test": 64, "limit_eval": 64,
                   "aug": {"train": ["flip", {"translate": 2}]}},
          "optim": {"name": "nesterov", "lr": 0.05, "schedule": "warmup_cosine", "warmup": 0.5},
          "train": {"epochs": 3, "batch_size": 32, "eval_batch_size": 64, "threads": 1}}

# one small config per method: a new method must add itself here (test_every_method_is_exercised)
SMALL = {
    "supervised": lambda tmp: {**IMAGES, "model": {"name": "vgg2", "width": 8, "dense": 16, "dropout": 0.1,
                                                   "batch_norm": True}},
    # 32 px input (the backbone's own 224 would upsample every image 49x: minutes instead of seconds)
    "finetune": lambda tmp: {**IMAGES, "data.image_size": 32, "model": {"name": "mobilenet_v2", "pretrained": False},
                             "method": {"name": "finetune", "train_stages": 1},
                             "optim": {"name": "adam", "lr": 0.002, "schedule": "cosine", "layer_decay": 0.5}},
    # semi-supervised: pseudo-labelling and label propagation on cached views of a frozen backbone, FixMatch through
    # a trainable stage
    "pseudolabel": lambda tmp: {**IMAGES, "data.image_size": 32, "data.labeled_per_class": 5,
                                "model": {"name": "mobilenet_v2", "pretrained": False},
                                "method": {"name": "pseudolabel", "mu": 2, "tau": 0.3, "views": 2},
                                "optim": {"name": "adam", "lr": 0.003}, "train.batch_size": 16},
    "fixmatch": lambda tmp: {**IMAGES, "data.image_size": 32, "data.labeled_per_class": 5,
                             "data.aug": {"train": ["flip", {"translate": 2}], "strong": [{"randaugment": {}}, "cutout"]},
                             "model": {"name": "mobilenet_v2", "pretrained": False},
                             "method": {"name": "fixmatch", "mu": 2, "tau": 0.3, "train_stages": 1, "unsup_warmup": 1},
                             "optim": {"name": "adam", "lr": 0.003}, "train.batch_size": 16},
    "labelprop": lambda tmp: {**IMAGES, "data.image_size": 32, "data.labeled_per_class": 5,
                              "model": {"name": "mobilenet_v2", "pretrained": False},
                              "method": {"name": "labelprop", "mu": 2, "views": 2, "k": 10},
                              "optim": {"name": "adam", "lr": 0.003}, "train.batch_size": 16},
    "language_model": lambda tmp: {
        "data": {"name": "text", "path": _corpus(tmp), "seq_len": 16},
        "model": {"name": "lstm", "hidden": 24, "embed": 8, "dropout": 0.1},
        "method": {"name": "language_model", "sampling": {"length": 20, "temperature": [0.8], "top_p": [0.9],
                                                          "beam": [1]}},
        "optim": {"name": "adamw", "lr": 0.01, "schedule": "warmup_cosine", "warmup": 0.5, "clip_grad": 1.0},
        "train": {"epochs": 3, "steps_per_epoch": 4, "batch_size": 4, "threads": 1}},
}
NOT_TRAINED = {"zeroshot": "trains nothing; needs ImageNet weights and classes: tests/test_transfer.py"}
TIME_KEYS = ("epoch_time", "time", "img_per_s", "tokens_per_s", "examples_per_s", "epoch_train_s", "unlabeled_per_s")


def cfg(method: str, tmp_path, **over):
    return make({**SMALL[method](tmp_path), **over}, study="t", variant="v")


def strip_time(records):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in records]


def test_every_method_is_exercised():
    assert set(METHODS.names()) == set(SMALL) | set(NOT_TRAINED)


def test_learns_and_writes_run_files(tmp_path):
    d = tmp_path / "r"
    res = loop.run(cfg("supervised", tmp_path, **{"train.epochs": 4}), d)
    for f in (rd.CONFIG, rd.ENV, rd.METRICS, rd.CHECKPOINT, rd.FINAL, rd.RESULT, rd.INVOCATIONS):
        assert (d / f).exists(), f
    env = json.loads((d / rd.ENV).read_text())
    assert {"git_commit", "versions", "device", "torch_threads", "precision", "cpu", "cpu_flags"} <= set(env)
    assert res["test_acc"] > 40  # 10 classes: chance is 10 %
    assert json.loads((d / rd.CONFIG).read_text())["train"]["epochs"] == 4
    assert len(rd.read_metrics(d / rd.METRICS)) == 4
    assert not (d / rd.LOCK).exists()  # released
    run = rd.Run.read(d)
    assert run.finished and len(run.invocations) == 1 and run.invocations[0]["finished"]


@pytest.mark.parametrize("method", sorted(SMALL))
def test_same_seed_same_metrics(method, tmp_path):
    a = loop.run(cfg(method, tmp_path), tmp_path / "a")
    b = loop.run(cfg(method, tmp_path), tmp_path / "b")
    ma, mb = (strip_time(rd.read_metrics(tmp_path / x / rd.METRICS)) for x in "ab")
    assert ma == mb and len(ma) == 3
    assert (tmp_path / "a" / rd.FINAL).read_bytes() == (tmp_path / "b" / rd.FINAL).read_bytes()
    key = "test_acc" if "test_acc" in a else "last10_loss"
    assert a[key] == b[key]
    loop.run(cfg(method, tmp_path, seed=1), tmp_path / "c")
    assert strip_time(rd.read_metrics(tmp_path / "c" / rd.METRICS)) != ma


@pytest.mark.parametrize("method", sorted(SMALL))
def test_resume_equals_uninterrupted(method, tmp_path, interrupted_run):
    full = loop.run(cfg(method, tmp_path), tmp_path / "full")
    interrupted_run(cfg(method, tmp_path), tmp_path / "cut", epoch=2)
    cut = tmp_path / "cut"
    assert not (cut / rd.RESULT).exists() and not (cut / rd.LOCK).exists()
    resumed = loop.run(cfg(method, tmp_path), cut, resume=True)
    assert strip_time(rd.read_metrics(cut / rd.METRICS)) == strip_time(rd.read_metrics(tmp_path / "full" / rd.METRICS))
    key = "test_acc" if "test_acc" in full else "last10_loss"
    assert resumed[key] == full[key]
    a, b = load_file(str(tmp_path / "full" / rd.FINAL)), load_file(str(cut / rd.FINAL))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run = rd.Run.read(cut)  # two invocations, the first unfinished; the report sums both
    assert [i["finished"] for i in run.invocations] == [False, True]
    assert run.wall_time == pytest.approx(sum(i["wall_time"] for i in run.invocations))


def test_nan_loss_stops_naming_the_step(tmp_path):
    c = cfg("supervised", tmp_path, **{"optim.lr": 1e12, "model.batch_norm": False, "model.dropout": 0.0,
                                      "optim.warmup": 0.0, "optim.schedule": "constant", "train.precision": "fp32"})
    with pytest.raises(RunError, match=r"loss became (nan|inf) at step \d+"):
        loop.run(c, tmp_path / "nan")
    assert (tmp_path / "nan" / rd.CONFIG).exists()  # what was written stays


def test_steps_per_epoch_beyond_one_pass(tmp_path):
    res = loop.run(cfg("supervised", tmp_path, **{"train.steps_per_epoch": 20, "train.epochs": 1}), tmp_path / "r")
    assert res["steps"] == 20


def test_soft_label_batches_train(tmp_path):
    """A method may hand the loss class probabilities (MixUp, distillation): the loop does not care."""
    from ablations.methods.supervised import Supervised

    class Smoothed(Supervised):
        def batches(self, epoch, gen):
            for x, y in super().batches(epoch, gen):
                yield x, torch.nn.functional.one_hot(y, 10).float() * 0.9 + 0.01

    c = cfg("supervised", tmp_path, **{"train.epochs": 2})
    from ablations.runtime import setup

    m = Smoothed(c, setup(c.train, c.seed), tmp_path, {})
    x, y = next(iter(m.batches(1, torch.Generator().manual_seed(0))))
    loss, stats = m.train_step((x, y))
    assert y.shape == (32, 10) and loss.ndim == 0 and torch.isfinite(loss) and stats["n"] == 32


def test_init_from_runs_the_referenced_variant_first(tmp_path):
    """A RunRef field names another variant: the study runs it first and the run starts from its weights."""
    from ablations.cli import main

    study = tmp_path / "two.yaml"
    study.write_text("""
name: two
base:
  data: {name: synthetic, n_train: 200, n_test: 40, limit_eval: 40}
  model: {name: vgg1, width: 8, dense: 16}
  optim: {name: nesterov, lr: 0.05}
  train: {epochs: 1, batch_size: 32, threads: 1}
presets: {smoke: {}}
variants:
  second:
    set: {method.init_from: first, optim.lr: 0.0001}
  first: {}
""")
    out = tmp_path / "runs"
    assert main(["run", str(study), "--variant", "second", "--out", str(out)]) == 0  # pulls in `first`
    first, second = out / "two/smoke/first/seed0", out / "two/smoke/second/seed0"
    assert (first / rd.RESULT).exists() and (second / rd.RESULT).exists()
    # the referenced variant ran with its own settings (not the referring run's), the same seed
    c1, c2 = rd.read_json(first / rd.CONFIG), rd.read_json(second / rd.CONFIG)
    assert (c1["variant"], c1["method"]["init_from"], c1["optim"]["lr"]) == ("first", "", 0.05)
    assert (c2["variant"], c2["method"]["init_from"], c2["optim"]["lr"]) == ("second", "first", 0.0001)
    assert c1["seed"] == c2["seed"]
    inv_first, inv_second = rd.Run.read(first).invocations[0], rd.Run.read(second).invocations[0]
    assert inv_first["started"] <= inv_second["started"]
    # tiny lr: the second run stays next to the weights it started from, far from a fresh init
    a, b = load_file(str(first / rd.FINAL)), load_file(str(second / rd.FINAL))
    assert all((a[k].float() - b[k].float()).abs().max() < 0.05 for k in a)
    bad = tmp_path / "bad.yaml"
    bad.write_text(study.read_text().replace("init_from: first", "init_from: frist"))
    with pytest.raises(ConfigError, match="method.init_from='frist' must name another variant.*did you mean 'first'"):
        from ablations.study import get_study

        get_study(str(bad))
    cyc = tmp_path / "cyc.yaml"
    cyc.write_text(study.read_text().replace("  first: {}", "  first:\n    set: {method.init_from: second}"))
    with pytest.raises(ConfigError, match="cycle"):
        get_study(str(cyc))


def test_a_reference_must_share_the_seed(tmp_path):
    from ablations.study import get_study

    study = tmp_path / "s.yaml"
    study.write_text("""
name: s
base: {data: {name: synthetic}, model: {name: vgg1}}
presets: {smoke: {}}
variants:
  a: {set: {method.init_from: b, seed: 3}}
  b: {}
""")
    with pytest.raises(ConfigError, match="a runs seed 3 and b seed 0; set the seed in base"):
        get_study(str(study))


def test_on_epoch_sees_every_record_and_can_stop_the_run(tmp_path):
    """The loop's per-epoch hook (benches, early stops): it sees what metrics.jsonl gets, after the checkpoint,
    and an exception it raises stops the run there, resumable to the same end as an uninterrupted run."""
    seen = []
    loop.run(cfg("supervised", tmp_path), tmp_path / "a", on_epoch=seen.append)
    assert seen == rd.read_metrics(tmp_path / "a" / rd.METRICS) and [r["epoch"] for r in seen] == [1, 2, 3]

    class Stop(Exception):
        pass

    def stop_after_1(rec):
        if rec["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        loop.run(cfg("supervised", tmp_path), tmp_path / "b", on_epoch=stop_after_1)
    assert torch.load(tmp_path / "b" / rd.CHECKPOINT, weights_only=True)["epoch"] == 1
    loop.run(cfg("supervised", tmp_path), tmp_path / "b", resume=True)
    assert (tmp_path / "a" / rd.FINAL).read_bytes() == (tmp_path / "b" / rd.FINAL).read_bytes()
