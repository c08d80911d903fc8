"""The core-set part of a study report, from run directories alone: test accuracy against the kept fraction per
score (a plot), and each core-set's end-to-end time (its proxy's wall time + its own) against the whole-set runs.

A run is a core-set run when data.coreset_keep < 1; a proxy when method.score_examples; the reference is every
other run (the whole set). End-to-end time charges a scored core-set its proxy's run of the same seed in full
(the proxy trains once per seed and serves every fraction and score; charging it to each is the honest
one-study-question view)."""
from __future__ import annotations

from pathlib import Path

from .. import rundir as rt
from ..registry import SECTIONS


def _kind(run: rt.Run) -> str:
    data, method = run.config.get("data", {}), run.config.get("method", {})
    if method.get("score_examples"):
        return "proxy"
    return "coreset" if float(data.get("coreset_keep", 1.0)) < 1 else "whole"


@SECTIONS.register("coreset")
def render(run_list: list, out_dir: Path) -> str:
    """Core-sets: accuracy vs kept fraction per score, end-to-end time against the whole set."""
    from .render import group_by_variant, mean_std
    from .render import fmt_values as _fmt

    runs = [r for r in run_list if r.result is not None]
    if not any(_kind(r) == "coreset" for r in runs):
        return ""
    metric = runs[0].config.get("metric", "test_acc")
    proxies = {(r.variant, r.seed): r for r in runs if _kind(r) == "proxy"}
    by_variant = group_by_variant(runs, run_list)
    whole_time = [r.wall_time for r in runs if _kind(r) == "whole"]
    whole_acc = [float(r.result[metric]) for r in runs if _kind(r) == "whole" and metric in r.result]
    base_t = mean_std(whole_time)[0] if whole_time else None
    lines = ["## Core-sets", "",
             f"Kept: share of the training pool. End-to-end: the run's wall time plus its proxy's (same seed); "
             f"speed-up: the whole-set runs' mean wall time over it. Whole set: {_fmt(whole_acc)} % "
             f"({len(whole_acc)} seed(s)).", "",
             f"| variant | score | kept | {metric} | vs whole set | end-to-end (s) | speed-up | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    points: dict[str, list[tuple[float, float]]] = {}
    for v, rs in by_variant.items():
        kind = _kind(rs[0])
        if kind == "proxy":
            continue
        data = rs[0].config.get("data", {})
        keep = float(data.get("coreset_keep", 1.0))
        score = data.get("coreset_score", "") if kind == "coreset" else "(whole set)"
        accs = [float(r.result[metric]) for r in rs if metric in r.result]
        e2e: list = []
        for r in rs:
            ref = r.config.get("data", {}).get("coreset_proxy") if kind == "coreset" else ""
            if ref and (ref, r.seed) not in proxies:  # its proxy's run is not here: no end-to-end time
                e2e = []
                break
            e2e.append(r.wall_time + (proxies[(ref, r.seed)].wall_time if ref else 0.0))
        diff = (f"{mean_std(accs)[0] - mean_std(whole_acc)[0]:+.2f}" if accs and whole_acc and kind == "coreset"
                else "")
        speed = f"{base_t / mean_std(e2e)[0]:.2f}x" if base_t and e2e else "n/a"
        lines.append(f"| {v} | {score} | {100 * keep:g} % | {_fmt(accs)} | {diff} | {_fmt(e2e, 0)} | {speed} | "
                     f"{len(rs)} |")
        if accs and kind == "coreset":
            points.setdefault(score, []).append((100 * keep, mean_std(accs)[0]))
    for (v, seed), r in sorted(proxies.items()):
        lines.append(f"\nProxy {v} seed {seed}: {metric} {float(r.result.get(metric, float('nan'))):.2f} %, "
                     f"{r.wall_time:.0f} s.")
    png = _plot(points, mean_std(whole_acc)[0] if whole_acc else None, Path(out_dir) / "coreset.png", metric)
    if png:
        lines += ["", f"![accuracy against the kept share of the training set]({png.name})"]
    return "\n".join(lines)


def _plot(points: dict[str, list[tuple[float, float]]], whole: float | None, path: Path, metric: str) -> Path | None:
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for score, pts in sorted(points.items()):
        pts = sorted(pts)
        ax.plot(*zip(*pts), marker="o", label=score)
    if whole is not None:
        ax.axhline(whole, color="k", ls="--", lw=1, label="whole set")
    ax.set_xlabel("training examples kept (%)")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    from .render import save_figure

    return save_figure(fig, path)
