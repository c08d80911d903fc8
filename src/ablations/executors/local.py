"""The default executor: the planned runs one after another in this process (every process of a
distributed run, distributed.py), in plan order (referenced runs first); the first failure stops the study."""
from __future__ import annotations

from dataclasses import dataclass

from .. import distributed
from ..config import Section
from ..loop import run
from ..registry import EXECUTORS
from . import Outcome, Planned, done_line


@dataclass(frozen=True)
class LocalConfig(Section):
    """No options: the runs share this process's threads (train.threads, or torch's default)."""


@EXECUTORS.register("local", LocalConfig)
def local(plan: list[Planned], opts: LocalConfig) -> list[Outcome]:
    """The runs one after another in this process (the default); stops at the first failure."""
    outcomes = []
    for p in plan:
        res = run(p.cfg, p.dir, resume=p.resume, refs=p.refs, overwrite=p.overwrite, restart=not p.resume)
        if distributed.current().main:
            print(done_line(p.cfg, res, p.dir), flush=True)
        outcomes.append(Outcome(p, "finished", res))
    return outcomes
