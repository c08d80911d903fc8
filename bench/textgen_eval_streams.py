"""How much the language models' evaluation loses to cold starts: each finished run's final model
scored (in fp32, as runs report) on its validation and test splits with the study's evaluation (the split cut into streams of at
least 2,048 tokens, each starting from a zero state) and with longer streams, down to one stream that
carries the state through the whole split.

    python bench/textgen_eval_streams.py RUN_DIR [RUN_DIR ...]           # e.g. .../full/lstm3-512-long-ema/seed0
    python bench/textgen_eval_streams.py RUN_DIR --stream-min 2048 1000000000 --out bench/results/x.md

A difference between a model's rows says what its cold starts cost; a difference between models that
survives the one-stream column is not about cold starts. Prints a markdown table (and writes it with
--out). Needs the runs' dataset ($ABLATIONS_DATA or ../shared/datasets). Never run by tests on real runs.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = ROOT.parent / "shared" / "datasets"

from ablations import runtime as rt  # noqa: E402
from ablations.generate import load_run  # noqa: E402
from ablations.methods import language_model as lm  # noqa: E402
from ablations.registry import DATASETS  # noqa: E402


def stream_losses(run_dir: Path, splits: list[str], stream_mins: list[int]) -> dict[str, list[float]]:
    """{split: [nats per token at each minimum stream length]} of the run's final model, in fp32 as the
    numbers a run reports (methods/language_model.py's reported_losses; per-epoch validation runs in bf16)."""
    model, _, cfg = load_run(run_dir)
    data = DATASETS.get(cfg.data.name)(cfg.data)
    return {split: [lm.evaluate(model, getattr(data, split), torch.device("cpu"), None, stream_min=smin)
                    for smin in stream_mins] for split in splits}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--splits", nargs="+", default=["val", "test"])
    p.add_argument("--stream-min", nargs="+", type=int, default=[lm.EVAL_STREAM_MIN, 8192, 10 ** 9],
                   help="minimum tokens per stream (10^9: one stream)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if not os.environ.get("ABLATIONS_DATA") and (SHARED / "README.md").exists():
        os.environ["ABLATIONS_DATA"] = str(SHARED)
    torch.set_num_threads(a.threads)
    cols = [f"streams >= {s:,} tokens" if s < 10 ** 9 else "one stream" for s in a.stream_min]
    lines = [f"`python bench/textgen_eval_streams.py {' '.join(str(r) for r in a.runs)}` on {rt.cpu_model()}, "
             f"{a.threads} threads, torch {torch.__version__}; nats per token, fp32 (as runs report them).", "",
             "| run | split | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in a.runs:
        for split, vals in stream_losses(r, a.splits, a.stream_min).items():
            lines.append(f"| {r} | {split} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
