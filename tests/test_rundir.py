"""The run directory: atomic writes, checkpoints, final weights, logs, the lock, prepare_run_dir, Run."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from ablations import rundir as rd
from ablations.errors import RunError, UserError

SRC = Path(__file__).resolve().parents[1] / "src"


def files(d: Path) -> dict[str, bytes]:
    """Every file under d with its bytes: to show that nothing else was touched."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(run_dir: Path, **info) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    base = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2024-01-01T00:00:00+0000"}
    path = run_dir / rd.LOCK
    path.write_text(json.dumps({**base, **info}))
    return path


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- atomic writes

def test_write_json_format_and_no_temp_files(tmp_path):
    p = tmp_path / "x.json"
    rd.write_json(p, {"b": 1, "a": Path("/p")})
    assert p.read_text() == '{\n  "a": "/p",\n  "b": 1\n}\n'  # sorted, indent 2, default=str, newline
    assert rd.read_json(p) == {"a": "/p", "b": 1}
    rd.atomic_write_text(p, "second")
    assert p.read_text() == "second"
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    p = tmp_path / "x.json"
    rd.write_json(p, {"v": 1})
    ck = tmp_path / rd.CHECKPOINT
    rd.save_checkpoint(ck, {"epoch": 1})
    old = files(tmp_path)

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        rd.write_json(p, {"v": 2})
    with pytest.raises(OSError):
        rd.save_checkpoint(ck, {"epoch": 2})
    assert files(tmp_path) == old  # old contents intact, no temp file left


def test_temp_names_are_unique_per_write(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append(Path(src))
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    rd.atomic_write_text(tmp_path / "a.txt", "1")
    rd.atomic_write_text(tmp_path / "a.txt", "2")
    assert len(seen) == 2 and seen[0] != seen[1]
    assert all(s.parent == tmp_path and str(os.getpid()) in s.name for s in seen)


# ---------------------------------------------------------------- checkpoints

def training_state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(8, 4)).square().mean().backward()
    opt.step()
    random.seed(7)
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "step": 120,
            "best": {"epoch": 2, "val_acc": 51.5, "note": "x", "none": None},
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}


def test_checkpoint_round_trip_with_rng_states(tmp_path):
    state = training_state()
    path = tmp_path / rd.CHECKPOINT
    rd.save_checkpoint(path, state)
    assert [q.name for q in tmp_path.iterdir()] == [rd.CHECKPOINT]
    back = rd.load_checkpoint(path)
    assert back["epoch"] == 3 and back["step"] == 120 and back["best"] == state["best"]
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v)
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    # the restored RNGs replay the same draws
    random.setstate(back["rng"]["python"])
    torch.set_rng_state(back["rng"]["torch"])
    a = (random.random(), torch.rand(3))
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def _bad_checkpoints(tmp_path: Path) -> dict[str, bytes]:
    good = tmp_path / "good.pt"
    rd.save_checkpoint(good, training_state())
    data = good.read_bytes()
    good.unlink()
    return {"empty": b"", "truncated": data[: len(data) // 2], "garbage": os.urandom(4096)}


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage"])
def test_bad_checkpoint_is_one_line_run_error_and_touches_nothing(tmp_path, kind):
    run = tmp_path / "run"
    run.mkdir()
    (run / rd.CHECKPOINT).write_bytes(_bad_checkpoints(tmp_path)[kind])
    rd.write_json(run / rd.CONFIG, {"variant": "v"})
    (run / rd.METRICS).write_text('{"epoch": 1}\n')
    before = files(run)
    with pytest.raises(RunError) as e:
        rd.load_checkpoint(run / rd.CHECKPOINT)
    msg = one_line(e)
    assert str(run / rd.CHECKPOINT) in msg and "--overwrite" in msg
    assert isinstance(e.value, UserError)
    assert files(run) == before


def test_missing_checkpoint_and_unsafe_pickle_are_run_errors(tmp_path):
    with pytest.raises(RunError) as e:
        rd.load_checkpoint(tmp_path / rd.CHECKPOINT)
    assert str(tmp_path / rd.CHECKPOINT) in one_line(e)
    # weights_only: a pickle naming an arbitrary class is refused, not executed
    torch.save({"p": Path("x")}, tmp_path / "unsafe.pt")
    with pytest.raises(RunError) as e:
        rd.load_checkpoint(tmp_path / "unsafe.pt")
    assert "unsafe.pt" in one_line(e)


# ---------------------------------------------------------------- final weights

def test_save_final_is_byte_identical_and_loadable(tmp_path):
    from safetensors import safe_open

    w = torch.randn(6, 4, dtype=torch.float16)
    state = {"w": w.t(), "b": torch.arange(3, dtype=torch.float64), "n": torch.tensor(5),
             "m": torch.ones(2, dtype=torch.bool)}
    meta = {f"k{i}": i for i in range(20)} | {"path": Path("/x")}
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    rd.save_final(a, state, meta)
    rd.save_final(b, state, dict(reversed(list(meta.items()))))  # same meta, other insertion order
    assert (a / rd.FINAL).read_bytes() == (b / rd.FINAL).read_bytes()
    assert sorted(q.name for q in a.iterdir()) == [rd.FINAL]
    with safe_open(str(a / rd.FINAL), "pt") as f:
        assert f.metadata() == {k: str(v) for k, v in meta.items()}
        assert f.get_tensor("w").dtype == torch.float32 and torch.equal(f.get_tensor("w"), w.t().float())
        assert f.get_tensor("b").dtype == torch.float32
        assert f.get_tensor("n").dtype == torch.int64 and f.get_tensor("n").item() == 5
        assert f.get_tensor("m").dtype == torch.bool
    rd.save_final(a, state, None)
    with safe_open(str(a / rd.FINAL), "pt") as f:
        assert not f.metadata()


# ---------------------------------------------------------------- logs

def test_metrics_log_truncate_and_cut_line(tmp_path):
    log = rd.MetricsLog(tmp_path / rd.METRICS)
    assert log.read() == [] and rd.read_metrics(tmp_path / "none.jsonl") == []
    for e in range(1, 6):
        log.append({"epoch": e, "loss": torch.tensor(1.0 / e)})  # a tensor scalar is logged as a float
    log.append({"event": "note"})
    assert [r.get("epoch") for r in log.read()] == [1, 2, 3, 4, 5, None]
    assert log.read()[1]["loss"] == 0.5
    log.truncate_after(3)
    assert [r.get("epoch") for r in rd.read_metrics(log.path)] == [1, 2, 3, None]
    assert sorted(q.name for q in tmp_path.iterdir()) == [rd.METRICS]
    # a crash cut the last line: it is skipped, and the next record still gets a line of its own
    with open(log.path, "a") as f:
        f.write('{"epoch": 4, "lo')
    assert [r.get("epoch") for r in log.read()] == [1, 2, 3, None]
    log.append({"epoch": 4})
    assert [r.get("epoch") for r in log.read()] == [1, 2, 3, None, 4]
    log.truncate_after(3)
    assert log.path.read_text().count("\n") == 4


def test_run_read_sums_invocation_wall_times(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    rd.write_json(run / rd.CONFIG, {"variant": "wide", "seed": 3, "preset": "smoke", "study": "s"})
    rd.write_json(run / rd.RESULT, {"test_acc": 90.0, "wall_time": 99.0})
    r = rd.Run.read(run)
    assert r.finished and r.wall_time == 99.0 and r.env == {} and r.invocations == []
    assert (r.variant, r.seed, r.preset, r.study) == ("wide", 3, "smoke", "s")
    rd.record_invocation(run, {"started": "t0", "wall_time": 10.5, "resumed_from_epoch": None, "finished": False})
    rd.record_invocation(run, {"started": "t1", "wall_time": 20.0, "resumed_from_epoch": 2, "finished": True})
    r = rd.Run.read(run)
    assert [i["finished"] for i in r.invocations] == [False, True]
    assert r.wall_time == 30.5


def test_run_read_defaults_and_errors(tmp_path):
    run = tmp_path / "myrun"
    run.mkdir()
    with pytest.raises(RunError) as e:
        rd.Run.read(run)
    assert str(run / rd.CONFIG) in one_line(e)
    (run / rd.CONFIG).write_text('{"seed": 1,')
    with pytest.raises(RunError) as e:
        rd.Run.read(run)
    assert str(run / rd.CONFIG) in one_line(e)
    rd.write_json(run / rd.CONFIG, {"seed": 1})
    rd.write_json(run / rd.ENV, {"device": "cpu"})
    rd.MetricsLog(run / rd.METRICS).append({"epoch": 1})
    r = rd.Run.read(run)
    assert not r.finished and r.result is None and r.wall_time == 0.0
    assert r.variant == "myrun" and r.env == {"device": "cpu"} and r.metrics == [{"epoch": 1}]
    (run / rd.RESULT).write_text("{")
    with pytest.raises(RunError) as e:
        rd.Run.read(run)
    assert str(run / rd.RESULT) in one_line(e)


def test_find_runs(tmp_path):
    for d in ("s/b/seed0", "s/a/seed1", "s/a/seed0"):
        (tmp_path / d).mkdir(parents=True)
        rd.write_json(tmp_path / d / rd.CONFIG, {})
    (tmp_path / "s/other").mkdir()
    (tmp_path / "s/other/config.yaml").write_text("")
    assert rd.find_runs(tmp_path / "s") == [tmp_path / "s/a/seed0", tmp_path / "s/a/seed1", tmp_path / "s/b/seed0"]
    assert rd.find_runs(tmp_path / "s/a/seed1") == [tmp_path / "s/a/seed1"]
    assert rd.find_runs(tmp_path / "missing") == []


# ---------------------------------------------------------------- the lock

def test_lock_refuses_live_holder_and_releases(tmp_path):
    run = tmp_path / "run"
    with rd.RunLock(run) as lock:
        info = json.loads((run / rd.LOCK).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["started"]
        assert lock.held
        with pytest.raises(RunError) as e:
            rd.RunLock(run).acquire()
        msg = one_line(e)
        assert f"in use by process {os.getpid()}" in msg and str(run) in msg
        assert lock.held  # the refused attempt left our lock alone
    assert not (run / rd.LOCK).exists()
    with rd.RunLock(run):  # free again
        assert (run / rd.LOCK).exists()


def test_lock_of_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    pid = dead_pid()
    write_lock(run, pid=pid)
    lock = rd.RunLock(run).acquire()
    assert json.loads((run / rd.LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (run / rd.LOCK).exists()


@pytest.mark.parametrize("content", [b"", b"{not json"])
def test_unreadable_old_lock_is_taken_over(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / rd.LOCK).write_bytes(content)
    os.utime(run / rd.LOCK, (time.time() - 60, time.time() - 60))  # not one being written right now
    with rd.RunLock(run):
        assert json.loads((run / rd.LOCK).read_text())["pid"] == os.getpid()


def test_lock_from_other_host_is_refused(tmp_path):
    run = tmp_path / "run"
    path = write_lock(run, pid=dead_pid(), host="elsewhere.invalid")
    before = path.read_bytes()
    with pytest.raises(RunError) as e:
        rd.RunLock(run).acquire()
    msg = one_line(e)
    assert "elsewhere.invalid" in msg and str(path) in msg and "delete" in msg
    assert path.read_bytes() == before


def test_release_keeps_a_lock_that_is_no_longer_ours(tmp_path):
    run = tmp_path / "run"
    lock = rd.RunLock(run).acquire()
    write_lock(run, token="someone-else")  # e.g. taken over after we were thought dead
    lock.release()
    assert json.loads((run / rd.LOCK).read_text())["token"] == "someone-else"


def test_racing_takeover_of_a_dead_lock_has_one_winner(tmp_path):
    pid = dead_pid()
    for round_ in range(10):
        run = tmp_path / f"run{round_}"
        write_lock(run, pid=pid)
        won, barrier = [], threading.Barrier(6)

        def take():
            barrier.wait()
            try:
                won.append(rd.RunLock(run).acquire())
            except RunError:
                pass

        threads = [threading.Thread(target=take) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1
        assert not list(run.glob(".*.tmp")) and not (run / (rd.LOCK + ".takeover")).exists()


def test_two_processes_cannot_both_hold_the_lock(tmp_path):
    run = tmp_path / "run"
    child = textwrap.dedent(f"""
        import sys
        from ablations.rundir import RunLock
        with RunLock({str(run)!r}):
            print("held", flush=True)
            sys.stdin.read()
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(RunError) as e:
            rd.RunLock(run).acquire()
        assert f"process {p.pid}" in one_line(e)
        with pytest.raises(RunError):
            rd.prepare_run_dir(run, overwrite=True, resume=False)
    finally:
        p.stdin.close()
        assert p.wait(timeout=60) == 0
    assert not (run / rd.LOCK).exists()  # the child released it on exit
    with rd.RunLock(run):
        pass


# ---------------------------------------------------------------- prepare_run_dir

def make_run(d: Path, finished: bool) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name in rd.RUN_FILES:
        (d / name).write_text("x")
    if not finished:
        (d / rd.RESULT).unlink()


def test_prepare_fresh_and_refusals(tmp_path):
    fresh = tmp_path / "a" / "b"
    rd.prepare_run_dir(fresh, overwrite=False, resume=False)
    assert fresh.is_dir() and list(fresh.iterdir()) == []

    done = tmp_path / "done"
    make_run(done, finished=True)
    before = files(done)
    with pytest.raises(RunError) as e:
        rd.prepare_run_dir(done, overwrite=False, resume=False)
    assert "finished" in one_line(e) and "--overwrite" in str(e.value)

    part = tmp_path / "part"
    make_run(part, finished=False)
    with pytest.raises(RunError) as e:
        rd.prepare_run_dir(part, overwrite=False, resume=False)
    assert "resume" in one_line(e)
    rd.prepare_run_dir(part, overwrite=False, resume=True)  # resume keeps everything

    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / rd.CHECKPOINT).write_text("x")
    with pytest.raises(RunError):
        rd.prepare_run_dir(stray, overwrite=False, resume=False)
    with pytest.raises(RunError) as e:
        rd.prepare_run_dir(tmp_path / "nothing", overwrite=False, resume=True)
    assert rd.CONFIG in one_line(e)
    assert files(done) == before and (part / rd.CHECKPOINT).exists() and (stray / rd.CHECKPOINT).exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError) as e:
        rd.prepare_run_dir(tmp_path / "file" / "run", overwrite=False, resume=False)
    assert "cannot write" in one_line(e)


def test_prepare_overwrite_deletes_only_run_files(tmp_path):
    run = tmp_path / "run"
    make_run(run, finished=True)
    (run / "notes.txt").write_text("mine")
    (run / "sub").mkdir()
    (run / "sub" / rd.CONFIG).write_text("{}")
    stale_tmp = run / f".{rd.CHECKPOINT}.{dead_pid()}.0123abcd.tmp"
    stale_tmp.write_text("half")
    (run / ".keep.tmp").write_text("not ours")
    with rd.RunLock(run):  # our own lock does not stop us, and survives
        rd.prepare_run_dir(run, overwrite=True, resume=False)
        assert (run / rd.LOCK).exists()
    assert sorted(files(run)) == [".keep.tmp", "notes.txt", "sub/config.json"]


def test_prepare_refuses_a_lock_held_by_another_live_process(tmp_path):
    run = tmp_path / "run"
    make_run(run, finished=True)
    path = write_lock(run, pid=os.getppid())  # alive, and not us
    before = files(run)
    for resume in (False, True):
        with pytest.raises(RunError) as e:
            rd.prepare_run_dir(run, overwrite=True, resume=resume)
        assert f"process {os.getppid()}" in one_line(e)
    assert files(run) == before and path.exists()
