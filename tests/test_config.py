import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ablations.config import ConfigError, OptimConfig, RunConfig, from_dict, make, parse_value
from ablations.study import STUDIES, get_study
from ablations.optim import lr_factor


def test_dotted_and_nested_overrides():
    cfg = make({"optim.lr": 0.01, "train": {"epochs": 3}, "data.aug.train": ["flip"], "model": {"dropout": 0.2}})
    assert cfg.optim.lr == 0.01 and cfg.train.epochs == 3 and cfg.data.aug == {"train": ["flip"]}
    assert cfg.model.dropout == 0.2 and type(cfg.model).__name__ == "VGGConfig"  # typed by the chosen entry
    assert RunConfig().optim.lr == 0.001  # frozen defaults untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("over, words", [
    ({"optim.lrr": 0.1}, ["optim.lrr", "optim.lr"]),
    ({"optimm.lr": 0.1}, ["optimm.lr", "optim"]),
    ({"train.epochs": "ten"}, ["train.epochs", "integer", "ten"]),
    ({"train.epochs": 2.5}, ["train.epochs", "integer"]),
    ({"optim.schedule": "cosin"}, ["optim.schedule", "cosin", "cosine"]),
    ({"model.batch_norm": "yes"}, ["model.batch_norm", "true/false"]),
    ({"optim": 3}, ["optim", "mapping"]),
    # ranges and wrong-family keys: one line naming the key, before any data is read
    ({"optim.lr": -1}, ["--set", "optim.lr must be > 0", "-1"]),
    ({"train.batch_size": 0}, ["train.batch_size must be >= 1"]),
    ({"train.epochs": 0}, ["train.epochs", "must be >= 1", "supervised"]),
    ({"data.val_fraction": 1.5}, ["data.val_fraction must be < 1"]),
    ({"data.label_noise": -0.1}, ["data.label_noise must be >= 0"]),
    ({"model.hidden": 999}, ["model vgg3 has no key 'hidden'", "a key of model gru, lstm, rnn", "its keys:"]),
    ({"model.dropuot": 0.1}, ["model.dropout"]),
    ({"loss": {"name": "hinge", "label_smoothing": 0.1}}, ["loss.label_smoothing", "hinge"]),
    ({"data.aug.train": ["flip", {"translat": 4}]}, ["data.aug.train[1]", "translate"]),
    ({"model.name": "lstm"}, ["do not fit together", "takes text", "takes images"]),
    ({"method": {"name": "finetune"}}, ["model.name", "pretrained backbone"]),
    ({"extra": {"k": 3}}, ["unknown config key 'extra.k'"]),
    ({"data.aug.trian": ["flip"]}, ["data.aug.trian", "reads no pipeline 'trian'", "did you mean data.aug.train"]),
    ({"data": {"name": "text"}, "model": {"name": "lstm"}, "method": {"name": "language_model"},
      "loss.label_smoothing": 0.1}, ["method language_model does not use the loss section"]),
    ({"data": {"name": "text"}, "model": {"name": "lstm"},
      "method": {"name": "language_model", "sampling": {"beam": ["4"]}}},
     ["method.sampling.beam", "a list of integers >= 1"]),
    ({"data": {"name": "text"}, "model": {"name": "lstm"},
      "method": {"name": "language_model", "sampling": {"length": -5}}}, ["method.sampling.length", ">= 1"]),
])
def test_bad_overrides_name_the_key(over, words):
    with pytest.raises(ConfigError) as e:
        make(over, "--set")
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_parse_value_yaml_scalars():
    assert parse_value("0.01") == 0.01 and parse_value("true") is True and parse_value("[0.9, 0.99]") == [0.9, 0.99]
    assert parse_value("cosine") == "cosine"


@pytest.mark.parametrize("text,want", [("1e-3", 1e-3), ("5E+4", 5e4), ("2.5e-2", 0.025), (".5e1", 5.0), ("+3e0", 3.0)])
def test_exponent_notation_is_a_number(text, want):
    """PyYAML (YAML 1.1) reads 1e-3 as a string; a float field takes it as the number it is (from --set or a file)."""
    assert make({"optim.weight_decay": parse_value(text)}).optim.weight_decay == want


def test_a_word_in_a_float_field_is_still_refused():
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number, got 'le-3'"):
        make({"optim.lr": "le-3"})


def test_roundtrip_through_dict():
    cfg = make({"optim.betas": [0.8, 0.9], "data.aug.train": ["flip", {"translate": 2}], "model.name": "vgg2"})
    assert from_dict(cfg.to_dict()) == cfg


def test_zero_epochs_allowed_only_for_methods_that_train_nothing():
    make({"method.name": "zeroshot", "model.name": "mobilenet_v2", "train.epochs": 0})  # raises if refused
    with pytest.raises(ConfigError, match=r"train\.epochs: must be >= 1 \(method finetune trains\), got 0"):
        make({"method.name": "finetune", "model.name": "mobilenet_v2", "train.epochs": 0})
    with pytest.raises(ConfigError, match=r"train\.epochs: must be 0: method zeroshot trains nothing, got 3"):
        make({"method.name": "zeroshot", "model.name": "mobilenet_v2", "train.epochs": 3})


@pytest.mark.parametrize("name", STUDIES.names())
def test_every_study_resolves_every_preset(name):
    st = get_study(name)
    for preset in st.presets:
        cfgs = st.resolve(preset, list(st.variants), seeds=2)  # named: also those a preset sits out (seeds 0)
        assert len(cfgs) == 2 * len(st.variants)
        assert {c.seed for c in cfgs} == {0, 1}
        assert all(c.preset == preset and c.study == name for c in cfgs)


def test_resolution_order(tiny_study):
    st = get_study(str(tiny_study))
    plain, regular = st.resolve("smoke", sets={"train.epochs": 5})
    assert plain.model.dropout == 0 and regular.model.dropout == 0.1
    assert plain.train.epochs == regular.train.epochs == 5  # --set wins over everything
    assert regular.target == 60 and regular.variant == "regular"


def test_study_errors(tmp_path, tiny_study):
    st = get_study(str(tiny_study))
    with pytest.raises(ConfigError, match="unknown variant 'plian'.*did you mean 'plain'"):
        st.resolve("smoke", ["plian"])
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        st.resolve("fast")
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_study.read_text().replace("model.dropout: 0.1", "model.dropuot: 0.1"))
    with pytest.raises(ConfigError, match=r"bad.yaml: variants.regular.set: model.dropuot: model vgg1 has no key 'dropuot' "
                                          r"\(did you mean model.dropout\?\)"):
        get_study(str(bad))
    old = tmp_path / "old.yaml"
    old.write_text("task: classify\n" + tiny_study.read_text())
    with pytest.raises(ConfigError, match="study key 'task' is gone"):
        get_study(str(old))
    with pytest.raises(KeyError, match="unknown study 'cifar10-regularisation'.*did you mean"):
        get_study("cifar10-regularisation")


SCHEDULES = ["constant", "step", "cosine", "warmup_cosine", "cosine_restarts", "onecycle", "triangle"]


@settings(max_examples=60, deadline=None)
@given(schedule=st.sampled_from(SCHEDULES), total=st.integers(1, 2000), spe=st.integers(1, 200),
       warmup=st.floats(0, 3), min_lr=st.floats(0, 0.5), data=st.data())
def test_schedules_are_bounded_pure_functions(schedule, total, spe, warmup, min_lr, data):
    cfg = OptimConfig(schedule=schedule, warmup=warmup, min_lr=min_lr, step_every=2.0, gamma=0.5)
    step = data.draw(st.integers(0, total - 1))
    f = lr_factor(step, total, spe, cfg)
    assert 0.0 <= f <= 1.0 + 1e-12
    assert f == lr_factor(step, total, spe, cfg)  # pure: same inputs, same output


@settings(max_examples=40, deadline=None)
@given(total=st.integers(10, 5000), warm_frac=st.floats(0.05, 0.5), min_lr=st.floats(0, 0.3))
def test_warmup_cosine_shape(total, warm_frac, min_lr):
    spe = 10
    cfg = OptimConfig(schedule="warmup_cosine", warmup=warm_frac * total / spe, min_lr=min_lr)
    fs = [lr_factor(s, total, spe, cfg) for s in range(total)]
    warm = int(round(cfg.warmup * spe))
    assert all(a <= b + 1e-12 for a, b in zip(fs[:warm], fs[1:warm]))  # rises during warm-up
    assert all(a >= b - 1e-12 for a, b in zip(fs[warm:], fs[warm + 1:]))  # then never rises
    assert max(fs) <= 1 + 1e-12 and min(fs[warm:]) >= min_lr - 1e-12
    assert lr_factor(total, total, spe, cfg) == pytest.approx(min_lr)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_peaks_at_one(schedule):
    """The peak lr is reached: a schedule that never reaches factor 1 silently lowers optim.lr."""
    cfg = OptimConfig(schedule=schedule, warmup=1.0, step_every=2.0, gamma=0.5)
    fs = [lr_factor(s, 100, 10, cfg) for s in range(100)]
    assert max(fs) == pytest.approx(1.0)


def test_cosine_and_onecycle_shapes():
    cos = OptimConfig(schedule="cosine", min_lr=0.1)
    fs = [lr_factor(s, 50, 10, cos) for s in range(51)]
    assert fs[0] == pytest.approx(1.0) and fs[25] == pytest.approx(0.55) and fs[50] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(fs, fs[1:]))
    one = OptimConfig(schedule="onecycle")  # default warm-up: the first quarter, linear up then linear down
    gs = [lr_factor(s, 100, 10, one) for s in range(101)]
    assert gs.index(max(gs)) == 24 and gs[0] == pytest.approx(1 / 25) and gs[100] == pytest.approx(0.0)
    const = OptimConfig(schedule="constant", warmup=0.5)
    assert [lr_factor(s, 100, 10, const) for s in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


def test_schedule_purity_across_calls():
    """Resume recomputes the lr from the step alone: interleaving other calls never changes an answer."""
    cfg = OptimConfig(schedule="cosine_restarts", step_every=1, gamma=2.0, warmup=0.5)
    first = [lr_factor(s, 300, 10, cfg) for s in range(300)]
    shuffled = {s: lr_factor(s, 300, 10, cfg) for s in reversed(range(300))}
    assert first == [shuffled[s] for s in range(300)]


def test_step_and_restarts():
    cfg = OptimConfig(schedule="step", step_every=2, gamma=0.1)
    assert lr_factor(19, 100, 10, cfg) == 1.0 and lr_factor(20, 100, 10, cfg) == pytest.approx(0.1)
    r = OptimConfig(schedule="cosine_restarts", step_every=1, gamma=2.0)
    # restarts at steps 10, 30 (cycles of 10, 20): back to the peak
    assert lr_factor(10, 100, 10, r) == pytest.approx(1.0) and lr_factor(30, 100, 10, r) == pytest.approx(1.0)
    assert lr_factor(9, 100, 10, r) < 0.05


def test_study_sections_are_checked_and_rendered(tmp_path, tiny_study):
    from ablations.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_study.read_text() + "sections: [transfr]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: sections: unknown report section 'transfr' \(did you mean "
                                          r"'transfer'\?\)"):
        get_study(str(bad))
    good = tmp_path / "good.yaml"
    good.write_text(tiny_study.read_text() + "sections: [transfer]\n")
    assert get_study(str(good)).sections == ("transfer",)
    assert main(["run", str(good), "--out", str(tmp_path / "o"), "--variant", "plain"]) == 0
    md = (tmp_path / "o" / "tiny" / "smoke" / "report.md").read_text()
    assert "## Transfer learning" in md  # the study asked for it; its method (supervised) does not


def test_variant_seeds_override_the_study_per_preset(tmp_path, tiny_study):
    p = tmp_path / "seeded.yaml"
    p.write_text(tiny_study.read_text().replace("    target: 60\n", "    target: 60\n    seeds: {smoke: 3}\n"))
    st = get_study(str(p))
    runs = [(c.variant, c.seed) for c in st.resolve("smoke")]
    assert sorted(runs) == [("plain", 0), ("regular", 0), ("regular", 1), ("regular", 2)]
    assert runs[:2] == [("plain", 0), ("regular", 0)]  # seed-major order: every variant's first seed comes first
    assert sorted(c.seed for c in st.resolve("smoke", seeds=2)) == [0, 0, 1, 1]  # --seeds wins
    for bad, words in [("seeds: 0", "variants.regular.seeds must be an integer >= 1"),
                       ("seeds: {fast: 3}", "variants.regular.seeds.fast: no preset 'fast'"),
                       ("seeds: {smoke: two}", "variants.regular.seeds.smoke must be an integer"),
                       ("seeds: {smoke: -1}", "variants.regular.seeds.smoke must be an integer >= 0")]:
        p.write_text(tiny_study.read_text().replace("    target: 60\n", f"    target: 60\n    {bad}\n"))
        with pytest.raises(ConfigError, match=re.escape(words)):
            get_study(str(p))


def test_a_variant_can_sit_a_preset_out(tmp_path, tiny_study):
    """seeds {preset: 0}: not run in that preset (a GPU-sized variant beyond its budget) unless named."""
    p = tmp_path / "seeded.yaml"
    p.write_text(tiny_study.read_text().replace("    target: 60\n", "    target: 60\n    seeds: {smoke: 0}\n"))
    st = get_study(str(p))
    assert [(c.variant, c.seed) for c in st.resolve("smoke")] == [("plain", 0)]
    assert [(c.variant, c.seed) for c in st.resolve("smoke", ["regular"])] == [("regular", 0)]  # named: the study's
    assert [c.seed for c in st.resolve("smoke", ["regular"], seeds=2)] == [0, 1]
    p.write_text(tiny_study.read_text().replace("  plain: {target: 50}", "  plain: {target: 50, seeds: {smoke: 0}}")
                 .replace("    target: 60\n", "    target: 60\n    seeds: {smoke: 0}\n"))
    with pytest.raises(ConfigError, match=r"preset 'smoke' runs no variant"):
        get_study(str(p)).resolve("smoke")


def test_study_seeds_per_preset(tmp_path, tiny_study):
    p = tmp_path / "seeded.yaml"
    p.write_text(tiny_study.read_text().replace("metric: test_acc\n", "metric: test_acc\nseeds: {smoke: 2}\n"))
    assert sorted((c.variant, c.seed) for c in get_study(str(p)).resolve("smoke")) == \
        [("plain", 0), ("plain", 1), ("regular", 0), ("regular", 1)]
    p.write_text(tiny_study.read_text().replace("metric: test_acc\n", "metric: test_acc\nseeds: {full: 2}\n"))
    with pytest.raises(ConfigError, match=re.escape("seeds.full: no preset 'full'; presets: smoke")):
        get_study(str(p))
