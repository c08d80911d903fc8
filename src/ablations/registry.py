"""One registry per kind: a name -> builder mapping that the CLI, tests and sweeps enumerate."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .config import UserError

T = TypeVar("T")


class UnknownName(UserError, KeyError):
    """A name that is not registered; the message lists close matches and all choices."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        _load_builtins()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UnknownName(
                f"unknown {self.kind} {name!r}{hint}; choices: {', '.join(sorted(self._items))}"
            ) from None

    def __contains__(self, name: str) -> bool:
        _load_builtins()
        return name in self._items

    def names(self) -> list[str]:
        _load_builtins()
        return sorted(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


MODELS: Registry = Registry("model")
DATASETS: Registry = Registry("dataset")
TASKS: Registry = Registry("task")  # training family: "classify", "language"
LOSSES: Registry = Registry("loss")

_loaded = False


def _load_builtins() -> None:
    """Import the modules whose decorators fill the registries (once, lazily, to keep start-up fast)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for mod in (
        "ablations.models.vgg",
        "ablations.models.rnn",
        "ablations.models.pretrained",
        "ablations.data.images",
        "ablations.data.synthetic",
        "ablations.data.text",
        "ablations.data.transfer",
        "ablations.train.losses",
        "ablations.train.classify",
        "ablations.train.language",
        "ablations.train.zeroshot",
    ):
        importlib.import_module(mod)  # optional packages (efficientnet, GloVe) are imported when used
