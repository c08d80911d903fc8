"""Shared fixtures. Tests never touch the network: ABLATIONS_OFFLINE=1 for the whole session, and the
decoded-data cache goes to a temporary folder unless the real data's cache is wanted (real_data)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("ABLATIONS_OFFLINE", "1")
os.environ.setdefault("ABLATIONS_PLAIN", "1")  # plain log lines, no tqdm bars in test output
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture
def shared_datasets() -> Path:
    """The offline copies of real datasets (../shared/datasets); skip when absent."""
    if not (SHARED / "README.md").exists():
        pytest.skip(f"real data not present at {SHARED}")
    return SHARED


@pytest.fixture
def bench_script():
    """Import a bench/ script as a module by its file name (bench/ is scripts, not a package): bench_script("x")."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).parents[1] / "bench" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    """A study file on the synthetic dataset: two variants, seconds to run."""
    p = tmp_path / "tiny.yaml"
    p.write_text("""
name: tiny
metric: test_acc
base:
  data: {name: synthetic, n_train: 320, n_test: 64, limit: 256, limit_eval: 64, normalize: standard}
  model: {name: vgg1, width: 8, dense: 16}
  optim: {name: nesterov, lr: 0.05, schedule: warmup_cosine, warmup: 0.5}
  train: {epochs: 2, batch_size: 32, eval_batch_size: 64}
presets:
  smoke: {}
variants:
  plain: {target: 50}
  regular:
    target: 60
    set: {model.dropout: 0.1, model.batch_norm: true, data.aug.train: [flip, {translate: 2}]}
""")
    return p


@pytest.fixture
def interrupt_after(monkeypatch):
    """interrupt_after(epoch) -> restore: from now on a run stops with KeyboardInterrupt right after epoch
    `epoch`'s checkpoint, as if the machine went down there; restore() undoes it (so does the test's end)."""
    from ablations import rundir as rd

    def patch(epoch: int):
        real = rd.save_checkpoint

        def save_then_die(path, state):
            real(path, state)
            if state["epoch"] == epoch:
                raise KeyboardInterrupt

        monkeypatch.setattr(rd, "save_checkpoint", save_then_die)
        return lambda: monkeypatch.setattr(rd, "save_checkpoint", real)

    return patch


@pytest.fixture
def interrupted_run(interrupt_after):
    """interrupted_run(cfg, run_dir, epoch=2): loop.run stopped right after epoch `epoch`'s checkpoint."""
    from ablations import loop

    def run(cfg, run_dir, epoch: int = 2) -> None:
        restore = interrupt_after(epoch)
        try:
            with pytest.raises(KeyboardInterrupt):
                loop.run(cfg, run_dir)
        finally:
            restore()

    return run
