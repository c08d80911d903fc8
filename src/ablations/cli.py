"""Command line: argument parsing and the order of runs; the work happens in study.py, loop.py, report/*."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .config import ConfigError, default_values, flatten, parse_value
from .errors import RunError, UserError

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
    from .registry import AUGS, DATASETS, EXECUTORS, LOSSES, METHODS, MODELS, OPTIMIZERS, SECTIONS, TEXT_AUGS
    from .study import STUDIES, get_study

    print("studies:")
    for name in STUDIES.names():
        st = get_study(name)
        print(f"  {name:28s} {st.title}")
        print(f"  {'':28s} presets={','.join(st.presets)} variants={','.join(st.variants)}")
    for title, reg in (("methods", METHODS), ("models", MODELS), ("datasets", DATASETS), ("losses", LOSSES),
                       ("optimisers", OPTIMIZERS), ("augmentations", AUGS), ("text augmentations", TEXT_AUGS), ("report sections", SECTIONS),
                       ("executors", EXECUTORS)):
        print(f"{title}: {', '.join(reg.names())}")
    return 0


def _config_changes(stored: dict, now: dict) -> list[str]:
    """Dotted keys whose values differ between a run's config.json and the config resolved now."""
    a, b = flatten(stored), flatten(now)
    # an option added since the run was made is absent from its config.json; at its default it changes
    # nothing (new options default to the old behaviour), so it is not a difference
    defaults = default_values(now)
    for k in set(b) - set(a):
        if k in defaults and defaults[k] == b[k]:
            a[k] = b[k]
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def _check_applicable(cfgs) -> None:
    """Variants that cannot run on the data at hand (a dataset's cheap `applicable` check), named before
    any run starts, with the variants that can."""
    from .registry import DATASETS

    bad: dict[str, str] = {}
    for cfg in cfgs:
        check = DATASETS.entry(cfg.data.name).meta.get("applicable")
        why = check(cfg.data) if check else None
        if why:
            bad.setdefault(cfg.variant, why)
    if bad:
        ok = [v for v in dict.fromkeys(c.variant for c in cfgs) if v not in bad]
        reasons = "; ".join(dict.fromkeys(bad.values()))
        raise ConfigError(f"variant(s) {', '.join(bad)} cannot run here: {reasons}. Variants that can: "
                          f"{', '.join(ok) or '(none)'} (choose them with --variant)")


def _study_record(rd, sdir: Path, record: dict) -> None:
    try:
        rd.write_study_record(sdir, record)
    except OSError as e:
        raise RunError(f"cannot write to output dir {sdir}: {e.strerror or e}") from None


def _executor(args):
    """(the executor function, its typed Config) from --executor and its flags (--address, --cpus-per-run,
    --gpus-per-run): a flag the executor has no option for is an error, not ignored."""
    from dataclasses import fields

    from .config import type_section
    from .registry import EXECUTORS

    entry = EXECUTORS.entry(args.executor)
    given = {f: getattr(args, f) for f in ("address", "cpus_per_run", "gpus_per_run") if getattr(args, f) is not None}
    known = {f.name for f in fields(entry.Config)}
    for key in given:
        if key not in known:
            raise ConfigError(f"--{key.replace('_', '-')}: not an option of --executor {args.executor} (its options: "
                              f"{', '.join('--' + k.replace('_', '-') for k in sorted(known)) or 'none'})")
    opts = type_section("executor", given, entry.Config, {"": "command line"}, entry=args.executor)
    if args.nproc > 1 and args.executor != "local":
        raise ConfigError(f"--nproc {args.nproc}: one run over several processes needs --executor local")
    return entry.obj, opts


def _relaunch(args, nproc: int) -> int:
    """`ablations run ... --nproc N`: the same command in N processes through torchrun (distributed.py).
    Each process gets an equal share of the CPU's cores as torch threads unless OMP_NUM_THREADS is set."""
    import subprocess

    argv, skip = [], False
    for a in args.argv:  # the command without --nproc (the processes see WORLD_SIZE instead)
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "ablations.cli", *argv]
    return subprocess.run(cmd, env=env).returncode


def cmd_run(args) -> int:
    from . import distributed
    from .runtime import select_device
    from .study import get_study

    study = get_study(args.study)
    cfgs = study.resolve(args.preset, args.variant, args.seeds, _parse_sets(args.set))
    _check_applicable(cfgs)
    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: must be >= 1")
    execute, opts = _executor(args)
    if args.nproc > 1 and not distributed.launched():
        return _relaunch(args, args.nproc)
    main = distributed.init(select_device(cfgs[0].train).type).main
    finished = False
    try:
        code = _run_plan(args, study, cfgs, main, execute, opts)
        finished = True
        return code
    finally:
        distributed.close(finished)


def _run_plan(args, study, cfgs, main: bool, execute, opts) -> int:
    """cmd_run's work in this process (one of a distributed run's, or the only one)."""
    from . import distributed
    from . import rundir as rd
    from .executors import Planned
    from .report.render import write_report
    from .study import ref_dirs, run_dir_for, study_dir_for

    say = print if main else (lambda *a, **k: None)  # one process of a distributed run speaks
    out = Path(args.out)
    plan = []
    for cfg in cfgs:  # decide every run's fate before the first starts: nothing is half-overwritten
        d = run_dir_for(out, cfg)
        finished, started = (d / rd.RESULT).exists(), (d / rd.CONFIG).exists()
        if args.continue_ and (finished or (d / rd.CHECKPOINT).exists()):
            # skipping or resuming a run made with other settings would pass old numbers off as new ones
            changed = _config_changes(_stored_config(d), cfg.to_dict())
            if changed:
                raise RunError(f"{d / rd.CONFIG} differs from the config resolved now ("
                               f"{'; '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}); "
                               f"--overwrite to rerun it, or another --out")
        pulled_in = bool(args.variant) and cfg.variant not in args.variant  # a run the asked-for ones reference
        if pulled_in and finished and not args.overwrite and not _config_changes(_stored_config(d), cfg.to_dict()):
            say(f"skip {cfg.variant} seed {cfg.seed}: referenced, finished in {d}")
            continue
        if args.continue_ and finished:
            say(f"skip {cfg.variant} seed {cfg.seed}: finished in {d}")
            continue
        if finished and not args.overwrite:
            raise RunError(f"{d} already holds a finished run; pass --overwrite to replace it, "
                           f"--continue to skip finished runs, or `ablations report` to re-render")
        resume = bool(args.continue_ and started and (d / rd.CHECKPOINT).exists())
        if started and not (resume or args.overwrite or args.continue_):
            raise RunError(f"{d} holds an unfinished run; `ablations resume {d}`, --continue or --overwrite")
        plan.append(Planned(cfg, d, resume, args.overwrite, ref_dirs(out, cfg)))
    # rank 0's plan for every process (one decision, even where the processes' views of --out differ), made
    # before rank 0 writes anything
    plan = distributed.same_everywhere(plan)
    t0 = time.time()
    if main:
        _study_record(rd, study_dir_for(out, study.name, cfgs[0].preset), {
            "name": study.name, "title": study.title, "description": study.description, "notes": study.notes,
            "file": str(study.path), "variants": list(study.variants), "sections": list(study.sections),
            "compare": list(study.compare),
            "metric": study.metric, "goal": study.goal})
    outcomes = execute(plan, opts)  # resolve() put every referenced run before the runs that need it
    sdir = study_dir_for(out, study.name, cfgs[0].preset)
    if main and sdir.exists():
        report = write_report(sdir)
        print(f"{len(plan)} run(s) in {time.time() - t0:.0f}s; report: {report}")
    unfinished = [o for o in outcomes if o.status != "finished"]
    if unfinished:
        print(f"error: {len(unfinished)} of {len(plan)} run(s) did not finish (failed or skipped above); "
              "fix the cause and re-run with --continue", file=sys.stderr)
        return 1
    return 0


def cmd_resume(args) -> int:
    from . import rundir as rd
    from .config import from_dict
    from .executors import done_line
    from .loop import run

    target = Path(args.run_dir)
    runs = rd.find_runs(target)
    if not runs:
        raise RunError(f"{target}: no run directories (with {rd.CONFIG}) found")
    todo = [r for r in runs if not (r / rd.RESULT).exists()]
    if not todo:
        print(f"nothing to resume: every run under {target} is finished")
    cfgs = {d: from_dict(_stored_config(d), str(d / rd.CONFIG)) for d in todo}
    refs = {d: {key: d.parents[1] / ref / d.name for key, ref in c.refs().items()} for d, c in cfgs.items()}
    pending = list(todo)
    while pending:  # a run after the unfinished runs it references (same study dir and seed)
        d = next((d for d in pending if not any(r in pending for r in refs[d].values())), pending[0])
        pending.remove(d)
        cfg = cfgs[d]
        has_ckpt = (d / rd.CHECKPOINT).exists()
        res = run(cfg, d, resume=has_ckpt, refs=refs[d], restart=not has_ckpt)  # no checkpoint yet: start over
        print(done_line(cfg, res, d), flush=True)
    return 0


def _stored_config(d: Path) -> dict:
    from . import rundir as rd

    return rd.Run.read(d).config  # a corrupt or non-object config.json: one line naming it


def cmd_report(args) -> int:
    from .report.render import write_report, write_section_digest

    if args.section:  # a digest of some sections over several dirs: written to --copy-to only
        if not args.copy_to:
            raise ConfigError("--section writes only the --copy-to file: give one, e.g. --copy-to docs/results/x.md")
        print(f"report: {write_section_digest([Path(d) for d in args.dir], args.section, Path(args.copy_to))}")
        return 0
    if len(args.dir) > 1:
        raise ConfigError(f"report: one dir at a time ({len(args.dir)} given) unless --section picks what to gather")
    print(f"report: {write_report(Path(args.dir[0]), Path(args.copy_to) if args.copy_to else None)}")
    return 0


def cmd_generate(args) -> int:
    from .generate import main

    return main(args) or 0


def cmd_explain(args) -> int:
    from .explain import main

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
    r.add_argument("--executor", default="local", help="how the runs are carried out: local (default: one after "
                   "another here) or ray (Ray tasks on a local instance or a cluster; docs/cluster.md)")
    r.add_argument("--address", help="--executor ray: the cluster to join (auto | ray://HOST:PORT; default: "
                   "start a local Ray instance)")
    r.add_argument("--cpus-per-run", type=float, help="--executor ray: CPUs per run (default 1; also its "
                   "torch threads)")
    r.add_argument("--gpus-per-run", type=float, help="--executor ray: GPUs per run (default 0)")
    r.add_argument("--nproc", type=int, default=1, help="train each run over N local processes (data parallel, "
                   "gloo on CPU / nccl on GPUs, via torchrun; the batch size stays the global batch)")
    r.set_defaults(func=cmd_run)
    rs = sub.add_parser("resume", help="continue an interrupted run (or every unfinished run under a dir)")
    rs.add_argument("run_dir")
    rs.add_argument("--data-dir", help="folder holding local dataset copies (sets ABLATIONS_DATA)")
    rs.set_defaults(func=cmd_resume)
    rp = sub.add_parser("report", help="regenerate the report of a study or run dir from its run files")
    rp.add_argument("dir", nargs="+", help="a study or run dir (several with --section)")
    rp.add_argument("--copy-to", metavar="FILE.md", help="also write the Markdown (and its PNGs) here, "
                    "e.g. docs/results/cifar10.md")
    rp.add_argument("--section", action="append", metavar="NAME", help="gather only this report section "
                    "(repeatable) of every dir into the --copy-to file, e.g. --section explanations")
    rp.set_defaults(func=cmd_report)
    g = sub.add_parser("generate", help="sample text from a trained language-model run")
    try:
        from .generate import add_generate_args

        add_generate_args(g)
    except ImportError:
        g.add_argument("run_dir")
    g.set_defaults(func=cmd_generate)
    x = sub.add_parser("explain", help="attribution maps (saliency, Grad-CAM, ...) of an image run, and their "
                       "sanity check")
    from .explain import add_explain_args

    add_explain_args(x)
    x.set_defaults(func=cmd_explain)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if getattr(args, "data_dir", None):
        if not Path(args.data_dir).is_dir():
            print(f"error: --data-dir {args.data_dir}: not a folder", file=sys.stderr)
            return 2
        os.environ["ABLATIONS_DATA"] = str(Path(args.data_dir).resolve())
    # `kill` (SIGTERM) stops a run as Ctrl-C does: its invocation is recorded (wall time), its lock released
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set a handler
    on_term = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        print("interrupted; `ablations resume RUN_DIR` continues from the last checkpoint", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except (UserError, FileNotFoundError, PermissionError) as e:
        if args.debug:
            raise
        from . import distributed

        d = distributed.current()
        if d.main:
            print(f"error: {e}", file=sys.stderr)
        elif not isinstance(e, distributed.RelayedError):  # rank 0 says the errors it relayed; not this one
            print(f"error (process {d.rank}): {e}", file=sys.stderr)
        return 2
    finally:
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that every `finally` on the way out runs."""


def _terminate(signum, frame):
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
