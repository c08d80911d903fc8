"""The label-noise part of a study report, from run directories alone: clean-test accuracy at the best epoch
(by the clean validation split) and at the last epoch, and the curves of how much of the clean and of the
corrupted training examples each model fits over the epochs (memorisation).

Needs runs with data.label_noise > 0 or data.labels_csv (the probe metrics fit_clean / fit_noisy_given / fit_noisy_true, written
by the supervised method after every epoch) and method.test_each_epoch (test accuracy per epoch) for the
best-epoch column."""
from __future__ import annotations

from pathlib import Path

from .. import rundir as rt
from ..registry import SECTIONS

FIT_KEYS = [("fit_clean", "clean examples, their label"), ("fit_noisy_given", "corrupted examples, the wrong label "
                                                                            "given (memorised)"),
            ("fit_noisy_true", "corrupted examples, their true label")]


def _per_epoch(run: rt.Run, key: str) -> list[tuple[int, float]]:
    return [(int(m["epoch"]), float(m[key])) for m in run.metrics if key in m and "epoch" in m]


def _best_and_last_test(run: rt.Run) -> tuple[float | None, float | None]:
    """Test accuracy (%) at the epoch of best validation accuracy, and at the last epoch (both without test-time
    augmentation, from the per-epoch records; the last falls back to the result's when there are none)."""
    val = _per_epoch(run, "val_acc")
    test = dict(_per_epoch(run, "test_acc_no_tta"))
    last = test[max(test)] if test else (run.result.get("test_acc") if run.result else None)
    if not val or not test:
        return None, last
    best_epoch = max(val, key=lambda e: e[1])[0]  # first of the ties
    return test.get(best_epoch), last


@SECTIONS.register("noisy_labels")
def render(run_list: list, out_dir: Path) -> str:
    """Label noise: best-epoch vs last-epoch clean-test accuracy per variant, and the fit curves."""
    from .render import group_by_variant
    from .render import fmt_values as _fmt_mean

    runs = [r for r in run_list if r.result is not None and any("fit_clean" in m for m in r.metrics)]
    if not runs:
        return ""
    by_variant = group_by_variant(runs, run_list)
    lines = ["## Label noise: memorisation", "",
             "Clean-test accuracy (%) at the epoch of best (clean) validation accuracy and at the last epoch; "
             "the gap is what memorising the wrong labels costs. Fit (%): the last epoch's accuracy on a fixed "
             "sample of up to 1000 clean and 1000 corrupted training examples (no augmentation).", "",
             "| variant | noise | test at best epoch | test at last epoch | fit clean | fit corrupted (wrong label) | "
             "fit corrupted (true label) | seeds |", "|---|---|---|---|---|---|---|---|"]
    for v, rs in by_variant.items():
        best, last = zip(*(_best_and_last_test(r) for r in rs))
        data = rs[0].config.get("data", {})
        noise = (f"{data['labels_csv']} {data.get('labels_column', '')}" if data.get("labels_csv") else
                 f"{100 * float(data.get('label_noise', 0)):g} % {data.get('noise_kind', 'symmetric')}")
        fits = [[_per_epoch(r, k)[-1][1] for r in rs if _per_epoch(r, k)] for k, _ in FIT_KEYS]
        lines.append(f"| {v} | {noise} | {_fmt_mean([b for b in best if b is not None])} | "
                     f"{_fmt_mean([x for x in last if x is not None])} | "
                     + " | ".join(_fmt_mean(f) for f in fits) + f" | {len(rs)} |")
    png = _plot(by_variant, Path(out_dir) / "noise-fit.png")
    if png:
        lines += ["", f"![fit of clean and corrupted training examples over epochs]({png.name})"]
    return "\n".join(lines)


def _plot(by_variant: dict[str, list[rt.Run]], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FIT_KEYS), figsize=(5.5 * len(FIT_KEYS), 4), squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    for ax, (key, title) in zip(axes[0], FIT_KEYS):
        for i, (v, rs) in enumerate(by_variant.items()):
            for j, r in enumerate(rs):  # every seed, one colour per variant
                pts = _per_epoch(r, key)
                if pts:
                    ax.plot(*zip(*pts), color=colors[i % len(colors)], alpha=0.9 if j == 0 else 0.4,
                            label=v if j == 0 else None)
                    drawn = True
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training examples fitted (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    if drawn:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path if drawn else None
