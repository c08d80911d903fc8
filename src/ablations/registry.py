"""One registry per kind: name -> (builder, its typed Config, metadata). The CLI, the config typing,
the tests and the studies enumerate them; nothing keeps a hand-written list of modules.

    @MODELS.register("vgg3", VGGConfig, input="images")
    def vgg3(cfg: VGGConfig, spec: DataSpec) -> nn.Module: ...

Every module under the plugin packages (PLUGIN_PACKAGES) is imported on first use, so a new model,
dataset, method, loss, augmentation or report section is one new file. A module that fails to import
is an error naming it (a registry never silently comes up half-empty).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from .errors import UserError

PLUGIN_PACKAGES = ("ablations.data", "ablations.models", "ablations.methods", "ablations.losses",
                   "ablations.optimizers", "ablations.report", "ablations.executors")


class UnknownName(UserError, KeyError):
    """A name that is not registered; the message lists close matches and all choices."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any  # the builder (function or class)
    Config: Optional[type]  # its frozen dataclass of options (None: takes no options)
    meta: dict = field(default_factory=dict)  # e.g. input="images" | "text"


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Entry] = {}

    def register(self, name: str, Config: Optional[type] = None, **meta: Any) -> Callable:
        def deco(obj: Any) -> Any:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = Entry(name, obj, Config if Config is not None else getattr(obj, "Config", None),
                                      dict(meta))
            return obj

        return deco

    def add(self, name: str, obj: Any, Config: Optional[type] = None, **meta: Any) -> Any:
        return self.register(name, Config, **meta)(obj)

    def entry(self, name: str) -> Entry:
        load_plugins()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._items, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UnknownName(
                f"unknown {self.kind} {name!r}{hint}; choices: {', '.join(sorted(self._items))}"
            ) from None

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._items

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)

    def entries(self) -> list[Entry]:
        return [self._items[n] for n in self.names()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


MODELS = Registry("model")
DATASETS = Registry("dataset")
METHODS = Registry("method")  # training algorithms (methods/*.py)
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimiser")  # name -> build(param groups, OptimConfig) -> torch Optimizer (optimizers/*.py)
AUGS = Registry("augmentation")  # batched image ops (data/augment.py)
TEXT_AUGS = Registry("text augmentation")  # training-text rewrites (data/text_augment.py)
SECTIONS = Registry("report section")
EXECUTORS = Registry("executor")  # how a study's runs are carried out (executors/*.py)

_loaded = False


def load_plugins() -> None:
    """Import every module of the plugin packages once (their decorators fill the registries).
    Optional third-party packages (efficientnet, GloVe) are imported inside the builders that use them."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: modules being imported may query a registry
    try:
        for pkg_name in PLUGIN_PACKAGES:
            pkg = importlib.import_module(pkg_name)
            for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
                _import(info.name)
    except BaseException:
        _loaded = False
        raise


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as e:
        raise UserError(f"cannot import {module} ({type(e).__name__}: {e}); the registries need every "
                        f"module of {module.rsplit('.', 1)[0]}") from e
