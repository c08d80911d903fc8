"""Studies are data: a YAML file with the base config, presets, the variant grid and the targets.

Resolution of one run (later wins), as plain dicts, then typed once (config.build):
  study `base` -> study `presets[preset]` -> variant `set` -> variant `presets[preset]` -> CLI --set; then the seed.
Every preset x variant is resolved and validated when the study loads, before any data is read.
A variant may name another variant in a RunRef field (a teacher, a proxy): that one runs first.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from .config import ConfigError, RunConfig, build, merge
from .registry import Registry

STUDY_DIR = Path(__file__).parent / "studies"
STUDIES = Registry("study")


@dataclass(frozen=True)
class Variant:
    name: str
    set: dict
    target: Optional[float]
    presets: dict
    description: str = ""
    # this variant's seed count where it differs from the study's (a comparison that answers the question):
    # an int for every preset, or {preset: int}; 0 for a preset: not run there unless named with --variant or
    # referenced by a variant that runs (a variant beyond that preset's time budget, e.g. a GPU-sized one)
    seeds: Any = None

    def n_seeds(self, preset: str) -> Optional[int]:
        return self.seeds.get(preset) if isinstance(self.seeds, dict) else self.seeds


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    title: str
    description: str
    metric: str
    goal: str
    seeds: Any  # an int for every preset, or {preset: int} (1 where a preset is not named)
    default_preset: str
    base: dict
    presets: dict
    variants: dict  # name -> Variant, in file order
    notes: str = ""
    sections: tuple = ()  # extra report sections (registry SECTIONS) besides those its methods ask for
    # the comparisons the study's question rests on: ({variant, vs, need}, ...), need = the difference of means
    # (metric units, positive = better) the study's goal asks for, or None
    compare: tuple = ()

    def _one(self, preset: str, v: str, sets: Optional[dict[str, Any]]) -> RunConfig:
        src = str(self.path)
        var = self.variants[v]
        tree: dict = {"study": self.name, "variant": v, "preset": preset, "metric": self.metric, "goal": self.goal,
                      "target": var.target}
        origins: dict[str, str] = {"": src}
        merge(tree, self.base, f"{src}: base", origins)
        merge(tree, self.presets[preset], f"{src}: presets.{preset}", origins)
        merge(tree, var.set, f"{src}: variants.{v}.set", origins)
        merge(tree, var.presets.get(preset), f"{src}: variants.{v}.presets.{preset}", origins)
        if sets:
            merge(tree, sets, "--set", origins)
        cfg = build(tree, origins)
        for key, ref in cfg.refs().items():
            if ref not in self.variants or ref == v:
                close = difflib.get_close_matches(ref, list(self.variants), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{src}: variants.{v}: {key}={ref!r} must name another variant of study "
                                  f"{self.name}{hint}; variants: {', '.join(self.variants)}")
        return cfg

    def resolve(self, preset: Optional[str] = None, variants: Optional[list[str]] = None,
                seeds: Optional[int] = None, sets: Optional[dict[str, Any]] = None) -> list[RunConfig]:
        """Every run to make, in an order where a run comes after the runs it references."""
        preset = preset or self.default_preset
        if preset not in self.presets:
            raise ConfigError(f"study {self.name}: unknown preset {preset!r}; choices: {', '.join(self.presets)}")
        for v in variants or []:
            if v not in self.variants:
                close = difflib.get_close_matches(v, list(self.variants), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"study {self.name}: unknown variant {v!r}{hint}; "
                                  f"choices: {', '.join(self.variants)}")
        if seeds is not None and seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {seeds}")
        # the chosen variants and everything they reference, references first (depth-first, cycles refused)
        order: list[str] = []
        cfgs: dict[str, RunConfig] = {}

        def visit(v: str, stack: tuple[str, ...]) -> None:
            if v in stack:
                raise ConfigError(f"{self.path}: variants {' -> '.join(stack + (v,))} reference each other in a cycle")
            if v in order:
                return
            cfgs[v] = self._one(preset, v, sets)
            for key, ref in cfgs[v].refs().items():
                visit(ref, stack + (v,))
                if cfgs[ref].seed != cfgs[v].seed:  # a reference is the run of the same seed
                    raise ConfigError(f"{self.path}: variants.{v}: {key}={ref!r}, but {v} runs seed "
                                      f"{cfgs[v].seed} and {ref} seed {cfgs[ref].seed}; set the seed in base, "
                                      f"not in one of them")
            order.append(v)

        for v in variants or [v for v in self.variants if self.variants[v].n_seeds(preset) != 0]:
            visit(v, ())
        if not order:
            raise ConfigError(f"{self.path}: preset {preset!r} runs no variant (every variant's seeds for it are 0); "
                              f"name one with --variant")
        study_n = self.seeds.get(preset, 1) if isinstance(self.seeds, dict) else self.seeds
        # --seeds wins; else the variant's own count (0, not run unless named: then the study's), else the
        # study's; a referenced run gets as many seeds as the most-seeded variant that references it (order lists
        # references first)
        n = {v: seeds if seeds is not None else (self.variants[v].n_seeds(preset) or study_n) for v in order}
        for v in reversed(order):
            for ref in cfgs[v].refs().values():
                n[ref] = max(n[ref], n[v])
        return [dataclasses.replace(cfgs[v], seed=cfgs[v].seed + s)
                for s in range(max(n.values())) for v in order if s < n[v]]


_TOP_KEYS = {"name", "title", "description", "metric", "goal", "seeds", "default_preset", "base",
             "presets", "variants", "notes", "sections", "compare"}
_VARIANT_KEYS = {"set", "target", "presets", "description", "seeds"}
_COMPARE_KEYS = {"variant", "vs", "need"}


def _check_compare(path: Path, spec: Any, variants: dict) -> tuple:
    """compare: a list of {variant: a, vs: b, need: number (optional)}, both names variants of the study."""
    if spec is None:
        return ()
    if not isinstance(spec, list):
        raise ConfigError(f"{path}: compare must be a list of {{variant: ..., vs: ..., need: ...}}, got {spec!r}")
    out = []
    for i, c in enumerate(spec):
        at = f"{path}: compare[{i}]"
        if not isinstance(c, dict) or set(c) - _COMPARE_KEYS or not {"variant", "vs"} <= set(c):
            raise ConfigError(f"{at}: needs the keys variant and vs (and optionally need), got {c!r}")
        for key in ("variant", "vs"):
            if c[key] not in variants:
                close = difflib.get_close_matches(str(c[key]), list(variants), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{at}.{key}: {c[key]!r} is not a variant{hint}; variants: {', '.join(variants)}")
        if c["variant"] == c["vs"]:
            raise ConfigError(f"{at}: compares {c['variant']!r} with itself")
        need = c.get("need")
        if need is not None and (isinstance(need, bool) or not isinstance(need, (int, float))):
            raise ConfigError(f"{at}.need must be a number (the difference the goal asks for), got {need!r}")
        out.append({"variant": str(c["variant"]), "vs": str(c["vs"]), "need": None if need is None else float(need)})
    return tuple(out)


def _check_seeds(path: Path, where: str, spec: Any, presets: dict, least: int = 1) -> Any:
    """A seed count: None (not given), an integer >= least, or {preset: integer >= least}."""
    for key, n in (spec.items() if isinstance(spec, dict) else [(None, spec)]):
        if n is None and key is None:
            continue
        at = where + (f".{key}" if key is not None else "")
        if isinstance(n, bool) or not isinstance(n, int) or n < least:
            raise ConfigError(f"{path}: {at} must be an integer >= {least} (or a mapping preset: integer), "
                              f"got {n!r}")
        if key is not None and key not in presets:
            raise ConfigError(f"{path}: {at}: no preset {key!r}; presets: {', '.join(presets)}")
    return spec


def load_study(path: Path) -> Study:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read study file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study file is a mapping with keys {sorted(_TOP_KEYS)}")
    if "task" in raw:
        raise ConfigError(f"{path}: study key 'task' is gone: name the method in base, e.g. "
                          f"base: {{method: {{name: supervised}}}}")
    if "extra" in raw:
        raise ConfigError(f"{path}: study key 'extra' is gone: every option is a typed config key "
                          f"(e.g. method.sampling for language models)")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown study key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    for req in ("name", "variants", "presets"):
        if req not in raw:
            raise ConfigError(f"{path}: missing required key {req!r}")
    if not isinstance(raw["variants"], dict) or not raw["variants"]:
        raise ConfigError(f"{path}: variants must be a mapping of at least one variant")
    variants = {}
    for vname, v in raw["variants"].items():
        v = v or {}
        if not isinstance(v, dict) or set(v) - _VARIANT_KEYS:
            raise ConfigError(f"{path}: variants.{vname}: allowed keys are {sorted(_VARIANT_KEYS)}")
        target = v.get("target")
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))):
            raise ConfigError(f"{path}: variants.{vname}.target must be a number, got {target!r}")
        # a variant may sit a preset out (0), but not every preset: an int for all must be >= 1
        vseeds = _check_seeds(path, f"variants.{vname}.seeds", v.get("seeds"), raw["presets"] or {},
                              least=0 if isinstance(v.get("seeds"), dict) else 1)
        variants[str(vname)] = Variant(str(vname), v.get("set") or {}, None if target is None else float(target),
                                       v.get("presets") or {}, v.get("description", ""), vseeds)
    presets = {str(k): (p or {}) for k, p in (raw["presets"] or {}).items()}
    if not presets:
        raise ConfigError(f"{path}: presets must name at least one preset (e.g. smoke: {{}})")
    seeds = _check_seeds(path, "seeds", raw.get("seeds", 1), raw["presets"] or {})
    goal = raw.get("goal", "max")
    if goal not in ("max", "min"):
        raise ConfigError(f"{path}: goal must be max or min, got {goal!r}")
    sections = raw.get("sections") or []
    if not isinstance(sections, list):
        raise ConfigError(f"{path}: sections must be a list of report section names, got {sections!r}")
    from .registry import SECTIONS

    for sec in sections:
        if sec not in SECTIONS:
            _unknown_section(path, sec, SECTIONS)
    default_preset = raw.get("default_preset", next(iter(presets)))
    if default_preset not in presets:
        raise ConfigError(f"{path}: default_preset {default_preset!r} is not one of the presets {list(presets)}")
    study = Study(
        name=raw["name"], path=path, title=raw.get("title", raw["name"]),
        description=raw.get("description", ""), metric=raw.get("metric", "test_acc"), goal=goal, seeds=seeds,
        default_preset=default_preset, base=raw.get("base") or {}, presets=presets, variants=variants,
        notes=raw.get("notes", ""), sections=tuple(sections),
        compare=_check_compare(path, raw.get("compare"), variants),
    )
    # validate every (preset, variant) combination now, so a typo fails before any run starts
    for p in study.presets:
        study.resolve(p, list(study.variants), seeds=1)  # named: also the variants a preset sits out (seeds 0)
    return study


def _unknown_section(path: Path, name: str, sections: Registry) -> None:
    close = difflib.get_close_matches(str(name), sections.names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{path}: sections: unknown report section {name!r}{hint}; choices: {', '.join(sections.names())}")


for _p in sorted(STUDY_DIR.glob("*.yaml")):
    STUDIES.add(_p.stem, _p)


def get_study(name_or_path: str) -> Study:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return load_study(p)
    if p.suffix in (".yaml", ".yml"):
        raise ConfigError(f"study file {p} does not exist")
    return load_study(STUDIES.get(name_or_path))


def run_dir_for(out: Path, cfg: RunConfig, variant: Optional[str] = None) -> Path:
    return Path(out) / cfg.study / cfg.preset / (variant or cfg.variant) / f"seed{cfg.seed}"


def study_dir_for(out: Path, study: str, preset: str) -> Path:
    return Path(out) / study / preset


def ref_dirs(out: Path, cfg: RunConfig) -> dict[str, Path]:
    """{dotted config key: run dir} of the runs `cfg` references (same study, preset and seed)."""
    return {key: run_dir_for(out, cfg, ref) for key, ref in cfg.refs().items()}
