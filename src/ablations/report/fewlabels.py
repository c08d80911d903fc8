"""The few-labels part of a study report, from run directories alone: test accuracy against the share of
labeled training images per method (a table and a plot, mean ± std over seeds), the zero-shot floor where the
study has one, and the pseudo-labels of the semi-supervised methods over training (how many count, how many
of those are right).

A run's label budget is result.json's n_labeled / (n_labeled + n_unlabeled) (written by the supervised
method and every method built on it); a zero-shot run (nothing trained) is the floor."""
from __future__ import annotations

from pathlib import Path

from .. import rundir as rt
from ..registry import SECTIONS


def _method(run: rt.Run) -> str:
    m = run.config.get("method") or {}
    name = m.get("name", "?")
    if name == "finetune":  # what the supervised-only baseline trains
        stages = int(m.get("train_stages", 0))
        return "supervised (head)" if stages == 0 else f"supervised ({stages} stage(s) + head)"
    return name


def _share(run: rt.Run) -> float | None:
    """% of the training images that are labeled, from result.json."""
    res = run.result or {}
    n_l, n_u = res.get("n_labeled"), res.get("n_unlabeled")
    if n_l is None or n_u is None or n_l + n_u == 0:
        return None
    return 100.0 * n_l / (n_l + n_u)


@SECTIONS.register("fewlabels")
def render(run_list: list, out_dir: Path) -> str:
    """Few labels: accuracy vs labeled share per method, the zero-shot floor, pseudo-label curves."""
    from .render import fmt_values, mean_std

    runs = [r for r in run_list if r.result is not None]
    metric = runs[0].config.get("metric", "test_acc") if runs else "test_acc"
    floor = [float(r.result[metric]) for r in runs if (r.config.get("method") or {}).get("name") == "zeroshot"
             and metric in r.result]
    cells: dict[tuple[str, float], list[float]] = {}
    for r in runs:
        share = _share(r)
        if share is not None and metric in r.result:
            cells.setdefault((_method(r), round(share, 2)), []).append(float(r.result[metric]))
    if not cells:
        return ""
    methods = list(dict.fromkeys(m for m, _ in cells))
    shares = sorted({s for _, s in cells}, reverse=True)
    lines = ["## Few labels", "",
             f"{metric} (%) against the share of the training images whose labels are used (the rest are used "
             "without labels by the semi-supervised methods, not at all by the supervised ones); mean ± std over "
             "seeds (n in brackets)." + (f" Zero-shot floor (no training): {fmt_values(floor)} %." if floor else ""),
             "", "| method | " + " | ".join(f"{s:g} % labeled" for s in shares) + " |",
             "|---|" + "---|" * len(shares)]
    for m in methods:
        row = [f"{fmt_values(cells[(m, s)])} ({len(cells[(m, s)])})" if (m, s) in cells else "" for s in shares]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    png = _plot({m: [(s, mean_std(cells[(m, s)])) for s in shares if (m, s) in cells] for m in methods},
                mean_std(floor)[0] if floor else None, Path(out_dir) / "fewlabels.png", metric)
    lines += ["", f"![accuracy against the labeled share]({png.name})"]
    ssl = [r for r in run_list if any("pl_coverage" in m for m in r.metrics)]
    if ssl:
        lines += ["", "Pseudo-labels at the last epoch: coverage = % of the unlabeled images in a step whose "
                  "pseudo-label reached the threshold tau (and was trained on); accuracy = % of those that are the "
                  "true class (the unlabeled images' labels are read for this measurement only).", "",
                  "| variant | seed | coverage | accuracy (counted) | accuracy (all) |", "|---|---|---|---|---|"]
        for r in ssl:
            last = [m for m in r.metrics if "pl_coverage" in m][-1]
            lines.append(f"| {r.variant} | {r.seed} | {last['pl_coverage']:.1f} % | {last['pl_acc']:.1f} % | "
                         f"{last['pl_acc_all']:.1f} % |")
        curve = _plot_pseudo(ssl, Path(out_dir) / "pseudolabels.png")
        lines += ["", f"![pseudo-label coverage and accuracy over training]({curve.name})"]
    return "\n".join(lines)


def _plot(series: dict[str, list[tuple[float, tuple[float, float]]]], floor: float | None, path: Path,
          metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m, pts in series.items():
        pts = sorted(pts)
        xs = [p[0] for p in pts]
        ax.errorbar(xs, [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], marker="o", capsize=3, label=m)
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", lw=1, label="zero-shot")
    ax.set_xscale("log")
    ax.set_xlabel("labeled training images (%)")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_pseudo(runs: list, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in runs:
        recs = [m for m in r.metrics if "pl_coverage" in m]
        ep = [m["epoch"] for m in recs]
        axes[0].plot(ep, [m["pl_coverage"] for m in recs], label=f"{r.variant} s{r.seed}")
        axes[1].plot(ep, [m["pl_acc"] for m in recs], label=f"{r.variant} s{r.seed}")
    for ax, title in zip(axes, ("coverage: pseudo-labels counted (%)", "accuracy of the counted pseudo-labels (%)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
