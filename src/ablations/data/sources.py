"""Where a dataset's bytes come from: an explicit path (data.path / --data-dir), a folder named by
$ABLATIONS_DATA, or an official download into the cache; plus safe archive reading and the errors
that tell a user exactly what to put where.

Nothing here imports torch, so it stays cheap to import (the CLI's `list` and error paths use it).
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional

from ..config import UserError

ENV_DATA = "ABLATIONS_DATA"  # a folder holding local copies of datasets (files, folders or archives)
ENV_CACHE = "ABLATIONS_CACHE"  # where decoded tensors and downloads go (default ~/.cache/ablations)
ENV_OFFLINE = "ABLATIONS_OFFLINE"  # "1": never try the network (tests set it)


class DataError(UserError, RuntimeError):
    """A dataset cannot be read (missing, corrupt, unsafe archive): a one-line message naming the file."""


class DataNotFound(DataError):
    """No local copy and no way to download: the message says what to put where."""


def offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


def cache_dir() -> Path:
    """$ABLATIONS_CACHE, else ~/.cache/ablations; created on first use."""
    root = os.environ.get(ENV_CACHE) or str(Path.home() / ".cache" / "ablations")
    p = Path(root).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create cache dir {p}: {e.strerror or e} (set ${ENV_CACHE} to a writable folder)") from None
    return p


def search_dirs(explicit: Optional[str | os.PathLike]) -> list[Path]:
    """Candidate places, in order: the explicit path (or its folder), then $ABLATIONS_DATA."""
    out: list[Path] = []
    if explicit:
        out.append(Path(explicit).expanduser())
    env = os.environ.get(ENV_DATA)
    if env:
        out.append(Path(env).expanduser())
    return out


def find_local(names: Iterable[str], explicit: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """The first existing local copy among `names` (file or folder names, tried in the given order).

    `explicit` may be the copy itself (a path whose name is one of `names`, or any existing file),
    or a folder holding one of `names`. Then $ABLATIONS_DATA (a folder) is searched the same way.
    An explicit path that does not exist is an error (the user asked for it by name).
    """
    names = list(names)
    if explicit:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise DataNotFound(f"data path {p} does not exist")
        if p.is_file() or p.name in names:
            return p
    for d in search_dirs(explicit):
        if not d.is_dir():
            continue
        for n in names:
            cand = d / n
            if cand.exists():
                return cand
    return None


def identity(path: Path) -> str:
    """A short key for a source's bytes: resolved path + size + mtime (ns) of the file, or of every
    file under a folder (so replacing a copy invalidates the decoded cache without hashing 100s of MB)."""
    path = Path(path).resolve()
    h = hashlib.sha1(str(path).encode())
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())
    for q in files:
        st = q.stat()
        h.update(f"{q.relative_to(path) if q != path else ''}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- archives

def _safe_member(m: tarfile.TarInfo, archive: Path) -> bool:
    """Reject members that could write outside the target (absolute, '..', links, devices)."""
    p = PurePosixPath(m.name)
    if p.is_absolute() or ".." in p.parts or m.name.startswith(("/", "\\")):
        raise DataError(f"{archive}: unsafe member {m.name!r} (absolute path or '..'); refusing to read it")
    if m.issym() or m.islnk() or m.isdev():
        raise DataError(f"{archive}: unsafe member {m.name!r} (link or device); refusing to read it")
    return m.isfile() or m.isdir()


def _corrupt(archive: Path, e: BaseException) -> DataError:
    return DataError(f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e}); "
                     f"replace it with a good copy")


_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def iter_tar(archive: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every regular file, streamed in archive order without extracting.
    Unsafe members and corrupt/truncated archives raise DataError naming the archive."""
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:
                if not _safe_member(m, archive) or not m.isfile():
                    continue
                f = tf.extractfile(m)
                assert f is not None
                yield m.name, f.read()
    except DataError:
        raise
    except _ARCHIVE_ERRORS as e:
        raise _corrupt(archive, e) from None


def extract_tar(archive: Path, dest: Optional[Path] = None) -> Path:
    """Extract `archive` safely into dest (default: cache_dir()/extracted/<name>-<identity>) and
    return dest. Extraction happens into a temp folder renamed on success, so a crash never leaves a
    half-extracted tree that looks complete; a finished extraction is reused."""
    import shutil

    archive = Path(archive)
    if dest is None:
        stem = archive.name.split(".")[0]
        dest = cache_dir() / "extracted" / f"{stem}-{identity(archive)}"
    dest = Path(dest)
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = [m for m in tf.getmembers() if _safe_member(m, archive)]
            for m in members:
                target = tmp / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None
                with open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same extraction first
    except DataError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except _ARCHIVE_ERRORS as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _corrupt(archive, e) from None
    return dest
