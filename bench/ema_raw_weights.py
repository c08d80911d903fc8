"""The weight average's paired comparison on every held-out split: a language-model run trained with
`train.ema` exports the average (final.safetensors) and records only the raw weights' validation loss
(`raw_val_loss`); this scores both the average and the raw last weights (checkpoint.pt's "model") on
validation, test and the last 10 %, in fp32, exactly as the run scores its final model.

    ABLATIONS_DATA=../shared/datasets .venv/bin/python bench/ema_raw_weights.py RUN_DIR [RUN_DIR ...]

Prints a markdown table (nats per character): one row per run and weights, and the average's gain."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ablations import rundir as rd
from ablations.generate import load_run
from ablations.methods.language_model import REPORTED_SPLITS, reported_losses
from ablations.registry import DATASETS, load_plugins

def score(run_dir: Path) -> dict[str, dict[str, float]]:
    """{"average": {split: nats/char}, "raw": {...}} for one finished language-model run with train.ema."""
    if not (run_dir / rd.FINAL).exists():  # load_run would fall back to the checkpoint's raw weights
        raise SystemExit(f"{run_dir}: no {rd.FINAL} (unfinished?): nothing averaged to compare")
    model, _, cfg = load_run(run_dir)  # final.safetensors: the average
    if not cfg.train.ema:
        raise SystemExit(f"{run_dir}: trained without train.ema: its final weights are its last weights")
    if cfg.train.keep != "last":  # final.safetensors is then the best epoch's average, not the last one
        raise SystemExit(f"{run_dir}: train.keep={cfg.train.keep}: its exported average is not the last weights' "
                         "partner")
    data = DATASETS.get(cfg.data.name)(cfg.data)  # the run's own splits and vocabulary, rebuilt from its config
    out = {}
    for name, state in (("average", None), ("raw", rd.load_checkpoint(run_dir / rd.CHECKPOINT)["model"])):
        if state is not None:
            model.load_state_dict(state)
        out[name] = reported_losses(model, data, torch.device("cpu"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished language-model run directories (train.ema > 0)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    load_plugins()
    print(f"`python bench/ema_raw_weights.py {' '.join(sys.argv[1:])}`: nats per character, fp32\n")
    print("| run | weights | " + " | ".join(REPORTED_SPLITS) + " |\n|---|---|" + "---|" * len(REPORTED_SPLITS))
    for run in a.runs:
        s = score(run)
        for w in ("average", "raw"):
            print(f"| {run} | {w} | " + " | ".join(f"{s[w][k]:.5f}" for k in REPORTED_SPLITS) + " |")
        print(f"| {run} | gain of the average | " + " | ".join(f"{s['raw'][k] - s['average'][k]:+.5f}"
                                                                for k in REPORTED_SPLITS) + " |")


if __name__ == "__main__":
    main()
