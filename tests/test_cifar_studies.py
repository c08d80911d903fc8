"""Every variant of the from-scratch CIFAR-10 studies builds and trains an epoch (on small synthetic images, so
the suite needs no data): a typo in a study's model or augmentation options fails here, not after an hour."""
from __future__ import annotations

import math

import pytest

from ablations import loop
from ablations import rundir as rd
from ablations.study import STUDIES as STUDY_REGISTRY
from ablations.study import get_study

# every from-scratch CIFAR study of the registry (cifar10-fast has its own file, tests/test_fast.py)
STUDIES = [n for n in STUDY_REGISTRY.names() if n != "cifar10-fast"
           and get_study(n).base.get("data", {}).get("name") in ("cifar10", "cifar100")
           and get_study(n).base.get("method", {}).get("name") == "supervised"]
# width 16: the VGG and convnet at half width (group16 still divides every block's channels)
SMALL = {"data.name": "synthetic", "data.n_train": 96, "data.n_test": 32, "data.limit": 0, "data.limit_eval": 0,
         "model.width": 16, "train.epochs": 1, "train.batch_size": 32, "train.threads": 1}
CASES = [(s, v) for s in STUDIES for v in get_study(s).variants]


@pytest.mark.parametrize("study,variant", CASES, ids=[f"{s}:{v}" for s, v in CASES])
def test_every_variant_trains_an_epoch(study, variant, tmp_path):
    st = get_study(study)
    # airnet's smoke widths are already small (and it has `widths`, not `width`); its smoke epochs stay (2: a
    # progressive-resizing variant needs more epochs than its low-resolution ones)
    airnet = st.base["model"]["name"] == "airnet"
    sets = {k: v for k, v in SMALL.items() if k not in ("model.width", "train.epochs")} if airnet else SMALL
    *refs, cfg = st.resolve("smoke", [variant], seeds=1, sets=sets)  # the runs it references come first
    for r in refs:
        loop.run(r, tmp_path / r.variant)
    res = loop.run(cfg, tmp_path / variant, refs={k: tmp_path / v for k, v in cfg.refs().items()})
    recs = rd.read_metrics(tmp_path / variant / rd.METRICS)
    assert len(recs) == cfg.train.epochs and all(math.isfinite(r["train_loss"]) for r in recs)
    assert 0 <= res["test_acc"] <= 100
