"""Study reports generated from run directories alone: report.md, report.html (self-contained) and
PNG learning curves. Nothing here is typed by hand: every number comes from result.json/metrics.jsonl."""
from __future__ import annotations

import base64
import html
import json
import re
import statistics
from pathlib import Path

from .. import rundir as rt
from ..config import ConfigError, flatten
from ..registry import SECTIONS
from ..rundir import Run, find_runs

CURVE_KEYS = [("train_loss", "val_loss", "loss"), ("train_acc", "val_acc", "accuracy (%)")]


def load_runs(root: Path) -> list[Run]:
    return [Run.read(d) for d in find_runs(root)]


def study_record(runs: list[Run]) -> dict:
    """What the report needs of the study (study.json written by `run`); for run dirs made before it
    existed, the study file as it is now, when it can still be found."""
    rec = rt.read_study_record(runs[0].dir)
    if rec:
        return rec
    try:
        from ..study import get_study

        st = get_study(runs[0].config["study"])
        return {"description": st.description, "notes": st.notes, "variants": list(st.variants),
                "sections": list(st.sections), "compare": list(st.compare)}
    except Exception:  # an ad-hoc study or a renamed file
        return {}


def _variant_order(runs: list[Run]) -> list[str]:
    seen: list[str] = []
    order = list(study_record(runs).get("variants", []))  # the study file's order, else of appearance
    for r in runs:
        if r.variant not in seen:
            seen.append(r.variant)
    return sorted(seen, key=lambda v: order.index(v) if v in order else len(order) + seen.index(v))


def group_by_variant(runs: list[Run], run_list: list[Run]) -> dict[str, list[Run]]:
    """`runs` grouped by variant, variants in the study's order (of `run_list`), each group by seed."""
    order = _variant_order(run_list)
    out: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (order.index(r.variant) if r.variant in order else len(order), r.seed)):
        out.setdefault(r.variant, []).append(r)
    return out


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close a matplotlib figure (the report sections' PNGs)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_ms(m: float, s: float, n: int, digits: int = 2) -> str:
    if n == 0 or m != m:
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def fmt_values(values: list[float], digits: int = 2) -> str:
    """'mean ± std' over seeds ('n/a' for none, the value alone for one)."""
    return fmt_ms(*mean_std(values), len(values), digits)


def is_accuracy(metric: str) -> bool:
    """An accuracy in % (test_acc, test_acc_mirror, ...): printed to 0.01 points, with the course's tolerance."""
    return "_acc" in metric or metric.startswith("acc")


def metric_digits(metric: str) -> int:
    """Decimals a study's metric is printed with: accuracies (in %) to 0.01 points; losses and the like (nats
    or bits per token, ~1-5) to 0.001, where the differences that studies argue about are a few thousandths
    (textgen-shakespeare's goal of 1.40 was missed by 0.0006, which two decimals print as "-0.00")."""
    return 2 if is_accuracy(metric) else 3


def results_table(runs: list[Run]) -> str:
    metric = runs[0].config.get("metric", "test_acc")
    goal = runs[0].config.get("goal", "max")
    d = metric_digits(metric)
    order = _variant_order(runs)
    head = ("| variant | target | " + metric + " (mean ± std) | seeds | vs target | vs " + order[0] +
            " | best epoch | epochs | wall time / run | device |")
    lines = [head, "|" + "---|" * 10]
    for v in order:
        rs = [r for r in runs if r.variant == v]
        done = [r for r in rs if r.result is not None and isinstance(r.result.get(metric), (int, float))]
        vals = [float(r.result[metric]) for r in done]
        m, s = mean_std(vals)
        target = rs[0].config.get("target")
        if target is None or not vals:
            gap = ""
        else:
            diff = m - target if goal == "max" else target - m  # positive = better than target
            # "within 2" is the course's tolerance in accuracy points; a loss gets no tolerance
            near = " (within 2)" if goal == "max" and is_accuracy(metric) and diff >= -2 else " ✗"
            gap = f"{'+' if diff >= 0 else ''}{diff:.{d}f}" + (" ✓" if diff >= 0 else near)
        best = ", ".join(str(r.result.get("best_epoch") or "—") for r in done)
        cmp = _compare(runs, order[0], v, metric, goal)
        vs_ref = "reference" if v == order[0] else _fmt_compare(cmp, d)
        epochs = ", ".join(str(r.result.get("epochs", "")) for r in done)
        wall = mean_std([r.wall_time for r in done])[0] if done else float("nan")
        dev = done[0].result.get("device", "") + "/" + done[0].result.get("precision", "") if done else ""
        missing = f" ({len(rs) - len(done)} unfinished)" if len(done) < len(rs) else ""
        lines.append(f"| {v} | {'' if target is None else f'{target:g}'} | {fmt_ms(m, s, len(vals), d)}{missing} "
                     f"| {len(vals)} | {gap} | {vs_ref} | {best} | {epochs} | {_dur(wall)} | {dev} |")
    return "\n".join(lines)


def comparisons_table(runs: list[Run], compare: list[dict]) -> str:
    """The comparisons the study's question rests on (study file `compare`): the difference of means
    (positive = better), the verdict over seeds, and whether the difference the goal asks for (`need`) is met.
    need > 0 (an improvement of at least need): met when the mean difference reaches it AND exceeds it beyond
    seed noise (the verdict of report/stats.py against the reference shifted by need). need <= 0 (a tolerance,
    "no worse than need"; 0: at least equal): met when the mean difference is >= need. Where the verdict is
    untested (one seed against one or two), so is the goal."""
    from .stats import verdict as _verdict

    metric, goal = runs[0].config.get("metric", "test_acc"), runs[0].config.get("goal", "max")
    sign = 1.0 if goal == "max" else -1.0
    d = metric_digits(metric)
    lines = ["### The study's comparisons", "",
             "Goal column: `>= +x` an improvement of at least x points, met only when the difference exceeds x "
             "beyond the seed spread (Welch's t-test against the reference shifted by x); `no worse than -x` a "
             "tolerance, met when the mean difference is at least -x; one seed against one or two tests nothing, one "
             "against three or more is tested against their spread (a prediction interval).",
             "", f"| variant | vs | difference in {metric} | seeds | verdict | goal | goal met |",
             "|---|---|---|---|---|---|---|"]
    for c in compare:
        a, b = _values(runs, c["vs"], metric), _values(runs, c["variant"], metric)
        cmp = _compare(runs, c["vs"], c["variant"], metric, goal)
        need = c.get("need")
        if cmp is None:
            diff, verdict, met = "n/a (no finished runs)", "", ""
        else:
            p = "" if cmp["p"] is None else f", p={cmp['p']:.2g}"
            diff, verdict = f"{cmp['diff']:+.{d}f}", cmp["verdict"] + p
            if need is None:
                met = ""
            elif cmp["verdict"].startswith("untested"):
                met = "untested (n=1)"
            elif cmp["diff"] < need:
                met = f"no (short by {need - cmp['diff']:.{d}f})"
            elif need > 0:
                beyond = _verdict([x + sign * need for x in a], b)[0] == "significant"
                met = "yes" if beyond else "reached, not beyond the seed spread"
            else:
                met = "yes"
        need_s = "" if need is None else (f">= {need:+g}" if need > 0 else "at least equal" if need == 0
                                          else f"no worse than {need:+g}")
        lines.append(f"| {c['variant']} | {c['vs']} | {diff} | {len(b)} vs {len(a)} | {verdict} | {need_s} | {met} |")
    return "\n".join(lines)


def _fmt_compare(cmp: dict | None, digits: int = 2) -> str:
    if not cmp:
        return ""
    p = "" if cmp["p"] is None else f", p={cmp['p']:.2g}"
    return f"{cmp['diff']:+.{digits}f} ({cmp['verdict']}{p})"


def _values(runs: list[Run], variant: str, metric: str) -> list[float]:
    return [float(r.result[metric]) for r in runs
            if r.variant == variant and r.result and isinstance(r.result.get(metric), (int, float))]


def _compare(runs: list[Run], ref: str, v: str, metric: str, goal: str) -> dict | None:
    """The variant against the study's first variant: difference of means (positive = better) and the
    verdict of report/stats.py (Welch's t-test; never 'significant' within the seed spread)."""
    from .stats import verdict

    a, b = _values(runs, ref, metric), _values(runs, v, metric)
    if not a or not b or v == ref:
        return None
    diff = statistics.fmean(b) - statistics.fmean(a)
    word, p = verdict(a, b)
    return {"diff": diff if goal == "max" else -diff, "verdict": word, "p": p}


def _dur(sec: float) -> str:
    if sec != sec:
        return "n/a"
    return f"{sec / 60:.1f} min" if sec >= 120 else f"{sec:.0f} s"


def plot_curves(runs: list[Run], out: Path) -> Path | None:
    """Train/val curves per variant (first seed of each), one panel per quantity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(tk, vk, label) for tk, vk, label in CURVE_KEYS
              if any(r.metrics and (tk in r.metrics[0] or vk in r.metrics[0]) for r in runs)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    order = _variant_order(runs)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(order) > len(colors):  # past 10 variants the default cycle repeats: 20 distinct colours, then repeats
        colors = [plt.get_cmap("tab20")(k) for k in range(20)]
    for i, v in enumerate(order):
        r = min((r for r in runs if r.variant == v), key=lambda r: r.config.get("seed", 0))
        ep = [m["epoch"] for m in r.metrics]
        for ax, (tk, vk, label) in zip(axes[0], panels):
            c = colors[i % len(colors)]
            has_val = bool(r.metrics) and vk in r.metrics[0]
            if r.metrics and tk in r.metrics[0]:  # labelled when no validation curve names the variant
                ax.plot(ep, [m[tk] for m in r.metrics], "--", color=c, alpha=0.7, label=None if has_val else v)
            if has_val:
                ax.plot(ep, [m[vk] for m in r.metrics], "-", color=c, label=v)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
    for ax, (tk, vk, label) in zip(axes[0], panels):
        ax.set_title(f"{label}: validation (solid), train (dashed)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _nondefault(cfg: dict) -> str:
    from ..config import default_values

    base = default_values(cfg)  # of the same registry entries ({} for an older layout: every key shown)
    skip = {"study", "variant", "preset", "seed", "task", "metric", "goal", "target"}
    diff = {k: v for k, v in flatten(cfg).items() if k not in skip and base.get(k) != v
            and not (isinstance(v, list) and tuple(v) == base.get(k))}
    return " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(diff.items())) or "(all defaults)"


def render_markdown(runs: list[Run], out: Path) -> str:
    c0 = runs[0].config
    title = f"{c0.get('study')} — preset `{c0.get('preset')}`"
    parts = [f"# {title}", ""]
    st = study_record(runs)
    if st.get("description"):
        parts += [st["description"].strip(), ""]
    parts += ["## Results", "", results_table(runs), ""]
    if st.get("compare"):
        parts += [comparisons_table(runs, st["compare"]), ""]
    finished = [r for r in runs if r.result]
    if finished:
        total = sum(r.wall_time for r in finished)
        parts += [f"{len(finished)} finished run(s) of {len(runs)}; total wall time {_dur(total)} "
                  f"(sum of the runs' wall times, every invocation of a resumed run counted).", ""]
    done = [r for r in runs if r.result]
    if done:
        parts += [f"Metric `{c0.get('metric')}` ({'higher' if c0.get('goal') == 'max' else 'lower'} is better),"
                  " evaluated once after training on held-out data (see splits)."]
        # one line per data source: a study may span datasets (e.g. Imagewoof and CIFAR-10 cat/dog)
        # the reference (first) variant's splits describe a source: a later variant may train on a part of
        # it (a core-set, a labeled share), which its own section reports
        seen = {}
        for group in group_by_variant(done, runs).values():  # variants in the study's order, each by seed
            for r in group:
                seen.setdefault(r.result.get("data_source", ""), r.result.get("splits") or {})
        for src, splits in seen.items():
            line = f"- Data: {src}."
            if splits:
                line += " Splits: " + "; ".join(f"{k}: {v}" for k, v in splits.items()) + "."
            parts += [line]
        best_by = _best_by(c0)
        parts += [f"'vs target' is positive where the target is met. 'vs {_variant_order(runs)[0]}': the "
                  "difference of means (positive = better) and Welch's t-test over seeds; a difference within the "
                  "seed spread (the larger std) is 'not significant' whatever p says; one seed is tested only against "
                  "three or more of the other (a prediction interval: is it outside what one more seed would give?). "
                  f"'best epoch' is the epoch of {best_by} ({_kept(done)}; — when there is no validation "
                  "split). 'wall time' includes data loading and evaluation.", ""]
    if st.get("notes"):
        parts += [st["notes"].strip(), ""]
    curves = plot_curves(runs, out)
    if curves:
        parts += ["## Learning curves", "", f"![learning curves]({curves.name})", ""]
    study_sections = list(st.get("sections") or [])
    for name in dict.fromkeys(report_sections(runs) + study_sections):  # methods' sections, then the study's
        if name not in SECTIONS:
            continue  # the study file's names are checked when it loads; a method's by the registry tests
        extra = SECTIONS.get(name)(runs, out)
        if extra:
            parts += [extra.strip(), ""]
    parts += ["## Runs", "", "Each run directory holds config.json (the resolved config), env.json, metrics.jsonl, "
              "result.json, checkpoint.pt and final.safetensors.", ""]
    for r in sorted(runs, key=lambda r: (_variant_order(runs).index(r.variant), r.config.get("seed", 0))):
        env = r.env
        cmd = " ".join(env.get("argv", [])) or "n/a"
        cmd = re.sub(r"^\S*ablations(/__main__\.py|/cli\.py)?", "ablations", cmd)
        status = "finished" if r.result else "unfinished"
        parts += [f"### {r.variant} seed {r.config.get('seed')} ({status})", "",
                  f"- dir: `{_rel(r.dir, out)}`",
                  f"- command: `{cmd}`",
                  f"- config (non-default keys): `{_nondefault(r.config)}`",
                  f"- environment: {env.get('device', '?')} ({env.get('device_name', '')}), precision "
                  f"{env.get('precision', '?')}, {env.get('torch_threads', '?')} threads, torch "
                  f"{env.get('versions', {}).get('torch', '?')}, git {env.get('git_commit', '?')}",
                  ""]
    return "\n".join(parts)


def _kept(runs: list[Run]) -> str:
    """Which epoch's model the reported number is of (train.keep), in words."""
    best = {r.variant for r in runs if (r.config.get("train") or {}).get("keep") == "best"}
    if not best:
        return "for information: the reported number is the final model's"
    if len(best) == len({r.variant for r in runs}):
        return "the reported number is that epoch's model: train.keep=best"
    return "the reported number is that epoch's model for " + ", ".join(sorted(best)) + " (train.keep=best), " \
           "the final model's elsewhere"


def _best_by(cfg: dict) -> str:
    """How the run's method picked its best epoch (Method.best), in words."""
    from ..registry import METHODS

    name = (cfg.get("method") or {}).get("name") if isinstance(cfg.get("method"), dict) else None
    key, goal = METHODS.get(name).best if name in METHODS else ("val_acc", "max")
    what = {"val_acc": "validation accuracy", "val_loss": "validation loss"}.get(key, key)
    return f"{'highest' if goal == 'max' else 'lowest'} {what}"


def report_sections(runs: list[Run]) -> list[str]:
    """Extra sections the runs' methods ask for (registry SECTIONS), in order of first appearance."""
    from ..registry import METHODS

    names: list[str] = []
    for r in runs:
        m = (r.config.get("method") or {}).get("name") if isinstance(r.config.get("method"), dict) else None
        if m in METHODS:
            names += [s for s in METHODS.get(m).report_sections if s in SECTIONS and s not in names]
    return names


def summary_rows(runs: list[Run]) -> list[dict]:
    """One row per variant: what the results table says, for programs."""
    metric = runs[0].config.get("metric", "test_acc")
    goal = runs[0].config.get("goal", "max")
    rows = []
    for v in _variant_order(runs):
        rs = [r for r in runs if r.variant == v]
        vals = [float(r.result[metric]) for r in rs if r.result and isinstance(r.result.get(metric), (int, float))]
        m, s = mean_std(vals)
        target = rs[0].config.get("target")
        met = "" if target is None or not vals else str(m >= target if goal == "max" else m <= target).lower()
        walls = [r.wall_time for r in rs if r.result]
        rows.append({"variant": v, "metric": metric, "mean": "" if not vals else f"{m:.6g}",
                     "std": "" if len(vals) < 2 else f"{s:.6g}", "seeds": len(vals), "runs": len(rs),
                     "target": "" if target is None else f"{target:g}", "met": met,
                     "wall_time_s": "" if not walls else f"{statistics.fmean(walls):.1f}"})
        cmp = _compare(runs, _variant_order(runs)[0], v, metric, goal)
        rows[-1].update({"vs_reference": "" if not cmp else f"{cmp['diff']:.6g}",
                         "verdict": "reference" if v == _variant_order(runs)[0] else (cmp or {}).get("verdict", ""),
                         "p_value": "" if not cmp or cmp["p"] is None else f"{cmp['p']:.4g}"})
    return rows


def write_summary_csv(runs: list[Run], path: Path) -> Path:
    return write_rows_csv(summary_rows(runs), path)


def write_rows_csv(rows: list[dict], path: Path) -> Path:
    """Rows (dicts with the first row's keys) as a CSV, written atomically."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["variant"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    rt.atomic_write_text(path, buf.getvalue())
    return path


def _rel(p: Path, base: Path) -> str:
    try:
        return str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p)


def markdown_to_html(md: str, out: Path, title: str) -> str:
    import markdown

    body = markdown.markdown(md, extensions=["tables", "fenced_code"])

    def inline(m: re.Match) -> str:  # embed images so the page is one self-contained file
        src = m.group(1)
        p = out / src
        if p.exists() and p.suffix == ".png":
            return f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"'
        return m.group(0)

    body = re.sub(r'src="([^"]+)"', inline, body)
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "code{background:#f4f4f4;padding:1px 3px;font-size:90%}img{max-width:100%}pre{white-space:pre-wrap}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>\n")


def copy_report(md: str, out: Path, dest: Path) -> Path:
    """Write the Markdown report to `dest` (e.g. docs/results/cifar10.md), copying the PNGs it shows (and the HTML
    pages it links) beside it as <dest stem>-<name> and pointing the links there. Text above the first heading of an
    existing `dest` (how it was made, what was measured around it) is kept; the rest is regenerated."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    rt.atomic_write_text(dest, _preamble(dest) + _relink(md, out, dest, dest.stem) + "\n")
    return dest


def _preamble(dest: Path) -> str:
    """The hand-written text above the first heading of an existing `dest` (how it was made, what was measured)."""
    if not dest.exists():
        return ""
    old = dest.read_text(encoding="utf-8")
    m = re.search(r"^# ", old, flags=re.M)
    return old[:m.start()] if m else old  # no heading yet: all of it is the hand-written part


def _relink(md: str, out: Path, dest: Path, prefix: str) -> str:
    """Copy the PNGs `md` shows and the HTML pages it links from `out` beside `dest` as <prefix>-<name>; relink."""
    import shutil

    def relink(m: re.Match) -> str:
        src = out / m.group(2)
        if not src.exists():
            return m.group(0)
        name = f"{prefix}-{Path(m.group(2)).name}"
        shutil.copyfile(src, dest.parent / name)
        return f"![{m.group(1)}]({name})"

    md = re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", relink, md)
    md = re.sub(r"(?<!!)\[([^\]]*)\]\(([^)/]+\.html)\)", lambda m: relink(m).removeprefix("!"), md)  # linked pages (LSTM cells)
    # PNGs only linked (every run's confusion matrix): they stay in the run dir, so the copy names them unlinked
    return re.sub(r"(?<!!)\[([^\]]*)\]\(([^)/]+\.png)\)", lambda m: m.group(1), md)


def write_section_digest(dirs: list[Path], sections: list[str], dest: Path) -> Path:
    """One Markdown page of the named report sections over several study (or run) dirs, e.g. every explained run's
    figures in docs/results/explain.md: per dir its study, preset and path, then the sections (headings one level
    down). `dest` and the files it shows (beside it) are written, and the sections copy their files into each dir
    as they do for its report; the dirs' report.md stay as they are, and the text above the first heading of an
    existing `dest` is kept."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"--section {unknown[0]!r}: not a report section (choices: {', '.join(SECTIONS.names())})")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sections = list(dict.fromkeys(sections))
    dirs = list({Path(d).resolve(): Path(d) for d in dirs}.values())  # a dir given twice: once
    blocks = [f"# Report sections: {', '.join(sections)}"]
    seen: set[str] = set()
    table: list[dict] = []  # the sections' own rows, where they give some, for the CSV beside dest
    for k, d in enumerate(dirs):
        runs, out = _runs_of(d)
        text = "\n\n".join(t.strip() for t in (SECTIONS.get(s)(runs, out) for s in sections) if t)
        if not text:
            raise ConfigError(f"{d}: its runs have nothing for the section(s) {', '.join(sections)}")
        for sec in sections:
            table += getattr(SECTIONS.get(sec), "rows", lambda runs: [])(runs)
        c0 = runs[0].config
        study = str(c0.get("study") or d.name)
        text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)  # one level down, under the dir's heading
        prefix = f"{dest.stem}-{study}" if study not in seen else f"{dest.stem}-{study}-{k}"  # files never clash
        seen.add(study)
        blocks.append(f"## {study}, preset `{c0.get('preset')}`\n\nRuns under `{d}`.\n\n"
                      + _relink(text, out, dest, prefix))
    rt.atomic_write_text(dest, _preamble(dest) + "\n\n".join(blocks) + "\n")
    if table:  # machine-readable beside the page, as report --copy-to writes summary.csv
        write_rows_csv(table, dest.with_suffix(".csv"))
    return dest


def _runs_of(root: Path) -> tuple[list[Run], Path]:
    """The runs below a study (or run) dir and the folder its report goes to; one clear line when there are none."""
    if not root.exists():
        raise ConfigError(f"{root}: no such directory")
    runs = load_runs(root)
    if not runs:
        raise ConfigError(f"{root}: no run directories (with {rt.CONFIG}) below it")
    return runs, (root if root.is_dir() else root.parent)


def write_report(root: Path, copy_to: Path | None = None) -> Path:
    runs, out = _runs_of(Path(root))
    md = render_markdown(runs, out)
    rt.atomic_write_text(out / "report.md", md + "\n")
    rt.atomic_write_text(out / "report.html", markdown_to_html(md, out, runs[0].config.get("study", "report")))
    write_summary_csv(runs, out / "summary.csv")
    if copy_to is not None:
        dest = copy_report(md, out, Path(copy_to))
        write_summary_csv(runs, dest.with_suffix(".csv"))  # next to the Markdown: docs/results/<name>.csv
        return dest
    return out / "report.md"
