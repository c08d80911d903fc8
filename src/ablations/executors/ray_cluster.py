"""`--executor ray`: every planned (variant, seed) run is a Ray task with --cpus-per-run CPUs and
--gpus-per-run GPUs, on a local Ray instance (default) or a cluster (--address auto | ray://HOST:PORT).

- A run that references others (teacher, proxy, dense) is submitted once they have finished; when one of
  them failed it is skipped, and says which.
- --out must be storage every node sees at the same path (the driver writes the report from the run files
  the tasks wrote): the driver puts a probe file there and a task on a node that cannot see it fails with a
  line saying so.
- One line per finished, failed or skipped run, then a summary; a failed run does not stop the others.
- The tasks write the same run directories as a local run (loop.run), so `--continue` after a driver crash
  skips the finished runs and resumes the interrupted ones from their checkpoints, and the report is the same.
Ray is an optional dependency: `pip install 'ablations[cluster]'`.
"""
from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import distributed
from .. import rundir as rd
from ..config import FieldError, Section, from_dict, opt
from ..errors import ConfigError, RunError
from ..registry import EXECUTORS
from . import Outcome, Planned, done_line, error_text

PROBE = ".ablations-shared-storage-probe"


@dataclass(frozen=True)
class RayConfig(Section):
    address: Optional[str] = opt(None, "Ray cluster to join: 'auto' (the one this machine belongs to), "
                                 "'ray://HOST:PORT' (Ray client), or none: start a local Ray instance")
    cpus_per_run: float = opt(1.0, "CPUs Ray reserves for each run; also its torch threads (unless "
                              "train.threads is set)", gt=0)
    gpus_per_run: float = opt(0.0, "GPUs Ray reserves for each run (fractions share a GPU)", ge=0)

    def check(self) -> None:
        if self.address is not None and not (self.address == "auto" or self.address.startswith("ray://")
                                             or ":" in self.address):
            raise FieldError("address", f"expected auto, ray://HOST:PORT or HOST:PORT, got {self.address!r}")


def _task(cfg_dict: dict, run_dir: str, resume: bool, overwrite: bool, refs: dict, probe: str, threads: int,
          argv: list) -> dict:
    """One run, inside a Ray worker (any node)."""
    import torch

    from ..loop import run

    import traceback

    if not Path(probe).exists():
        raise RunError(f"--out {Path(probe).parent} is not shared storage: node {socket.gethostname()} cannot see "
                       "it; mount it on every node at the same path")
    cfg = from_dict(cfg_dict, str(Path(run_dir) / "config.json"))
    if not cfg.train.threads:
        torch.set_num_threads(threads)  # Ray reserved this many CPUs for the run
    sys.argv = list(argv)  # env.json records the command that asked for the run, not Ray's worker script
    failure = Path(run_dir) / rd.FAILURE  # the traceback of a failure (the driver prints one line)
    try:
        return run(cfg, Path(run_dir), resume=resume, refs={k: Path(v) for k, v in refs.items()},
                   overwrite=overwrite, restart=not resume)
    except BaseException:
        try:
            rd.atomic_write_text(failure, f"{socket.gethostname()} pid {os.getpid()}\n{traceback.format_exc()}")
        except OSError:
            pass
        raise


def _clear_stale_locks(ray, plan: list[Planned]) -> None:
    """A run dir locked by a process on another host (a task of a driver that crashed) cannot be checked from
    here: ask that host, through a one-CPU task pinned to its Ray node, whether the process still lives, and
    remove the lock if it does not. Hosts that are not (alive) Ray nodes are left alone: the run then says
    which lock to delete."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = socket.gethostname()
    nodes = {n.get("NodeManagerHostname"): n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    checks = []
    for p in plan:
        info = rd.lock_holder(p.dir)
        host = (info or {}).get("host")
        if info and host != here and host in nodes:
            strategy = NodeAffinitySchedulingStrategy(nodes[host], soft=False)
            check = ray.remote(_drop_lock_if_dead).options(num_cpus=0, scheduling_strategy=strategy, max_retries=0)
            checks.append(check.remote(str(p.dir), info))
    for dropped in ray.get(checks):
        if dropped:
            print(f"removed the stale lock {dropped} (its process is gone)", flush=True)


def _drop_lock_if_dead(run_dir: str, seen: dict) -> Optional[str]:
    """On the lock holder's host: remove run_dir's lock when it is still `seen` and its process is dead."""
    if rd.lock_holder(Path(run_dir)) != seen or rd.process_alive(int(seen["pid"])):
        return None
    lock = Path(run_dir) / rd.LOCK
    lock.unlink(missing_ok=True)
    return str(lock)


def _check_fits(ray, opts: RayConfig) -> None:
    """One line instead of a driver that waits forever for a node big enough for one run."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    gpus = max((r.get("GPU", 0) for r in nodes), default=0)
    if opts.cpus_per_run > cpus or opts.gpus_per_run > gpus:
        raise ConfigError(f"--cpus-per-run {opts.cpus_per_run:g} --gpus-per-run {opts.gpus_per_run:g}: no Ray node "
                          f"has that much (the largest: {cpus:g} CPUs, {gpus:g} GPUs), so no run could start")


def _connect(ray, opts: RayConfig) -> bool:
    """ray.init unless this process is already connected (a test, a notebook); True when we connected."""
    if ray.is_initialized():
        return False
    # the tasks need the settings the driver was given (where the data is, plain progress lines)
    env = {k: v for k, v in os.environ.items() if k.startswith("ABLATIONS_")}
    env["ABLATIONS_PLAIN"] = "1"
    kw = dict(runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False,
              configure_logging=False)
    if opts.address is None and not os.environ.get("RAY_ADDRESS"):  # a new local instance: small object store
        kw["object_store_memory"] = 256 * 2**20  # (results are a few KB)
    try:
        ray.init(address=opts.address, **kw)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = opts.address or os.environ.get("RAY_ADDRESS") or "a local instance"
        raise RunError(f"--executor ray: cannot start or join Ray ({where}): {error_text(e)}") from None
    return True


def _cause(e: BaseException) -> BaseException:
    """The exception a Ray task raised (RayTaskError wraps it), or `e` itself."""
    return getattr(e, "cause", None) or e


@EXECUTORS.register("ray", RayConfig)
def ray_executor(plan: list[Planned], opts: RayConfig) -> list[Outcome]:
    """Every (variant, seed) a Ray task on a cluster (runs that reference others wait for them); --out must be
    storage every node sees."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'ablations[cluster]'") from None
    if distributed.current().active:
        raise ConfigError("--executor ray runs each run in one process: leave out --nproc / torchrun")
    if not plan:
        return []
    roots = {p.dir.resolve().parents[3] for p in plan}  # <out>/<study>/<preset>/<variant>/seed<k>
    t0 = time.time()
    connected = _connect(ray, opts)
    probes = []
    try:
        _check_fits(ray, opts)
        _clear_stale_locks(ray, plan)
        for root in roots:
            root.mkdir(parents=True, exist_ok=True)
            probes.append(root / f"{PROBE}-{secrets.token_hex(4)}")
            probes[-1].write_text("the ablations driver checks that every Ray node sees --out\n")
        probe = {root: str(pr) for root, pr in zip(roots, probes)}
        threads = max(1, int(round(opts.cpus_per_run)))
        remote = ray.remote(_task).options(num_cpus=opts.cpus_per_run, num_gpus=opts.gpus_per_run, max_retries=0)
        outcomes = _schedule(ray, remote, plan, probe, threads)
    finally:
        for pr in probes:
            pr.unlink(missing_ok=True)
        if connected:
            ray.shutdown()
    counts = {s: sum(o.status == s for o in outcomes) for s in ("finished", "failed", "skipped")}
    print(f"ray: {counts['finished']} finished, {counts['failed']} failed, {counts['skipped']} skipped "
          f"in {time.time() - t0:.0f}s", flush=True)
    return outcomes


def _schedule(ray, remote, plan: list[Planned], probe: dict, threads: int) -> list[Outcome]:
    """Submit each run once the runs it references (those in the plan) have finished; collect as they end."""
    in_plan = {p.dir: p for p in plan}
    needs = {p.dir: [d for d in p.refs.values() if d in in_plan] for p in plan}
    ended: dict[Path, Outcome] = {}
    pending, running = list(plan), {}
    while pending or running:
        for p in list(pending):
            bad = [d for d in needs[p.dir] if d in ended and ended[d].status != "finished"]
            if bad:
                pending.remove(p)
                o = ended[p.dir] = Outcome(p, "skipped", error=f"needs {bad[0]}, which did not finish")
                print(f"skipped {p.cfg.variant} seed {p.cfg.seed}: {o.error}", flush=True)
            elif all(d in ended for d in needs[p.dir]):
                pending.remove(p)
                ref = remote.remote(p.cfg.to_dict(), str(p.dir.resolve()), p.resume, p.overwrite,
                                    {k: str(v.resolve()) for k, v in p.refs.items()},
                                    probe[p.dir.resolve().parents[3]], threads, sys.argv)
                running[ref] = p
        if not running:  # cannot happen with a plan in reference order; never spin
            for p in pending:
                ended[p.dir] = Outcome(p, "skipped", error="its references never ran")
            break
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            p = running.pop(ref)
            try:
                res = ray.get(ref)
            except Exception as e:  # the run's own error (RayTaskError) or its worker's death
                o = ended[p.dir] = Outcome(p, "failed", error=error_text(_cause(e)))
                where = p.dir / rd.FAILURE if (p.dir / rd.FAILURE).exists() else p.dir
                print(f"failed {p.cfg.variant} seed {p.cfg.seed}: {o.error} ({where})", flush=True)
            else:
                ended[p.dir] = Outcome(p, "finished", res)
                print(done_line(p.cfg, res, p.dir), flush=True)
    return [ended[p.dir] for p in plan if p.dir in ended]
