"""Command line: argument parsing only; the work happens in study.py, train/*, report/*."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .config import ConfigError, UserError, flatten, parse_value

DEFAULT_OUT = "runs"


def _parse_sets(items: list[str]) -> dict:
    sets = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.01")
        sets[key.strip()] = parse_value(value)
    return sets


def cmd_list(args) -> int:
    from .registry import DATASETS, LOSSES, MODELS, TASKS
    from .study import STUDIES, get_study

    print("studies:")
    for name in STUDIES.names():
        st = get_study(name)
        print(f"  {name:28s} {st.title}")
        print(f"  {'':28s} task={st.task} presets={','.join(st.presets)} variants={','.join(st.variants)}")
    for title, reg in (("models", MODELS), ("datasets", DATASETS), ("tasks", TASKS), ("losses", LOSSES)):
        print(f"{title}: {', '.join(reg.names())}")
    return 0


def _run_one(cfg, run_dir: Path, resume: bool) -> dict:
    from .registry import TASKS

    return TASKS.get(cfg.task).fit(cfg, run_dir, resume=resume)


def _line(cfg, res: dict, run_dir: Path) -> str:
    metric = res.get(cfg.metric)
    shown = f"{cfg.metric}={metric:.4g}" if isinstance(metric, (int, float)) else f"{cfg.metric}=n/a"
    target = f" (target {cfg.target:g})" if cfg.target is not None else ""
    return f"done {cfg.variant} seed {cfg.seed}: {shown}{target} in {res.get('wall_time', 0):.0f}s -> {run_dir}"


def _config_changes(stored: dict, now: dict) -> list[str]:
    """Dotted keys whose values differ between a run's config.json and the config resolved now."""
    a, b = flatten(stored), flatten(now)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def cmd_run(args) -> int:
    from .report.render import write_report
    from .study import get_study, run_dir_for, study_dir_for
    from .train import runtime as rt

    study = get_study(args.study)
    cfgs = study.resolve(args.preset, args.variant, args.seeds, _parse_sets(args.set))
    out = Path(args.out)
    plan = []
    for cfg in cfgs:  # decide every run's fate before the first starts: nothing is half-overwritten
        rd = run_dir_for(out, cfg)
        finished, started = (rd / rt.RESULT).exists(), (rd / rt.CONFIG).exists()
        if args.continue_ and (finished or (rd / rt.CHECKPOINT).exists()):
            # skipping or resuming a run made with other settings would pass old numbers off as new ones
            changed = _config_changes(rt.read_json(rd / rt.CONFIG), json.loads(json.dumps(cfg.to_dict())))
            if changed:
                raise rt.RunError(f"{rd / rt.CONFIG} differs from the config resolved now ("
                                  f"{'; '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}); "
                                  f"--overwrite to rerun it, or another --out")
        if args.continue_ and finished:
            print(f"skip {cfg.variant} seed {cfg.seed}: finished in {rd}")
            continue
        if finished and not args.overwrite:
            raise rt.RunError(f"{rd} already holds a finished run; pass --overwrite to replace it, "
                              f"--continue to skip finished runs, or `ablations report` to re-render")
        resume = bool(args.continue_ and started and (rd / rt.CHECKPOINT).exists())
        if started and not (resume or args.overwrite or args.continue_):
            raise rt.RunError(f"{rd} holds an unfinished run; `ablations resume {rd}`, --continue or --overwrite")
        plan.append((cfg, rd, resume))
    t0 = time.time()
    for cfg, rd, resume in plan:
        rt.prepare_run_dir(rd, cfg, overwrite=True, resume=resume)
        res = _run_one(cfg, rd, resume)
        print(_line(cfg, res, rd), flush=True)
    sdir = study_dir_for(out, study.name, cfgs[0].preset)
    if sdir.exists():
        report = write_report(sdir)
        print(f"{len(plan)} run(s) in {time.time() - t0:.0f}s; report: {report}")
    return 0


def cmd_resume(args) -> int:
    from .config import from_dict
    from .report.render import find_runs
    from .train import runtime as rt

    target = Path(args.run_dir)
    runs = [target] if (target / rt.CONFIG).exists() else find_runs(target)
    if not runs:
        raise rt.RunError(f"{target}: no run directories (with {rt.CONFIG}) found")
    todo = [r for r in runs if not (r / rt.RESULT).exists()]
    if not todo:
        print(f"nothing to resume: every run under {target} is finished")
    for rd in todo:
        cfg = from_dict(rt.read_json(rd / rt.CONFIG), str(rd / rt.CONFIG))
        has_ckpt = (rd / rt.CHECKPOINT).exists()
        rt.prepare_run_dir(rd, cfg, overwrite=True, resume=has_ckpt)  # no checkpoint yet: start over
        res = _run_one(cfg, rd, resume=has_ckpt)
        print(_line(cfg, res, rd), flush=True)
    return 0


def cmd_report(args) -> int:
    from .report.render import write_report

    print(f"report: {write_report(Path(args.dir), Path(args.copy_to) if args.copy_to else None)}")
    return 0


def cmd_generate(args) -> int:
    from .generate import main

    return main(args) or 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ablations", description="Classic deep-learning studies, one command each.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="studies, models, datasets").set_defaults(func=cmd_list)
    r = sub.add_parser("run", help="run a study's variants and write its report")
    r.add_argument("study", help="study name (see `ablations list`) or a study .yaml file")
    r.add_argument("--preset", help="smoke | quick | full | tutorial (default: the study's)")
    r.add_argument("--variant", action="append", help="run only this variant (repeatable)")
    r.add_argument("--seeds", type=int, help="seeds per variant (default: the study's)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, dotted key, e.g. --set optim.lr=0.01 (repeatable)")
    r.add_argument("--out", default=DEFAULT_OUT, help=f"output root (default: ./{DEFAULT_OUT})")
    r.add_argument("--data-dir", help="folder holding local dataset copies (sets ABLATIONS_DATA)")
    r.add_argument("--overwrite", action="store_true", help="replace finished runs")
    r.add_argument("--continue", dest="continue_", action="store_true",
                   help="skip finished runs, resume interrupted ones, run the rest")
    r.set_defaults(func=cmd_run)
    rs = sub.add_parser("resume", help="continue an interrupted run (or every unfinished run under a dir)")
    rs.add_argument("run_dir")
    rs.add_argument("--data-dir", help="folder holding local dataset copies (sets ABLATIONS_DATA)")
    rs.set_defaults(func=cmd_resume)
    rp = sub.add_parser("report", help="regenerate the report of a study or run dir from its run files")
    rp.add_argument("dir")
    rp.add_argument("--copy-to", metavar="FILE.md", help="also write the Markdown (and its PNGs) here, "
                    "e.g. docs/results/cifar10.md")
    rp.set_defaults(func=cmd_report)
    g = sub.add_parser("generate", help="sample text from a trained language-model run")
    try:
        from .generate import add_generate_args

        add_generate_args(g)
    except ImportError:
        g.add_argument("run_dir")
    g.set_defaults(func=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "data_dir", None):
        if not Path(args.data_dir).is_dir():
            print(f"error: --data-dir {args.data_dir}: not a folder", file=sys.stderr)
            return 2
        os.environ["ABLATIONS_DATA"] = str(Path(args.data_dir).resolve())
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; `ablations resume RUN_DIR` continues from the last checkpoint", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError, PermissionError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
