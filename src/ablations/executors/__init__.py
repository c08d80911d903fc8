"""Executors: how the runs a study planned are carried out (`ablations run STUDY --executor NAME`).

The CLI decides every run's fate first (skip, resume, start: cli.cmd_run) and hands the list to an executor,
one file each, registered in EXECUTORS with its typed Config (the CLI's --address, --cpus-per-run and
--gpus-per-run fill it):

    @EXECUTORS.register("local", LocalConfig)
    def local(plan: list[Planned], opts: LocalConfig) -> list[Outcome]: ...

Every executor trains through loop.run into the same run directories, so the report does not know which
one ran a study. `local` (the default) runs them one after another in this process and stops at the first
failure; `ray` spreads them over a Ray cluster and lets the others finish when one fails.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import RunConfig


@dataclass(frozen=True)
class Planned:
    """One run to carry out: its config and dir, whether it resumes from its checkpoint, whether it may
    replace a finished run, and the dirs of the runs it references (they come first)."""
    cfg: RunConfig
    dir: Path
    resume: bool
    overwrite: bool
    refs: dict[str, Path] = field(default_factory=dict)


@dataclass
class Outcome:
    planned: Planned
    status: str  # "finished" | "failed" | "skipped" (a run it references failed)
    result: Optional[dict] = None
    error: Optional[str] = None


def done_line(cfg: RunConfig, res: dict, run_dir: Path) -> str:
    """The line printed when a run finishes."""
    metric = res.get(cfg.metric)
    shown = f"{cfg.metric}={metric:.4g}" if isinstance(metric, (int, float)) else f"{cfg.metric}=n/a"
    target = f" (target {cfg.target:g})" if cfg.target is not None else ""
    return f"done {cfg.variant} seed {cfg.seed}: {shown}{target} in {res.get('wall_time', 0):.0f}s -> {run_dir}"


def error_text(e: BaseException) -> str:
    """One line: our own errors by their message, anything else with its type."""
    from ..errors import UserError

    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if isinstance(e, UserError) else f"{type(e).__name__}: {text}" if text else type(e).__name__


__all__ = ["Planned", "Outcome", "done_line", "error_text"]
