"""Core-sets via a proxy: the proxy scores every training example (scores.pt), a referenced run keeps the
highest-scoring share of the pool (or a random one), and resuming the proxy gives the same scores."""
from __future__ import annotations

import re

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ablations import loop
from ablations import rundir as rd
from ablations.config import ConfigError, make
from ablations.data.base import RawData
from ablations.data.splits import make_splits

SCORES = ("least_confidence", "entropy", "margin", "forgetting", "el2n")


def _raw(n: int = 100) -> RawData:
    g = torch.Generator().manual_seed(0)
    return RawData(torch.randint(0, 255, (n, 3, 4, 4), dtype=torch.uint8, generator=g), torch.arange(n) % 5,
                   torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.zeros(10, dtype=torch.int64),
                   [f"c{i}" for i in range(5)], "mem", "toy")


def _data(**over):
    return make({"data": {"name": "synthetic", "val_fraction": 0.2, **over}}).data


def test_random_coreset_is_a_seeded_share_of_the_pool():
    full = make_splits(_raw(), _data(), 0)
    a = make_splits(_raw(), _data(coreset_keep=0.6, coreset_score="random"), 0)
    b = make_splits(_raw(), _data(coreset_keep=0.6, coreset_score="random"), 0)
    c = make_splits(_raw(), _data(coreset_keep=0.6, coreset_score="random"), 1)
    assert len(full.train_index) == 80 and len(a.train_index) == 48
    assert set(a.train_index.tolist()) <= set(full.train_index.tolist())
    assert torch.equal(a.train_index, b.train_index) and torch.equal(a.val_y, full.val_y)  # val untouched
    assert set(c.train_index.tolist()) < set(make_splits(_raw(), _data(), 1).train_index.tolist())
    assert not torch.equal(a.train_index, c.train_index)  # another seed, another draw
    assert "a core-set: 48 of those 80 (60%) at random (seed 0)" in a.splits["train"]


def test_scored_coreset_keeps_the_highest_scores_after_the_limit():
    full = make_splits(_raw(), _data(limit=50), 0)
    pool = full.train_index
    score = torch.rand(100, generator=torch.Generator().manual_seed(3))
    scores = {"index": pool, "el2n": score[pool]}
    kept = make_splits(_raw(), _data(limit=50, coreset_keep=0.3, coreset_score="el2n", coreset_proxy="proxy"), 0,
                       scores, "runs/proxy")
    want = pool[score[pool].argsort(descending=True)[:15]].sort().values
    assert torch.equal(kept.train_index, want)
    assert "15 of those 50 (30%) with the highest el2n score of the proxy run proxy" in kept.splits["train"]
    # a proxy that scored another pool (here: no limit vs a limit) is refused with one line
    with pytest.raises(ConfigError, match=re.escape("the proxy run runs/proxy scored 0 of the 50 training examples")):
        make_splits(_raw(), _data(limit=50, coreset_keep=0.3, coreset_score="el2n", coreset_proxy="proxy"), 0,
                    {"index": torch.tensor([999]), "el2n": torch.tensor([1.0])}, "runs/proxy")


@given(keep=st.floats(0.05, 0.9), skip=st.floats(0.0, 0.5), seed=st.integers(0, 9))
@settings(max_examples=40, deadline=None)
def test_coreset_skip_keeps_the_ranks_after_the_skipped_top(keep, skip, seed):
    """With distinct scores the kept set is exactly the examples ranked round(skip n) .. round(skip n) + round(keep n)
    - 1 by descending score: the hardest round(skip n) are left out, nothing else changes."""
    assume(keep + skip <= 1)
    n = 50
    full = make_splits(_raw(), _data(limit=n), seed)
    pool = full.train_index
    score = torch.randperm(100, generator=torch.Generator().manual_seed(seed)).double()  # distinct
    scores = {"index": pool, "margin": score[pool]}
    cfg = _data(limit=n, coreset_keep=keep, coreset_score="margin", coreset_proxy="proxy", coreset_skip=skip)
    kept = make_splits(_raw(), cfg, seed, scores, "runs/proxy").train_index
    s, k = int(round(skip * n)), max(1, int(round(keep * n)))
    ranked = pool[score[pool].argsort(descending=True)]
    assert torch.equal(kept, ranked[s:s + k].sort().values)


@given(keep=st.floats(0.05, 0.9), mix=st.floats(0.0, 0.9), skip=st.floats(0.0, 0.3), seed=st.integers(0, 9))
@settings(max_examples=40, deadline=None)
def test_coreset_random_mixes_a_seeded_share_of_the_rest_into_the_hardest(keep, mix, skip, seed):
    """coreset_random = r: the kept set is the round(keep n) - round(r n) hardest after the skipped top, plus
    round(r n) drawn without replacement from the ranks below them (never the skipped top), the same draw for
    the same seed; r = 0 keeps exactly the ranks of coreset_skip alone."""
    assume(keep + skip <= 1 and mix < keep)
    n = 50
    pool = make_splits(_raw(), _data(limit=n), seed).train_index
    score = torch.randperm(100, generator=torch.Generator().manual_seed(seed)).double()  # distinct
    scores = {"index": pool, "margin": score[pool]}

    def kept(r, s=seed):
        cfg = _data(limit=n, coreset_keep=keep, coreset_score="margin", coreset_proxy="proxy", coreset_skip=skip,
                    coreset_random=r)
        return make_splits(_raw(), cfg, s, scores, "runs/proxy").train_index

    a = kept(mix)
    s_, k = int(round(skip * n)), max(1, int(round(keep * n)))
    r = min(int(round(mix * n)), k - 1)
    ranked = pool[score[pool].argsort(descending=True)]
    assert len(a) == k and len(a.unique()) == k
    assert set(ranked[s_:s_ + k - r].tolist()) <= set(a.tolist())  # the hardest part
    assert set(a.tolist()) - set(ranked[s_:s_ + k - r].tolist()) <= set(ranked[s_ + k - r:].tolist())  # rest
    assert torch.equal(a, kept(mix))  # seeded
    assert torch.equal(kept(0.0), ranked[s_:s_ + k].sort().values)


def test_coreset_random_draws_differ_by_seed_and_are_described():
    """The hard quarter is the same examples whatever the seed (the top scores); the random quarter is a seeded
    draw from the lower three quarters, so another seed draws other examples."""
    raw = _raw(200)
    scores = {"index": torch.arange(200), "margin": torch.arange(200, dtype=torch.float64)}  # index i scores i
    cfg = _data(val_fraction=0.0, coreset_keep=0.5, coreset_score="margin", coreset_proxy="proxy",
                coreset_random=0.25)
    a, b, c = (make_splits(raw, cfg, s, scores, "runs/proxy") for s in (0, 0, 1))
    assert torch.equal(a.train_index, b.train_index) and not torch.equal(a.train_index, c.train_index)
    for kept in (a.train_index, c.train_index):
        assert len(kept) == 100
        assert set(range(150, 200)) <= set(kept.tolist())  # the hardest quarter
        assert int((kept < 150).sum()) == 50  # the random quarter, from below it
    assert "(25% of the pool of them drawn instead at random (seed 0) from the lower-scored rest)" in a.splits["train"]


@pytest.mark.parametrize("score", ["el2n", "random"])
def test_per_class_coreset_keeps_the_share_within_each_class(score):
    """coreset_per_class: each class keeps round(keep * its count) of its own pool examples, the highest-scoring
    ones of that class (or a seeded random share), while the overall ranking would favour the hard classes."""
    raw = _raw(200)
    y = raw.train_y
    pool = make_splits(raw, _data(), 0).train_index  # 160 after the validation carve, 5 classes
    score_all = torch.rand(200, generator=torch.Generator().manual_seed(3)) + (y == 0) * 10.0  # class 0: hardest
    scores = {"index": pool, "el2n": score_all[pool]}
    proxy = {"coreset_proxy": "proxy"} if score != "random" else {}
    over = dict(coreset_keep=0.5, coreset_score=score, **proxy)
    overall = make_splits(raw, _data(**over), 0, scores, "runs/proxy").train_index
    per = make_splits(raw, _data(coreset_per_class=True, **over), 0, scores, "runs/proxy")
    again = make_splits(raw, _data(coreset_per_class=True, **over), 0, scores, "runs/proxy")
    assert torch.equal(per.train_index, again.train_index)  # seeded
    for c in range(5):
        in_c = pool[y[pool] == c]
        kept_c = per.train_index[y[per.train_index] == c]
        assert len(kept_c) == round(0.5 * len(in_c))
        if score == "el2n":  # the class's own highest scores
            want = in_c[score_all[in_c].argsort(descending=True)[:len(kept_c)]].sort().values
            assert torch.equal(kept_c, want)
    if score == "el2n":
        assert bool((y[overall] == 0).sum() == (y[pool] == 0).sum())  # overall: every class-0 example kept
        assert "that share of each class" in per.splits["train"]


@pytest.mark.parametrize("over,words", [
    ({"coreset_keep": 0.0}, "data.coreset_keep"),
    ({"coreset_keep": 0.5}, "coreset_score=least_confidence ranks by a proxy run's scores"),
    ({"coreset_skip": 0.1}, "data.coreset_skip: leaves out the highest proxy scores of a core-set"),
    ({"coreset_keep": 0.6, "coreset_score": "random", "coreset_skip": 0.1}, "coreset_score=random"),
    ({"coreset_keep": 0.95, "coreset_proxy": "p", "coreset_skip": 0.1}, "must be <= 1, got 0.95 + 0.1"),
    ({"coreset_keep": 0.5, "coreset_proxy": "p", "coreset_skip": 1.0}, "data.coreset_skip"),
    ({"coreset_random": 0.1}, "data.coreset_random: mixes random examples into a proxy-scored core-set"),
    ({"coreset_keep": 0.6, "coreset_score": "random", "coreset_random": 0.1}, "coreset_score=random"),
    ({"coreset_keep": 0.3, "coreset_proxy": "p", "coreset_random": 0.3}, "must be below coreset_keep (0.3), got 0.3"),
    ({"coreset_keep": 0.6, "coreset_proxy": "p", "coreset_random": -0.1}, "data.coreset_random"),
])
def test_bad_coreset_config_names_the_key(over, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        _data(**over)


def _cfg(variant: str, **over):
    base = {"data": {"name": "synthetic", "n_train": 240, "n_test": 64, "val_fraction": 0.1},
            "model": {"name": "vgg1", "width": 8, "dense": 16}, "method": {"name": "supervised"},
            "optim": {"name": "adam", "lr": 0.003}, "train": {"epochs": 3, "batch_size": 32, "threads": 1}}
    for k, v in over.items():
        sec, key = k.split(".")
        base[sec][key] = v
    return make(base, study="cs", variant=variant, preset="smoke")


def test_proxy_scores_then_a_target_keeps_the_hardest(tmp_path, interrupted_run):
    proxy = _cfg("proxy", **{"method.score_examples": True, "method.el2n_epoch": 1})
    res = loop.run(proxy, tmp_path / "proxy")
    s = torch.load(tmp_path / "proxy" / rd.SCORES)
    n = len(s["index"])
    assert n == 216 and len(set(s["index"].tolist())) == n  # every training-pool example, once
    for k in SCORES:
        assert s[k].shape == (n,) and torch.isfinite(s[k]).all(), k
    assert (s["least_confidence"] >= 0).all() and (s["least_confidence"] <= 1).all()
    assert (s["forgetting"] >= 0).all() and (s["forgetting"] == s["forgetting"].round()).all()
    assert (s["el2n"] >= 0).all() and (s["el2n"] <= 2 ** 0.5 + 1e-6).all()
    # resuming the proxy mid-way gives the same scores (forgetting counters and EL2N are checkpointed)
    interrupted_run(proxy, tmp_path / "cut", epoch=2)
    loop.run(proxy, tmp_path / "cut", resume=True)
    s2 = torch.load(tmp_path / "cut" / rd.SCORES)
    for k in ("index",) + SCORES:
        assert torch.allclose(s[k].double(), s2[k].double()), k
    # the target keeps the 40 % with the highest forgetting score
    tgt = _cfg("kept", **{"data.coreset_keep": 0.4, "data.coreset_score": "forgetting", "data.coreset_proxy": "proxy"})
    out = loop.run(tgt, tmp_path / "kept", refs={"data.coreset_proxy": tmp_path / "proxy"})
    assert "a core-set: 86 of those 216 (40%)" in out["splits"]["train"]
    assert res["test_acc"] >= 0


def test_study_report_has_the_coreset_section(tmp_path, tiny_study):
    from ablations.cli import main

    study = tmp_path / "cs.yaml"
    study.write_text(tiny_study.read_text().split("variants:")[0].replace("name: tiny", "name: cs")
                     + "sections: [coreset]\n" + """variants:
  whole: {}
  proxy:
    set: {method.score_examples: true, method.el2n_epoch: 1}
  random50:
    set: {data.coreset_keep: 0.5, data.coreset_score: random}
  forgetting50:
    set: {data.coreset_keep: 0.5, data.coreset_score: forgetting, data.coreset_proxy: proxy}
""")
    assert main(["run", str(study), "--preset", "smoke", "--out", str(tmp_path / "out"), "--set", "train.threads=1"]) == 0
    md = (tmp_path / "out" / "cs" / "smoke" / "report.md").read_text()
    assert "## Core-sets" in md and "| forgetting50 | forgetting | 50 % |" in md and "| random50 | random | 50 % |" in md
    assert "Proxy proxy seed 0:" in md and (tmp_path / "out" / "cs" / "smoke" / "coreset.png").exists()
    # the study's data line describes the reference variant's (the whole set's) splits, not a core-set's
    data_line = next(line for line in md.splitlines() if line.startswith("- Data:"))
    assert "core-set" not in data_line and "train: 256 of the 320" in data_line, data_line


def test_scoring_examples_leaves_the_training_unchanged(tmp_path):
    """cifar10-coreset's `oracle` is the whole-set run plus scores: its accuracy stands for the whole set's only if
    counting forgetting events and the EL2N pass (no gradient, no random draw) change nothing in the training."""
    from safetensors.torch import load_file

    from ablations.study import get_study

    st = get_study("cifar10-coreset")
    sets = {"data.name": "synthetic", "data.n_train": 96, "data.n_test": 32, "data.limit": 0, "data.limit_eval": 0,
            "train.batch_size": 32, "train.threads": 1, "method.el2n_epoch": 1}
    out = {}
    for v in ("whole", "oracle"):
        (cfg,) = st.resolve("smoke", [v], seeds=1, sets=sets)
        out[v] = loop.run(cfg, tmp_path / v)
    assert (tmp_path / "oracle" / rd.SCORES).exists() and not (tmp_path / "whole" / rd.SCORES).exists()
    assert out["oracle"]["test_acc"] == out["whole"]["test_acc"]
    a, b = (load_file(str(tmp_path / v / rd.FINAL)) for v in ("whole", "oracle"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_el2n_at_the_last_epoch_comes_from_the_final_scoring_pass(tmp_path, monkeypatch):
    """EL2N asked for at (or after) the last epoch is the final model's, from the one pass over the training set
    that gives the other scores: the same values as asking for it after training, and no second pass."""
    from ablations.methods import supervised

    calls = []
    orig = supervised.Supervised._train_logits
    monkeypatch.setattr(supervised.Supervised, "_train_logits",
                        lambda self, idx=None: calls.append(1) or orig(self, idx))
    el2n = {}
    for e in (2, 5):
        calls.clear()
        loop.run(_cfg(f"p{e}", **{"method.score_examples": True, "method.el2n_epoch": e, "train.epochs": 2}),
                 tmp_path / f"p{e}")
        el2n[e] = torch.load(tmp_path / f"p{e}" / rd.SCORES)["el2n"]
        assert len(calls) == 1, (e, len(calls))
    assert torch.equal(el2n[2], el2n[5])
