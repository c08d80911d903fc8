"""ablations.data.splits: the one splits module of the image datasets. Property tests over small random
data sets; each image encodes its own index in the train split (channels 0 and 1 of pixel (0, 0)), so
every split can be traced back to the train split without trusting the code under test."""
from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ablations.config import ConfigError
from ablations.data.base import ImageDataConfig, RawData
from ablations.data.splits import (CIFAR10_ASYMMETRIC, asymmetric_map, asymmetric_noise, channel_stats, make_splits,
                                   stratified_take, symmetric_noise)

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FAST = settings(max_examples=30, deadline=None)


# ---------------------------------------------------------------- helpers

def _raw(n: int, k: int, seed: int, n_test: int = 40, classes: list[str] | None = None, title: str = "Toy",
         hw: int = 2) -> RawData:
    g = torch.Generator().manual_seed(seed)

    def images(m: int, base: int) -> torch.Tensor:
        x = torch.randint(0, 256, (m, 3, hw, hw), generator=g, dtype=torch.int64)
        ids = torch.arange(m) + base
        x[:, 0, 0, 0], x[:, 1, 0, 0] = ids % 256, ids // 256
        return x.to(torch.uint8)

    return RawData(train_x=images(n, 0), train_y=torch.randint(0, k, (n,), generator=g),
                   test_x=images(n_test, 0), test_y=torch.randint(0, k, (n_test,), generator=g),
                   classes=classes or [f"c{i}" for i in range(k)], source="memory", title=title)


def _ids(x: torch.Tensor) -> list[int]:
    """The train-split index each image was made with."""
    return (x[:, 0, 0, 0].long() + 256 * x[:, 1, 0, 0].long()).tolist()


def _cfg(**kw) -> ImageDataConfig:
    return ImageDataConfig(**kw)  # no check(): that is the config layer's job (and imports augment)


def _expected_labeled(y: torch.Tensor, k: int, per_class: int, fraction: float) -> list[int]:
    counts = torch.bincount(y, minlength=k).tolist()
    if per_class > 0:
        return [min(per_class, c) for c in counts]
    if fraction < 1:
        return [max(int(round(fraction * c)), 1 if c and fraction > 0 else 0) for c in counts]
    return counts


def _float_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    f = x.double() / 255.0
    return f.mean((0, 2, 3)).tolist(), f.std((0, 2, 3), unbiased=False).tolist()


# ---------------------------------------------------------------- the former images.make_splits, verbatim
# (images.py now calls splits.make_splits; this copy pins down what "the same as before" means)

def _old_gen(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + stream * 7_919 + 17) % 2**63)


def _old_subsample(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    if k <= 0 or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=g)[:k].sort().values


def _old_channel_stats(x):
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


def _old_symmetric_noise(y, rate, n_classes, g):
    y = y.clone()
    k = int(round(rate * len(y)))
    if k <= 0 or n_classes < 2:
        return y
    idx = torch.randperm(len(y), generator=g)[:k]
    shift = torch.randint(1, n_classes, (k,), generator=g)
    y[idx] = (y[idx] + shift) % n_classes
    return y


def _old_make_splits(raw: dict, dc, seed: int, title: str = "") -> dict:
    tx, ty = raw["train_x"], raw["train_y"]
    n = len(tx)
    n_val = int(round(dc.val_fraction * n))
    perm = torch.randperm(n, generator=_old_gen(seed, 1))
    val_idx, tr_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    tr_idx = tr_idx[_old_subsample(len(tr_idx), dc.limit, _old_gen(seed, 2))]
    val_idx = val_idx[_old_subsample(len(val_idx), dc.limit_eval, _old_gen(seed, 3))]
    te_idx = _old_subsample(len(raw["test_x"]), dc.limit_eval, _old_gen(seed, 4))
    classes = list(raw["classes"])
    train_y = ty[tr_idx]
    if dc.label_noise > 0:
        train_y = _old_symmetric_noise(train_y, dc.label_noise, len(classes), _old_gen(seed, 5))
    train_x = tx[tr_idx]
    mean, std = _old_channel_stats(train_x)
    lim = f", limited to {len(tr_idx)} (seed {seed})" if dc.limit and dc.limit < n - n_val else ""
    noise = f", {dc.label_noise:.0%} of labels replaced by a random other class (seed {seed})" if dc.label_noise else ""
    splits = {
        "train": f"{len(tr_idx)} of the {n} {title} training images{lim}{noise}".replace("  ", " "),
        "val": f"{len(val_idx)} held out of the training images (val_fraction {dc.val_fraction}, seed {seed})",
        "test": f"{len(te_idx)} of the {len(raw['test_x'])} official test images"
                + (f" (limit_eval, seed {seed})" if len(te_idx) < len(raw["test_x"]) else ""),
    }
    return dict(train_x=train_x, train_y=train_y, val_x=tx[val_idx], val_y=ty[val_idx],
                test_x=raw["test_x"][te_idx], test_y=raw["test_y"][te_idx], classes=classes,
                mean=mean, std=std, source=raw["source"], splits=splits)


# ---------------------------------------------------------------- strategies

sizes = st.integers(0, 200)
n_classes = st.integers(2, 10)
seeds = st.integers(0, 2**31 - 1)
val_fractions = st.floats(0.0, 0.9)
rates = st.floats(0.0, 1.0)


@st.composite
def labeled_knobs(draw) -> dict:
    kind = draw(st.sampled_from(["all", "per_class", "fraction"]))
    if kind == "per_class":
        return {"labeled_per_class": draw(st.integers(1, 30))}
    if kind == "fraction":
        return {"labeled_fraction": draw(st.floats(0.0, 0.99))}
    return {}


# ---------------------------------------------------------------- the old behaviour, exactly

@FAST
@given(n=sizes, k=n_classes, seed=seeds, data_seed=seeds, vf=val_fractions, limit=st.integers(0, 220),
       limit_eval=st.integers(0, 60), noise=st.one_of(st.just(0.0), rates))
def test_identical_to_the_old_make_splits(n, k, seed, data_seed, vf, limit, limit_eval, noise):
    raw = _raw(n, k, data_seed, title="CIFAR-10")
    cfg = _cfg(val_fraction=vf, limit=limit, limit_eval=limit_eval, label_noise=noise)
    old = _old_make_splits(dataclasses.asdict(raw), cfg, seed, "CIFAR-10")
    new = make_splits(raw, cfg, seed)
    for key in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(new, key), old[key]), key
        assert getattr(new, key).dtype == old[key].dtype, key
    assert new.mean == old["mean"] and new.std == old["std"]
    assert new.classes == old["classes"] and new.source == old["source"]
    assert new.unlabeled_x is None and new.unlabeled_y is None
    assert torch.equal(new.train_x, raw.train_x[new.train_index])
    # the wording too, where the old one said all there is (it did not mention limit_eval on val, and
    # printed rates as whole percents)
    if noise == 0 or round(noise * 100, 6) == round(noise * 100):
        assert new.splits["train"] == old["splits"]["train"]
    assert new.splits["test"] == old["splits"]["test"]
    if len(new.val_x) == int(round(vf * n)):
        assert new.splits["val"] == old["splits"]["val"]
    assert set(new.splits) == {"train", "val", "test"}


def test_identical_wording_on_a_cifar_sized_example():
    raw = _raw(500, 10, 0, classes=CIFAR10_NAMES, title="CIFAR-10", hw=1)
    s = make_splits(raw, _cfg(val_fraction=0.1, label_noise=0.2), 0)
    assert s.splits["train"] == ("450 of the 500 CIFAR-10 training images, 20% of labels replaced by a random "
                                 "other class (seed 0)")
    assert s.splits["val"] == "50 held out of the training images (val_fraction 0.1, seed 0)"
    assert s.splits["test"] == "40 of the 40 official test images"


# ---------------------------------------------------------------- structure and sizes

@FAST
@given(n=sizes, k=n_classes, seed=seeds, data_seed=seeds, vf=val_fractions, limit=st.integers(0, 220),
       limit_eval=st.integers(0, 60), noise=rates, kind=st.sampled_from(["symmetric", "asymmetric"]),
       lab=labeled_knobs())
def test_splits_are_disjoint_and_sized_as_specified(n, k, seed, data_seed, vf, limit, limit_eval, noise, kind, lab):
    raw = _raw(n, k, data_seed)
    cfg = _cfg(val_fraction=vf, limit=limit, limit_eval=limit_eval, label_noise=noise, noise_kind=kind, **lab)
    s = make_splits(raw, cfg, seed)

    tr, va = _ids(s.train_x), _ids(s.val_x)
    un = _ids(s.unlabeled_x) if s.unlabeled_x is not None else []
    assert s.train_index is not None and s.train_index.tolist() == tr
    assert tr == sorted(tr) and un == sorted(un) and va == sorted(va)
    assert len(set(tr + un + va)) == len(tr) + len(un) + len(va)  # disjoint, no repeats
    assert set(tr + un + va) <= set(range(n))
    # labels belong to their images
    assert torch.equal(s.val_y, raw.train_y[va])
    true_y = s.train_y_true if s.train_y_true is not None else s.train_y
    assert torch.equal(true_y, raw.train_y[tr])
    if s.unlabeled_x is not None:
        assert torch.equal(s.unlabeled_y, raw.train_y[un])
    assert torch.equal(s.test_y, raw.test_y[_ids(s.test_x)])

    n_val = int(round(vf * n))
    n_pool = min(limit, n - n_val) if limit > 0 else n - n_val
    assert len(va) == (min(limit_eval, n_val) if limit_eval > 0 else n_val)
    assert len(s.test_x) == (min(limit_eval, len(raw.test_x)) if limit_eval > 0 else len(raw.test_x))
    assert len(tr) + len(un) == n_pool
    pool_y = raw.train_y[sorted(tr + un)]
    want = _expected_labeled(pool_y, k, lab.get("labeled_per_class", 0), lab.get("labeled_fraction", 1.0))
    assert torch.bincount(true_y, minlength=k).tolist() == want  # stratified counts, per class, exact
    assert (s.unlabeled_x is None) == (len(un) == 0) == ("unlabeled" not in s.splits)
    assert (s.train_y_true is None) == (noise == 0)
    assert set(s.splits) >= {"train", "val", "test"} and all(isinstance(v, str) and v for v in s.splits.values())

    stats_of = s.train_x if tr else s.unlabeled_x  # the labeled images; the pool when none is labeled
    if stats_of is not None and len(stats_of):
        mean, std = _float_stats(stats_of)
        assert s.mean == pytest.approx(mean, abs=1e-9)
        assert s.std == pytest.approx([max(v, 1e-6) for v in std], abs=1e-9)


def test_an_empty_class_and_a_small_class_in_the_labeled_partition():
    raw = _raw(60, 4, 1)
    raw.train_y = torch.tensor([0] * 40 + [1] * 3 + [3] * 17)  # class 2 has none, class 1 has 3
    s = make_splits(raw, _cfg(val_fraction=0.0, labeled_per_class=5), 0)
    assert torch.bincount(s.train_y, minlength=4).tolist() == [5, 3, 0, 5]
    assert len(s.unlabeled_x) == 60 - 13
    s = make_splits(raw, _cfg(val_fraction=0.0, labeled_fraction=0.01), 0)
    assert torch.bincount(s.train_y, minlength=4).tolist() == [1, 1, 0, 1]  # at least one per present class
    s = make_splits(raw, _cfg(val_fraction=0.0, labeled_fraction=0.5), 0)
    assert torch.bincount(s.train_y, minlength=4).tolist() == [20, 2, 0, 8]  # round(1.5) = 2, round(8.5) = 8


def test_nothing_labeled_keeps_the_statistics_of_the_pool():
    raw = _raw(50, 3, 2, hw=3)
    s = make_splits(raw, _cfg(val_fraction=0.2, labeled_fraction=0.0), 0)
    assert len(s.train_x) == 0 and len(s.unlabeled_x) == 40
    assert s.mean == pytest.approx(_float_stats(s.unlabeled_x)[0], abs=1e-9)


# ---------------------------------------------------------------- seeds and streams

@FAST
@given(n=st.integers(50, 200), k=n_classes, seed=seeds, other=seeds, vf=st.floats(0.1, 0.5), data_seed=seeds,
       noise=rates, lab=labeled_knobs())
def test_determinism(n, k, seed, other, vf, data_seed, noise, lab):
    assume(seed != other)
    raw = _raw(n, k, data_seed)
    cfg = _cfg(val_fraction=vf, label_noise=noise, limit=n // 2, limit_eval=10, **lab)
    a, b, c = make_splits(raw, cfg, seed), make_splits(raw, cfg, seed), make_splits(raw, cfg, other)
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        assert (torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb), f.name
    assert _ids(a.val_x) != _ids(c.val_x)  # >= 5 of >= 50 held out: a repeat has odds < 1e-6


@FAST
@given(n=st.integers(1, 200), k=n_classes, seed=seeds, data_seed=seeds, vf=val_fractions,
       limits=st.tuples(st.integers(0, 220), st.integers(0, 220)), noise=rates, lab=labeled_knobs(),
       kind=st.sampled_from(["symmetric", "asymmetric"]))
def test_each_knob_draws_from_its_own_stream(n, k, seed, data_seed, vf, limits, noise, lab, kind):
    raw = _raw(n, k, data_seed)
    base = make_splits(raw, _cfg(val_fraction=vf, limit=limits[0]), seed)
    # limit never moves the validation carve (nor limit_eval's draws from it)
    other = make_splits(raw, _cfg(val_fraction=vf, limit=limits[1]), seed)
    assert torch.equal(base.val_x, other.val_x) and torch.equal(base.test_x, other.test_x)
    # the labeled partition and the noise never move the carve or the limited pool
    full = make_splits(raw, _cfg(val_fraction=vf, limit=limits[0], label_noise=noise, noise_kind=kind, **lab), seed)
    assert torch.equal(full.val_x, base.val_x)
    un = _ids(full.unlabeled_x) if full.unlabeled_x is not None else []
    assert sorted(_ids(full.train_x) + un) == _ids(base.train_x)
    # the noise never moves the labeled partition
    clean = make_splits(raw, _cfg(val_fraction=vf, limit=limits[0], **lab), seed)
    assert torch.equal(clean.train_index, full.train_index)
    assert torch.equal(clean.train_y, full.train_y_true if full.train_y_true is not None else full.train_y)


# ---------------------------------------------------------------- label noise

@FAST
@given(n=sizes, k=n_classes, seed=seeds, data_seed=seeds, rate=rates, lab=labeled_knobs())
def test_symmetric_noise_rate_is_exact_and_always_wrong(n, k, seed, data_seed, rate, lab):
    raw = _raw(n, k, data_seed)
    s = make_splits(raw, _cfg(val_fraction=0.1, label_noise=rate, **lab), seed)
    true = s.train_y_true if s.train_y_true is not None else s.train_y
    flipped = s.train_y != true
    assert int(flipped.sum()) == int(round(rate * len(true)))
    assert bool(((s.train_y >= 0) & (s.train_y < k)).all())
    if s.unlabeled_y is not None:  # noise touches the labeled part only
        assert torch.equal(s.unlabeled_y, raw.train_y[_ids(s.unlabeled_x)])


@FAST
@given(n=sizes, seed=seeds, data_seed=seeds, rate=rates, lab=labeled_knobs(), order=st.permutations(CIFAR10_NAMES))
def test_asymmetric_noise_on_cifar10_names(n, seed, data_seed, rate, lab, order):
    raw = _raw(n, 10, data_seed, classes=list(order))
    s = make_splits(raw, _cfg(val_fraction=0.1, label_noise=rate, noise_kind="asymmetric", **lab), seed)
    true = s.train_y_true if s.train_y_true is not None else s.train_y
    names = list(order)
    src = {names.index(a): names.index(b) for a, b in CIFAR10_ASYMMETRIC.items()}
    cand = torch.tensor([int(t) in src for t in true], dtype=torch.bool)
    flipped = s.train_y != true
    assert int(flipped.sum()) == int(round(rate * int(cand.sum())))
    assert not bool((flipped & ~cand).any())  # only truck, bird, deer, cat, dog move
    for t, y in zip(true[flipped].tolist(), s.train_y[flipped].tolist()):
        assert y == src[t]
    if rate > 0:
        assert "truck->automobile" in s.splits["train"] and f"seed {seed}" in s.splits["train"]


@FAST
@given(n=sizes, k=n_classes, seed=seeds, data_seed=seeds, rate=rates)
def test_asymmetric_noise_on_other_classes_moves_to_the_next(n, k, seed, data_seed, rate):
    raw = _raw(n, k, data_seed)
    s = make_splits(raw, _cfg(val_fraction=0.1, label_noise=rate, noise_kind="asymmetric"), seed)
    true = s.train_y_true if s.train_y_true is not None else s.train_y
    flipped = s.train_y != true
    assert int(flipped.sum()) == int(round(rate * len(true)))
    assert torch.equal(s.train_y[flipped], (true[flipped] + 1) % k)


def test_noise_helpers_directly():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat(10)
    assert asymmetric_map(CIFAR10_NAMES) == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    assert asymmetric_map(["a", "b", "c"]) == {0: 1, 1: 2, 2: 0}
    assert asymmetric_map(["only"]) == {}
    z = asymmetric_noise(y, 1.0, CIFAR10_NAMES, g)
    assert torch.equal(z[y == 9], torch.ones(10, dtype=torch.int64)) and torch.equal(z[y == 6], y[y == 6])
    z = asymmetric_noise(y, 0.5, {0: 7}, g)  # an explicit map
    assert int((z != y).sum()) == 5 and bool((z[z != y] == 7).all())
    z = symmetric_noise(y, 0.3, 10, g)
    assert int((z != y).sum()) == 30
    assert torch.equal(symmetric_noise(y, 1.0, 1, g), y)  # one class: nothing to flip to


# ---------------------------------------------------------------- stratified_take

@FAST
@given(labels=st.lists(st.integers(0, 9), max_size=200), k=st.integers(0, 40), more=st.integers(0, 10),
       seed=seeds)
def test_stratified_take_counts_and_nesting(labels, k, more, seed):
    y = torch.tensor(labels, dtype=torch.int64)
    a = stratified_take(y, k, torch.Generator().manual_seed(seed))
    counts = torch.bincount(y, minlength=10).tolist() if labels else [0] * 10
    assert torch.bincount(y[a], minlength=10).tolist() == [min(k, c) for c in counts]
    assert a.tolist() == sorted(set(a.tolist()))
    b = stratified_take(y, k + more, torch.Generator().manual_seed(seed))
    assert set(a.tolist()) <= set(b.tolist())  # more per class: a superset
    per = {c: (c * 3 + k) % 7 for c in range(0, 10, 2)}  # odd classes missing from the dict: none
    d = stratified_take(y, per, torch.Generator().manual_seed(seed))
    assert torch.bincount(y[d], minlength=10).tolist() == [min(per.get(c, 0), n) for c, n in enumerate(counts)]


# ---------------------------------------------------------------- subset files

def _pool(raw: RawData, vf: float, seed: int) -> list[int]:
    return make_splits(raw, _cfg(val_fraction=vf), seed).train_index.tolist()


@FAST
@given(n=st.integers(1, 200), k=n_classes, seed=seeds, data_seed=seeds, vf=st.floats(0.0, 0.5),
       pick=st.randoms(use_true_random=False), limit=st.integers(0, 100), noise=rates)
def test_subset_json_and_text(n, k, seed, data_seed, vf, pick, limit, noise):
    raw = _raw(n, k, data_seed)
    pool = _pool(raw, vf, seed)
    assume(pool)
    chosen = pick.sample(pool, pick.randint(1, len(pool)))  # file order is not sorted
    with tempfile.TemporaryDirectory() as d:
        js, txt = Path(d) / "core.json", Path(d) / "core.txt"
        js.write_text(json.dumps(chosen))
        txt.write_text("# a core-set\n" + "\n".join(map(str, chosen)) + "\n\n")
        a = make_splits(raw, _cfg(val_fraction=vf, subset=str(js), label_noise=noise), seed)
        b = make_splits(raw, _cfg(val_fraction=vf, subset=str(txt), label_noise=noise), seed)
        c = make_splits(raw, _cfg(val_fraction=vf, subset=str(js), limit=limit), seed)
    assert a.train_index.tolist() == sorted(chosen)
    assert torch.equal(a.train_x, raw.train_x[sorted(chosen)])
    assert torch.equal(a.train_index, b.train_index) and torch.equal(a.train_y, b.train_y)
    assert str(js) in a.splits["train"] and str(txt) in b.splits["train"]
    full = make_splits(raw, _cfg(val_fraction=vf), seed)
    assert torch.equal(a.val_x, full.val_x)  # the subset never moves the carve
    # the limit applies after the subset: a seeded sample of it
    assert set(c.train_index.tolist()) <= set(chosen)
    assert len(c.train_index) == (min(limit, len(chosen)) if limit > 0 else len(chosen))


@FAST
@given(n=st.integers(10, 200), seed=seeds, data_seed=seeds, vf=st.floats(0.1, 0.5), where=st.integers(0, 5),
       kind=st.sampled_from(["val", "high", "negative"]), text=st.booleans())
def test_bad_subset_index_names_the_file_and_the_first_bad_index(n, seed, data_seed, vf, where, kind, text):
    raw = _raw(n, 3, data_seed)
    full = make_splits(raw, _cfg(val_fraction=vf), seed)
    pool, val = full.train_index.tolist(), _ids(full.val_x)
    assume(len(pool) >= 6 and val)
    bad = {"val": val[0], "high": n + where, "negative": -1 - where}[kind]
    later_bad = n + 1000  # a second bad index after the first: not the one named
    good = pool[:6]
    entries = good[:where] + [bad] + good[where:] + [later_bad]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("my core.txt" if text else "my core.json")
        p.write_text("\n".join(map(str, entries)) if text else json.dumps(entries))
        with pytest.raises(ConfigError) as e:
            make_splits(raw, _cfg(val_fraction=vf, subset=str(p)), seed)
    msg = str(e.value)
    assert str(p) in msg
    assert f"index {bad} " in msg and f"index {later_bad}" not in msg
    assert ("validation" in msg) == (kind == "val")


def test_unreadable_or_malformed_subset_files():
    raw = _raw(30, 3, 0)
    with tempfile.TemporaryDirectory() as d:
        cases = {"missing.json": None, "words.txt": "1\n2\nthree\n", "floats.json": "[1, 2.5]",
                 "broken.json": "[1, 2", "object.json": '{"a": 1}', "dict_entry.json": '[{"a": 1}]', "empty.txt": "\n# nothing\n",
                 "bools.json": "[true, 2]"}
        for name, text in cases.items():
            p = Path(d) / name
            if text is not None:
                p.write_text(text)
            with pytest.raises(ConfigError, match="data.subset") as e:
                make_splits(raw, _cfg(val_fraction=0.0, subset=str(p)), 0)
            assert str(p) in str(e.value), name
        p = Path(d) / "dups.txt"
        p.write_text("3\n3\n1\n")
        assert make_splits(raw, _cfg(val_fraction=0.0, subset=str(p)), 0).train_index.tolist() == [1, 3]


def test_channel_stats_match_a_float_computation():
    x = torch.randint(0, 256, (7, 3, 5, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    mean, std = channel_stats(x)
    m, s = _float_stats(x)
    assert mean == pytest.approx(m, abs=1e-12) and std == pytest.approx(s, abs=1e-12)
    assert channel_stats(x[:0]) == ((0.0,) * 3, (1.0,) * 3)


# ---------------------------------------------------------------- a user's asymmetric map (data.noise_map)

@FAST
@given(n=sizes, seed=seeds, data_seed=seeds, rate=rates)
def test_named_noise_map_flips_only_the_named_classes(n, seed, data_seed, rate):
    raw = _raw(n, 4, data_seed, classes=["Cat", "dog", "fox", "owl"])
    s = make_splits(raw, _cfg(val_fraction=0.1, label_noise=rate, noise_kind="asymmetric",
                              noise_map={"cat": "DOG", "owl": "fox"}), seed)  # names match in any case
    true = s.train_y_true if s.train_y_true is not None else s.train_y
    cand = (true == 0) | (true == 3)
    flipped = s.train_y != true
    assert int(flipped.sum()) == int(round(rate * int(cand.sum())))
    assert not bool((flipped & ~cand).any())
    assert torch.equal(s.train_y[flipped], torch.tensor([{0: 1, 3: 2}[int(t)] for t in true[flipped]],
                                                         dtype=torch.int64))
    if rate > 0:
        assert "Cat->dog, owl->fox" in s.splits["train"]


@pytest.mark.parametrize("mapping,words", [
    ({"cat": "wolf"}, "data.noise_map.cat: unknown class 'wolf'"),
    ({"cta": "dog"}, "data.noise_map.cta: unknown class 'cta' (did you mean 'cat'?); the 3 classes: cat, dog, fox"),
])
def test_named_noise_map_with_an_unknown_class_is_one_clear_error(mapping, words):
    from ablations.data.sources import DataError

    raw = _raw(30, 3, 0, classes=["cat", "dog", "fox"])
    with pytest.raises(DataError, match=re.escape(words)):
        make_splits(raw, _cfg(val_fraction=0.1, label_noise=0.2, noise_kind="asymmetric", noise_map=mapping), 0)


@pytest.mark.parametrize("over,words", [
    ({"label_noise": 1.0}, "data.label_noise"),
    ({"label_noise": -0.1}, "data.label_noise"),
    ({"noise_map": {"cat": "dog"}}, "data.noise_map: a class map is for noise_kind=asymmetric"),
    ({"noise_kind": "asymmetric", "noise_map": {"cat": "cat"}}, "data.noise_map.cat: must name another class"),
])
def test_bad_noise_settings_name_the_key(over, words):
    from ablations.config import make

    with pytest.raises(ConfigError, match=re.escape(words)):
        make({"data": {"name": "synthetic", "label_noise": 0.2, **over}})
