"""The explanations part of a study report, from run directories alone: for every run that `ablations explain`
has visited (RUN_DIR/explain/explain.json), its attribution figures and, with --sanity, the cascading
randomisation curves (Spearman correlation of each method's map with the trained model's, as layers are
re-initialised from the top down)."""
from __future__ import annotations

import shutil
from pathlib import Path

from .. import rundir as rt
from ..registry import SECTIONS


@SECTIONS.register("explanations")
def render(run_list: list, out_dir: Path) -> str:
    """Explanations: attribution maps per run and method, and the sanity check's curves."""
    from ..explain import EXPLAIN_DIR, EXPLAIN_JSON

    parts: list[str] = []
    for r in run_list:
        f = r.dir / EXPLAIN_DIR / EXPLAIN_JSON
        if not f.is_file():
            continue
        try:
            rec = rt.read_json(f)
        except Exception:  # a damaged record: the rest of the report still renders
            parts.append(f"### {r.variant} seed {r.seed}\n\n{f}: unreadable, rerun `ablations explain`.")
            continue
        tag = f"explain-{r.variant}-s{r.seed}"
        if rec.get("kind") == "text":
            parts.append(_text_part(r, rec, f.parent, Path(out_dir), tag))
            continue
        lines = [f"### {r.variant} seed {r.seed}", "",
                 f"{len(rec['images'])} test images (indices {', '.join(map(str, rec['images']))}), maps of the "
                 f"{'predicted' if rec['target'] == 'pred' else 'true'} class; Grad-CAM layer `{rec['layer']}`."]
        for m, why in rec.get("skipped", {}).items():
            lines.append(f"Not shown: {m} ({why}).")
        for m in rec["methods"]:
            src = f.parent / rec["figures"][m]
            if src.is_file():
                shutil.copyfile(src, Path(out_dir) / f"{tag}-{m}.png")
                lines += ["", f"![{m}, {r.variant} seed {r.seed}]({tag}-{m}.png)"]
        san = rec.get("sanity")
        if san:
            lines += ["", "Sanity check (Adebayo et al. 2018, cascading randomisation): Spearman rank correlation "
                      "between each method's map and the trained model's, mean over the images, after re-initialising "
                      "the parametrised layers from the output down to the one named. A method whose map stays "
                      "correlated while the weights are destroyed does not explain the model.", "",
                      "| method | top layer randomised | half the layers | all layers |", "|---|---|---|---|"]
            for m, ys in san["spearman"].items():
                lines.append(f"| {m} | {ys[0]:.3f} | {ys[len(ys) // 2]:.3f} | {ys[-1]:.3f} |")
            src = f.parent / san.get("figure", "sanity.png")
            if src.is_file():
                shutil.copyfile(src, Path(out_dir) / f"{tag}-sanity.png")
                lines += ["", f"![cascading randomisation, {r.variant} seed {r.seed}]({tag}-sanity.png)"]
        parts.append("\n".join(lines))
    if not parts:
        return ""
    return "## Explanations\n\nWritten by `ablations explain RUN_DIR` (attributions: Captum).\n\n" + "\n\n".join(parts)


def _text_part(r, rec: dict, src_dir: Path, out_dir: Path, tag: str) -> str:
    """An LSTM run: the cells chosen for each text property (the page beside the report) and gate saturation."""
    lines = [f"### {r.variant} seed {r.seed}: LSTM cells", "",
             f"{rec['chars']} held-out characters; for each property the cell whose tanh(c) correlates most with it "
             "(Pearson r):", "", "| property | layer | cell | r |", "|---|---|---|---|"]
    lines += [f"| {c['feature']} | {c['layer'] + 1} | {c['cell']} | {c['r']:+.3f} |" for c in rec["cells"]]
    page = src_dir / rec["page"]
    if page.is_file():
        shutil.copyfile(page, out_dir / f"{tag}-cells.html")
        lines += ["", f"The text coloured by each cell: [{tag}-cells.html]({tag}-cells.html)."]
    lines += ["", "Gate saturation (mean over cells; fraction of steps < 0.1 / > 0.9):", "",
              "| layer | gate | left-saturated | right-saturated |", "|---|---|---|---|"]
    for layer, gates in rec["saturation_mean"].items():
        lines += [f"| {layer} | {g} | {v['left']:.3f} | {v['right']:.3f} |" for g, v in gates.items()]
    png = src_dir / rec["figure"]
    if png.is_file():
        shutil.copyfile(png, out_dir / f"{tag}-gates.png")
        lines += ["", f"![gate saturation per cell, {r.variant}]({tag}-gates.png)"]
    return "\n".join(lines)
