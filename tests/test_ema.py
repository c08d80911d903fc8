"""train.ema: the loop's weight average - its formula, what it exports, and exact resume with it."""
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ablations import loop
from ablations import rundir as rd
from ablations.ema import WeightEMA
from test_methods import cfg, strip_time


def test_update_follows_its_formula_with_warmup_and_copies_integer_buffers():
    m = nn.BatchNorm1d(2)  # a float weight, float running stats, an integer num_batches_tracked
    ema = WeightEMA(m, decay=0.5)
    expect = m.weight.detach().clone()
    for n, value in enumerate([1.0, 3.0, -2.0, 5.0], start=1):
        with torch.no_grad():
            m.weight.fill_(value)
            m.num_batches_tracked.fill_(10 * n)
        d = min(0.5, (1 + n) / (10 + n))  # warm-up: 0.18, 0.25, 0.31, 0.36 - all below 0.5
        ema.update(m)
        expect = d * expect + (1 - d) * value
        assert torch.allclose(ema.avg["weight"], expect)
        assert int(ema.avg["num_batches_tracked"]) == 10 * n
    assert ema.updates == 4
    for _ in range(100):  # past the warm-up the decay is the configured one
        ema.update(m)
    assert ema.rate() == 0.5


def test_swapped_in_restores_the_live_weights():
    m = nn.Linear(3, 2)
    ema = WeightEMA(m, decay=0.9)
    live = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        ema.avg["weight"].fill_(7.0)
    with ema.swapped_in(m):
        assert torch.all(m.weight == 7.0)
    assert all(torch.equal(live[k], v) for k, v in m.state_dict().items())


def test_state_dict_round_trip_continues_identically():
    m = nn.Linear(3, 2)
    a, b = WeightEMA(m, 0.99), WeightEMA(m, 0.99)
    for _ in range(3):
        a.update(m)
    b.load_state_dict(a.state_dict())  # copies into b's own tensors
    with torch.no_grad():
        m.weight.add_(1.0)
    a.update(m), b.update(m)
    assert a.updates == b.updates == 4 and all(torch.equal(a.avg[k], b.avg[k]) for k in a.avg)


@pytest.mark.parametrize("method", ["supervised", "language_model"])
def test_a_vanishing_decay_exports_the_last_weights(method, tmp_path):
    """With decay ~0 the average is the live weights (lerp with weight 1 is exact): the run equals one without
    an average, byte for byte; the raw comparison is recorded."""
    plain = loop.run(cfg(method, tmp_path), tmp_path / "plain")
    tiny = loop.run(cfg(method, tmp_path, **{"train.ema": 1e-12}), tmp_path / "tiny")
    assert (tmp_path / "plain" / rd.FINAL).read_bytes() == (tmp_path / "tiny" / rd.FINAL).read_bytes()
    key = "test_acc" if "test_acc" in plain else "last10_loss"
    assert plain[key] == tiny[key]
    raw = [k for k in tiny if k.startswith("raw_val_")]
    last = rd.read_metrics(tmp_path / "tiny" / rd.METRICS)[-1]  # the last epoch's validation, as raw_ measures it
    assert raw and all(tiny[k] == last[k[len("raw_"):]] for k in raw)
    assert not any(k.startswith("raw_") for k in plain)


@pytest.mark.parametrize("method", ["supervised", "language_model"])
def test_the_average_is_exported_and_resumes_exactly(method, tmp_path, interrupted_run):
    c = cfg(method, tmp_path, **{"train.ema": 0.9})
    full = loop.run(c, tmp_path / "full")
    plain = loop.run(cfg(method, tmp_path), tmp_path / "plain")
    a, p = load_file(str(tmp_path / "full" / rd.FINAL)), load_file(str(tmp_path / "plain" / rd.FINAL))
    # the same training (the average does not feed back), but other weights exported
    assert strip_time(rd.read_metrics(tmp_path / "full" / rd.METRICS))[0]["train_loss"] == \
        strip_time(rd.read_metrics(tmp_path / "plain" / rd.METRICS))[0]["train_loss"]
    assert any(not torch.equal(a[k], p[k]) for k in a if a[k].is_floating_point())
    interrupted_run(c, tmp_path / "cut", epoch=2)
    resumed = loop.run(c, tmp_path / "cut", resume=True)
    assert strip_time(rd.read_metrics(tmp_path / "cut" / rd.METRICS)) == \
        strip_time(rd.read_metrics(tmp_path / "full" / rd.METRICS))
    b = load_file(str(tmp_path / "cut" / rd.FINAL))
    assert all(torch.equal(a[k], b[k]) for k in a)
    key = "test_acc" if "test_acc" in full else "last10_loss"
    assert resumed[key] == full[key]


@pytest.mark.parametrize("value", [1.0, -0.1])
def test_ema_out_of_range_is_refused(value, tmp_path):
    from ablations.config import ConfigError

    with pytest.raises(ConfigError, match="train.ema"):
        cfg("supervised", tmp_path, **{"train.ema": value})


def test_bench_scores_the_average_as_the_run_did_and_the_raw_weights_beside_it(tmp_path, bench_script):
    """bench/ema_raw_weights.py: both sets of weights reproduce the run's own numbers (same fp32 evaluation,
    same splits rebuilt from the run's config): the average its test and last-10 % losses, the raw weights
    the raw validation loss the loop records (fp32 training, so the loop's validation is fp32 too)."""
    bench = bench_script("ema_raw_weights")
    res = loop.run(cfg("language_model", tmp_path, **{"train.ema": 0.9, "train.precision": "fp32"}), tmp_path / "r")
    s = bench.score(tmp_path / "r")
    assert s["average"]["last10"] == res["last10_loss"] and s["average"]["test"] == res["test_loss"]
    assert s["raw"]["val"] == pytest.approx(res["raw_val_loss"], rel=1e-6)
    assert s["raw"]["last10"] != s["average"]["last10"]  # other weights (decay 0.9 over a few steps)
    loop.run(cfg("language_model", tmp_path), tmp_path / "plain")
    with pytest.raises(SystemExit, match="without train.ema"):
        bench.score(tmp_path / "plain")


@pytest.mark.parametrize("tta", [0, 1, 2])
def test_bench_scores_an_image_runs_average_as_the_run_did_and_its_raw_weights_as_training_without_it(
        tta, tmp_path, bench_script):
    """bench/ema_raw_weights.py on an image run: the average's test accuracies at every TTA level are the run's
    own, and the raw weights score what the same training without train.ema scores (the average is passive:
    it changes nothing the optimiser sees)."""
    bench = bench_script("ema_raw_weights")
    over = {"train.precision": "fp32", "method.tta": tta, "train.epochs": 3}
    res = loop.run(cfg("supervised", tmp_path, **{**over, "train.ema": 0.8}), tmp_path / "r")
    plain = loop.run(cfg("supervised", tmp_path, **over), tmp_path / "plain")
    s = bench.score(tmp_path / "r")
    # the run's own level is test_acc, each lower one under result.json's name for it
    assert set(s["average"]) == {"test_acc", *["test_acc_no_tta", "test_acc_mirror"][:tta]} <= set(res)
    assert all(s["average"][k] == res[k] for k in s["average"])
    assert set(s["raw"]) == set(s["average"])
    assert all(s["raw"][k] == plain[k] for k in s["raw"])
    # the discordant test images account for the whole gain: (b - c) / n_test in points
    pr = s["paired"]
    n_test = len(loop_test_labels(tmp_path / "r"))
    assert (pr["average_only"] - pr["raw_only"]) * 100 / n_test == pytest.approx(
        s["average"]["test_acc"] - s["raw"]["test_acc"])
    assert 0 < pr["p"] <= 1
    with pytest.raises(SystemExit, match="without train.ema"):
        bench.score(tmp_path / "plain")


def loop_test_labels(run_dir):
    """The test labels a supervised run scored (its test_predictions.pt)."""
    return torch.load(run_dir / "test_predictions.pt")["y"]
