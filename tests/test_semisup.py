"""Semi-supervised fine-tuning (methods/semisup.py and one file per algorithm): the unlabeled losses against a
hand computation, the cached views against fresh ones, every algorithm end to end with its report section,
resume equivalence, and the bad-input lines."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ablations import loop
from ablations import rundir as rd
from ablations import runtime
from ablations.config import ConfigError, make
from ablations.methods.semisup import SemiSupervised, class_thresholds, confident
from ablations.registry import METHODS
from test_transfer import _isolated, _one_thread  # noqa: F401  (autouse: a temporary cache, one thread)

SSL = [e.name for e in METHODS.entries() if isinstance(e.obj, type) and issubclass(e.obj, SemiSupervised)]


def _cfg(method: str, seed: int = 0, **over):
    tree = {"data": {"name": "synthetic", "n_train": 120, "n_test": 48, "n_classes": 3, "noise": 0.35,
                     "image_size": 32, "normalize": "model", "val_fraction": 0.2, "labeled_per_class": 4,
                     "aug": {"train": [{"translate": 2}], "strong": [{"randaugment": {"n_ops": 2}}, "cutout"]}},
            "model": {"name": "resnet18", "pretrained": False},
            "method": {"name": method, "mu": 3, "tau": 0.5, "views": 2},
            "optim": {"name": "adam", "lr": 0.01},
            "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 32, "threads": 1, "precision": "fp32",
                      "log_every": 1000}}
    return _make(tree, method, seed, over)


def _make(tree: dict, method: str, seed: int, over: dict):
    """The config of `tree` with the dotted overrides `over` ({"method.tau": 0.5}) set in it."""
    for k, v in over.items():
        sec, key = k.split(".", 1)
        tree.setdefault(sec, {})[key] = v
    return make(tree, study="fewlabels", variant=method, preset="smoke", seed=seed)


def test_the_registry_has_the_algorithms():
    assert {"pseudolabel", "fixmatch", "labelprop"} <= set(SSL)


def test_confident_and_the_unlabeled_losses_by_hand():
    z = torch.tensor([[3.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 5.0]])
    pseudo, mask = confident(z, 0.8)
    assert pseudo.tolist() == [0, 0, 2] and mask.tolist() == [True, False, True]  # softmax max: .91, .37, .99
    strong = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    views = {id(z): z, id(strong): strong}
    fake = SimpleNamespace(cfg=SimpleNamespace(method=SimpleNamespace(tau=0.8, dist_align=False, threshold="fixed")),
                           forward=lambda x: views[id(x)])
    fake.pseudo_labels = lambda logits: METHODS.get("fixmatch").pseudo_labels(fake, logits)
    want_fix = (F.cross_entropy(strong[0:1], torch.tensor([0])) + F.cross_entropy(strong[2:3], torch.tensor([2]))) / 3
    loss, p, m = METHODS.get("fixmatch").unlabeled_loss(fake, z, strong)
    assert loss.item() == pytest.approx(want_fix.item()) and p.tolist() == [0, 0, 2] and m.tolist() == [True, False, True]
    want_pl = (F.cross_entropy(z[0:1], torch.tensor([0])) + F.cross_entropy(z[2:3], torch.tensor([2]))) / 3
    loss, _, _ = METHODS.get("pseudolabel").unlabeled_loss(fake, z, None)
    assert loss.item() == pytest.approx(want_pl.item())


def test_distribution_alignment_by_hand():
    """dist_align: p * prior / running mean, renormalised, then the threshold; the running mean moves by
    (1 - momentum) towards the batch's mean prediction at every call (a training step)."""
    z = torch.log(torch.tensor([[0.90, 0.05, 0.05], [0.60, 0.30, 0.10]]))  # softmax gives these rows back
    fake = SimpleNamespace(cfg=SimpleNamespace(method=SimpleNamespace(tau=0.7, dist_align=True, align_momentum=0.5,
                                                                    threshold="fixed")),
                           p_prior=torch.full((3,), 1 / 3), p_model=torch.tensor([0.8, 0.1, 0.1]))
    pseudo, mask = METHODS.get("fixmatch").pseudo_labels(fake, z)
    p_model = 0.5 * torch.tensor([0.8, 0.1, 0.1]) + 0.5 * torch.tensor([0.75, 0.175, 0.075])
    assert torch.allclose(fake.p_model, p_model)
    q = torch.tensor([[0.90, 0.05, 0.05], [0.60, 0.30, 0.10]]) / p_model
    q = q / q.sum(1, keepdim=True)  # row 0: class 0 still 0.55 (below 0.7); row 1: class 1 wins
    assert pseudo.tolist() == q.argmax(1).tolist() == [0, 1]
    assert mask.tolist() == (q.max(1).values >= 0.7).tolist()
    # a model that predicts class 0 for everything is pushed off it: the collapse the option prevents
    assert q[1].argmax() == 1 and torch.tensor([0.60, 0.30, 0.10]).argmax() == 0


def test_adaptive_threshold_by_hand():
    """FreeMatch's self-adaptive threshold: the running means of the max probability (global) and of each class's
    probability (local) move by (1 - momentum) per call; class c's threshold is global * local_c / max(local)."""
    probs = torch.tensor([[0.90, 0.05, 0.05], [0.50, 0.40, 0.10], [0.20, 0.30, 0.50]])
    fake = SimpleNamespace(cfg=SimpleNamespace(method=SimpleNamespace(tau=0.99, dist_align=False, threshold="adaptive",
                                                                      threshold_momentum=0.5)),
                           sat_global=torch.tensor(1 / 3), sat_local=torch.full((3,), 1 / 3))
    pseudo, mask = METHODS.get("fixmatch").pseudo_labels(fake, probs.log())
    g = 0.5 / 3 + 0.5 * (0.90 + 0.50 + 0.50) / 3  # 0.4833
    local = 0.5 / 3 + 0.5 * probs.mean(0)  # (0.4333, 0.2333, 0.2667)
    assert fake.sat_global.item() == pytest.approx(g) and torch.allclose(fake.sat_local, local)
    tau_c = g * local / local.max()  # class 0: 0.483, class 1: 0.260, class 2: 0.297
    assert pseudo.tolist() == [0, 0, 2]
    assert mask.tolist() == [True, True, True] == (probs.max(1).values >= tau_c[pseudo]).tolist()
    assert torch.allclose(class_thresholds(fake.sat_global, fake.sat_local), tau_c)  # what the log averages
    # a second, less confident batch: the global mean follows the confidence down, class 1's share rises; class 0's
    # 0.45 is now below its threshold (0.467), class 1's 0.45 above its lower one (0.366)
    pseudo, mask = METHODS.get("fixmatch").pseudo_labels(fake, torch.tensor([[0.45, 0.35, 0.2], [0.3, 0.45, 0.25]]).log())
    g2 = 0.5 * g + 0.5 * 0.45
    local2 = 0.5 * local + 0.5 * torch.tensor([0.375, 0.40, 0.225])
    tau2 = g2 * local2 / local2.max()
    assert fake.sat_global.item() == pytest.approx(g2) and pseudo.tolist() == [0, 1]
    assert mask.tolist() == [0.45 >= tau2[0].item(), 0.45 >= tau2[1].item()] == [False, True]


def test_conjugate_gradient_solves_every_column():
    from ablations.methods.labelprop import conjugate_gradient

    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = m @ m.T + 12 * torch.eye(12, dtype=torch.float64)  # symmetric positive definite
    b = torch.randn(12, 3, generator=g, dtype=torch.float64)
    b[:, 2] = 0  # a column with nothing to solve stays 0 (no 0 / 0)
    x = conjugate_gradient(lambda p: a @ p, b, iters=12)  # exact in n steps (up to rounding)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8) and torch.equal(x[:, 2], torch.zeros(12, dtype=torch.float64))


def test_knn_graph_and_certainty_by_hand():
    from ablations.methods.labelprop import certainty, knn_graph

    # 4 points on the unit circle at 0, 10, 90 and 180 degrees; k = 1: 0 <-> 10 mutual, 90 -> 10, 180 -> 90
    ang = torch.tensor([0.0, 10.0, 90.0, 180.0]) * torch.pi / 180
    x = torch.stack([ang.cos(), ang.sin()], 1) * torch.tensor([[1.0], [2.0], [3.0], [4.0]])  # norms do not matter
    w = knn_graph(x, k=1, gamma=3.0).to_dense()
    c10, c80 = torch.cos(ang[1]) ** 3, torch.cos(ang[2] - ang[1]) ** 3  # cos(90 - 10 deg) ** 3
    want = torch.zeros(4, 4)
    want[0, 1] = want[1, 0] = 2 * c10  # a mutual pair counts twice (W + W^T)
    want[2, 1] = want[1, 2] = c80
    want[3, 2] = want[2, 3] = 0.0  # cos(90 deg) = 0: an edge of weight 0
    assert torch.allclose(w, want, atol=1e-6)
    label, weight = certainty(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, -0.1, 0.6], [0.0, 0.0, 0.0]]))
    assert label.tolist()[:3] == [0, 0, 2]
    p = torch.tensor([0.25, 0.0, 0.75])
    w2 = 1 - (-(p[[0, 2]] * p[[0, 2]].log()).sum()) / torch.log(torch.tensor(3.0))
    assert torch.allclose(weight, torch.tensor([1.0, 0.0, w2.item(), 0.0]), atol=1e-6)  # certain, uniform, mixed, unreached


def test_label_propagation_follows_the_clusters():
    """Two well-separated clusters, one labeled point each: every point gets its cluster's label."""
    from ablations.methods.labelprop import propagate

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    x = torch.cat([centres[i] + 0.1 * torch.randn(20, 3, generator=g) for i in (0, 1)])  # rows 0-19, 20-39
    x = torch.cat([x[[0, 20]], x[1:20], x[21:]])  # the labeled rows first
    z = propagate(x, torch.tensor([0, 1]), n_lab=2, n_cls=2, k=5, alpha=0.99, gamma=3.0, iters=20)
    assert z.argmax(1).tolist() == [0, 1] + [0] * 19 + [1] * 19


def test_labelprop_trains_the_head_on_the_propagated_labels(tmp_path):
    c = _cfg("labelprop", **{"method.k": 10})
    m = METHODS.get("labelprop")(c, runtime.setup(c.train, c.seed), tmp_path / "a", {})
    assert m.u_label.shape == m.u_weight.shape == (m.n_unlabeled,) and 0 <= m.u_weight.min() <= m.u_weight.max() <= 1
    assert m.lp_stats["nodes"] == len(m.tx) + m.n_unlabeled and m.lp_stats["k"] == 10
    ui = torch.tensor([0, 3, 5])
    z = torch.randn(3, 3)
    m.forward = lambda x: z
    loss, pseudo, mask = m.unlabeled_loss(None, None, ui)
    w = m.u_weight[ui] * m.class_weight[m.u_label[ui]]
    assert torch.equal(pseudo, m.u_label[ui]) and mask.all()
    assert loss.item() == pytest.approx((F.cross_entropy(z, pseudo, reduction="none") * w).mean().item())


def test_cached_views_are_the_backbones_features_of_seeded_views(tmp_path):
    """A cached view k is backbone(prep(x, generator seeded by k)) and is shared across seeds and algorithms."""
    c = _cfg("fixmatch")
    m = METHODS.get("fixmatch")(c, runtime.setup(c.train, c.seed), tmp_path / "a", {})
    assert m.view_mode and m.uw.shape[:2] == (2, m.n_unlabeled) and m.us.shape[:2] == (2, m.n_unlabeled)
    assert m.tv.shape[:2] == (2, len(m.tx)) and not torch.equal(m.uw[0], m.uw[1])  # two different views
    # view 1, recomputed by hand: every train-split image the run touches, in index order, batches of 32
    from ablations.registry import DATASETS

    raw = DATASETS.get("synthetic")(c.data, None)
    d = m.data
    used = torch.cat([d.train_index, d.unlabeled_index, d.val_index]).unique()
    assert len(used) == 120  # no limit: the whole train split, whatever the seed
    gen = torch.Generator().manual_seed(1_000_003 * 2 + 7_919)  # strong view 1
    m.model.eval()
    with torch.no_grad():
        x = raw.train_x[used]
        fresh = torch.cat([m.model.backbone(m.prep(x[i:i + 32], gen, m.strong)) for i in range(0, len(x), 32)])
    pos = {int(j): p for p, j in enumerate(used)}
    assert torch.allclose(m.us[1], fresh[[pos[int(j)] for j in d.unlabeled_index]], atol=1e-5)
    assert torch.equal(m.data.unlabeled_y, raw.train_y[d.unlabeled_index])  # the index is the image's
    assert m.cache_stats["from_disk"] is False
    # another algorithm, same seed: the validation features and the weak views come from the disk cache
    c2 = _cfg("pseudolabel")
    m2 = METHODS.get("pseudolabel")(c2, runtime.setup(c2.train, c2.seed), tmp_path / "b", {})
    assert m2.cache_stats["from_disk"] is True and torch.equal(m2.uw, m.uw) and m2.us is None
    # another seed (another validation carve and labeled split): the views of the same 120 images are reused
    c3 = _cfg("fixmatch", seed=1)
    # (runtime seed 0: the same random-init backbone, as pretrained weights would be)
    m3 = METHODS.get("fixmatch")(c3, runtime.setup(c3.train, 0), tmp_path / "c", {})
    # on disk: seed 0's validation features, 2 weak and 2 strong views; seed 1 added its validation features only
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 1 + 2 + 2 + 1
    assert not torch.equal(m3.data.unlabeled_index, m.data.unlabeled_index)
    both = [int(j) for j in m3.data.unlabeled_index if j in set(m.data.unlabeled_index.tolist())]
    i1 = [m.data.unlabeled_index.tolist().index(j) for j in both]
    i3 = [m3.data.unlabeled_index.tolist().index(j) for j in both]
    assert torch.equal(m3.us[:, i3], m.us[:, i1])  # the same image has the same views in both runs


@pytest.mark.parametrize("method,over", [(m, {}) for m in SSL] + [
    ("fixmatch", {"method.threshold": "adaptive", "method.threshold_momentum": 0.5})])
def test_every_algorithm_trains_and_reports_its_pseudo_labels(tmp_path, method, over):
    d = tmp_path / "fewlabels" / "smoke" / method / "seed0"
    res = loop.run(_cfg(method, **over), d)
    assert res["n_labeled"] == 12 and res["n_unlabeled"] == 120 - 24 - 12
    assert res["trainable_params"] == 512 * 3 + 3  # the head alone: the views were cached
    recs = [r for r in rd.read_metrics(d / rd.METRICS) if "pl_coverage" in r]
    assert len(recs) == 2
    for r in recs:
        assert 0 <= r["pl_coverage"] <= 100 and 0 <= r["pl_acc_all"] <= 100 and r["train_loss_u"] >= 0
    from ablations.report.render import write_report

    text = write_report(tmp_path / "fewlabels" / "smoke").read_text()
    assert "## Few labels" in text and "| " + method + " | " in text and "pseudolabels.png" in text
    assert "| 4 per class (12.5 %) |" in text  # the configured budget, the measured share in brackets
    if over:  # the adaptive threshold: logged every epoch, a probability, and shown in the report
        assert all(0 < r["pl_threshold"] <= 1 for r in recs) and f"| {method} | 0 | adaptive, mean " in text
    else:
        assert "pl_threshold" not in recs[-1]
        assert f"| {method} | 0 | {'none (graph weights)' if method == 'labelprop' else 'tau 0.5'} |" in text
    assert (tmp_path / "fewlabels" / "smoke" / "fewlabels.png").stat().st_size > 1000


def test_fixmatch_through_a_trainable_stage_trains_that_stage(tmp_path):
    """A trainable last stage: views are augmented and pushed through the backbone every step; the last stage
    moves, the first does not, and the pseudo-labels are recorded."""
    from safetensors.torch import load_file

    c = _cfg("fixmatch", **{"method.train_stages": 1, "train.epochs": 1})
    m = METHODS.get("fixmatch")(c, runtime.setup(c.train, c.seed), tmp_path / "x", {})
    assert not m.view_mode and m.tv is None
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    res = loop.run(c, tmp_path / "r")
    after = load_file(str(tmp_path / "r" / rd.FINAL))
    last, first = len(m.model.backbone.stages) - 1, 0
    moved = lambda i: any(not torch.equal(before[k], after[k]) for k in after  # noqa: E731
                          if k.startswith(f"backbone.stages.{i}.") and after[k].is_floating_point())
    assert moved(last) and not moved(first)
    assert res["trainable_params"] > 512 * 3 + 3
    assert "pl_coverage" in rd.read_metrics(tmp_path / "r" / rd.METRICS)[-1]


@pytest.mark.parametrize("method", SSL)
def test_without_a_random_weak_pipeline_one_view_is_cached(tmp_path, method):
    """No weak augmentation (pseudo-labelling as in Lee 2013): one weak view, the plain image's features."""
    over = {"data.aug": {"strong": ["cutout"]} if method == "fixmatch" else {}}
    c = _cfg(method, **over, **{"train.epochs": 1})
    m = METHODS.get(method)(c, runtime.setup(c.train, c.seed), tmp_path / "x", {})
    assert m.view_mode and m.uw.shape[0] == 1 and m.tv.shape[0] == 1
    assert m.vx.is_floating_point() and m.vx.shape[1] == 512  # validation features, computed once
    assert 0 <= loop.run(c, tmp_path / "r")["test_acc"] <= 100


@pytest.mark.parametrize("method,over,scratch", [(m, {}, False) for m in SSL] + [
    ("fixmatch", {"method.threshold": "adaptive", "method.dist_align": True, "method.threshold_momentum": 0.9}, False),
    ("fixmatch", {"method.threshold": "adaptive", "method.dist_align": True}, True)])
def test_resume_equals_not_stopping(tmp_path, method, over, scratch, interrupted_run):
    """Method state included: distribution alignment's and the adaptive threshold's running means; and a
    from-scratch network (every view augmented afresh each step: the generator's state must resume too)."""
    c = (_scratch if scratch else _cfg)(method, **over, **{"train.epochs": 3})
    full = loop.run(c, tmp_path / "full")
    interrupted_run(c, tmp_path / "cut", epoch=1)
    resumed = loop.run(c, tmp_path / "cut", resume=True)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.endswith(("_s", "_time", "per_s")) and k != "time"}  # noqa: E731
                        for r in rs]
    assert strip(rd.read_metrics(tmp_path / "full" / rd.METRICS)) == strip(rd.read_metrics(tmp_path / "cut" / rd.METRICS))
    assert full["test_acc"] == resumed["test_acc"]


@pytest.mark.parametrize("over,words", [
    ({"method.tau": 0.0}, "method.tau"),
    ({"method.tau": 1.5}, "method.tau"),
    ({"data.labeled_fraction": 0.0, "data.labeled_per_class": 0}, "data.labeled_fraction"),
    ({"data.labeled_fraction": 1.5, "data.labeled_per_class": 0}, "data.labeled_fraction"),
    ({"data.labeled_per_class": 0}, "data.labeled_fraction: method fixmatch learns from unlabeled images"),
    ({"data.aug": {"train": ["flip"]}}, "data.aug.strong: method fixmatch trains on a strong view"),
    ({"method.train_stages": 1, "method.name": "labelprop"}, "method.train_stages: labelprop propagates over"),
    ({"method.tta": 1, "method.name": "labelprop"}, "method.tta: labelprop propagates over"),
    ({"method.dist_align": True, "method.name": "labelprop"}, "method.dist_align: labelprop's pseudo-labels"),
    ({"method.threshold": "adaptive", "method.name": "labelprop"}, "method.threshold: labelprop's pseudo-labels"),
    ({"method.threshold": "median"}, "method.threshold"),
    ({"method.threshold_momentum": 1.0}, "method.threshold_momentum"),
    ({"method.k": 0, "method.name": "labelprop"}, "method.k"),
    ({"method.alpha": 1.0, "method.name": "labelprop"}, "method.alpha"),
])
def test_bad_settings_name_the_key(over, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        _cfg("fixmatch", **over)


def test_fewer_labeled_images_than_classes_is_one_line(tmp_path, capsys):
    from ablations.cli import main

    study = tmp_path / "s.yaml"
    study.write_text("""
name: s
base:
  data: {name: synthetic, n_train: 8, n_test: 16, n_classes: 10, image_size: 32, normalize: model,
         val_fraction: 0.0, labeled_fraction: 0.05, aug: {strong: [cutout]}}
  model: {name: resnet18, pretrained: false}
  method: {name: fixmatch}
  train: {epochs: 1, batch_size: 4, threads: 1}
presets: {smoke: {}}
variants: {v: {}}
""")
    assert main(["run", str(study), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "data.labeled_fraction=0.05:" in err and "labeled training images for 10 classes" in err
    assert err.count("\n") == 1


FEWLABELS = [(s, v) for s in ("cifar100-fewlabels", "imagewoof-fewlabels") for v in __import__("ablations.study", fromlist=["x"]).get_study(s).variants]


@pytest.mark.parametrize("study,variant", FEWLABELS, ids=[f"{s}:{v}" for s, v in FEWLABELS])
def test_every_fewlabels_variant_trains_an_epoch(study, variant, tmp_path):
    """The study's smoke preset on synthetic images and a random-init backbone: a typo fails here, not after
    the hour of caching views."""
    from ablations.study import get_study

    sets = {"data.name": "synthetic", "data.n_train": 240, "data.n_test": 32, "data.n_classes": 10,
            "model.pretrained": False, "train.threads": 1}
    (cfg,) = get_study(study).resolve("smoke", [variant], seeds=1, sets=sets)
    if cfg.method.name == "zeroshot":
        pytest.skip("the zero-shot floor needs ImageNet class names (tested in test_transfer.py)")
    res = loop.run(cfg, tmp_path / variant)
    assert 0 <= res["test_acc"] <= 100 and res["n_labeled"] + res["n_unlabeled"] == 200


def test_fewlabels_table_rows_are_settings_and_columns_budgets(tmp_path):
    """Seeds of one variant share a cell even when their measured shares differ; another input size is
    another row, named by what differs; the zero-shot run is the floor, not a row."""
    import json

    from ablations.report.render import write_report

    def fake(variant, seed, acc, n_l, over, method="finetune"):
        d = tmp_path / "s" / variant / f"seed{seed}"
        d.mkdir(parents=True)
        c = make({"data": {"name": "synthetic", **over}, "method": {"name": method}, "train.epochs": 0 if method == "zeroshot" else 1,
                  "model": {"name": "mobilenet_v2", "pretrained": False}}, study="s", variant=variant,
                 seed=seed, preset="full").to_dict()
        (d / rd.CONFIG).write_text(json.dumps(c))
        (d / rd.RESULT).write_text(json.dumps({"test_acc": acc, "n_labeled": n_l, "n_unlabeled": 1000 - n_l,
                                               "wall_time": 1}))

    fake("head_10", 0, 50.0, 100, {"labeled_fraction": 0.1})
    fake("head_10", 1, 52.0, 101, {"labeled_fraction": 0.1})  # per-class rounding: another measured share
    fake("size_32", 0, 40.0, 100, {"labeled_fraction": 0.1, "image_size": 32})
    fake("head_1", 0, 30.0, 10, {"labeled_per_class": 1})
    fake("zeroshot", 0, 20.0, 1000, {}, method="zeroshot")
    rd.write_study_record(tmp_path / "s", {"variants": ["head_10", "size_32", "head_1", "zeroshot"],
                                           "sections": ["fewlabels"]})
    text = write_report(tmp_path / "s").read_text()
    section = text[text.index("## Few labels"):]
    assert "Zero-shot floor (no training): 20.00 %" in section
    assert "| method | 10 % (10 %) | 1 per class (1 %) |" in section
    assert "| supervised (head) (data.image_size=0) | 51.00 ± 1.41 (2) | 30.00 (1) |" in section
    assert "| supervised (head) (data.image_size=32) | 40.00 (1) |  |" in section
    assert "zeroshot |" not in section


# ---- from scratch: a network without pretrained weights trains whole, its views augmented every step

def _scratch(method: str, **over):
    tree = {"data": {"name": "synthetic", "n_train": 120, "n_test": 48, "n_classes": 3, "noise": 0.35,
                     "image_size": 32, "val_fraction": 0.0, "labeled_per_class": 4,
                     "aug": {"train": ["flip", {"translate": 2}], "strong": [{"randaugment": {"n_ops": 2}}, "cutout"]}},
            "model": {"name": "airnet", "widths": [8, 16, 16]},
            "method": {"name": method, "mu": 3, "tau": 0.5},
            "optim": {"name": "nesterov", "lr": 0.05, "momentum": 0.9},
            "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 32, "threads": 1, "precision": "fp32",
                      "log_every": 1000}}
    return _make(tree, method, 0, over)


@pytest.mark.parametrize("method", [m for m in SSL if m != "labelprop"])
def test_a_from_scratch_network_trains_whole(tmp_path, method):
    """No feature cache, no frozen part: every parameter is trainable and moves, and the pseudo-labels are logged."""
    from safetensors.torch import load_file

    c = _scratch(method)
    m = METHODS.get(method)(c, runtime.setup(c.train, c.seed), tmp_path / "x", {})
    assert not m.transfer and not m.view_mode and not m.cached
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    res = loop.run(c, tmp_path / "r")
    assert res["trainable_params"] == sum(p.numel() for p in m.model.parameters() if p.requires_grad)
    after = load_file(str(tmp_path / "r" / rd.FINAL))
    convs = [k for k in after if k.endswith("weight") and after[k].dim() == 4 and k != "stem.weight"]
    assert convs and all(not torch.equal(before[k], after[k]) for k in convs)  # the frozen whitening layer aside
    assert res["n_labeled"] == 12 and res["n_unlabeled"] == 108
    assert "pl_coverage" in rd.read_metrics(tmp_path / "r" / rd.METRICS)[-1]


@pytest.mark.parametrize("over,words", [
    ({"method.train_stages": 1}, "method.train_stages: applies to pretrained backbones; 'airnet' trains from scratch"),
    ({"method.bn": "train"}, "method.bn: applies to pretrained backbones"),
    ({"method.unfreeze_every": 2}, "method.unfreeze_every: applies to pretrained backbones"),
])
def test_transfer_options_on_a_from_scratch_network_are_refused(over, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        _scratch("fixmatch", **over)


def test_finetune_itself_still_needs_a_pretrained_backbone():
    with pytest.raises(ConfigError, match="method finetune needs a pretrained backbone"):
        make({"model.name": "airnet", "method.name": "finetune", "data.name": "synthetic"})


@pytest.mark.parametrize("variant", __import__("ablations.study", fromlist=["x"]).get_study("cifar10-fewlabels").variants)
def test_every_cifar10_fewlabels_variant_trains(variant, tmp_path):
    """The from-scratch study's smoke preset on synthetic images (CIFAR-10's shape and classes)."""
    from ablations.study import get_study

    sets = {"data.name": "synthetic", "data.n_train": 400, "data.n_test": 32, "data.n_classes": 10, "train.threads": 1}
    (cfg,) = get_study("cifar10-fewlabels").resolve("smoke", [variant], seeds=1, sets=sets)
    res = loop.run(cfg, tmp_path / variant)
    assert 0 <= res["test_acc"] <= 100 and res["n_labeled"] == 40
