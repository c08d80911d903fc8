"""Does the C allocator matter for CPU training? glibc returns freed blocks over its mmap threshold (32 MiB at
most) to the OS, so every training step's large activations fault in fresh, zeroed pages again (a
cifar100-fast run at batch 512 took 153 million minor page faults, 7 % of its CPU time in the kernel). Another
allocator is loaded with LD_PRELOAD before Python starts: tcmalloc keeps freed memory (no faults in a probe that
allocates and frees a 64 MiB tensor); jemalloc with its default settings faulted as glibc does there.

    .venv/bin/python bench/allocator.py [--rounds 3] [--steps 12] [--out bench/results/allocator.md]

Each round runs the same short training once per allocator, alternating which goes first (the machine
drifts: only interleaved rounds compare): by default `ablations run cifar100-fast --preset full --variant
budget30_amx` cut to 2 epochs of --steps steps at 32 px, no test (--study/--preset/--variant/--set pick
another). The second epoch's img/s is compared (the first builds oneDNN's kernels), with the process's minor page
faults and CPU seconds. Appends a markdown table to --out."""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ablations import rundir as rd

LIBS = {"glibc": "", "tcmalloc": "libtcmalloc_minimal.so.4", "jemalloc": "libjemalloc.so.2"}


def find(lib: str) -> str:
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        if (Path(d) / lib).exists():
            return str(Path(d) / lib)
    sys.exit(f"bench/allocator.py: {lib} not found (Debian: apt-get install libtcmalloc-minimal4 libjemalloc2)")


CUT = ["method.low_res=0", "method.low_res_epochs=0", "train.eval_test=false"]  # cifar100-fast: 32 px, no test


def one(alloc: str, study: str, preset: str, variant: str, steps: int, threads: int, sets: list[str]) -> dict:
    """One fresh `ablations run` of 2 epochs of `steps` steps under allocator `alloc`: the second epoch's img/s,
    the process's minor page faults and its user and kernel CPU seconds."""
    ablations = str(Path(sys.executable).parent / "ablations")
    env = dict(os.environ)
    if LIBS[alloc]:
        env["LD_PRELOAD"] = find(LIBS[alloc])
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cmd = [ablations, "run", study, "--preset", preset, "--variant", variant, "--out", out,
               "--set", f"train.threads={threads}", "--set", "train.epochs=2", "--set", f"train.steps_per_epoch={steps}"]
        done = subprocess.run(cmd + [a for kv in sets for a in ("--set", kv)], env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"bench/allocator.py: the {alloc} run failed ({done.returncode}):\n{done.stderr[-2000:]}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        (run,) = rd.find_runs(Path(out))
        epochs = [r for r in rd.read_metrics(run / rd.METRICS) if "img_per_s" in r]
        envj = rd.read_json(run / rd.ENV)
    return {"img_s": epochs[-1]["img_per_s"], "faults": after.ru_minflt - before.ru_minflt,
            "sys_s": after.ru_stime - before.ru_stime, "user_s": after.ru_utime - before.ru_utime,
            "cpu": envj.get("cpu", "?"), "flags": " ".join(envj.get("cpu_flags", [])),
            "torch": envj.get("versions", {}).get("torch", "?")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--allocators", nargs="+", default=["glibc", "tcmalloc"], choices=list(LIBS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12, help="batches per epoch (2 epochs per process)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--study", default="cifar100-fast", help="a study name or .yaml file (tests: a tiny one)")
    ap.add_argument("--preset", default="full")
    ap.add_argument("--variant", default="budget30_amx")
    ap.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                    help=f"config overrides besides the 2 epochs of --steps steps (default: {' '.join(CUT)})")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "allocator.md"))
    a = ap.parse_args()
    if len(set(a.allocators)) != len(a.allocators):
        ap.error(f"--allocators: each at most once, got {' '.join(a.allocators)}")
    rows, info = [], {}
    for r in range(a.rounds):
        order = a.allocators if r % 2 == 0 else a.allocators[::-1]
        row = {"round": r + 1}
        for alloc in order:
            info = row[alloc] = one(alloc, a.study, a.preset, a.variant, a.steps, a.threads,
                                    CUT if a.sets is None else a.sets)
            print(r + 1, alloc, {k: round(v, 1) if isinstance(v, float) else v for k, v in info.items()}, flush=True)
        rows.append(row)
    base = a.allocators[0]
    head = " | ".join(f"{x} img/s | faults | user s | sys s" for x in a.allocators)
    text = (f"\n`python bench/allocator.py {' '.join(sys.argv[1:])}` on {info['cpu']} ({info['flags']}), {a.threads} threads, torch "
            f"{info['torch']}, {time.strftime('%Y-%m-%d %H:%M')}: {a.study} {a.variant} (default: airnet 128/384/384, "
            f"bf16 where the CPU has it, batch 512, 32 px), 2 epochs of {a.steps} steps per process, the second "
            "epoch's img/s; faults, user s and sys s: the whole process's minor page faults, user and kernel CPU "
            f"seconds.\n\n| round | {head} |\n|---|" + "---|---|---|---|" * len(a.allocators) + "\n"
            + "".join(f"| {row['round']} | " + " | ".join(
                f"{row[x]['img_s']:.0f} | {row[x]['faults'] / 1e6:.2f} M | {row[x]['user_s']:.0f} | {row[x]['sys_s']:.0f}"
                for x in a.allocators) + " |\n" for row in rows))
    for x in a.allocators[1:]:
        ratios = sorted(row[x]["img_s"] / row[base]["img_s"] for row in rows)
        text += (f"\n{x} / {base}: median {statistics.median(ratios):.3f} "
                 f"(range {ratios[0]:.3f}-{ratios[-1]:.3f}, {len(ratios)} rounds).")
    text += "\n"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
