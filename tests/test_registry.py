"""Every registry entry, enumerated from the registries themselves (a new file is covered without a new
test): its typed Config has defaults that pass check(), documented fields, unknown keys rejected with a
useful hint, declared ranges enforced; its metadata is what the config check and the CLI rely on. And a
plugin module that fails to import is an error naming it, never a half-empty registry."""
from __future__ import annotations

import difflib
import sys
import types
import typing
from dataclasses import MISSING, fields

import pytest

from ablations import config, registry
from ablations.config import ConfigError, FieldError
from ablations.data.augment import parse_pipeline
from ablations.errors import UserError
from ablations.registry import AUGS, DATASETS, EXECUTORS, LOSSES, METHODS, MODELS, OPTIMIZERS, SECTIONS, TEXT_AUGS

# registry -> the config section it types (AUGS / TEXT_AUGS: items of a data.aug / data.augment pipeline,
# typed by parse_pipeline)
TYPED = {"model": MODELS, "data": DATASETS, "method": METHODS, "loss": LOSSES, "aug": AUGS, "text_aug": TEXT_AUGS}
PIPELINES = {"aug": AUGS, "text_aug": TEXT_AUGS}
ALL = (MODELS, DATASETS, METHODS, LOSSES, OPTIMIZERS, AUGS, TEXT_AUGS, SECTIONS, EXECUTORS)
_RANGE_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _entries():
    return [(sec, e.name) for sec, reg in TYPED.items() for e in reg.entries() if e.Config is not None]


ENTRIES = _entries()
ENTRY_IDS = [f"{s}:{n}" for s, n in ENTRIES]


def _entry(section: str, name: str) -> registry.Entry:
    return TYPED[section].entry(name)


def _own_fields(Config: type) -> list:
    return [f for f in fields(Config) if f.name != "name"]


def _reject(section: str, name: str, raw: dict) -> str:
    """The error message for section values `raw` of entry `name`, through the real typing path."""
    e = _entry(section, name)
    if section in PIPELINES:
        with pytest.raises(FieldError) as info:
            parse_pipeline([{name: raw}], registry=PIPELINES[section])
    else:
        with pytest.raises(ConfigError) as info:
            config.type_section(section, {"name": name, **raw}, e.Config, {"": "test"}, name)
    return str(info.value)


def _accept(section: str, name: str, raw: dict):
    e = _entry(section, name)
    if section in PIPELINES:
        return parse_pipeline([{name: raw}], registry=PIPELINES[section])[0]
    return config.type_section(section, {"name": name, **raw}, e.Config, {"": "test"}, name)


def test_every_registry_is_populated():
    # the parametrised tests below enumerate the registries: an empty one would make them vacuous
    for reg in ALL:
        assert len(reg.names()) >= 2, f"{reg.kind}: {reg.names()}"
    assert {s for s, _ in ENTRIES} == set(TYPED)  # every typed registry has entries with a Config


# ---------------------------------------------------------------- defaults and docs

@pytest.mark.parametrize("section,name", ENTRIES, ids=ENTRY_IDS)
def test_default_config_instantiates_and_checks(section, name):
    Config = _entry(section, name).Config
    missing = [f.name for f in fields(Config) if f.default is MISSING and f.default_factory is MISSING]
    assert missing == [], f"{Config.__name__}: fields without a default: {missing}"
    Config().check()
    typed = _accept(section, name, {})  # the real path, name set to the entry: same defaults
    assert typed.name == name
    assert {f.name: getattr(typed, f.name) for f in _own_fields(Config)} == \
        {f.name: getattr(Config(), f.name) for f in _own_fields(Config)}


@pytest.mark.parametrize("section,name", ENTRIES, ids=ENTRY_IDS)
def test_every_field_is_documented(section, name):
    Config = _entry(section, name).Config
    undocumented = [f.name for f in _own_fields(Config) if not str(f.metadata.get("doc", "")).strip()]
    assert undocumented == [], f"{Config.__name__}: fields without a doc: {undocumented}"


def _own_doc(obj) -> str:
    """obj's own docstring; '' for none, including the signature dataclass() writes into an undocumented one."""
    doc = (obj.__doc__ or "").strip() if obj is not None else ""
    if isinstance(obj, type) and doc.startswith(f"{obj.__name__}(") and doc.endswith(")"):
        return ""
    return doc


UNDESCRIBED: dict = {}  # known debt, if any: each one must be fixed in src/ (then dropped here: the xfail is strict)


@pytest.mark.parametrize("kind,name", [
    pytest.param(r.kind, n, marks=[pytest.mark.xfail(strict=True, reason=UNDESCRIBED[(r.kind, n)])]
                 if (r.kind, n) in UNDESCRIBED else [], id=f"{r.kind}:{n}")
    for r in ALL for n in r.names()])
def test_every_entry_is_described(kind, name):
    # `ablations list` and the docs show one line per entry: the builder's docstring or its Config's
    e = next(r for r in ALL if r.kind == kind).entry(name)
    assert _own_doc(e.obj) or _own_doc(e.Config), f"{kind} {name}: no docstring on {e.obj} or its Config"


def test_own_doc_ignores_the_dataclass_signature():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Undocumented:
        x: int = 1

    @dataclass(frozen=True)
    class Documented:
        """What it is."""
        x: int = 1

    assert Undocumented.__doc__  # dataclass() made one up...
    assert _own_doc(Undocumented) == ""  # ...which does not count
    assert _own_doc(Documented) == "What it is."


# ---------------------------------------------------------------- unknown keys

def _swap(key: str) -> str:
    i = 1 if len(key) >= 3 else 0
    return key[:i] + key[i + 1] + key[i] + key[i + 2:]


@pytest.mark.parametrize("section,name", ENTRIES, ids=ENTRY_IDS)
def test_misspelled_key_suggests_the_real_one(section, name):
    own = [f for f in _own_fields(_entry(section, name).Config) if len(f.name) >= 3 and f.name[1] != f.name[2]]
    if not own:
        pytest.skip("no field long enough to misspell")
    f = own[0]
    wrong = _swap(f.name)
    assert wrong != f.name
    value = f.default if f.default is not MISSING else f.default_factory()
    msg = _reject(section, name, {wrong: value})
    assert repr(wrong) in msg
    assert f"did you mean {name if section in PIPELINES else section}.{f.name}?" in msg


def _foreign_key(section: str, name: str):
    """(key, value, owners): a key of other entries of the same registry that this entry lacks and that is not
    close to any of its own keys (a close one gets a did-you-mean instead); None when there is none."""
    own = {f.name for f in fields(_entry(section, name).Config)}
    candidates: dict[str, tuple] = {}
    for e in TYPED[section].entries():
        if e.name == name or e.Config is None:
            continue
        for f in _own_fields(e.Config):
            if f.name in own or difflib.get_close_matches(f.name, sorted(own - {"name"}), n=1):
                continue
            value = f.default if f.default is not MISSING else f.default_factory()
            key, v, owners = candidates.get(f.name, (f.name, value, []))
            candidates[f.name] = (key, v, owners + [e.name])
    return candidates[sorted(candidates)[0]] if candidates else None


FOREIGN_XFAIL: dict = {}  # known debt, if any (strict xfail: fixing it turns the test red until dropped here)


@pytest.mark.parametrize("section,name", [
    pytest.param(s, n, marks=pytest.mark.xfail(strict=True, reason=FOREIGN_XFAIL[s])) if s in FOREIGN_XFAIL
    else (s, n) for s, n in ENTRIES], ids=ENTRY_IDS)
def test_key_of_another_entry_names_its_owner(section, name):
    found = _foreign_key(section, name)
    if found is None:
        pytest.skip("every key of the other entries is one of this entry's too")
    key, value, owners = found
    msg = _reject(section, name, {key: value})
    assert f"has no key {key!r}" in msg
    kind = TYPED[section].kind if section in PIPELINES else section  # augmentations: "a key of augmentation rotate"
    assert f"(it is a key of {kind} {', '.join(owners[:4])})" in msg, msg


def test_foreign_key_examples():
    # the lookup above finds something for the entries where a real user mistake is likely
    assert _foreign_key("model", "vgg3")[0] in {f.name for f in fields(MODELS.entry("lstm").Config)} | \
        {f.name for f in fields(MODELS.entry("resnet18").Config)} | {f.name for f in fields(MODELS.entry("airnet").Config)}
    key, _, owners = _foreign_key("data", "cifar10")
    assert "synthetic" in owners or "pets" in owners, (key, owners)
    # `--set loss.alpha=0.1` on plain cross-entropy: a key of the noise-robust losses
    key, _, owners = _foreign_key("loss", "ce")
    assert "sce" in owners or "gce" in owners or "bootstrap" in owners, (key, owners)


# ---------------------------------------------------------------- declared ranges

def _base_type(tp):
    """Optional[X] -> X."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def _ranged():
    out = []
    for section, name in ENTRIES:
        Config = _entry(section, name).Config
        hints = typing.get_type_hints(Config)
        for f in _own_fields(Config):
            for op in _RANGE_WORDS:
                if f.metadata.get(op) is not None:
                    out.append(pytest.param(section, name, f.name, op, _base_type(hints[f.name]),
                                            id=f"{section}:{name}.{f.name}:{op}"))
    return out


RANGED = _ranged()


def _outside_inside(op: str, bound: float, tp) -> tuple:
    if tp is int:
        return {"ge": (bound - 1, bound), "gt": (bound, bound + 1),
                "le": (bound + 1, bound), "lt": (bound, bound - 1)}[op]
    eps = 1e-6 * max(1.0, abs(bound))
    return {"ge": (bound - eps, float(bound)), "gt": (float(bound), bound + eps),
            "le": (bound + eps, float(bound)), "lt": (float(bound), bound - eps)}[op]


def test_some_fields_declare_ranges():
    assert len(RANGED) >= 10  # the parametrised test below is not empty
    ids = {p.id for p in RANGED}
    assert "loss:ce.label_smoothing:lt" in ids and "loss:ce.label_smoothing:ge" in ids


@pytest.mark.parametrize("section,name,key,op,tp", RANGED)
def test_value_outside_declared_range_is_rejected(section, name, key, op, tp):
    f = next(f for f in fields(_entry(section, name).Config) if f.name == key)
    bound = f.metadata[op]
    assert tp in (int, float), f"{name}.{key}: range on a {tp}"
    outside, inside = _outside_inside(op, bound, tp)
    msg = _reject(section, name, {key: outside})
    assert f"{key} must be {_RANGE_WORDS[op]} {bound:g}, got {outside!r}" in msg
    assert (name if section in PIPELINES else section) + "." + key in msg
    try:  # the bound itself (ge/le) or the next value in (gt/lt) passes the range check
        _accept(section, name, {key: inside})
    except (ConfigError, FieldError) as e:
        assert f"must be {_RANGE_WORDS[op]}" not in str(e), str(e)


# ---------------------------------------------------------------- metadata the config check relies on

@pytest.mark.parametrize("reg", [MODELS, DATASETS], ids=lambda r: r.kind)
def test_models_and_datasets_declare_their_input(reg):
    bad = {e.name: e.meta.get("input") for e in reg.entries() if e.meta.get("input") not in ("images", "text")}
    assert bad == {}, f"{reg.kind} entries without input='images'|'text': {bad}"


@pytest.mark.parametrize("name", METHODS.names())
def test_method_declares_input_and_known_report_sections(name):
    cls = METHODS.get(name)
    assert cls.input in ("images", "text"), f"{name}.input = {cls.input!r}"
    assert isinstance(cls.report_sections, tuple) and all(isinstance(s, str) for s in cls.report_sections)
    unknown = [s for s in cls.report_sections if s not in ("results", "curves") and s not in SECTIONS]
    assert unknown == [], f"{name}.report_sections names unregistered sections {unknown}; " \
                          f"registered: {SECTIONS.names()}"


def test_every_input_kind_has_data_a_model_and_a_method():
    for kind in ("images", "text"):
        assert [e.name for e in DATASETS.entries() if e.meta.get("input") == kind]
        assert [e.name for e in MODELS.entries() if e.meta.get("input") == kind]
        assert [n for n in METHODS.names() if METHODS.get(n).input == kind]


# ---------------------------------------------------------------- plugin loading

def test_plugin_that_fails_to_import_is_an_error_naming_it(tmp_path, monkeypatch):
    registry.load_plugins()
    before = {r.kind: r.names() for r in ALL}
    packages = registry.PLUGIN_PACKAGES
    pkg = tmp_path / "abl_test_plugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "fine.py").write_text("")
    (pkg / "broken.py").write_text('raise ImportError("boom")\n')
    with monkeypatch.context() as m:
        m.syspath_prepend(str(tmp_path))
        m.setattr(registry, "PLUGIN_PACKAGES", registry.PLUGIN_PACKAGES + ("abl_test_plugins",))
        m.setattr(registry, "_loaded", False)
        with pytest.raises(UserError) as info:
            registry.load_plugins()
        msg = str(info.value)
        assert "abl_test_plugins.broken" in msg and "boom" in msg, msg
        assert registry._loaded is False  # the next use tries again rather than trusting a partial load
        with pytest.raises(UserError, match="abl_test_plugins.broken"):
            MODELS.names()  # every use of a registry reports it, not only the first
    for mod in [k for k in sys.modules if k == "abl_test_plugins" or k.startswith("abl_test_plugins.")]:
        del sys.modules[mod]
    assert registry.PLUGIN_PACKAGES is packages and "abl_test_plugins" not in sys.modules
    assert registry._loaded is True
    assert {r.kind: r.names() for r in ALL} == before
    assert MODELS.entry("vgg3").meta["input"] == "images"  # lookups work again, with no error
