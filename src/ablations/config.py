"""Typed, frozen run configuration.

A run's config has fixed sections (`optim`, `train`) and registry-typed sections (`data`, `model`,
`method`, `loss`): the `name` key of such a section picks a registry entry, and that entry's own frozen
dataclass (declared next to its code) types every other key of the section. Study layers and --set
overrides are merged as plain nested dicts first (later wins, each key remembering which file/layer set
it), then every section is typed once: unknown keys (with did-you-mean, and "a key of <other entry>"),
wrong types, ranges declared on the fields (`opt(..., gt=0)`) and cross-field rules (`check()`) all fail
with one line naming the source, the key and the value, before any data is read.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal, Optional

from .errors import ConfigError, UserError

__all__ = ["ConfigError", "UserError", "FieldError", "opt", "Section", "Component", "ModelConfig", "DataConfig",
           "MethodConfig", "LossConfig", "OptimConfig", "TrainConfig", "RunConfig", "RunRef", "build", "merge",
           "flatten", "from_dict", "parse_value", "field_doc"]


class FieldError(ConfigError):
    """Raised by a section's check(): `key` is relative to the section (the typing step adds the rest)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def opt(default: Any = MISSING, doc: str = "", *, factory: Any = None, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A config field with its documentation (units!) and an optional numeric range."""
    md = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


def field_doc(f: dataclasses.Field) -> str:
    return f.metadata.get("doc", "")


class RunRef(str):
    """A config value naming another variant of the same study (a teacher, a proxy, a dense run):
    the study runs that variant first (same seed) and the method receives its run directory."""


@dataclass(frozen=True)
class Section:
    def check(self) -> None:
        """Cross-field rules; raise FieldError(key, message)."""


@dataclass(frozen=True)
class Component(Section):
    name: str = opt("", "registry key of the entry this section configures")


@dataclass(frozen=True)
class ModelConfig(Component):
    """Base of every model's options."""


@dataclass(frozen=True)
class DataConfig(Component):
    """Base of every dataset's options."""
    path: Optional[str] = opt(None, "local copy (file, folder or archive); None: $ABLATIONS_DATA, then download")


@dataclass(frozen=True)
class MethodConfig(Component):
    """Base of every method's options."""


@dataclass(frozen=True)
class LossConfig(Component):
    """Base of every loss's options."""
    label_smoothing: float = opt(0.0, "share of the target mass spread uniformly over the classes", ge=0, lt=1)


@dataclass(frozen=True)
class OptimConfig(Section):
    # the keys below are shared by the optimisers (momentum: sgd/nesterov/muon; betas: adam/adamw; muon_*: muon),
    # one flat section so that a study can switch optim.name without rewriting the rest
    name: str = opt("sgd", "optimiser: a registry entry (ablations/optimizers/*.py; `ablations list` names them)")
    lr: float = opt(0.001, "peak learning rate", gt=0)
    momentum: float = opt(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = opt(0.0, "L2 (sgd/adam) or decoupled (adamw) decay; not on biases or norms unless decay_biases", ge=0)
    betas: tuple[float, float] = opt((0.9, 0.999), "Adam betas")
    schedule: Literal["constant", "step", "cosine", "warmup_cosine", "cosine_restarts", "onecycle", "triangle"] = opt(
        "constant", "learning-rate schedule (a pure function of the step)")
    warmup: float = opt(0.0, "epochs of linear warm-up (constant, warmup_cosine, onecycle, cosine_restarts); "
                        "triangle: epochs to the peak", ge=0)
    start_lr: float = opt(0.0, "triangle: the factor at step 0 (airbench: 0.2), as a fraction of lr", ge=0, le=1)
    step_every: float = opt(10.0, "epochs between decays (step); first cycle length (cosine_restarts)", gt=0)
    gamma: float = opt(0.1, "decay factor (step); cycle length multiplier (cosine_restarts)", gt=0)
    min_lr: float = opt(0.0, "floor of the schedule, as a fraction of lr", ge=0, le=1)
    clip_grad: float = opt(0.0, "max global gradient norm (0: off)", ge=0)
    norm_lr_scale: float = opt(1.0, "lr multiplier of normalisation-layer parameters (airbench's bias_scaler 64); "
                               "their decay per step lr * wd is kept, so wd is divided by it", gt=0)
    decay_biases: bool = opt(False, "weight decay also on biases and norm parameters (airbench decays all)")
    layer_decay: float = opt(1.0, "discriminative lr: each stage further below the head gets lr * layer_decay^k",
                             gt=0, le=1)
    muon_lr: float = opt(0.24, "muon: peak lr of the conv filters (their update is orthogonalised, so it is a step "
                         "size relative to the filter norm, unlike lr)", gt=0)
    muon_momentum: float = opt(0.6, "muon: Nesterov momentum of the conv filters", ge=0, lt=1)

    def check(self) -> None:
        from .registry import OPTIMIZERS, UnknownName

        try:
            OPTIMIZERS.entry(self.name)
        except UnknownName as e:
            raise FieldError("name", str(e)) from None
        for i, b in enumerate(self.betas):
            if not 0 <= b < 1:
                raise FieldError(f"betas[{i}]", f"must be in [0, 1), got {b}")


@dataclass(frozen=True)
class TrainConfig(Section):
    epochs: int = opt(10, "passes (or steps_per_epoch batches) of training; 0 only for methods that train nothing",
                      ge=0)
    batch_size: int = opt(128, "examples per optimiser step", ge=1)
    eval_batch_size: int = opt(1000, "examples per forward pass when evaluating", ge=1)
    steps_per_epoch: int = opt(0, "0: one pass over the training set; language models: batches per 'epoch'", ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "auto: CUDA when available, else CPU")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt(
        "auto", "auto: bf16 autocast on CPUs with AVX512-BF16/AMX and on CUDA with bf16, fp16 AMP on older CUDA, "
        "else fp32")
    channels_last: Literal["auto", "on", "off"] = opt("auto", "NHWC memory format for image models")
    threads: int = opt(0, "torch intra-op threads (0: leave torch's default)", ge=0)
    checkpoint_every: int = opt(1, "epochs between checkpoints", ge=1)
    log_every: int = opt(50, "steps between plain log lines when stdout is not a terminal", ge=1)
    eval_test: bool = opt(True, "evaluate the test split after the last epoch")
    keep: Literal["last", "best"] = opt(
        "last", "the weights that are tested and exported: the last epoch's, or those of the best validation epoch "
        "(the method's `best` metric; early stopping without stopping: every epoch still trains)")
    ema: float = opt(0.0, "decay per optimiser step of an exponential moving average of the trained weights (0: "
                     "off; e.g. 0.999 averages over ~1000 steps, warmed up as (1+n)/(10+n)): validation, the test and "
                     "final.safetensors use the average; result.json adds raw_val_* for the last weights", ge=0, lt=1)


_TYPED = ("data", "model", "method", "loss")  # sections typed by the registry entry their `name` picks
_DEFAULT_NAMES = {"data": "cifar10", "model": "vgg3", "method": "supervised", "loss": "ce"}


def _registry(section: str):
    from . import registry

    return {"data": registry.DATASETS, "model": registry.MODELS, "method": registry.METHODS,
            "loss": registry.LOSSES}[section]


@dataclass(frozen=True)
class RunConfig:
    study: str = "adhoc"
    variant: str = "default"
    preset: str = "default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # what the report compares: metric key in result.json, target value, direction
    metric: str = "test_acc"
    target: Optional[float] = None
    goal: Literal["max", "min"] = "max"

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists: what config.json holds

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def refs(self) -> dict[str, str]:
        """{dotted key: variant} of every non-empty RunRef field (runs this run needs first)."""
        out = {}
        for sec in _TYPED + ("optim", "train"):
            obj = getattr(self, sec)
            hints = typing.get_type_hints(type(obj))
            for f in fields(obj):
                if hints.get(f.name) is RunRef and getattr(obj, f.name):
                    out[f"{sec}.{f.name}"] = str(getattr(obj, f.name))
        return out


# a number in exponent notation without a decimal point (1e-3, 5E+4): PyYAML, following YAML 1.1, keeps it a string
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

_SCALARS = ("study", "variant", "preset", "seed", "metric", "target", "goal")


# ---------------------------------------------------------------- plain-dict layers

def parse_value(text: str) -> Any:
    """A --set value: YAML scalar syntax (so 0.01, true, null, [0.9, 0.99] work)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; an empty mapping stays a value (so a layer can reset one)."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def merge(tree: dict, layer: Optional[dict], source: str, origins: dict[str, str]) -> dict:
    """Apply one layer (nested and/or dotted keys) onto `tree` in place; remember each key's source."""
    if layer is not None and not isinstance(layer, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {layer!r}")
    for key, value in flatten(layer or {}).items():
        parts = key.split(".")
        node = tree
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
        for k in [k for k in origins if k.startswith(key + ".")]:
            del origins[k]  # a shorter key set later replaces everything under it
        origins[key] = source
    return tree


# ---------------------------------------------------------------- typing

def _origin(origins: dict[str, str], key: str) -> str:
    parts = re.sub(r"\[\d+\]", "", key).split(".")  # data.aug.train[0].pad -> the layer that set data.aug.train
    for i in range(len(parts), 0, -1):
        k = ".".join(parts[:i])
        if k in origins:
            return origins[k]
    return origins.get("", "config")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value against a type hint; raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}{hint}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; a number is what was meant
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str or tp is RunRef:
        if isinstance(value, str):
            return tp(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def _check_range(f: dataclasses.Field, value: Any, where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    md = f.metadata
    for op, bad, word in (("ge", lambda v, b: v < b, ">="), ("gt", lambda v, b: v <= b, ">"),
                          ("le", lambda v, b: v > b, "<="), ("lt", lambda v, b: v >= b, "<")):
        bound = md.get(op)
        if bound is not None and bad(value, bound):
            raise ConfigError(f"{where} must be {word} {bound:g}, got {value!r}")


def _other_owners(section: str, key: str, name: str, registry: Any = None) -> list[str]:
    """Entries of the section's registry (other than `name`) whose config has `key`."""
    out = []
    for e in (registry or _registry(section)).entries():
        if e.name != name and e.Config is not None and key in {f.name for f in fields(e.Config)}:
            out.append(e.name)
    return out


def type_section(section: str, raw: Any, cls: type, origins: dict[str, str], entry: str = "",
                 registry: Any = None) -> Any:
    """Type one section's plain dict against `cls` (a frozen dataclass). `registry`: where to look for the
    other entries that have an unknown key (default: the section's own registry, for data/model/method/loss)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{_origin(origins, section)}: {section}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        where = f"{_origin(origins, f'{section}.{key}')}: {section}.{key}"
        if key not in by_name:
            keys = sorted(k for k in by_name if k != "name")
            close = difflib.get_close_matches(str(key), keys, n=1)
            what = f"{section} {entry}" if entry else section
            msg = f"{_origin(origins, f'{section}.{key}')}: {section}.{key}: {what} has no key {key!r}"
            if close:
                msg += f" (did you mean {section}.{close[0]}?)"
            elif registry is not None or (entry and section in _TYPED):
                owners = _other_owners(section, key, entry or str(raw.get("name", "")), registry)
                if owners:
                    kind = section if section in _TYPED else registry.kind
                    msg += f" (it is a key of {kind} {', '.join(owners[:4])})"
            raise ConfigError(f"{msg}; its keys: {', '.join(keys) or '(none)'}")
        v = _coerce(value, hints[key], where)
        _check_range(by_name[key], v, where)
        values[key] = v
    obj = cls(**values)
    try:
        obj.check()
    except FieldError as e:
        raise ConfigError(f"{_origin(origins, f'{section}.{e.key}')}: {section}.{e.key}: {e.message}") from None
    return obj


def default_values(cfg: dict) -> dict[str, Any]:
    """Flattened defaults of the registry entries a (stored) config names: what a key absent from an older
    config.json meant, and what a report leaves out as 'default'. {} when the entries no longer exist."""
    try:
        return flatten(build({k: {"name": cfg[k]["name"]} for k in _TYPED
                              if isinstance(cfg.get(k), dict) and "name" in cfg[k]}, cross_checks=False).to_dict())
    except UserError:
        return {}


def build(tree: dict, origins: Optional[dict[str, str]] = None, cross_checks: bool = True) -> RunConfig:
    """A merged plain dict -> a typed, validated RunConfig (every error one line naming the key).
    cross_checks=False skips the rules across sections (the report's "defaults of these entries")."""
    origins = origins if origins is not None else {}
    hints = typing.get_type_hints(RunConfig)
    for key in tree:
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            full = next((k for k in origins if k == key or k.startswith(f"{key}.")), key)  # the key as written
            raise ConfigError(f"{_origin(origins, full)}: unknown config key {full!r}{hint}; "
                              f"sections: {', '.join(hints)}")
    kw: dict[str, Any] = {}
    for key in _SCALARS:
        if key in tree:
            kw[key] = _coerce(tree[key], hints[key], f"{_origin(origins, key)}: {key}")
    if kw.get("seed", 0) < 0:
        raise ConfigError(f"{_origin(origins, 'seed')}: seed must be >= 0, got {kw['seed']}")
    for sec in _TYPED:
        raw = tree.get(sec, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{_origin(origins, sec)}: {sec}: expected a mapping, got {raw!r}")
        raw = {"name": _DEFAULT_NAMES[sec], **raw}
        try:
            entry = _registry(sec).entry(raw["name"])
        except UserError as e:
            raise ConfigError(f"{_origin(origins, sec + '.name')}: {sec}.name: {e}") from None
        base = {"data": DataConfig, "model": ModelConfig, "method": MethodConfig, "loss": LossConfig}[sec]
        kw[sec] = type_section(sec, raw, entry.Config or base, origins, entry.name)
    kw["optim"] = type_section("optim", tree.get("optim", {}), OptimConfig, origins)
    kw["train"] = type_section("train", tree.get("train", {}), TrainConfig, origins)
    cfg = RunConfig(**kw)
    if cross_checks:
        _check_run(cfg, origins)
    return cfg


def _check_run(cfg: RunConfig, origins: dict[str, str]) -> None:
    """Rules across sections: the data, model and method agree on their input; the method's own rules."""
    from . import registry

    kinds = {sec: _registry(sec).entry(getattr(cfg, sec).name).meta.get("input") for sec in ("data", "model")}
    method = registry.METHODS.get(cfg.method.name)
    kinds["method"] = getattr(method, "input", None)
    known = {k: v for k, v in kinds.items() if v}
    if len(set(known.values())) > 1:
        desc = ", ".join(f"{sec} {getattr(cfg, sec).name} takes {v}" for sec, v in known.items())
        raise ConfigError(f"{_origin(origins, 'method.name')}: these do not fit together: {desc}")
    if not getattr(method, "uses_loss", True) and (cfg.loss.name != "ce" or cfg.loss.label_smoothing):
        raise ConfigError(f"{_origin(origins, 'loss')}: loss: method {cfg.method.name} does not use the loss section "
                          f"(got {cfg.loss.name}, label_smoothing {cfg.loss.label_smoothing:g}); remove it")
    roles = set(getattr(cfg.data, "aug", None) or {})
    allowed = tuple(getattr(method, "aug_roles", ("train",)))
    for role in sorted(roles - set(allowed)):
        close = difflib.get_close_matches(role, list(allowed), n=1)
        hint = f" (did you mean data.aug.{close[0]}?)" if close else ""
        raise ConfigError(f"{_origin(origins, f'data.aug.{role}')}: data.aug.{role}: method {cfg.method.name} reads "
                          f"no pipeline {role!r}{hint}; its roles: {', '.join(allowed) or '(none)'}")
    try:
        method.check(cfg)
    except FieldError as e:
        raise ConfigError(f"{_origin(origins, e.key)}: {e.key}: {e.message}") from None


def from_dict(d: dict[str, Any], source: str = "config") -> RunConfig:
    """Rebuild a RunConfig from its to_dict() form (config.json of a run dir)."""
    origins: dict[str, str] = {"": source}
    return build(json.loads(json.dumps(d)), origins)


def make(overrides: Optional[dict[str, Any]] = None, source: str = "overrides", **top: Any) -> RunConfig:
    """A typed RunConfig from defaults + nested/dotted overrides, e.g.
    make({"model": {"name": "vgg1", "width": 8}, "optim.lr": 0.05}, study="t") (scripts, benches, tests)."""
    tree: dict = dict(top)
    origins: dict[str, str] = {"": source}
    merge(tree, overrides or {}, source, origins)
    return build(tree, origins)
