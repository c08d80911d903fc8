"""The weight average's paired comparison on every held-out split: a run trained with `train.ema` exports
the average (final.safetensors) and records only the raw weights' validation metrics (`raw_val_*`, none
without a validation split); this scores both the average and the raw last weights (checkpoint.pt's "model")
exactly as the run scores its final model. Both come from the same training, so the difference is the
average's own effect, free of seed noise.
- a language-model run: nats per character on validation, test and the last 10 %, in fp32;
- an image run (supervised and its kind: a method with `predict`): test accuracy (%) with the run's own
  test-time augmentation and at each lower level (mirror only, none), under the run's own precision, and
  how many test images only one of the two gets right, with the exact McNemar test of that split: the
  test set's sampling noise on the gain (not the seed spread: that takes more runs).

    ABLATIONS_DATA=../shared/datasets .venv/bin/python bench/ema_raw_weights.py RUN_DIR [RUN_DIR ...]

Prints a markdown table: one row per run and weights, and the average's gain."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from ablations import runtime
from ablations import rundir as rd
from ablations.config import RunConfig, from_dict
from ablations.generate import load_run
from ablations.methods.language_model import REPORTED_SPLITS, reported_losses
from ablations.methods.supervised import tta_test_accs
from ablations.registry import DATASETS, METHODS, load_plugins
from ablations.report.stats import mcnemar_exact_p
from ablations.study import ref_dirs


def _checked(run_dir: Path) -> RunConfig:
    """The config of a finished run trained with train.ema that exported its last weights' average."""
    if not (run_dir / rd.FINAL).exists():  # load_run would fall back to the checkpoint's raw weights
        raise SystemExit(f"{run_dir}: no {rd.FINAL} (unfinished?): nothing averaged to compare")
    cfg = from_dict(rd.read_json(run_dir / rd.CONFIG), str(run_dir / rd.CONFIG))
    if not cfg.train.ema:
        raise SystemExit(f"{run_dir}: trained without train.ema: its final weights are its last weights")
    if cfg.train.keep != "last":  # final.safetensors is then the best epoch's average, not the last one
        raise SystemExit(f"{run_dir}: train.keep={cfg.train.keep}: its exported average is not the last weights' "
                         "partner")
    return cfg


def score(run_dir: Path) -> dict[str, dict[str, float]]:
    """{"average": {column: value}, "raw": {...}} for one finished run with train.ema: nats/char per split
    for a language model, test accuracies (%) at each TTA level for an image run (plus "paired": the test
    images only one of the two gets right)."""
    cfg = _checked(run_dir)
    if cfg.method.name != "language_model":
        return score_image(run_dir, cfg)
    model, _, cfg = load_run(run_dir)  # final.safetensors: the average
    data = DATASETS.get(cfg.data.name)(cfg.data)  # the run's own splits and vocabulary, rebuilt from its config
    out = {}
    for name, state in (("average", None), ("raw", rd.load_checkpoint(run_dir / rd.CHECKPOINT)["model"])):
        if state is not None:
            model.load_state_dict(state)
        out[name] = reported_losses(model, data, torch.device("cpu"))
    return out


def score_image(run_dir: Path, cfg: RunConfig) -> dict[str, dict[str, float]]:
    """Test accuracies of the average and the raw weights, each scored by the run's own method (its splits, TTA
    and precision rebuilt from config.json; referenced runs, a core-set's proxy, found beside it)."""
    method_cls = METHODS.get(cfg.method.name)
    if not hasattr(method_cls, "predict"):
        raise SystemExit(f"{run_dir}: method {cfg.method.name} has no predict(): not an image classifier")
    # a referenced run (a core-set's proxy) lies beside this one: OUT/study/preset/variant/seedN
    refs = ref_dirs(run_dir.parents[3], cfg) if cfg.refs() else {}
    rt = runtime.setup(cfg.train, cfg.seed)
    method = method_cls(cfg, rt, run_dir, refs)
    method.train_mode(False)
    out, right = {}, {}
    for name, state in (("average", load_file(str(run_dir / rd.FINAL))),
                        ("raw", rd.load_checkpoint(run_dir / rd.CHECKPOINT)["model"])):
        method.model.load_state_dict(state)
        _, _, pred, accs = method.predict("test")
        out[name] = tta_test_accs(accs)  # named as in result.json
        right[name] = pred == method.data.test_y.cpu()  # (n_test,) bool, at the run's own TTA level
    # the test images only one of the two gets right: the paired test of test_acc's difference
    b = int((right["average"] & ~right["raw"]).sum())
    c = int((right["raw"] & ~right["average"]).sum())
    out["paired"] = {"average_only": b, "raw_only": c, "p": mcnemar_exact_p(b, c)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run directories (train.ema > 0): language-model or image runs")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    load_plugins()
    print(f"`python bench/ema_raw_weights.py {' '.join(sys.argv[1:])}`\n")
    head = None
    for run in a.runs:
        s = score(run)
        image = "test_acc" in s["average"]
        cols = list(s["average"]) if image else list(REPORTED_SPLITS)  # image: test_acc, then the lower levels
        if head != cols:  # a language-model and an image run need tables of their own
            unit = "test accuracy, %" if image else "nats per character, fp32"
            print(f"\n{unit}\n\n| run | weights | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols))
            head = cols
        for w in ("average", "raw"):
            print(f"| {run} | {w} | " + " | ".join(f"{s[w][k]:.{2 if image else 5}f}" for k in cols) + " |")
        sign = 1 if image else -1  # accuracy: higher is better; loss: lower
        print(f"| {run} | gain of the average | " + " | ".join(
            f"{sign * (s['average'][k] - s['raw'][k]):+.{2 if image else 5}f}" for k in cols) + " |")
        if image:  # the test set's own noise on test_acc's gain (seed noise is another matter: more runs)
            pr = s["paired"]
            print(f"| {run} | right only with: average / raw (exact McNemar p) | {pr['average_only']} / "
                  f"{pr['raw_only']} (p = {pr['p']:.2g}) |" + " |" * (len(cols) - 1))


if __name__ == "__main__":
    main()
