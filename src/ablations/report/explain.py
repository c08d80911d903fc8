"""The explanations part of a study report, from run directories alone: for every run that `ablations explain`
has visited (RUN_DIR/explain/explain.json), its attribution figures and, with --sanity, the cascading
randomisation curves (Spearman correlation of each method's map with the trained model's, as layers are
re-initialised from the top down); for a language-model run, the LSTM cells page and the gate statistics.
Files are copied beside the report as explain-<preset>-<variant>-s<seed>-<name> (unique per run)."""
from __future__ import annotations

import shutil
from pathlib import Path

from .. import rundir as rt
from ..registry import SECTIONS


def _records(run_list: list):
    """(run, explain.json path, its record or None, why not usable or None) for every run `ablations explain` has
    visited: one reading for the section and the CSV rows, and one rule for what is stale or unreadable."""
    from ..explain import EXPLAIN_DIR, EXPLAIN_JSON, weights_stamp

    for r in run_list:
        f = r.dir / EXPLAIN_DIR / EXPLAIN_JSON
        if not f.is_file():
            continue
        try:
            rec = rt.read_json(f)
            if not isinstance(rec, dict):
                raise TypeError(f"a JSON {type(rec).__name__}, not an object")
        except (OSError, TypeError, ValueError) as e:
            yield r, f, None, f"{f}: unreadable ({type(e).__name__}: {e}); rerun `ablations explain`."
            continue
        if rec.get("weights") not in (None, weights_stamp(r.dir)):
            yield r, f, None, (f"The explanations in {f.parent} are of weights this run no longer has (it was rerun "
                               "since): run `ablations explain` again.")
            continue
        yield r, f, rec, None


@SECTIONS.register("explanations")
def render(run_list: list, out_dir: Path) -> str:
    """Explanations: attribution maps per run and method, the sanity check's curves, LSTM cells."""
    parts: list[str] = []
    for r, f, rec, problem in _records(run_list):
        tag = "-".join(str(p) for p in ("explain", r.config.get("preset") or "run", r.variant, f"s{r.seed}"))
        try:
            if problem:
                parts.append(f"### {r.variant} seed {r.seed}\n\n{problem}")
            elif rec.get("kind") == "text":
                parts.append(_text_part(r, rec, f.parent, Path(out_dir), tag))
            else:
                parts.append(_image_part(r, rec, f.parent, Path(out_dir), tag))
        except (OSError, KeyError, TypeError, ValueError, IndexError) as e:  # damaged: the rest still renders
            parts.append(f"### {r.variant} seed {r.seed}\n\n{f}: unreadable ({type(e).__name__}: {e}); rerun "
                         "`ablations explain`.")
    if not parts:
        return ""
    return "## Explanations\n\nWritten by `ablations explain RUN_DIR` (attributions: Captum).\n\n" + "\n\n".join(parts)


def _image_part(r, rec: dict, src_dir: Path, out_dir: Path, tag: str) -> str:
    """An image run: each method's figure, then the sanity check's table and curves."""
    layer = f"; Grad-CAM layer `{rec['layer']}`" if rec.get("layer") else ""
    lines = [f"### {r.variant} seed {r.seed}", "",
             f"{len(rec['images'])} test images (indices {', '.join(map(str, rec['images']))}), maps of the "
             f"{'predicted' if rec['target'] == 'pred' else 'true'} class{layer}.{_took(rec)}"]
    if rec.get("relu6_as_relu"):
        lines.append(f"Guided backprop: the model's {rec['relu6_as_relu']} ReLU6 modules computed as ReLU then a clamp "
                     "at 6 (the same function; Captum's guided rule applies at the ReLU).")
    for m, why in rec.get("skipped", {}).items():
        lines.append(f"Not shown: {m} ({why}).")
    for m in rec["methods"]:
        src = src_dir / rec["figures"][m]
        if src.is_file():
            shutil.copyfile(src, out_dir / f"{tag}-{m}.png")
            lines += ["", f"![{m}, {r.variant} seed {r.seed}]({tag}-{m}.png)"]
    san = rec.get("sanity")
    if san:
        cuts, names = san["cuts"], san["last_randomised"]
        mid = len(cuts) // 2
        cols = [(0, f"output layer only ({names[0]})"), (mid, f"top {cuts[mid]} of {len(san['order'])} layers"),
                (len(cuts) - 1, f"all {cuts[-1]} layers")]
        lines += ["", "Sanity check (Adebayo et al. 2018, cascading randomisation): Spearman rank correlation (ties "
                  "at their average rank) between each method's map and the trained model's, "
                  + (f"mean +- std over {san['n_images']} test images, " if san.get("n_images", 0) > 1 else
                     f"mean over {san.get('n_images', len(rec['images']))} test image(s), ")
                  + "after re-initialising the parametrised layers from the output down. A map that stays correlated "
                  "while the weights are destroyed does not explain the model.", "",
                  "| method | " + " | ".join(c for _, c in cols) + " |", "|---|" + "---|" * len(cols)]
        sds = san.get("spearman_std", {}) if san.get("n_images", 0) > 1 else {}  # one image: no spread to show
        for m, ys in san["spearman"].items():
            sd = sds.get(m)
            lines.append(f"| {m} | " + " | ".join(f"{ys[i]:.3f}" + (f" +- {sd[i]:.3f}" if sd else "")
                                                   for i, _ in cols) + " |")
        src = src_dir / san.get("figure", "sanity.png")
        if src.is_file():
            shutil.copyfile(src, out_dir / f"{tag}-sanity.png")
            lines += ["", f"![cascading randomisation, {r.variant} seed {r.seed}]({tag}-sanity.png)"]
    return "\n".join(lines)


def _text_part(r, rec: dict, src_dir: Path, out_dir: Path, tag: str) -> str:
    """An LSTM run: the cells chosen for each text property (the page beside the report) and gate saturation."""
    lines = [f"### {r.variant} seed {r.seed}: LSTM cells", "",
             f"{rec['chars']} held-out characters; for each property the cell whose tanh(c) correlates most with it "
             f"(Pearson r).{_took(rec)}", "", "| property | layer | cell | r |", "|---|---|---|---|"]
    lines += [f"| {c['feature']} | {c['layer'] + 1} | {c['cell']} | {c['r']:+.3f} |" for c in rec["cells"]]
    if rec.get("absent"):
        lines += ["", f"Not in this text, so no cell picked: {', '.join(rec['absent'])}."]
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


def _took(rec: dict) -> str:
    return f" `ablations explain` took {rec['seconds']:.0f} s on {rec.get('threads', '?')} threads." \
        if "seconds" in rec else ""


def rows(run_list: list) -> list[dict]:
    """The explanations as flat rows (a CSV beside a digest): one per (run, method, randomisation step) of the sanity
    check, one per picked LSTM cell; stale or unreadable records give none (the section says why)."""
    out: list[dict] = []
    for r, _, rec, problem in _records(run_list):
        if problem:
            continue
        base = {"study": r.config.get("study"), "preset": r.config.get("preset"), "variant": r.variant,
                "seed": r.seed}
        if rec.get("kind") == "text":
            out += [{**base, "what": "lstm_cell_pearson_r", "name": c["feature"],
                     "where": f"layer {c['layer'] + 1} cell {c['cell']}", "value": round(c["r"], 4), "std": "",
                     "n": rec["chars"]} for c in rec["cells"]]
        elif rec.get("sanity"):
            s = rec["sanity"]
            for m, ys in s["spearman"].items():
                sds = s.get("spearman_std", {}).get(m) or [""] * len(ys)
                out += [{**base, "what": "sanity_spearman", "name": m,
                         "where": f"top {k} of {len(s['order'])} layers random (down to {last})", "value": round(y, 4),
                         "std": round(sd, 4) if sd != "" else "", "n": s.get("n_images", len(rec["images"]))}
                        for k, last, y, sd in zip(s["cuts"], s["last_randomised"], ys, sds)]
    return out


render.rows = rows  # the digest's CSV (report.render.write_section_digest) reads a section's rows from here
