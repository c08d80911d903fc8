"""docs/extending.md, executed: every marked code block of the guide is run as the module its path names
(so it registers into the real registries), the guide's study runs through the CLI with --preset smoke,
the error lines it shows are the ones the CLI prints, and each example gets a direct check of what the
guide says it does. The registries (and sys.modules) are restored afterwards: the tests that enumerate
the registries (test_models, test_augment, test_methods) never see the examples."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re
import shlex
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ablations import cli, registry
from ablations import rundir as rd
from ablations.config import ConfigError, make
from ablations.registry import AUGS, DATASETS, LOSSES, METHODS, MODELS, SECTIONS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
REGISTRIES = (MODELS, DATASETS, METHODS, LOSSES, AUGS, SECTIONS)
# kind -> (the folder its file goes in, the registry it fills, the name it registers)
KINDS = {"model": ("src/ablations/models/", MODELS, "tinycnn"),
         "dataset": ("src/ablations/data/", DATASETS, "stripes"),
         "loss": ("src/ablations/losses/", LOSSES, "focal"),
         "augmentation": ("src/ablations/data/", AUGS, "grayscale"),
         "method": ("src/ablations/methods/", METHODS, "mixup"),
         "section": ("src/ablations/report/", SECTIONS, "mixup")}
MARK = re.compile(r"<!-- example: (\w+)(?: (\S+))? -->\n```(\w+)\n(.*?)\n```", re.S)
FENCE = re.compile(r"^```(\w+)", re.M)


def _blocks() -> list[tuple[str, str, str, str]]:
    """(kind, path, language, code) of every marked block, in the guide's order."""
    return [m.groups("") for m in MARK.finditer(DOC.read_text(encoding="utf-8"))]


def _block(kind: str) -> tuple[str, str]:
    found = [(path, code) for k, path, _, code in _blocks() if k == kind]
    assert len(found) == 1, f"docs/extending.md: expected one '{kind}' example, found {len(found)}"
    return found[0]


@contextlib.contextmanager
def registered():
    """Exec the guide's Python examples as modules of the package (registering into the real
    registries); on exit, restore every registry's entries and sys.modules as they were."""
    registry.load_plugins()  # the real entries first: the snapshot must hold them
    saved = [dict(r._items) for r in REGISTRIES]
    added: list[str] = []
    mods: dict[str, types.ModuleType] = {}
    try:
        for kind, path, lang, code in _blocks():
            if lang != "python":
                continue
            name = path.removeprefix("src/").removesuffix(".py").replace("/", ".")
            mod = types.ModuleType(name)
            mod.__file__ = str(ROOT / path)
            mod.__package__ = name.rpartition(".")[0]  # the examples' relative imports
            sys.modules[name] = mod  # typing.get_type_hints resolves the configs' annotations here
            added.append(name)
            exec(compile(code, str(ROOT / path), "exec"), mod.__dict__)
            mods[kind] = mod
        yield mods
    finally:
        for r, items in zip(REGISTRIES, saved):
            r._items.clear()
            r._items.update(items)
        for name in added:
            sys.modules.pop(name, None)


# ---------------------------------------------------------------- the guide itself (no registration)

def test_every_code_block_is_an_example_in_the_right_place():
    text = DOC.read_text(encoding="utf-8")
    blocks = _blocks()
    assert sorted(k for k, *_ in blocks) == sorted(list(KINDS) + ["study", "errors"])
    # no unmarked code: every fenced block with a language is one the tests run
    assert len(FENCE.findall(text)) == len(blocks)
    for kind, path, lang, code in blocks:
        if kind in KINDS:
            folder = KINDS[kind][0]
            assert lang == "python" and path.startswith(folder) and path.endswith(".py"), (kind, path)
            assert (ROOT / folder).is_dir()
            assert f'register("{KINDS[kind][2]}"' in code, kind
        if kind == "study":
            assert lang == "yaml" and path.startswith("src/ablations/studies/") and path.endswith(".yaml")
    assert 150 <= len(text.splitlines()) <= 400  # a guide, not a manual


def test_registrations_are_undone():
    assert "tinycnn" not in MODELS, "run this test before the module fixture registers the examples"
    before = {r.kind: r.names() for r in REGISTRIES}
    with registered() as mods:
        assert set(mods) == set(KINDS)
        for kind, (_, reg, name) in KINDS.items():
            assert name in reg, (kind, name)
        assert "ablations.methods.mixup" in sys.modules
    assert {r.kind: r.names() for r in REGISTRIES} == before
    assert "ablations.methods.mixup" not in sys.modules and "ablations.models.tinycnn" not in sys.modules


# ---------------------------------------------------------------- with the examples registered

@pytest.fixture(scope="module")
def examples():
    with registered() as mods:
        yield mods


@pytest.fixture(scope="module")
def study_file(examples, tmp_path_factory) -> Path:
    path, text = _block("study")
    p = tmp_path_factory.mktemp("study") / Path(path).name
    p.write_text(text + "\n")
    return p


@pytest.fixture(scope="module")
def study_run(examples, study_file, tmp_path_factory):
    """The guide's study, --preset smoke, through the CLI; records which run dirs init_from loaded."""
    from ablations.methods.supervised import Supervised

    out = tmp_path_factory.mktemp("runs")
    loads: list[Path] = []
    real = Supervised.load_weights

    def spy(self, run_dir):
        loads.append(Path(run_dir))
        return real(self, run_dir)

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setattr(Supervised, "load_weights", spy)
        rc = cli.main(["run", str(study_file), "--preset", "smoke", "--out", str(out)])
    return rc, out / "stripes" / "smoke", stdout.getvalue(), loads


def test_study_runs_every_variant(study_run):
    rc, sdir, stdout, loads = study_run
    assert rc == 0, stdout
    variants = ["baseline", "grayscale", "mixup", "mixup_warm"]
    res = {v: json.loads((sdir / v / "seed0" / rd.RESULT).read_text()) for v in variants}
    for v, r in res.items():
        assert r["epochs"] == 3 and math.isfinite(r["test_loss"]), v
        assert 0 <= r["test_acc"] <= 100, v
    # 4 orientations: chance is 25 %; a few epochs of the tiny CNN get well above it
    assert res["baseline"]["test_acc"] > 40, res["baseline"]
    assert max(r["test_acc"] for r in res.values()) > 50, {v: r["test_acc"] for v, r in res.items()}
    cfg = {v: json.loads((sdir / v / "seed0" / rd.CONFIG).read_text()) for v in variants}
    assert cfg["grayscale"]["data"]["aug"] == {"train": [{"grayscale": 0.5}]}
    method = cfg["mixup"]["method"]  # its own key, and supervised's it inherits, at their defaults
    assert {k: method[k] for k in ("name", "alpha", "init_from", "tta")} == {"name": "mixup", "alpha": 0.4,
                                                                             "init_from": "", "tta": 0}
    assert cfg["baseline"]["loss"] == {"name": "focal", "gamma": 2.0, "label_smoothing": 0.0}
    assert cfg["baseline"]["model"] == {"name": "tinycnn", "width": 8, "dropout": 0.0}
    # the run reference: baseline ran first and mixup_warm started from its final weights (only it)
    done = [line.split()[1] for line in stdout.splitlines() if line.startswith("done ")]
    assert done.index("baseline") < done.index("mixup_warm")
    assert loads == [sdir / "baseline" / "seed0"]


def test_report_has_the_method_section(study_run):
    _, sdir, _, _ = study_run
    md = (sdir / "report.md").read_text()
    assert md.count("## MixUp") == 1
    section = md.split("## MixUp", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| mixup")]
    assert [r.split("|")[1].strip() for r in rows] == ["mixup", "mixup_warm"]
    assert "| 0.4 |" in rows[0] and "| 0.2 |" in rows[1]
    assert "baseline" not in section


def test_error_lines_are_what_the_cli_prints(examples, tmp_path, capsys, monkeypatch):
    """The console block: each `$ ablations ...` is run on a copy of the study (`$ sed -i 's/A/B/' FILE`
    edits that copy) and must print exactly the `error:` line below it, before any run starts."""
    from ablations import loop

    def must_not_run(*a, **k):
        raise AssertionError("the command should have failed before any run")

    monkeypatch.setattr(loop, "run", must_not_run)
    doc_path, study = _block("study")
    study_file = tmp_path / Path(doc_path).name
    study_file.write_text(study + "\n")
    _, text = _block("errors")
    lines = text.splitlines()
    cmds = [(i, line) for i, line in enumerate(lines) if line.startswith("$ ")]
    assert sum(line.startswith("$ ablations ") for _, line in cmds) >= 5
    for n, (i, line) in enumerate(cmds):
        end = cmds[n + 1][0] if n + 1 < len(cmds) else len(lines)
        want = "\n".join(lines[i + 1:end])
        sed = re.fullmatch(r"\$ sed -i 's/([^/]+)/([^/]*)/' (\S+)(?:\s+#.*)?", line)
        if sed:
            a, b, path = sed.groups()
            assert path == doc_path and want == "" and study_file.read_text().count(a) == 1, line
            study_file.write_text(study_file.read_text().replace(a, b))
            continue
        assert line.startswith("$ ablations "), line
        argv = [str(study_file) if a == doc_path else a for a in shlex.split(line)[2:]]
        assert str(study_file) in argv, line
        rc = cli.main(argv)
        err = capsys.readouterr().err.strip().replace(str(study_file), doc_path)
        assert rc == 2, line
        assert err == want, f"{line}\n  doc: {want}\n  cli: {err}"
        assert len(err.splitlines()) == 1


def _own_doc(obj) -> str:
    """obj's own docstring ('' for none, and for the signature dataclass() writes into an undocumented class)."""
    doc = (obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__) or ""
    return "" if isinstance(obj, type) and doc.startswith(obj.__name__ + "(") else doc.strip()


def test_examples_follow_the_rules_every_entry_is_held_to(examples):
    for kind, (_, reg, name) in KINDS.items():
        e = reg.entry(name)
        assert _own_doc(e.obj) or _own_doc(e.Config), f"{kind} {name}: no docstring on the builder or its Config"
        if kind == "section":
            continue
        assert e.Config is not None and e.Config.__dataclass_params__.frozen, kind
        assert all(f.metadata.get("doc", "").strip() for f in dataclasses.fields(e.Config)), kind
        e.Config(name=name).check()  # the defaults are valid
    assert MODELS.entry("tinycnn").meta["input"] == DATASETS.entry("stripes").meta["input"] == "images"
    Mixup = METHODS.get("mixup")
    assert Mixup.input == "images"
    assert all(s in SECTIONS for s in Mixup.report_sections if s not in ("results", "curves"))
    assert "mixup" in Mixup.report_sections


# ---------------------------------------------------------------- each example on its own

def test_model(examples):
    cfg = make({"model": {"name": "tinycnn", "width": 4, "dropout": 0.1}, "data.name": "stripes"})
    assert cfg.model.width == 4 and type(cfg.model).__name__ == "TinyCNNConfig"
    from ablations.data.base import DataSpec

    torch.manual_seed(0)
    for side in (32, 12):
        m = MODELS.get("tinycnn")(cfg.model, DataSpec(classes=list("abcde"), image_size=side))
        out = m(torch.randn(3, 3, side, side))
        assert out.shape == (3, 5) and torch.isfinite(out).all()
        out.square().mean().backward()
        assert all(p.grad is not None for p in m.parameters())
    assert max(p.shape[0] for p in m.parameters() if p.ndim == 4) == 8  # second conv: 2 * width
    with pytest.raises(ConfigError, match=r"overrides: model\.widht: model tinycnn has no key 'widht' "
                                          r"\(did you mean model\.width\?\)"):
        make({"model": {"name": "tinycnn", "widht": 8}})
    with pytest.raises(ConfigError, match=r"model\.dropout must be < 1, got 1\.0"):
        make({"model": {"name": "tinycnn", "dropout": 1.0}})


def test_dataset(examples):
    def raw(**over):
        cfg = make({"data": {"name": "stripes", "n_train": 40, "n_test": 12, "side": 12, **over},
                    "model.name": "tinycnn"})
        return DATASETS.get("stripes")(cfg.data, None)

    a = raw()
    assert a.train_x.shape == (40, 3, 12, 12) and a.train_x.dtype == torch.uint8
    assert a.test_x.shape == (12, 3, 12, 12) and a.test_y.dtype == a.train_y.dtype == torch.int64
    assert a.classes == ["0deg", "45deg", "90deg", "135deg"]
    assert set(a.train_y.tolist()) <= {0, 1, 2, 3} and len(set(a.train_y.tolist())) > 1
    assert int(a.train_x.max()) > 200 and int(a.train_x.min()) < 50  # it uses the range
    b = raw()
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)  # data_seed fixes the data
    assert not torch.equal(a.train_x, raw(data_seed=1).train_x)
    assert raw(n_classes=3).classes == ["0deg", "60deg", "120deg"]
    # the class is the direction: class 0 (0 degrees) varies along a row only, class 2 (90) down a column only
    c = raw(noise=0.0, n_train=200)
    x = c.train_x.float()
    down = (x[:, :, 1:] - x[:, :, :-1]).abs().mean((1, 2, 3))
    across = (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))
    k0, k2 = c.train_y == 0, c.train_y == 2
    assert k0.any() and k2.any()
    assert down[k0].max() < 0.05 and across[k0].min() > 1 and across[k2].max() < 0.05 and down[k2].min() > 1
    # the split machinery applies as to every image dataset
    from ablations.data.splits import make_splits

    cfg = make({"data": {"name": "stripes", "n_train": 40, "n_test": 12, "side": 12, "val_fraction": 0.25}})
    s = make_splits(DATASETS.get("stripes")(cfg.data, None), cfg.data, seed=0)
    assert len(s.train_x) == 30 and len(s.val_x) == 10
    # check(): its own cross-field rule, and ImageDataConfig's (super().check()) still applies
    with pytest.raises(ConfigError, match=r"data\.min_period: must be <= max_period \(5\), got 6"):
        make({"data": {"name": "stripes", "min_period": 6, "max_period": 5}})
    with pytest.raises(ConfigError, match=r"data\.aug\.train\[0\]: unknown augmentation 'flp'"):
        make({"data": {"name": "stripes", "aug": {"train": ["flp"]}}})
    with pytest.raises(ConfigError, match=r"did you mean data\.n_classes\?"):
        make({"data": {"name": "stripes", "n_clases": 3}})


def _focal_by_hand(z: list[list[float]], q: list[list[float]], gamma: float) -> float:
    total = 0.0
    for zs, qs in zip(z, q):
        norm = sum(math.exp(v) for v in zs)
        p = [math.exp(v) / norm for v in zs]
        total += -sum(qk * (1 - pk) ** gamma * math.log(pk) for qk, pk in zip(qs, p))
    return total / len(z)


def test_loss(examples):
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.3, -0.2]])
    y = torch.tensor([0, 2])
    one_hot = F.one_hot(y, 3).float()

    def fn(**over):
        return LOSSES.get("focal")(make({"loss": {"name": "focal", **over}}).loss)

    assert float(fn()(z, y)) == pytest.approx(_focal_by_hand(z.tolist(), one_hot.tolist(), 2.0), abs=1e-6)
    # sample 1 by hand: p0 = e^2 / (e^2 + e^-1 + e^0.5)
    p0 = math.exp(2) / (math.exp(2) + math.exp(-1) + math.exp(0.5))
    assert float(fn()(z[:1], y[:1])) == pytest.approx(-(1 - p0) ** 2 * math.log(p0), abs=1e-6)
    assert float(fn(gamma=1.0)(z, y)) == pytest.approx(_focal_by_hand(z.tolist(), one_hot.tolist(), 1.0), abs=1e-6)
    assert float(fn()(z, y)) < float(fn(gamma=0.0)(z, y))  # focusing down-weights
    # probability targets: the index form for one-hot; a real mixture by the formula
    assert float(fn()(z, one_hot)) == pytest.approx(float(fn()(z, y)), abs=1e-6)
    soft = torch.tensor([[0.6, 0.4, 0.0], [0.1, 0.2, 0.7]])
    assert float(fn()(z, soft)) == pytest.approx(_focal_by_hand(z.tolist(), soft.tolist(), 2.0), abs=1e-6)
    # label smoothing is honoured: gamma 0 with smoothing is torch's smoothed cross-entropy
    assert float(fn(gamma=0.0, label_smoothing=0.1)(z, y)) == pytest.approx(
        float(F.cross_entropy(z, y, label_smoothing=0.1)), abs=1e-6)
    smoothed = (one_hot * 0.9 + 0.1 / 3).tolist()
    assert float(fn(label_smoothing=0.1)(z, y)) == pytest.approx(_focal_by_hand(z.tolist(), smoothed, 2.0), abs=1e-6)
    assert float(fn(label_smoothing=0.1)(z, y)) != pytest.approx(float(fn()(z, y)), abs=1e-4)
    out = fn()(z.bfloat16(), y)
    assert out.dtype == torch.float32
    with pytest.raises(ConfigError, match=r"loss\.gamma must be >= 0, got -0\.5"):
        make({"loss": {"name": "focal", "gamma": -0.5}})
    with pytest.raises(ConfigError, match=r"did you mean loss\.gamma\?"):
        make({"loss": {"name": "focal", "gama": 1}})


def _batch(dtype, n=8, seed=0):
    x = torch.rand(n, 3, 6, 7, generator=torch.Generator().manual_seed(seed))
    return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_augmentation(examples, dtype):
    from ablations.data.augment import build_pipeline

    def gen(s):
        return torch.Generator().manual_seed(s)

    x = _batch(dtype)
    before = x.clone()
    p = build_pipeline([{"grayscale": 0.5}])
    assert p.random and not p.geometric
    y = p(x, gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype and torch.equal(x, before)
    torch.manual_seed(0)
    again = p(x, gen(1))
    torch.manual_seed(99)  # torch's global RNG plays no part
    assert torch.equal(again, y) and torch.equal(p(x, gen(1)), y)
    assert not torch.equal(p(x, gen(2)), y)
    grey = (y[:, 0] == y[:, 1]).all((1, 2)) & (y[:, 1] == y[:, 2]).all((1, 2))
    kept = (y == x).flatten(1).all(1)
    assert bool((grey | kept).all()) and 0 < int(grey.sum()) < len(x)  # each image: grey or untouched
    assert torch.equal(build_pipeline([{"grayscale": 0.0}])(x, gen(1)), x)
    all_grey = build_pipeline([{"grayscale": {"p": 1.0}}])(x, gen(1))
    luma = (x.double() * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)).sum(1)
    if dtype == torch.uint8:
        assert (all_grey[:, 0].double() - luma).abs().max() <= 0.5 + 1e-3
    else:
        assert torch.allclose(all_grey[:, 1].double(), luma, atol=1e-5)
    assert float(all_grey.double().min()) >= 0 and float(all_grey.double().max()) <= (255 if dtype == torch.uint8 else 1)


def test_augmentation_config(examples):
    from ablations.data.augment import describe, parse_pipeline

    (c,) = parse_pipeline([{"grayscale": 0.3}])
    assert c.p == 0.3 and c.name == "grayscale" and parse_pipeline(["grayscale"])[0].p == 0.5
    assert describe([{"grayscale": 0.3}, "flip"]) == "grayscale p=0.3, flip"
    assert all(f.metadata.get("doc") for f in dataclasses.fields(AUGS.entry("grayscale").Config))
    with pytest.raises(ConfigError, match=r"data\.aug\.train\[1\]: grayscale\.p must be <= 1, got 1\.5"):
        make({"data.aug.train": ["flip", {"grayscale": 1.5}]})
    with pytest.raises(ConfigError, match=r"grayscale has no key 'prob'"):
        make({"data.aug.train": [{"grayscale": {"prob": 0.5}}]})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_augmentation_cuda_batch_cpu_generator(examples):
    from ablations.data.augment import build_pipeline

    x = _batch(torch.uint8)
    p = build_pipeline([{"grayscale": 0.5}])
    y = p(x.cuda(), torch.Generator().manual_seed(3))
    assert y.device.type == "cuda" and torch.equal(y.cpu(), p(x, torch.Generator().manual_seed(3)))


def test_method(examples, tmp_path):
    from ablations import runtime
    from ablations.methods.supervised import Supervised

    cfg = make({"data": {"name": "stripes", "n_train": 80, "n_test": 16, "side": 8},
                "model": {"name": "tinycnn", "width": 4}, "method": {"name": "mixup", "alpha": 0.4},
                "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "precision": "fp32"}})
    Mixup = METHODS.get("mixup")
    assert issubclass(Mixup, Supervised) and Mixup.input == "images"
    m = Mixup(cfg, runtime.setup(cfg.train, cfg.seed), tmp_path, {})

    def first(seed):
        return next(iter(m.batches(1, torch.Generator().manual_seed(seed))))

    x, q = first(5)
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32
    assert q.shape == (16, 4) and torch.allclose(q.sum(1), torch.ones(16))
    assert ((q > 0).sum(1) <= 2).all() and bool(((q > 0) & (q < 1)).any())  # soft: two classes per row
    x2, q2 = first(5)
    assert torch.equal(x, x2) and torch.equal(q, q2)  # all randomness from the epoch's generator
    assert not torch.equal(first(6)[1], q)
    # exactly lam * batch + (1 - lam) * shuffled batch, lam ~ Beta(alpha, alpha), the same for inputs and labels
    g = torch.Generator().manual_seed(5)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
    x0, y0 = next(iter(Supervised.batches(m, 1, g)))
    lam = float(rng.beta(0.4, 0.4))
    perm = torch.randperm(16, generator=g)
    assert torch.allclose(x, lam * x0 + (1 - lam) * x0[perm])
    assert torch.allclose(q, lam * F.one_hot(y0, 4).float() + (1 - lam) * F.one_hot(y0[perm], 4).float())
    # the loss takes the soft targets; accuracy counts the larger share
    loss, sums = m.train_step((x, q))
    assert loss.ndim == 0 and torch.isfinite(loss) and float(sums["n"]) == 16
    assert float(sums["acc"]) == 100.0 * float((m.forward(x).argmax(1) == q.argmax(1)).sum())
    # config: its own key with did-you-mean, and the rule across sections in Method.check
    with pytest.raises(ConfigError, match=r"did you mean method\.alpha\?"):
        make({"method": {"name": "mixup", "alhpa": 0.3}})
    with pytest.raises(ConfigError, match=r"method\.alpha must be > 0, got 0\.0"):
        make({"method": {"name": "mixup", "alpha": 0}})
    with pytest.raises(ConfigError, match=r"overrides: train\.batch_size: mixup mixes examples of a batch: "
                                          r"needs >= 2, got 1"):
        make({"method.name": "mixup", "train.batch_size": 1})
    assert make({"method.name": "mixup", "train.batch_size": 2}).method.alpha == 0.2
