"""Studies are data: a YAML file with the base config, presets, the variant grid and the targets.

Resolution order for one run (later wins):
  dataclass defaults -> study `base` -> study `presets[preset]` -> variant `set`
  -> variant `presets[preset]` -> CLI --set overrides; then the seed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .config import ConfigError, RunConfig, apply_overrides
from .registry import Registry

STUDY_DIR = Path(__file__).parent / "studies"
STUDIES: Registry = Registry("study")


@dataclass(frozen=True)
class Variant:
    name: str
    set: dict
    target: Optional[float]
    presets: dict
    description: str = ""


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    task: str
    title: str
    description: str
    metric: str
    goal: str
    seeds: int
    default_preset: str
    base: dict
    presets: dict
    variants: dict  # name -> Variant, in file order
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def resolve(self, preset: Optional[str] = None, variants: Optional[list[str]] = None,
                seeds: Optional[int] = None, sets: Optional[dict[str, Any]] = None) -> list[RunConfig]:
        preset = preset or self.default_preset
        if preset not in self.presets:
            raise ConfigError(f"study {self.name}: unknown preset {preset!r}; choices: {', '.join(self.presets)}")
        names = variants or list(self.variants)
        for v in names:
            if v not in self.variants:
                import difflib

                close = difflib.get_close_matches(v, list(self.variants), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"study {self.name}: unknown variant {v!r}{hint}; "
                                  f"choices: {', '.join(self.variants)}")
        n_seeds = seeds if seeds is not None else self.seeds
        if n_seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {n_seeds}")
        src = str(self.path)
        out = []
        for v in names:
            var = self.variants[v]
            cfg = RunConfig(study=self.name, variant=v, preset=preset, task=self.task, metric=self.metric,
                            goal=self.goal, target=var.target)  # type: ignore[arg-type]
            cfg = apply_overrides(cfg, self.base, f"{src}: base")
            cfg = apply_overrides(cfg, self.presets[preset] or {}, f"{src}: presets.{preset}")
            cfg = apply_overrides(cfg, var.set, f"{src}: variants.{v}.set")
            cfg = apply_overrides(cfg, var.presets.get(preset) or {}, f"{src}: variants.{v}.presets.{preset}")
            if sets:
                cfg = apply_overrides(cfg, sets, "--set")
            for s in range(n_seeds):
                out.append(dataclasses.replace(cfg, seed=cfg.seed + s))
        return out


_TOP_KEYS = {"name", "task", "title", "description", "metric", "goal", "seeds", "default_preset", "base",
             "presets", "variants", "notes", "extra"}
_VARIANT_KEYS = {"set", "target", "presets", "description"}


def load_study(path: Path) -> Study:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read study file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study file is a mapping with keys {sorted(_TOP_KEYS)}")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown study key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    for req in ("name", "task", "variants", "presets"):
        if req not in raw:
            raise ConfigError(f"{path}: missing required key {req!r}")
    variants = {}
    for vname, v in (raw["variants"] or {}).items():
        v = v or {}
        if not isinstance(v, dict) or set(v) - _VARIANT_KEYS:
            raise ConfigError(f"{path}: variants.{vname}: allowed keys are {sorted(_VARIANT_KEYS)}")
        target = v.get("target")
        if target is not None and not isinstance(target, (int, float)):
            raise ConfigError(f"{path}: variants.{vname}.target must be a number, got {target!r}")
        variants[str(vname)] = Variant(str(vname), v.get("set") or {}, None if target is None else float(target),
                                       v.get("presets") or {}, v.get("description", ""))
    presets = raw["presets"] or {}
    study = Study(
        name=raw["name"], path=path, task=raw["task"], title=raw.get("title", raw["name"]),
        description=raw.get("description", ""), metric=raw.get("metric", "test_acc"),
        goal=raw.get("goal", "max"), seeds=int(raw.get("seeds", 1)),
        default_preset=raw.get("default_preset", next(iter(presets), "default")),
        base=raw.get("base") or {}, presets=presets, variants=variants, notes=raw.get("notes", ""),
        extra=raw.get("extra") or {},
    )
    # validate every (preset, variant) combination now, so a typo fails before any run starts
    for p in study.presets:
        study.resolve(p, seeds=1)
    return study


for _p in sorted(STUDY_DIR.glob("*.yaml")):
    STUDIES.add(_p.stem, _p)


def get_study(name_or_path: str) -> Study:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return load_study(p)
    if p.suffix in (".yaml", ".yml"):
        raise ConfigError(f"study file {p} does not exist")
    return load_study(STUDIES.get(name_or_path))


def run_dir_for(out: Path, cfg: RunConfig) -> Path:
    return Path(out) / cfg.study / cfg.preset / cfg.variant / f"seed{cfg.seed}"


def study_dir_for(out: Path, study: str, preset: str) -> Path:
    return Path(out) / study / preset
