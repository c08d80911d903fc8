"""The few-labels part of a study report, from run directories alone: test accuracy against the share of
labeled training images per method (a table and a plot, mean ± std over seeds), the zero-shot floor where the
study has one, and the pseudo-labels of the semi-supervised methods over training (how many count, how many
of those are right).

A run's label budget is its config's data.labeled_fraction / data.labeled_per_class (a column), measured as
result.json's n_labeled / (n_labeled + n_unlabeled) (written by the supervised method and every method built
on it); runs that differ in anything else (method, input size, epochs, ...) are separate rows; a zero-shot run
(nothing trained) is the floor."""
from __future__ import annotations

from pathlib import Path

from .. import rundir as rt
from ..config import flatten
from ..registry import SECTIONS


BUDGET_KEYS = ("data.labeled_fraction", "data.labeled_per_class")
NOT_SETTINGS = {"study", "variant", "preset", "seed", "target", "metric", "goal", *BUDGET_KEYS}


def _method(run: rt.Run) -> str:
    m = run.config.get("method") or {}
    name = m.get("name", "?")
    if name == "finetune":  # what the supervised-only baseline trains
        stages = int(m.get("train_stages", 0))
        return "supervised (head)" if stages == 0 else f"supervised ({stages} stage(s) + head)"
    if float(m.get("lambda_u", 1.0)) == 0.0:  # the semi-supervised batches and views with no unlabeled loss
        return f"{name}, lambda_u 0 (labeled only)"
    return name


def _budget(run: rt.Run) -> tuple[str, float]:
    """(column label, sort key) of the configured label budget: 'N per class' or 'x %'."""
    d = run.config.get("data") or {}
    per = int(d.get("labeled_per_class") or 0)
    if per:
        return f"{per} per class", -per * 1e-6  # sorts below every fraction column with the same share
    frac = float(d.get("labeled_fraction", 1.0))
    return f"{100 * frac:g} %", frac


def _setting(run: rt.Run) -> tuple:
    """Everything the run's config sets but the label budget and the run's identity: one table row each."""
    return tuple(sorted((k, repr(v)) for k, v in flatten(run.config).items() if k not in NOT_SETTINGS))


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
    is_floor = lambda r: (r.config.get("method") or {}).get("name") == "zeroshot"  # noqa: E731
    floor = [float(r.result[metric]) for r in runs if is_floor(r) and metric in r.result]
    trained = [r for r in runs if not is_floor(r) and _share(r) is not None and metric in r.result]
    if not trained:
        return ""
    # rows: one per setting (method and every option but the budget), labelled by the method and what sets it
    # apart from the other rows of that method; columns: the configured budgets, largest first
    settings = list(dict.fromkeys(_setting(r) for r in trained))
    label_of: dict[tuple, str] = {}
    for st in settings:
        name = _method(next(r for r in trained if _setting(r) == st))
        same = [o for o in settings if o != st and _method(next(r for r in trained if _setting(r) == o)) == name]
        extra = sorted({k for o in same for k, v in set(st) ^ set(o)}) if same else []
        own = dict(st)
        label_of[st] = name + (f" ({', '.join(f'{k}={own.get(k, chr(8212))}' for k in extra)})" if extra else "")
    budgets = sorted({_budget(r) for r in trained}, key=lambda b: -b[1])
    cells: dict[tuple[tuple, str], list[float]] = {}
    shares: dict[str, list[float]] = {}
    for r in trained:
        b = _budget(r)[0]
        cells.setdefault((_setting(r), b), []).append(float(r.result[metric]))
        shares.setdefault(b, []).append(_share(r))
    cols = [b for b, _ in budgets]
    lines = ["## Few labels", "",
             f"{metric} (%) by label budget (the share of the training pool whose labels are used; measured share "
             "in brackets) and method; the rest of the pool is used without labels by the semi-supervised methods, "
             "not at all by the supervised ones. Mean ± std over seeds, (n) runs."
             + (f" Zero-shot floor (no training): {fmt_values(floor)} %." if floor else ""), "",
             "| method | " + " | ".join(f"{b} ({mean_std(shares[b])[0]:.3g} %)" for b in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for st in settings:
        row = [f"{fmt_values(cells[(st, b)])} ({len(cells[(st, b)])})" if (st, b) in cells else "" for b in cols]
        lines.append(f"| {label_of[st]} | " + " | ".join(row) + " |")
    series = {label_of[st]: [(mean_std(shares[b])[0], mean_std(cells[(st, b)])) for b in cols if (st, b) in cells]
              for st in settings}
    png = _plot(series, mean_std(floor)[0] if floor else None, Path(out_dir) / "fewlabels.png", metric)
    lines += ["", f"![accuracy against the labeled share]({png.name})"]
    ssl = [r for r in run_list if any("pl_coverage" in m for m in r.metrics)]
    if ssl:
        lines += ["", "Pseudo-labels at the last epoch: coverage = % of the unlabeled images in a step whose "
                  "pseudo-label reached the threshold (and was trained on); accuracy = % of those that are the "
                  "true class (the unlabeled images' labels are read for this measurement only); threshold = tau, "
                  "or for the adaptive one its mean over the epoch's pseudo-labels.", "",
                  "| variant | seed | threshold | coverage | accuracy (counted) | accuracy (all) |",
                  "|---|---|---|---|---|---|"]
        for r in ssl:
            last = [m for m in r.metrics if "pl_coverage" in m][-1]
            lines.append(f"| {r.variant} | {r.seed} | {_threshold(r, last)} | {last['pl_coverage']:.1f} % | "
                         f"{last['pl_acc']:.1f} % | {last['pl_acc_all']:.1f} % |")
        curve = _plot_pseudo(ssl, Path(out_dir) / "pseudolabels.png")
        lines += ["", f"![pseudo-label coverage and accuracy over training]({curve.name})"]
    return "\n".join(lines)


def _threshold(run, last: dict) -> str:
    """The threshold a run's pseudo-labels were held to, as the table shows it."""
    mc = run.config.get("method", {})
    if mc.get("name") == "labelprop":
        return "none (graph weights)"
    if "pl_threshold" in last:
        return f"adaptive, mean {last['pl_threshold']:.2f}"
    return f"tau {mc.get('tau', '?')}"


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
    from .render import save_figure

    return save_figure(fig, path)


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
    from .render import save_figure

    return save_figure(fig, path)
