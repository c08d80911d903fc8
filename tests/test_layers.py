"""Data flows one way: the layering of the package, checked on its source (every import, module-level or
inside a function, relative ones resolved), so a shortcut import fails here rather than as a cycle later.

    errors <- rundir                       (leaves: a run directory is readable without the rest)
    data, models, losses, methods          (never the report, the CLI, the loop, studies or generate)
    loop                                   (never the report, the CLI or studies)
    report                                 (reads run directories: never the loop, the CLI or methods)
    sampling                               (a library for methods and generate, below both)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "ablations"


def modules_under(src: Path) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package under `src`."""
    out = {}
    for path in sorted((src / PKG).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = modules_under(SRC)


def imports_of(module: str, modules: dict[str, Path] = MODULES) -> list[tuple[str, int]]:
    """(imported ablations module, line) for every import statement in `module`'s source, at any depth.
    `from pkg import name` counts as importing pkg.name when that is a module, else pkg."""
    path = modules[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level - 1 > len(base) - 1:
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top package")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if sub in modules else target, node.lineno))
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.args[0].value, node.lineno))  # importlib.import_module("ablations.x")
    return sorted({(m, ln) for m, ln in out if m == PKG or m.startswith(PKG + ".")}, key=lambda t: (t[1], t[0]))


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def offending(importers, forbidden, allowed=None) -> list[str]:
    """'file:line imports X' for each import by a module under `importers` of a module under `forbidden`
    (or, with `allowed`, of any ablations module outside it)."""
    bad = []
    for mod in MODULES:
        if not _within(mod, importers):
            continue
        for target, line in imports_of(mod):
            if _within(target, forbidden) if allowed is None else not _within(target, allowed):
                bad.append(f"{MODULES[mod].relative_to(SRC.parent)}:{line} imports {target}")
    return bad


RULES = {  # name: (importers, forbidden, allowed)
    "rundir imports only errors": (["ablations.rundir"], None, ["ablations.errors"]),
    "errors imports nothing": (["ablations.errors"], None, []),
    "components never import the layers above": (
        ["ablations.data", "ablations.models", "ablations.losses", "ablations.methods"],
        ["ablations.report", "ablations.cli", "ablations.loop", "ablations.study", "ablations.generate"], None),
    "loop never imports report, cli or study": (
        ["ablations.loop"], ["ablations.report", "ablations.cli", "ablations.study"], None),
    "report never imports loop, cli or methods": (
        ["ablations.report"], ["ablations.loop", "ablations.cli", "ablations.methods"], None),
    "sampling never imports methods, loop, generate or cli": (
        ["ablations.sampling"], ["ablations.methods", "ablations.loop", "ablations.generate", "ablations.cli"], None),
}
KNOWN_DEBT: dict[str, str] = {}  # rule -> "file:line why" (strict xfail: fixing it makes the test fail)


@pytest.mark.parametrize("rule", [pytest.param(r, marks=pytest.mark.xfail(strict=True, reason=KNOWN_DEBT[r]))
                                  if r in KNOWN_DEBT else r for r in RULES])
def test_layering(rule):
    importers, forbidden, allowed = RULES[rule]
    assert any(_within(m, importers) for m in MODULES), f"{rule}: no module matches {importers}"
    assert offending(importers, forbidden, allowed) == []


# ---------------------------------------------------------------- the checker itself sees imports

def test_import_scanner_finds_known_edges():
    # each kind of import statement the rules depend on, as the source has them today
    loop = [m for m, _ in imports_of("ablations.loop")]
    assert "ablations.rundir" in loop  # `from . import rundir`: the submodule, not the package
    assert "ablations" not in loop
    assert "ablations.registry" in loop  # `from .registry import METHODS`: a name, so the module
    cli = [m for m, _ in imports_of("ablations.cli")]
    assert "ablations.generate" in cli  # function-level `from .generate import main`
    zs = [m for m, _ in imports_of("ablations.methods.zeroshot")]
    assert "ablations.models.pretrained" in zs  # `from ..models.pretrained import ...` inside a function
    assert "ablations.methods.supervised" in zs  # `from .supervised import Supervised` in a subpackage
    assert imports_of("ablations.errors") == []
    assert [m for m, _ in imports_of("ablations.rundir")] == ["ablations.errors"]


def test_offending_reports_file_and_line():
    # a rule that is broken today reads as file:line, so the failure says what to fix
    bad = offending(["ablations.cli"], ["ablations.loop"])
    assert bad and all(b.startswith("src/ablations/cli.py:") and b.endswith("imports ablations.loop") for b in bad)
    line = int(bad[0].split(":")[1].split()[0])
    assert "loop" in (SRC / "ablations" / "cli.py").read_text().splitlines()[line - 1]
    assert offending(["ablations.errors"], None, []) == []
    assert offending(["ablations.rundir"], None, []) == [f"src/ablations/rundir.py:{ln} imports ablations.errors"
                                                         for _, ln in imports_of("ablations.rundir")]


def test_relative_import_resolution(tmp_path):
    sub = tmp_path / PKG / "sub"
    sub.mkdir(parents=True)
    (tmp_path / PKG / "__init__.py").write_text("")
    (tmp_path / PKG / "top.py").write_text("")
    (sub / "__init__.py").write_text("from . import leaf\n")
    (sub / "leaf.py").write_text("")
    (sub / "user.py").write_text("import os\nfrom .. import top\nfrom ..top import X\nfrom .leaf import f\n"
                                 "def g():\n    from ablations.sub import leaf\n    import ablations.top\n"
                                 "    import importlib\n    importlib.import_module('ablations.sub.leaf')\n")
    mods = modules_under(tmp_path)
    assert sorted(mods) == ["ablations", "ablations.sub", "ablations.sub.leaf", "ablations.sub.user",
                            "ablations.top"]
    assert imports_of("ablations.sub.user", mods) == [
        ("ablations.top", 2), ("ablations.top", 3), ("ablations.sub.leaf", 4), ("ablations.sub.leaf", 6),
        ("ablations.top", 7), ("ablations.sub.leaf", 9)]
    assert imports_of("ablations.sub", mods) == [("ablations.sub.leaf", 1)]
