"""How training went, per variant, from run directories alone: how fast the training loss falls (after the first
epoch, half-way, at the end), the final training accuracy against the test accuracy (the generalisation gap) and
the training speed. It answers "does training get easier?" (the ResNet-ification study) and "at what speed cost?"
(the normalisation study) with numbers, next to the curves, which show only the first seed."""
from __future__ import annotations

import statistics
from pathlib import Path

from ..registry import SECTIONS


def _at(metrics: list[dict], key: str, frac: float) -> float | None:
    """`key` of the epoch a fraction `frac` of the way through training (0 -> the first epoch, 1 -> the last)."""
    rows = [m for m in metrics if isinstance(m.get(key), (int, float))]
    if not rows:
        return None
    return float(rows[min(len(rows) - 1, max(0, round(frac * len(rows)) - 1))][key])


def variant_rows(run_list: list) -> list[dict]:
    """One row per variant (mean over its finished runs that logged a training loss): the numbers of the table."""
    from .render import group_by_variant

    runs = [r for r in run_list if r.result is not None and r.metrics
            and any("train_loss" in m for m in r.metrics)]
    rows = []
    for v, rs in group_by_variant(runs, run_list).items():
        row: dict = {"variant": v, "runs": len(rs)}
        for name, key, frac in (("train_loss_first", "train_loss", 0.0), ("train_loss_half", "train_loss", 0.5),
                                ("train_loss_last", "train_loss", 1.0), ("train_acc_last", "train_acc", 1.0)):
            row[name] = [x for x in (_at(r.metrics, key, frac) for r in rs) if x is not None]
        row["test_acc"] = [float(r.result["test_acc"]) for r in rs
                           if isinstance(r.result.get("test_acc"), (int, float))]
        # training images per second over all epochs (the loop's own count: augmentation included, evaluation not)
        row["img_per_s"] = [statistics.fmean(m["img_per_s"] for m in r.metrics if "img_per_s" in m)
                            for r in rs if any("img_per_s" in m for m in r.metrics)]
        row["gap"] = [a - t for a, t in zip(row["train_acc_last"], row["test_acc"])] \
            if len(row["train_acc_last"]) == len(row["test_acc"]) else []
        rows.append(row)
    return rows


@SECTIONS.register("training")
def render(run_list: list, out_dir: Path) -> str:
    """How fast the training loss falls, the final training vs test accuracy, and the training speed, per variant."""
    from .render import fmt_values as _fmt

    rows = variant_rows(run_list)
    if len(rows) < 2:  # one variant: the results table and the curves say it all
        return ""
    epochs = sorted({int(r.result.get("epochs", 0)) for r in run_list
                     if r.result and r.metrics and any("train_loss" in m for m in r.metrics)})
    half = "half-way" if len(epochs) != 1 else f"epoch {max(1, round(epochs[0] / 2))}"
    last = "last epoch" if len(epochs) != 1 else f"epoch {epochs[0]}"
    at_last = "at the last epoch" if len(epochs) != 1 else f"after {last}"
    acc = any(r["train_acc_last"] for r in rows)
    lines = ["## How training went", "",
             "Training loss (on the augmented training batches, averaged over each epoch) after the first epoch, "
             f"{half} and {at_last}; mean ± std over each variant's seeds. "
             + ("The gap is the last epoch's training accuracy minus the test accuracy (positive: the network fits "
                "its training images better than it generalises). " if acc else "")
             + "img/s: training images per second (evaluation excluded), the mean over epochs.", "",
             "| variant | loss, epoch 1 | loss, " + half + " | loss, " + last
             + (" | train acc | test acc | gap" if acc else "") + " | img/s | runs |",
             "|---|---|---|---|" + ("---|---|---|" if acc else "") + "---|---|"]
    for r in rows:
        cells = [_fmt(r["train_loss_first"], 3), _fmt(r["train_loss_half"], 3), _fmt(r["train_loss_last"], 3)]
        if acc:
            cells += [_fmt(r["train_acc_last"]), _fmt(r["test_acc"]), _fmt(r["gap"])]
        cells += [_fmt(r["img_per_s"], 0), str(r["runs"])]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
