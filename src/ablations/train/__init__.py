"""Training families. Each registers a Task in TASKS: its `fit` runs one RunConfig into a run dir."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional


@dataclass(frozen=True)
class Task:
    # fit(cfg, run_dir, resume) -> result dict; writes config/env/metrics/checkpoint/final/result files
    fit: Callable
    # report(run_dirs: list[Path], out_dir: Path) -> extra Markdown for the study report (samples, ...)
    report: Optional[Callable] = None
