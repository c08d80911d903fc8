"""What the cells of a trained character-level LSTM track (Karpathy, Johnson & Fei-Fei 2015, "Visualizing and
Understanding Recurrent Networks"): `ablations explain RUN_DIR` on a language-model run.

The held-out text (the corpus' last 10 %) is run through the model one character at a time, recomputing each
LSTM layer's gates from its weights (checked against torch's own LSTM in the tests) so that the cell state c and
the input / forget / output gates are seen at every step. For a few simple properties of the text (inside quotes
or brackets, position in the line, a speaker's name line, vowels) the cell whose tanh(c) correlates most with the
property is chosen, and an HTML page shows the text coloured by that cell. The gate statistics are the paper's:
the fraction of steps each gate is left-saturated (< 0.1) or right-saturated (> 0.9), per cell.

    run dir (config.json, vocab.json, final.safetensors) -> traces -> RUN_DIR/explain/{lstm_cells.html, ...}
"""
from __future__ import annotations

import base64
import html
import re
import time
from pathlib import Path

import torch

from . import rundir as rd
from .errors import RunError

SAT_LOW, SAT_HIGH = 0.1, 0.9  # the paper's saturation thresholds
SHOW_CHARS = 2000  # characters shown per cell on the page


@torch.no_grad()
def lstm_traces(model, ids: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per layer {'c': (T, H) cell state, 'h': (T, H) output, 'i'/'f'/'o': (T, H) gates} of a CharRNN LSTM
    over ids (T,), from a zero state, in eval mode (no dropout)."""
    import torch.nn.functional as F

    cell = getattr(model, "cell", None)  # the transformer has none
    if cell != "lstm":
        what = f"the cells of a {cell.upper()} have" if cell else f"a {type(model).__name__} has"
        raise RunError(f"{what} no gates to show; explain reads LSTM runs")
    x = model.embed(ids) if model.embed is not None else F.one_hot(ids, model.vocab_size).float()  # (T, E)
    out = []
    for li, rnn in enumerate(model.rnns):
        H = rnn.hidden_size
        # torch's gate order: input, forget, cell (g), output; the input projection of every step at once
        xp = x @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + rnn.bias_hh_l0  # (T, 4H)
        w_hh = rnn.weight_hh_l0.T  # (H, 4H)
        h, c = torch.zeros(H), torch.zeros(H)
        rec = {k: torch.empty(len(ids), H) for k in ("c", "h", "i", "f", "o")}
        for t in range(len(ids)):
            g = xp[t] + h @ w_hh
            i, f, gg, o = g[:H].sigmoid(), g[H:2 * H].sigmoid(), g[2 * H:3 * H].tanh(), g[3 * H:].sigmoid()
            c = f * c + i * gg
            h = o * c.tanh()
            for k, v in (("c", c), ("h", h), ("i", i), ("f", f), ("o", o)):
                rec[k][t] = v
        out.append(rec)
        x = rec["h"]
        if model.norms is not None:
            x = model.norms[li](x)
    return out


def text_features(text: str) -> dict[str, torch.Tensor]:
    """(T,) float indicators of simple properties, one value per character."""
    n = len(text)
    quote = torch.zeros(n)
    depth, inside_q = 0, False
    for k, ch in enumerate(text):  # the delimiters themselves count as inside
        if ch == '"':
            inside_q = not inside_q
        if ch in "([":
            depth += 1
        quote[k] = float(inside_q or depth > 0 or ch in '")]')
        if ch in ")]" and depth > 0:
            depth -= 1
    pos = torch.zeros(n)
    col = 0
    for k, ch in enumerate(text):
        pos[k] = col
        col = 0 if ch == "\n" else col + 1
    speaker = torch.zeros(n)
    for m in re.finditer(r"(?m)^[A-Z][A-Za-z' ]{0,30}:$", text):  # a speaker's name line: "ROMEO:"
        speaker[m.start():m.end()] = 1.0
    vowel = torch.tensor([float(ch in "aeiouAEIOU") for ch in text])
    return {"inside quotes or brackets": quote, "position in the line": pos, "speaker's name line": speaker,
            "vowel": vowel}


def correlate(trace: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every column of trace (T, H) with feature (T,) -> (H,); 0 where either is flat."""
    a = trace.double() - trace.double().mean(0)
    b = feature.double() - feature.double().mean()
    den = a.norm(dim=0) * b.norm()
    return torch.where(den > 0, (a * b[:, None]).sum(0) / den.clamp(min=1e-300), torch.zeros_like(den)).float()


def pick_cells(traces: list[dict], features: dict[str, torch.Tensor]) -> list[dict]:
    """For each feature, the (layer, cell) whose tanh(c) correlates most (in absolute value) with it."""
    picks = []
    for name, feat in features.items():
        if float(feat.std()) == 0:  # the held-out text never has it (e.g. no brackets)
            continue
        best = None
        for li, tr in enumerate(traces):
            r = correlate(tr["c"].tanh(), feat)
            u = int(r.abs().argmax())
            if best is None or abs(float(r[u])) > abs(best["r"]):
                best = {"feature": name, "layer": li, "cell": u, "r": float(r[u])}
        picks.append(best)
    return picks


def saturation(traces: list[dict]) -> list[dict[str, dict[str, list[float]]]]:
    """Per layer, per gate (i, f, o): the fraction of steps each cell's gate is < 0.1 and > 0.9."""
    return [{g: {"left": (tr[g] < SAT_LOW).float().mean(0).tolist(), "right": (tr[g] > SAT_HIGH).float().mean(0).tolist()}
             for g in ("i", "f", "o")} for tr in traces]


def _colour(v: float) -> str:
    """tanh(c) in [-1, 1] -> a background: blue for negative, red for positive, white at 0."""
    a = min(1.0, abs(v))
    return f"rgba(214,39,40,{a:.2f})" if v > 0 else f"rgba(31,119,180,{a:.2f})"


def cell_html(text: str, values: torch.Tensor) -> str:
    """The text as spans coloured by values (one per character); line breaks kept."""
    out = []
    for ch, v in zip(text, values.tolist()):
        esc = html.escape(ch) if ch != "\n" else "&#8629;\n"  # pre-wrap keeps the line break
        out.append(f'<span style="background:{_colour(v)}">{esc}</span>')
    return "".join(out)


def plot_saturation(sat: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sat), figsize=(4.2 * len(sat), 4), squeeze=False)
    for li, layer in enumerate(sat):
        ax = axes[0][li]
        for g, colour in (("i", "tab:blue"), ("f", "tab:green"), ("o", "tab:red")):
            ax.scatter(layer[g]["left"], layer[g]["right"], s=6, alpha=0.6, color=colour,
                       label={"i": "input", "f": "forget", "o": "output"}[g])
        ax.plot([0, 1], [1, 0], color="k", lw=0.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("fraction left-saturated (< 0.1)")
        ax.set_ylabel("fraction right-saturated (> 0.9)")
        ax.set_title(f"layer {li + 1}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def explain_language_run(run_dir: Path, chars: int = SHOW_CHARS) -> Path:
    """Traces of the held-out text -> RUN_DIR/explain/lstm_cells.html, lstm_gates.png, explain.json."""
    from .explain import EXPLAIN_DIR, EXPLAIN_JSON
    from .generate import load_run
    from .registry import DATASETS

    t0 = time.perf_counter()
    model, vocab, cfg = load_run(Path(run_dir))
    if vocab.level != "char":
        raise RunError(f"{run_dir}: a {vocab.level}-level model; the LSTM cell page reads character-level runs")
    data = DATASETS.get(cfg.data.name)(cfg.data)
    if data.vocab.tokens != vocab.tokens:  # the corpus changed since the run: its ids would decode to other text
        raise RunError(f"{run_dir}: the corpus {data.source} no longer gives the run's vocabulary (vocab.json); "
                       "explain needs the text the model was trained on")
    ids = data.last10[:chars]
    text = vocab.decode(ids)
    traces = lstm_traces(model, ids)
    feats = text_features(text)
    picks = pick_cells(traces, feats)
    absent = [k for k in feats if k not in {p["feature"] for p in picks}]  # never (or always) in this text
    sat = saturation(traces)
    out = Path(run_dir) / EXPLAIN_DIR
    out.mkdir(exist_ok=True)
    png = plot_saturation(sat, out / "lstm_gates.png")
    mean = {f"layer {li + 1}": {g: {k: sum(v) / len(v) for k, v in d.items()} for g, d in layer.items()}
            for li, layer in enumerate(sat)}
    rows = "".join(f"<tr><td>{html.escape(p['feature'])}</td><td>{p['layer'] + 1}</td><td>{p['cell']}</td>"
                   f"<td>{p['r']:+.3f}</td></tr>" for p in picks)
    sections = "".join(
        f"<h2 id='property-{k}'>layer {p['layer'] + 1}, cell {p['cell']}: "
        f"{html.escape(p['feature'])} (r = {p['r']:+.3f})</h2><div class='text'>"
        f"{cell_html(text, traces[p['layer']]['c'][:, p['cell']].tanh())}</div>" for k, p in enumerate(picks))
    sat_rows = "".join(f"<tr><td>{layer}</td><td>{g}</td><td>{v['left']:.3f}</td><td>{v['right']:.3f}</td></tr>"
                       for layer, gates in mean.items() for g, v in gates.items())
    img = base64.b64encode(png.read_bytes()).decode()
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>LSTM cells of {html.escape(str(run_dir))}</title>"
            "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            ".text{font-family:monospace;font-size:13px;line-height:1.5;white-space:pre-wrap}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>"
            f"<h1>What the LSTM cells track</h1><p>{len(text)} characters of the held-out text (the corpus' last 10 %), "
            "each coloured by the cell's tanh(c): red positive, blue negative. Cells chosen as the most correlated "
            "(Pearson r over these characters) with each property.</p>"
            f"<table><tr><th>property</th><th>layer</th><th>cell</th><th>r</th></tr>{rows}</table>"
            + (f"<p>Not in this text (no cell to pick): {html.escape(', '.join(absent))}.</p>" if absent else "")
            + f"{sections}"
            "<h2>Gate saturation</h2><p>Mean over the cells of the fraction of steps a gate is left-saturated "
            f"(&lt; {SAT_LOW}) or right-saturated (&gt; {SAT_HIGH}); per cell in the plot.</p>"
            f"<table><tr><th>layer</th><th>gate</th><th>left</th><th>right</th></tr>{sat_rows}</table>"
            f"<img alt='gate saturation' src='data:image/png;base64,{img}'></body></html>\n")
    rd.atomic_write_text(out / "lstm_cells.html", page)
    path = out / EXPLAIN_JSON
    rd.write_json(path, {"kind": "text", "chars": len(text), "cells": picks, "absent": absent, "saturation_mean": mean,
                         "page": "lstm_cells.html", "figure": png.name,
                         "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads()})
    return path
