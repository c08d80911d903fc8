"""The language-model method's part of a study report (Markdown), from run directories alone: a table of losses
and text-quality metrics per variant, the sampling table of the best model, and samples side by side."""
from __future__ import annotations

from pathlib import Path

from .. import rundir as rt
from ..registry import SECTIONS

SAMPLES_JSON = "samples.json"


def _load(run: rt.Run) -> dict | None:
    """A finished run as the renderer read it, plus its samples."""
    if run.result is None:
        return None
    f = run.dir / SAMPLES_JSON
    return {"dir": run.dir, "config": run.config, "result": run.result,
            "samples": rt.read_json(f) if f.exists() else {"rows": []}}


def _mean(vals: list, fmt: str = "{:.3f}") -> str:
    """mean (± sample std over seeds) of the numeric values, formatted with `fmt`."""
    from .render import mean_std

    vals = [v for v in vals if isinstance(v, (int, float)) and v == v]
    if not vals:
        return "n/a"
    m, sd = mean_std(vals)
    return fmt.format(m) if len(vals) == 1 else f"{fmt.format(m)} ± {fmt.format(sd)}"


def _cell(text: str, n: int) -> str:
    """A sample as one Markdown table cell: line breaks shown as <br>, pipes and tags escaped."""
    t = text[:n].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "&#124;")
    t = t.replace("`", "&#96;").replace("*", "&#42;").replace("_", "&#95;")
    return t.strip("\n").replace("\n", "<br>") + ("…" if len(text) > n else "")


def describe_model(cfg: dict) -> str:
    """A run's model in a few words: 'lstm 2x512 drop 0.2 LN carry', 'lstm 3x512 drop 0.3 locked wdrop 0.2',
    'lstm 1x256, word, GloVe, synonym 0.1'."""
    m, meth, data = cfg["model"], cfg.get("method") or {}, cfg.get("data") or {}
    if "hidden" in m:  # the recurrent models
        desc = f"{m['name']} {m['layers']}x{m['hidden']}"
    else:
        desc = f"{m['name']} {m.get('layers', '?')}x{m.get('width', '?')} h{m.get('heads', '?')} ctx {m.get('block', '?')}"
    desc += ((f" drop {m['dropout']:g}" if m.get("dropout") else "")
             + (" locked" if m.get("dropout") and m.get("locked_dropout") else "")
             + (f" wdrop {m['weight_drop']:g}" if m.get("weight_drop") else "") + (" LN" if m.get("layer_norm") else "")
             + (" carry" if meth.get("carry_state") else ""))
    extra = [data["level"]] if data.get("level") == "word" else []
    if meth.get("embed_init") == "glove":
        extra.append("GloVe")
    if meth.get("embed_freeze"):
        extra.append("frozen emb.")
    for item in data.get("augment") or []:
        extra.append(" ".join(f"{k} {v}" for k, v in item.items()) if isinstance(item, dict) else str(item))
    return desc + (", " + ", ".join(extra) if extra else "")


@SECTIONS.register("samples")
def render(run_list: list, out_dir: Path) -> str:
    """Language models: losses and text-quality metrics per variant, the sampling table, samples side by side."""
    runs = [r for r in (_load(run) for run in run_list) if r is not None]
    if not runs:
        return ""
    variants: list[str] = []
    for r in runs:
        if r["config"]["variant"] not in variants:
            variants.append(r["config"]["variant"])
    from .render import _variant_order  # the study's variant order (study.json), else of appearance

    order = _variant_order(run_list)
    variants.sort(key=lambda v: order.index(v) if v in order else len(order))
    cols = [("params", "params", "{:,.0f}"), ("val nats/char", "val_loss", "{:.3f}"),
            ("best val nats/char (any epoch)", "best_val_loss", "{:.3f}"),
            ("test nats/char", "test_loss", "{:.3f}"), ("test bits/char", "test_bpc", "{:.3f}"),
            ("test word ppl", "test_word_ppl", "{:.1f}"), ("test <unk> %", "test_unk_share", "{:.2%}"),
            ("test nats/char, <unk> spelled", "test_loss_open", "{:.3f}"),
            ("last 10 % nats/char", "last10_loss", "{:.3f}"),
            ("correct words %", "sample_correct_words", "{:.1f}"), ("distinct-1", "sample_distinct_1", "{:.3f}"),
            ("distinct-2", "sample_distinct_2", "{:.3f}"), ("repetition", "sample_repetition", "{:.3f}"),
            ("lines parse %", "sample_code_lines_parse", "{:.1f}"),
            ("blocks compile %", "sample_code_blocks_compile", "{:.1f}"),
            ("defs compile %", "sample_code_defs_compile", "{:.1f}"),
            ("tokens/s", "tokens_per_s", "{:,.0f}"), ("train time (s)", "train_time", "{:,.0f}")]
    # a column that no run has (code metrics on prose, word ppl of runs made before it existed) is left out
    cols = [c for c in cols if any(c[1] in r["result"] for r in runs)]
    lines = ["## Language models", "",
             "| variant | model | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for v in variants:
        rs = [r for r in runs if r["config"]["variant"] == v]
        lines.append(f"| {v} | {describe_model(rs[0]['config'])} | "
                     + " | ".join(_mean([r["result"].get(k) for r in rs], fmt) for _, k, fmt in cols) + " |")
    res0 = runs[0]["result"]
    dict_src = runs[0]["samples"].get("dictionary", "n/a")
    head = ", ".join(f"{k}={v}" for k, v in res0.get("sample_settings", {}).items())
    rows0 = runs[0]["samples"]["rows"]
    sample_len = len(rows0[0]["text"]) if rows0 else "?"
    lines += ["", "Losses are of the final model in nats per character (bits = nats / ln 2), evaluated in fp32 "
              "over each whole split in order, the hidden state carried along (a few parallel streams, each "
              "starting cold; a transformer reads each token with at least half its context window before it). "
              "Word-level models' nats are summed over a split and divided by its characters, so both levels "
              "are in the same unit; word perplexity = e^(nats per word), with the same words counted at both "
              "levels (words, punctuation marks and line breaks). A word model predicts a rare word as one "
              "<unk> event and never spells it, so where <unk> % is not ~0 its nats/char are optimistic; the '<unk> "
              "spelled' column adds the nats of spelling each <unk> word's characters under the training text's "
              "character unigram model (no end-of-word cost: a rough open-vocabulary figure, not a bound; "
              "compare a char model with both columns). "
              "The last 10 % (val + test) is the held-out text of published tiny-shakespeare numbers (nanoGPT's "
              "small transformer: 1.47 nats/char on a GPU).",
              "",
              f"Text metrics are of one {sample_len}-character sample per run ({head}): correct words = share"
              f" of words in the dictionary ({dict_src}); distinct-n = unique word n-grams / n-grams; "
              "repetition = share of word 4-grams that repeat an earlier one.", ""]
    # the best run by the study's metric: its sampling table
    metric, goal = runs[0]["config"].get("metric", "last10_loss"), runs[0]["config"].get("goal", "min")
    scored = [r for r in runs if isinstance(r["result"].get(metric), (int, float))]
    if scored:
        best = (min if goal == "min" else max)(scored, key=lambda r: r["result"][metric])
        bc = best["config"]
        code = any("code_lines_parse" in row for row in best["samples"]["rows"])
        lines += [f"## Sampling strategies: the best model ({bc['variant']} seed {bc['seed']}, "
                  f"{metric} {best['result'][metric]:.3f})", "",
                  "Same model, same prompt, one sample per setting: the quality / diversity trade-off. "
                  "top-p rows use temperature 1; beam 1 is greedy decoding.", "",
                  "| strategy | setting | correct words % | distinct-1 | distinct-2 | repetition | "
                  + ("lines parse % | blocks compile % | defs compile (of n) | " if code else "") + "sample (start) |",
                  "|---" * (10 if code else 7) + "|"]
        for row in best["samples"]["rows"]:
            cc = (f"| {row['code_lines_parse']:.1f} | {row['code_blocks_compile']:.1f} "
                  f"| {row.get('code_defs_compile', float('nan')):.1f} ({row.get('code_defs', 0)}) " if code else "")
            lines.append(f"| {row['kind']} | {row['value']} | {row['correct_words']:.1f} | {row['distinct_1']:.3f} "
                         f"| {row['distinct_2']:.3f} | {row['repetition']:.3f} {cc}| {_cell(row['text'], 160)} |")
        lines.append("")
    # samples side by side: each variant's headline sample
    lines += ["## Samples", "", f"Each variant's sample ({head}, "
              "first seed), prompt a line break. Full samples of every setting: samples.md in each run dir.", "",
              "| variant | sample |", "|---|---|"]
    for v in variants:
        r = min((r for r in runs if r["config"]["variant"] == v), key=lambda r: r["config"].get("seed", 0))
        hs = r["result"].get("sample_settings")
        row = next((x for x in r["samples"]["rows"] if x["settings"] == hs), None)
        if row:
            lines.append(f"| {v} | {_cell(row['text'], 400)} |")
    return "\n".join(lines) + "\n"
