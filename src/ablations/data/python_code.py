"""A programming-language corpus every machine has offline: the Python standard library's own source.

Why this corpus: it is real, idiomatic, reviewed code under a permissive licence (the PSF licence), and
every machine that runs this package has it on disk (it is read from the running interpreter's
installation, sysconfig.get_paths()["stdlib"]), so nothing is downloaded.

How it is cut, deterministically:
- every *.py file under the stdlib folder, sorted by relative POSIX path;
- test suites and trees that are not library code are skipped: any folder named test/, tests/,
  idlelib/, lib2to3/, site-packages/, dist-packages/, ensurepip/, turtledemo/, __pycache__/,
  pydoc_data/ or config-*/ (the build's Makefile folder); also _sysconfigdata_*.py, the build's generated
  configuration (compiler flags and install paths: it differs between machines with the same version);
- files that are not UTF-8 are skipped;
- each file is preceded by a separator line `# ---- <relative path>`, so file boundaries are visible and
  the corpus is still Python;
- whole files are kept in sorted order until the next one would take the corpus past data.max_chars.

A different Python version gives a different corpus: the source string (TextData.source) names the version,
and TextData.md5 identifies the exact text. data.path reads that text file instead.
"""
from __future__ import annotations

import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..config import opt
from ..registry import DATASETS
from .sources import DataError, DataNotFound
from .text import TextData, TextDataConfig, build_text_data, read_text_file

EXCLUDED_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages",
                           "ensurepip", "turtledemo", "__pycache__", "pydoc_data"})
EXCLUDED_DIR_PREFIXES = ("config-",)
EXCLUDED_FILE_PREFIXES = ("_sysconfigdata_",)
SEPARATOR = "# ---- {}\n"


@dataclass(frozen=True)
class PythonCodeConfig(TextDataConfig):
    max_chars: int = opt(3_000_000, "cap on the corpus in characters (separator lines included); whole files "
                         "are kept in sorted order until the next one would pass it", ge=1000)


def stdlib_dir() -> Path:
    """The running interpreter's standard-library folder (tests monkeypatch this)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _excluded_dir(name: str) -> bool:
    return name in EXCLUDED_DIRS or name.startswith(EXCLUDED_DIR_PREFIXES)


def library_files(root: Path) -> list[str]:
    """Relative POSIX paths of the library's .py files under root, sorted; excluded trees pruned."""
    out = []
    for folder, dirs, files in os.walk(root):  # does not follow symlinked folders
        dirs[:] = [d for d in dirs if not _excluded_dir(d)]
        rel = Path(folder).relative_to(root)
        out += [(rel / f).as_posix() for f in files
                if f.endswith(".py") and not f.startswith(EXCLUDED_FILE_PREFIXES)]
    return sorted(out)


def stdlib_text(root: Path, max_chars: int) -> tuple[str, int, int]:
    """The corpus text, the number of files in it and the number of non-UTF-8 files skipped."""
    rels = library_files(root)
    if not rels:
        raise DataNotFound(f"dataset 'python-stdlib': no .py files in {root} (the Python standard library folder)")
    parts, total, skipped = [], 0, 0
    for rel in rels:
        try:
            text = (root / rel).read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            skipped += 1
            continue
        except OSError:  # a dangling symlink or unreadable file: not part of the corpus
            skipped += 1
            continue
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if text and not text.endswith("\n"):
            text += "\n"
        piece = SEPARATOR.format(rel) + text
        if total + len(piece) > max_chars:
            break
        parts.append(piece)
        total += len(piece)
    if not parts:
        raise DataError(f"dataset 'python-stdlib': data.max_chars={max_chars:,} is smaller than the first file "
                        f"of {root} ({rels[0]}); raise it")
    return "".join(parts), len(parts), skipped


@DATASETS.register("python-stdlib", PythonCodeConfig, input="text", code=True)
def python_stdlib(cfg: PythonCodeConfig) -> TextData:
    """The running Python's standard-library source (tests excluded; PSF licence), capped at data.max_chars."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        return build_text_data(read_text_file(path), cfg, str(path))
    root = stdlib_dir()
    if not root.is_dir():
        raise DataNotFound(f"dataset 'python-stdlib': the Python standard library folder {root} does not exist")
    text, n_files, skipped = stdlib_text(root, cfg.max_chars)
    source = (f"Python {platform.python_version()} standard library ({root}, {n_files:,} files, "
              f"{len(text):,} chars; tests excluded"
              + (f"; {skipped} non-UTF-8 files skipped" if skipped else "") + ")")
    return build_text_data(text, cfg, source)
