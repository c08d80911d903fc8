"""The test-time-augmentation part of a study report, from run directories alone. A run with TTA records its
test accuracy at its own level (test_acc) and at every lower level from the same forward passes
(test_acc_mirror: the image and its mirror; test_acc_no_tta: the image alone; methods/supervised.py), so what
TTA adds is a paired difference over the same trained networks: seed noise cancels, and no second training run
is needed to measure it."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..registry import SECTIONS
from .stats import ALPHA, t_two_sided_p

LEVELS = {2: "mirror + 1 px shifts (6 views)", 1: "mirror (2 views)"}


def paired(diffs: list[float]) -> tuple[float, float, float | None]:
    """(mean, std, two-sided p of the paired t-test that the mean is 0) of per-run differences; std and p need
    >= 2 differences (std 0 with a nonzero mean: p 0)."""
    m = statistics.fmean(diffs)
    if len(diffs) < 2:
        return m, float("nan"), None
    s = statistics.stdev(diffs)
    if s == 0.0:
        return m, 0.0, 1.0 if m == 0.0 else 0.0
    return m, s, t_two_sided_p(m / (s / math.sqrt(len(diffs))), len(diffs) - 1)


def _gain(diffs: list[float]) -> str:
    m, s, p = paired(diffs)
    if p is None:
        return f"{m:+.2f} (n=1)"
    word = "significant" if p < ALPHA else "not significant"
    return f"{m:+.2f} ± {s:.2f} ({word}, p={p:.2g})"


@SECTIONS.register("tta")
def render(run_list: list, out_dir: Path) -> str:
    """Test-time augmentation: accuracy with the run's TTA, mirror only and none, per variant and over all runs."""
    from .render import group_by_variant
    from .render import fmt_values as _fmt

    runs = [r for r in run_list if r.result is not None and "test_acc_no_tta" in r.result and "test_acc" in r.result]
    if not runs:
        return ""
    by_variant = group_by_variant(runs, run_list)
    lines = ["## Test-time augmentation", "",
             "Each run's test accuracy with its own TTA, with the mirror only and with none, all from the same "
             "forward passes of the same trained network; the gain is the paired difference (TTA - none) per run, "
             "mean ± std over the runs and the paired t-test, so seed noise cancels.", "",
             "| variant | TTA | with TTA | mirror only | none | gain over none | runs |", "|---|---|---|---|---|---|---|"]
    everything: dict[int, list[float]] = {}
    for v, rs in by_variant.items():
        level = int(rs[0].config.get("method", {}).get("tta", 0))
        acc = [float(r.result["test_acc"]) for r in rs]
        none = [float(r.result["test_acc_no_tta"]) for r in rs]
        mirror = [float(r.result["test_acc_mirror"]) for r in rs if "test_acc_mirror" in r.result]
        diffs = [a - b for a, b in zip(acc, none)]
        everything.setdefault(level, []).extend(diffs)
        lines.append(f"| {v} | {LEVELS.get(level, level)} | {_fmt(acc)} | {_fmt(mirror) if mirror else '—'} "
                     f"| {_fmt(none)} | {_gain(diffs)} | {len(rs)} |")
    if len(by_variant) < 2:  # the one row says it all
        return "\n".join(lines)
    lines.append("")
    for level, diffs in sorted(everything.items(), reverse=True):
        lines.append(f"Over all {len(diffs)} runs with TTA {LEVELS.get(level, level)}: {_gain(diffs)} points "
                     "over none.")
    mirror_diffs = [float(r.result["test_acc_mirror"]) - float(r.result["test_acc_no_tta"])
                    for r in runs if "test_acc_mirror" in r.result]
    if mirror_diffs:
        lines.append(f"The mirror alone, over the same {len(mirror_diffs)} runs: {_gain(mirror_diffs)} points over "
                     "none.")
    return "\n".join(lines)
