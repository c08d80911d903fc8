"""Beyond one process: one run over several processes (distributed.py, gloo on the CPU) and a study's grid as
Ray tasks (executors/ray_cluster.py). Each test starts its own processes; all stay on this machine."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ablations.cli import main

@pytest.fixture
def study(tiny_study: Path) -> Path:
    """conftest's tiny study, one thread per run (bit-identical across executors) and 3 epochs."""
    p = tiny_study.with_name("scale.yaml")
    p.write_text(tiny_study.read_text().replace("eval_batch_size: 64}", "eval_batch_size: 64, threads: 1}")
                 .replace("epochs: 2", "epochs: 3"))
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _curve(run_dir: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final.safetensors"))


def _same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol), k


# ---------------------------------------------------------------- one run over two processes (DDP, gloo)

def test_two_processes_give_the_single_process_curve(study, tmp_path):
    """`--nproc 2` (torchrun, gloo): each process trains on half of every batch and the gradients are
    averaged, so the loss curve and the weights are the single-process run's up to float summation order."""
    one, two = tmp_path / "one", tmp_path / "two"
    # fp32 on every CPU: with bf16 autocast (CPUs with AVX512-BF16/AMX) half-batches take other kernels, and
    # bf16's 8-bit mantissa turns that summation-order difference into ~1 % of the loss after 3 epochs
    fp32 = ["--set", "train.precision=fp32"]
    assert main(["run", str(study), "--preset", "smoke", "--variant", "plain", "--out", str(one), *fp32]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "ablations.cli", "run", str(study), "--preset", "smoke",
                           "--variant", "plain", "--out", str(two), "--nproc", "2", *fp32],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done plain seed 0") == 1  # one process speaks
    a, b = one / "tiny/smoke/plain/seed0", two / "tiny/smoke/plain/seed0"
    assert json.loads((b / "env.json").read_text())["processes"] == 2
    assert json.loads((a / "env.json").read_text())["processes"] == 1
    ca, cb = _curve(a), _curve(b)
    assert len(ca) == len(cb) == 3
    assert ca == pytest.approx(cb, rel=1e-4)
    _same_weights(a, b, atol=1e-4)
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert ra["steps"] == rb["steps"]
    assert abs(ra["test_acc"] - rb["test_acc"]) <= 100 / 64 + 1e-9  # at most one of the 64 test images flips


def _worker(rank: int, world: int, port: int, cfg_dict: dict, run_dir: str, resume: bool, stop_after: int) -> None:
    """One process of a 2-process gloo run (torch.multiprocessing.spawn), as torchrun would start it."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from ablations import distributed, loop
    from ablations.config import from_dict

    distributed.init("cpu")

    def stop(rec: dict) -> None:  # every process stops after the same epoch's checkpoint, like a crash
        if rec["epoch"] == stop_after:
            raise KeyboardInterrupt

    try:
        loop.run(from_dict(cfg_dict), Path(run_dir), resume=resume, restart=not resume,
                 on_epoch=stop if stop_after else None)
    except KeyboardInterrupt:
        pass
    finally:
        tdist.destroy_process_group()


def test_two_process_run_resumes_as_if_never_stopped(tmp_path):
    """A 2-process run stopped after epoch 1 and resumed (both processes read rank 0's checkpoint) ends with
    the weights of the 2-process run that never stopped."""
    import torch.multiprocessing as mp

    from ablations.config import make

    cfg = make({"data": {"name": "synthetic", "n_train": 320, "n_test": 64, "limit": 256, "limit_eval": 64,
                         "normalize": "standard"},
                "model": {"name": "vgg1", "width": 8, "dense": 16}, "optim.lr": 0.05,
                "train": {"epochs": 3, "batch_size": 32, "eval_batch_size": 64}}, study="scale", variant="plain")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    mp.spawn(_worker, args=(2, _free_port(), cfg.to_dict(), str(whole), False, 0), nprocs=2)
    mp.spawn(_worker, args=(2, _free_port(), cfg.to_dict(), str(parts), False, 1), nprocs=2)
    assert not (parts / "result.json").exists() and (parts / "checkpoint.pt").exists()
    mp.spawn(_worker, args=(2, _free_port(), cfg.to_dict(), str(parts), True, 0), nprocs=2)
    assert (parts / "result.json").exists()
    _same_weights(whole, parts, atol=0)  # the same processes, the same sums: bit for bit
    assert _curve(whole) == _curve(parts)


def test_nproc_errors_are_one_line(study, tmp_path, capsys):
    assert main(["run", str(study), "--preset", "smoke", "--out", str(tmp_path), "--nproc", "0"]) == 2
    assert "--nproc 0: must be >= 1" in capsys.readouterr().err
    assert main(["run", str(study), "--preset", "smoke", "--out", str(tmp_path), "--nproc", "2",
                 "--executor", "ray"]) == 2
    assert "needs --executor local" in capsys.readouterr().err
    assert main(["run", str(study), "--preset", "smoke", "--out", str(tmp_path), "--address", "auto"]) == 2
    assert "--address: not an option of --executor local" in capsys.readouterr().err
    assert main(["run", str(study), "--preset", "smoke", "--out", str(tmp_path), "--executor", "rey"]) == 2
    assert "unknown executor 'rey' (did you mean ray?)" in capsys.readouterr().err
    assert main(["run", str(study), "--preset", "smoke", "--out", str(tmp_path), "--executor", "ray",
                 "--cpus-per-run", "0"]) == 2
    assert "cpus_per_run must be > 0" in capsys.readouterr().err
    assert not list(tmp_path.rglob("config.json"))  # nothing ran


def test_a_shard_must_divide_evenly(monkeypatch):
    from ablations import distributed
    from ablations.errors import RunError

    monkeypatch.setattr(distributed, "_current", distributed.Dist(rank=1, world=2))
    x, y = torch.arange(8).reshape(4, 2), torch.arange(4)
    xs, ys, none, p = distributed.shard((x, y, None, 0.5))
    assert xs.tolist() == [[4, 5], [6, 7]] and ys.tolist() == [2, 3] and none is None and p == 0.5
    assert distributed.shard({"a": [y]})["a"][0].tolist() == [2, 3]
    with pytest.raises(RunError, match="3 rows does not split evenly over 2 processes"):
        distributed.shard(torch.zeros(3))


# ---------------------------------------------------------------- the grid as Ray tasks

ray = pytest.importorskip("ray", reason="the cluster extra (Ray) is not installed")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs for this module's tests (started once: it takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def test_ray_executor_writes_what_the_local_one_does(study, tmp_path, local_ray, capsys):
    loc, ray_out = tmp_path / "local", tmp_path / "ray"
    assert main(["run", str(study), "--preset", "smoke", "--out", str(loc)]) == 0
    assert main(["run", str(study), "--preset", "smoke", "--out", str(ray_out), "--executor", "ray",
                 "--cpus-per-run", "1"]) == 0
    out = capsys.readouterr().out
    assert "done plain seed 0" in out and "done regular seed 0" in out and "ray: 2 finished, 0 failed" in out
    for v in ("plain", "regular"):
        a, b = loc / f"tiny/smoke/{v}/seed0", ray_out / f"tiny/smoke/{v}/seed0"
        assert (a / "final.safetensors").read_bytes() == (b / "final.safetensors").read_bytes()
        assert _curve(a) == _curve(b)
        ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
        assert ra["test_acc"] == rb["test_acc"]
        assert json.loads((b / "env.json").read_text())["argv"] == sys.argv  # the driver's command line
    ra, rb = ((d / "tiny/smoke/summary.csv").read_text().splitlines()[0] for d in (loc, ray_out))
    assert ra == rb and (ray_out / "tiny/smoke/report.md").exists()
    assert not list(ray_out.glob(".ablations-shared-storage-probe*"))  # the probe is cleaned up


def test_ray_a_failed_run_does_not_stop_the_others(study, tmp_path, local_ray, capsys):
    broken = study.with_name("broken.yaml")
    broken.write_text(study.read_text() + "  exploding: {set: {optim.lr: 1.0e+30}}\n")
    assert main(["run", str(broken), "--preset", "smoke", "--out", str(tmp_path), "--executor", "ray"]) == 1
    captured = capsys.readouterr()
    assert "failed exploding seed 0: loss became" in captured.out
    failure = tmp_path / "tiny/smoke/exploding/seed0/failure.txt"
    assert "Traceback" in failure.read_text() and str(failure) in captured.out  # the whole story, one line
    assert "ray: 2 finished, 1 failed, 0 skipped" in captured.out
    assert "1 of 3 run(s) did not finish" in captured.err
    for v in ("plain", "regular"):
        assert (tmp_path / f"tiny/smoke/{v}/seed0/result.json").exists()
    assert (tmp_path / "tiny/smoke/report.md").exists()
    # a run no node can hold: one line, not a driver waiting forever
    assert main(["run", str(study), "--preset", "smoke", "--out", str(tmp_path / "big"), "--executor", "ray",
                 "--cpus-per-run", "3"]) == 2
    assert "no Ray node has that much (the largest: 2 CPUs, 0 GPUs)" in capsys.readouterr().err


def test_ray_continue_after_the_driver_is_killed(study, tmp_path):
    """The driver (and the local Ray it started) killed while the second run is between checkpoints, the first
    finished; `--continue` skips the first and resumes the second from its checkpoint."""
    slow = study.with_name("slow.yaml")  # seconds per epoch, so that the kill lands inside the second run
    slow.write_text(study.read_text().replace("epochs: 3", "epochs: 8").replace("n_train: 320", "n_train: 3000")
                    .replace("limit: 256", "limit: 2560"))
    cmd = [sys.executable, "-m", "ablations.cli", "run", str(slow), "--preset", "smoke", "--out", str(tmp_path),
           "--executor", "ray", "--cpus-per-run", "2"]  # 2 of 2 CPUs: one run at a time
    first = tmp_path / "tiny/smoke/plain/seed0/result.json"
    second = tmp_path / "tiny/smoke/regular/seed0/checkpoint.pt"
    drv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not second.exists() and drv.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.exists() and second.exists(), \
            drv.stdout.read().decode()[-3000:] if drv.poll() is not None else "timeout"
        assert not second.with_name("result.json").exists(), "the second run finished before the kill"
    finally:
        os.killpg(drv.pid, signal.SIGKILL)  # the driver and every process of its session (Ray's too)
        drv.wait()
    proc = subprocess.run(cmd + ["--continue"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skip plain seed 0: finished" in proc.stdout
    assert "done regular seed 0" in proc.stdout
    inv = [json.loads(x) for x in (second.parent / "invocations.jsonl").read_text().splitlines()]
    assert inv[-1]["resumed_from_epoch"] >= 1 and inv[-1]["finished"]  # resumed, not started over
    assert (tmp_path / "tiny/smoke/report.md").exists()


def test_a_dead_hosts_lock_is_dropped_on_that_host(tmp_path):
    """What the driver asks a lock holder's host (executors/ray_cluster.py): drop the lock when its process
    is gone, keep it while it lives or once it changed."""
    from ablations import rundir as rd
    from ablations.executors.ray_cluster import _drop_lock_if_dead

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    seen = {"pid": dead.pid, "host": socket.gethostname(), "started": "then", "token": "t"}
    (tmp_path / rd.LOCK).write_text(json.dumps(seen))
    assert _drop_lock_if_dead(str(tmp_path), {**seen, "token": "other"}) is None  # not the lock it saw
    assert _drop_lock_if_dead(str(tmp_path), seen) == str(tmp_path / rd.LOCK)
    assert not (tmp_path / rd.LOCK).exists()
    alive = {**seen, "pid": os.getpid()}
    (tmp_path / rd.LOCK).write_text(json.dumps(alive))
    assert _drop_lock_if_dead(str(tmp_path), alive) is None and (tmp_path / rd.LOCK).exists()


def test_close_leaves_the_process_group_and_resets_the_current_process():
    """distributed.close: the process group is destroyed (a process that exits while still in it can die in
    gloo's teardown with SIGABRT, which made a finished 2-process run exit non-zero) and current() is the
    single-process Dist again; without a group it does nothing."""
    import torch.distributed as tdist

    from ablations import distributed

    distributed.close(True)  # no group: nothing to do
    tdist.init_process_group("gloo", rank=0, world_size=1, store=tdist.HashStore())
    assert tdist.is_initialized()
    distributed.close(True)
    assert not tdist.is_initialized() and distributed.current() == distributed.Dist()
