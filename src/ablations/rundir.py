"""The run directory: its file names, atomic writers, checkpoints, final weights, the metrics and
invocation logs, the lock that keeps two processes out of one run, and `Run`, the one reader of a
finished or unfinished run that the report, the CLI and generation share.

A leaf module: only the standard library, torch, safetensors and `ablations.errors`."""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional

import torch

from .errors import RunError

CONFIG = "config.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
FINAL = "final.safetensors"
RESULT = "result.json"
INVOCATIONS = "invocations.jsonl"
LOCK = ".lock"
SCORES = "scores.pt"  # core-set proxies: a score per training example (higher = harder), by train-split index
LABELS = "labels.pt"  # label-noise runs: the training labels as given (noisy) and true, and their dataset index

# What --overwrite may delete: the files a run writes, nothing else the user keeps in the folder.
RUN_FILES = (CONFIG, ENV, METRICS, CHECKPOINT, FINAL, RESULT, INVOCATIONS,
             "test_predictions.pt", "samples.json", "samples.md", SCORES, LABELS)
FAILURE = "failure.txt"  # a failed Ray task's traceback (executors/ray_cluster.py); removed when the run starts again


# ---------------------------------------------------------------- atomic writes

def _temp_name(path: Path) -> Path:
    # pid + random suffix: two writers of the same file never share (and clobber) a temp file
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; not every OS/filesystem lets a directory be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` only once fully written and synced; on any failure
    the old `path` is left as it was and the temp file is removed."""
    path = Path(path)
    tmp = _temp_name(path)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _atomic_file(Path(path)) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- checkpoints and final weights

def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save through a temp file: a crash never leaves a half-written checkpoint behind."""
    with _atomic_file(Path(path)) as f:
        torch.save(state, f)


def load_checkpoint(path: Path) -> dict:
    """The checkpoint as a dict on the CPU; weights_only, so loading runs no pickled code. Anything
    wrong with the file is a one-line RunError; nothing is modified or deleted."""
    path = Path(path)
    advice = (f"delete it to restart this run from scratch (`ablations resume {path.parent}`), "
              "or rerun with --overwrite")
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found; `ablations resume {path.parent}` starts the run "
                       "from scratch when there is none, or rerun with --overwrite")
    try:
        if path.stat().st_size == 0:
            raise RunError(f"{path}: checkpoint is empty; {advice}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except RunError:
        raise
    except Exception as e:  # torch raises many kinds (EOFError, RuntimeError, UnpicklingError, ...)
        raise RunError(f"{path}: checkpoint is empty/truncated/unreadable ({type(e).__name__}); {advice}") from None
    if not isinstance(state, dict):
        raise RunError(f"{path}: checkpoint holds a {type(state).__name__}, not a training state; {advice}")
    return state


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A dict of tensors (torch.save), written atomically."""
    with _atomic_file(Path(path)) as f:
        torch.save(tensors, f)


def save_final(run_dir: Path, state_dict: dict[str, torch.Tensor], meta: Optional[dict] = None) -> None:
    """The final weights as FINAL (float tensors as float32), written atomically and byte-for-byte
    reproducible: same tensors and meta, same file."""
    from safetensors.torch import save

    tensors = {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in state_dict.items()}
    # safetensors keeps metadata in a Rust HashMap, so its header order changes from call to call:
    # let it lay out the tensor data, then write the header ourselves with sorted keys.
    blob = save(tensors)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    header.pop("__metadata__", None)
    if meta:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(meta.items(), key=lambda kv: str(kv[0]))}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes so the data stays aligned
    atomic_write_bytes(Path(run_dir) / FINAL, struct.pack("<Q", len(text)) + text + blob[8 + n:])


# ---------------------------------------------------------------- JSON-lines logs

def _scalar(obj: Any) -> Any:
    """JSON fallback for log records: numbers (tensors, numpy scalars) as floats, anything else as text."""
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


def _append_jsonl(path: Path, record: dict) -> None:
    path = Path(path)
    line = json.dumps(record, default=_scalar) + "\n"
    with open(path, "ab+") as f:
        # a line cut by a crash must not swallow the next record: start a fresh line after it
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file ([] when missing); a line cut by a crash is skipped
    (the checkpoint, not the log, is the truth)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_metrics(path: Path) -> list[dict]:
    return read_jsonl(path)


class MetricsLog:
    """Append-only JSON lines; one record per epoch (and any extra events)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        _append_jsonl(self.path, record)

    def read(self) -> list[dict]:
        return read_jsonl(self.path)

    def truncate_after(self, epoch: int) -> None:
        """On resume: drop the records of epochs after the checkpoint (they will be run again);
        records without an epoch are kept."""
        keep = [r for r in self.read() if r.get("epoch", 0) <= epoch]
        atomic_write_text(self.path, "".join(json.dumps(r, default=_scalar) + "\n" for r in keep))


def record_invocation(run_dir: Path, record: dict) -> None:
    """One line per process that worked on the run (started, wall_time, resumed_from_epoch, finished)."""
    _append_jsonl(Path(run_dir) / INVOCATIONS, record)


# ---------------------------------------------------------------- the lock

def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _parse_lock(data: bytes) -> Optional[dict]:
    """The lock's JSON, or None when it is empty or unreadable."""
    try:
        info = json.loads(data)
    except ValueError:
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or info["pid"] <= 0:
        return None  # pid <= 0 would make os.kill test a whole process group
    return info


def _read_lock(path: Path) -> Optional[dict]:
    try:
        return _parse_lock(Path(path).read_bytes())
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return False
    return True


def lock_holder(run_dir: Path) -> Optional[dict]:
    """{pid, host, started} of the process holding run_dir's lock, or None (no lock, or an unreadable one)."""
    return _read_lock(Path(run_dir) / LOCK)


def process_alive(pid: int) -> bool:
    """Whether process `pid` of THIS host lives."""
    return _pid_alive(pid)


def _busy_error(run_dir: Path, info: dict) -> RunError:
    pid, host, since = info.get("pid"), info.get("host", "?"), info.get("started", "?")
    if host != socket.gethostname():
        # we cannot see another machine's processes: never take its lock over by ourselves
        return RunError(f"{run_dir} is in use by process {pid} on {host} since {since}; if that machine "
                        f"or process is gone, delete {Path(run_dir) / LOCK} and try again")
    return RunError(f"{run_dir} is in use by process {pid} on {host} since {since}; wait for it or stop it "
                    "(a lock left by a dead process is taken over automatically)")


def _held_by_other(info: Optional[dict]) -> bool:
    """True when the lock described by `info` belongs to a live holder (or to another host)."""
    if info is None:
        return False
    if info.get("host") != socket.gethostname():
        return True
    return _pid_alive(info["pid"])


class RunLock:
    """Keeps two processes from working on one run dir: run_dir/LOCK holds {pid, host, started}.
    A lock whose process is dead (same host), or that is empty or unreadable, is taken over."""

    # a lock file younger than this with no content yet is probably being written: wait for it
    FRESH_S = 2.0

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.token: Optional[str] = None
        self._pid: Optional[int] = None

    def _content(self) -> bytes:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "token": self.token}
        return (json.dumps(info, sort_keys=True) + "\n").encode("utf-8")

    def acquire(self) -> "RunLock":
        if self.token is not None:
            raise RuntimeError("RunLock is not reentrant")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(8)
        try:
            self._acquire()
        except BaseException:
            self.token = None
            raise
        self._pid = os.getpid()
        return self

    def _acquire(self) -> None:
        deadline = time.monotonic() + 10 * self.FRESH_S
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pass
            else:
                try:
                    os.write(fd, self._content())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                return
            try:
                seen = self.path.read_bytes()
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                continue  # released between our create and read: try again
            info = _parse_lock(seen)
            if info is not None and _held_by_other(info):
                raise _busy_error(self.run_dir, info)
            if info is None and age < self.FRESH_S and time.monotonic() < deadline:
                time.sleep(0.05)  # another process may be between its create and its write
                continue
            if self._take_over(seen):
                return
            if time.monotonic() > deadline:
                raise RunError(f"{self.run_dir}: could not take over the stale lock {self.path}; "
                               "delete it and try again")
            time.sleep(0.05)

    def _take_over(self, seen: bytes) -> bool:
        """Replace the stale lock `seen` with ours. A short-lived guard file serialises takeovers, so
        two processes finding the same dead lock cannot both win."""
        guard = self.path.with_name(LOCK + ".takeover")
        try:
            fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):  # a guard left by a process that died mid-takeover
                if time.time() - guard.stat().st_mtime > 10 * self.FRESH_S:
                    guard.unlink()
            return False
        os.close(fd)
        try:
            try:
                current = self.path.read_bytes()
            except FileNotFoundError:
                return False  # released meanwhile: the O_EXCL create will win it
            if current != seen:
                return False  # someone else took it over first: look again
            atomic_write_bytes(self.path, self._content())
            return True
        finally:
            with contextlib.suppress(OSError):
                guard.unlink()

    def release(self) -> None:
        """Remove the lock file, only while it is still ours (and only in the process that took it)."""
        if self.token is None or self._pid != os.getpid():
            return
        info = _read_lock(self.path)
        if info is not None and info.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.token = None
        self._pid = None

    @property
    def held(self) -> bool:
        info = _read_lock(self.path)
        return self.token is not None and info is not None and info.get("token") == self.token

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------- preparing and reading run dirs

def prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Make run_dir ready for a run: refuse to clobber a finished run unless overwrite, require
    resume or overwrite for an unfinished one, and on resume require a run to be there. Overwrite
    deletes only RUN_FILES. A lock held by another live process is always refused (this process's
    own lock is fine: take the RunLock first, then call this)."""
    run_dir = Path(run_dir)
    info = _read_lock(run_dir / LOCK)
    if info is not None and not (info.get("pid") == os.getpid() and info.get("host") == socket.gethostname()) \
            and _held_by_other(info):
        raise _busy_error(run_dir, info)
    with contextlib.suppress(OSError):
        (run_dir / FAILURE).unlink()  # the last attempt's failure: this one starts or resumes
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise RunError(f"{run_dir}: not a run directory (no {CONFIG}); start the run without resume")
        return
    present = [n for n in RUN_FILES if (run_dir / n).exists()]
    if present and not overwrite:
        if (run_dir / RESULT).exists():
            raise RunError(f"{run_dir} already holds a finished run; pass --overwrite to replace it")
        if (run_dir / CONFIG).exists():
            raise RunError(f"{run_dir} holds an unfinished run; use `ablations resume {run_dir}` or --overwrite")
        raise RunError(f"{run_dir} holds run files ({', '.join(present)}) but no {CONFIG}; "
                       "pass --overwrite to replace them or choose another output dir")
    try:
        for name in present:
            (run_dir / name).unlink()
        if overwrite and run_dir.is_dir():  # temp files of run files left by a writer that died
            for p in run_dir.glob(".*.tmp"):
                m = _TEMP_RE.match(p.name)
                if m and m["name"] in RUN_FILES and not _pid_alive(int(m["pid"])):
                    p.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = _temp_name(run_dir / ".write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write to output dir {run_dir}: {e.strerror or e}") from None


def _read_json_file(path: Path, required: bool) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        if required:
            raise RunError(f"{path}: not found; {path.parent} is not a run directory") from None
        return None
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}); "
                       "the file is corrupt: fix or delete it (or rerun with --overwrite)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: unreadable ({getattr(e, 'strerror', None) or e})") from None


@dataclass
class Run:
    """Everything a run directory holds, read once: config.json (raw, untyped), env.json,
    metrics.jsonl, result.json (None while unfinished) and invocations.jsonl."""
    dir: Path
    config: dict
    env: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    result: Optional[dict] = None
    invocations: list[dict] = field(default_factory=list)

    @classmethod
    def read(cls, dir: Path) -> "Run":
        d = Path(dir)
        config = _read_json_file(d / CONFIG, required=True)
        if not isinstance(config, dict):
            raise RunError(f"{d / CONFIG}: expected a JSON object, found {type(config).__name__}")
        env = _read_json_file(d / ENV, required=False)
        result = _read_json_file(d / RESULT, required=False)
        if result is not None and not isinstance(result, dict):
            raise RunError(f"{d / RESULT}: expected a JSON object, found {type(result).__name__}")
        return cls(dir=d, config=config, env=env if isinstance(env, dict) else {},
                   metrics=read_jsonl(d / METRICS), result=result, invocations=read_jsonl(d / INVOCATIONS))

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def wall_time(self) -> float:
        """Seconds spent on the run over all its invocations (resumes included). A process killed outright (SIGKILL,
        power loss) leaves no invocation record: where the first record resumes from epoch k, the measured epoch
        times of epochs 1..k stand in for that process (a lower bound: its start-up is not in them)."""
        if self.invocations:
            t = sum(float(i.get("wall_time") or 0.0) for i in self.invocations)
            k = self.invocations[0].get("resumed_from_epoch") or 0
            t += sum(float(m.get("epoch_time") or 0.0) for m in self.metrics if int(m.get("epoch", 0)) <= k)
            return float(t)
        return float((self.result or {}).get("wall_time", 0.0) or 0.0)

    @property
    def variant(self) -> str:
        return str(self.config.get("variant") or self.dir.name)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def preset(self) -> str:
        return str(self.config.get("preset", "default"))

    @property
    def study(self) -> str:
        return str(self.config.get("study", "adhoc"))


STUDY = "study.json"  # beside a study's run dirs (<out>/<study>/<preset>/): what the report needs of the study


def write_study_record(study_dir: Path, record: dict) -> None:
    """The study's title, description, notes, variant order and report sections, so that a report is made
    from the run files alone (the study file may have changed or be elsewhere since)."""
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(study_dir) / STUDY, record)


def read_study_record(path: Path) -> dict:
    """The study.json at or above `path` (a study dir or a run dir below it); {} when there is none."""
    p = Path(path)
    for d in (p, *list(p.parents)[:3]):
        f = d / STUDY
        if f.is_file():
            try:
                return read_json(f)
            except (OSError, ValueError):
                return {}
    return {}


def find_runs(root: Path) -> list[Path]:
    """The run directories (those holding CONFIG) under root, root included, sorted."""
    root = Path(root)
    return sorted({p.parent for p in root.rglob(CONFIG) if p.is_file()})
