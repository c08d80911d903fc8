"""Training throughput of one textgen-shakespeare variant as computed by a given source tree: for timing
two commits against each other on one machine, run alternately from two worktrees (the machines here
drift by 20 % within a session, so only interleaved rounds compare):

    git worktree add /tmp/old cc67477
    for r in 1 2 3; do for t in /tmp/old .; do python bench/textgen_ab.py $t --variant lstm3-512-long-ema; done; done

`--profile 8` prints instead a profile of 8 training steps (operators by CPU time and input shape).
Each timing call prints one line: the tree, its git commit, the variant and seconds per million training characters
(forward, backward, clipping and AdamW on real batches: bench/textgen_speed.py's `throughput` of that
tree, `full` preset, bf16 where the CPU has it). Needs tiny-shakespeare ($ABLATIONS_DATA or
../shared/datasets). Never run by tests.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch


def profile(ts, cfg, data, dtype, steps: int, warmup: int = 4) -> str:
    """torch.profiler's table of `steps` training steps as textgen_speed's `train_step` takes them."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from ablations.data.base import DataSpec
    from ablations.data.text import batch_at, sample_offsets
    from ablations.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.get(cfg.model.name)(cfg.model, DataSpec(vocab_size=len(data.vocab))).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B, T = cfg.train.batch_size, cfg.data.seq_len
    offs = sample_offsets(len(data.train), T, B, warmup + steps, torch.Generator().manual_seed(0))
    for i in range(warmup):  # oneDNN builds its kernels on the first calls
        ts.train_step(model, opt, *batch_at(data.train, offs[i], T), dtype)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(warmup, warmup + steps):
            ts.train_step(model, opt, *batch_at(data.train, offs[i], T), dtype)
    return prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tree", type=Path, help="the source tree (a checkout or worktree) whose code is timed")
    p.add_argument("--variant", default="lstm3-512-long-ema")
    p.add_argument("--steps", type=int, default=30, help="timed steps (after 3 untimed ones)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead: profile N training steps (after 4 untimed ones) and print the operators that "
                        "took the most CPU time, by input shape")
    a = p.parse_args(argv)
    tree = a.tree.resolve()
    sys.path[:0] = [str(tree / "src"), str(tree / "bench")]
    shared = tree.parent / "shared" / "datasets"
    if not os.environ.get("ABLATIONS_DATA") and (shared / "README.md").exists():
        os.environ["ABLATIONS_DATA"] = str(shared)
    import ablations
    import textgen_speed
    from ablations import runtime as rt
    from ablations.registry import DATASETS
    from ablations.study import get_study

    if not Path(ablations.__file__).resolve().is_relative_to(tree):  # an installed copy would time the wrong code
        raise SystemExit(f"imported ablations from {ablations.__file__}, not from {tree}")
    torch.set_num_threads(a.threads)
    cfg = get_study("textgen-shakespeare").resolve("full", [a.variant], seeds=1,
                                                   sets={"train.threads": a.threads})[0]
    data = DATASETS.get(cfg.data.name)(cfg.data)
    dtype = torch.bfloat16 if rt.cpu_has_bf16() else None
    if a.profile:
        print(profile(textgen_speed, cfg, data, dtype, a.profile))
        return 0
    cps = textgen_speed.throughput(cfg, data, dtype, a.steps)
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"{tree} {commit} {a.variant} {'bf16' if dtype else 'fp32'}: {1e6 / cps:.1f} s per million chars "
          f"({rt.cpu_model()})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
