"""The fast CIFAR recipe (model airnet + the supervised switches of study cifar10-fast): every variant builds
and trains; TTA is the weighted mean of its views; the whitening init is what its formula says; alternating
flips alternate; progressive resizing trains small then full; Lookahead and Muon runs resume exactly; Muon's
step and Newton-Schulz follow their formulas; the optimiser's norm lr scale and the triangle schedule do what
they say; bad combinations are refused at load."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ablations import loop
from ablations import rundir as rd
from ablations.config import ConfigError, OptimConfig
from ablations.methods.supervised import Supervised, tta_levels, tta_logits, tta_views
from ablations.models.airnet import AirNet, AirNetConfig, shifted_wgrad, whitening_filters
from ablations.optim import build_optimizer, lr_factor
from ablations.runtime import setup
from ablations.study import get_study

# the study's smoke preset on made-up data: no dataset files needed
SYNTH = {"data.name": "synthetic", "data.n_train": 192, "data.n_test": 64, "train.threads": 1}
STUDY = get_study("cifar10-fast")


@pytest.mark.parametrize("variant", list(STUDY.variants))
def test_every_variant_builds_and_trains(variant, tmp_path):
    cfg = STUDY.resolve("smoke", [variant], sets=SYNTH)[0]
    res = loop.run(cfg, tmp_path / variant)
    recs = rd.read_metrics(tmp_path / variant / rd.METRICS)
    assert len(recs) == cfg.train.epochs and all(math.isfinite(r["train_loss"]) for r in recs)
    assert 0 <= res["test_acc"] <= 100 and res["best_epoch"] is None  # no validation split: no best epoch
    if cfg.method.tta:  # the lower TTA levels are measured too, from the same forward passes
        assert 0 <= res["test_acc_no_tta"] <= 100
        assert ("test_acc_mirror" in res) == (cfg.method.tta == 2)


def test_recipe_learns_the_synthetic_task(tmp_path):
    # a pipeline bug (labels shuffled against images, a broken TTA view) stays at chance, 10 %; the smoke net
    # (widths 8/16/16, logits / 9) learns slowly: measured 36 % after these 6 epochs
    cfg = STUDY.resolve("smoke", ["recipe"], sets={**SYNTH, "data.n_train": 512, "data.n_test": 128,
                                                   "train.epochs": 6, "optim.lr": 0.3})[0]
    assert loop.run(cfg, tmp_path / "r")["test_acc"] > 25


def test_tta_is_the_weighted_mean_of_its_views():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    x = torch.randn(3, 3, 8, 8)
    net(x)
    f = net
    assert torch.allclose(tta_logits(f, x, 0), f(x))
    assert torch.allclose(tta_logits(f, x, 1), (f(x) + f(x.flip(-1))) / 2, atol=1e-6)
    # airbench's level 2, written out: mirror mean of the image, and of it shifted 1 px both ways
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = p[..., :8, :8], p[..., 2:, 2:]

    def m(v):
        return (f(v) + f(v.flip(-1))) / 2

    want = 0.5 * m(x) + 0.5 * (m(up_left) + m(down_right)) / 2
    assert torch.allclose(tta_logits(f, x, 2), want, atol=1e-6)
    for level in (0, 1, 2):
        assert sum(w for w, _ in tta_views(x, level)) == pytest.approx(1.0)
    # every level from one set of forward passes (a level's views are a prefix of the next level's)
    calls = []

    def counting(v):
        calls.append(v)
        return f(v)

    levels = tta_levels(counting, x, 2)
    assert len(calls) == len(tta_views(x, 2))
    for level, got in enumerate(levels):
        assert torch.allclose(got, tta_logits(f, x, level), atol=1e-6)


def test_whitening_init_follows_its_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 5, 5, generator=g) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    k, eps = 2, 5e-4
    w = whitening_filters(x, k, eps)
    assert w.shape == (2 * 3 * k * k, 3, k, k)
    half = w[:12].reshape(12, -1)
    assert torch.equal(w[12:], -w[:12])
    # the patches by hand, (C, kh, kw) order like a conv weight
    patches = torch.stack([x[n, :, i:i + k, j:j + k].reshape(-1) for n in range(6) for i in range(4) for j in range(4)])
    cov = patches.T @ patches / len(patches)
    lam = torch.linalg.eigvalsh(cov).flip(0)
    # filters whiten: W C W^T = diag(lambda / (lambda + eps)), eigenvalues in descending order
    assert torch.allclose(half @ cov @ half.T, torch.diag(lam / (lam + eps)), atol=1e-4)
    # and the model's stem is exactly those filters, frozen
    net = AirNet(AirNetConfig(widths=(8, 8, 8)), 10)
    net.init_from_data(x)
    assert torch.equal(net.stem.weight, w) and not net.stem.weight.requires_grad
    out = net.stem(x) - net.stem.bias.view(1, -1, 1, 1)  # conv = patch projection
    assert torch.allclose(out[0, :12, 0, 0], half @ patches[0], atol=1e-5)


def test_dirac_init_is_identity_on_the_first_channels():
    net = AirNet(AirNetConfig(widths=(8, 16, 16)), 10)
    conv = net.groups[1].conv2  # 16 -> 16: the whole conv is the identity
    h = torch.randn(2, 16, 6, 6)
    assert torch.allclose(conv(h), h)
    c1 = net.groups[1].conv1  # 8 -> 16: the first 8 outputs copy the input
    assert torch.allclose(c1(h[:, :8])[:, :8], h[:, :8])
    assert not torch.allclose(AirNet(AirNetConfig(widths=(8, 16, 16), dirac=False), 10).groups[1].conv2(h), h)


def test_airnet_switches_and_sizes():
    torch.manual_seed(0)
    for cfg in (AirNetConfig(widths=(8, 8, 8)), AirNetConfig(widths=(8, 8, 8), whiten=False, bn_weight=True, residual=True,
                                                             act="relu")):
        net = AirNet(cfg, 10)
        for side in (16, 24, 32):  # the adaptive pool takes any size progressive resizing uses
            assert net(torch.randn(2, 3, side, side)).shape == (2, 10)
    learned = AirNet(AirNetConfig(widths=(8, 8, 8), whiten=False, bn_weight=True), 10)
    assert all(p.requires_grad for p in learned.parameters())
    frozen = AirNet(AirNetConfig(widths=(8, 8, 8)), 10)
    assert not frozen.stem.weight.requires_grad and not frozen.groups[0].norm1.weight.requires_grad
    frozen.on_epoch(3)
    assert frozen.stem.bias.requires_grad
    frozen.on_epoch(4)  # whiten_bias_epochs 3: frozen from epoch 4
    assert not frozen.stem.bias.requires_grad


@pytest.mark.parametrize("h", [1, 3, 7, 8])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_shifted_weight_gradient_equals_autograd(h, layout):
    """shifted_wgrad (9 tap-wise matrix products) is the weight gradient autograd computes for a padded 3 x 3
    convolution, in fp32, whatever the memory layout of the input and the output gradient."""
    g = torch.Generator().manual_seed(h)
    x = torch.randn(3, 5, h, h, generator=g).contiguous(memory_format=layout)
    w = torch.randn(7, 5, 3, 3, generator=g, requires_grad=True)
    go = torch.randn(3, 7, h, h, generator=g).contiguous(memory_format=layout)
    F.conv2d(x, w, padding=1).backward(go)
    torch.testing.assert_close(shifted_wgrad(x, go), w.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("autocast", [False, True])
def test_conv_wgrad_switch_changes_no_gradient(autocast):
    """conv_wgrad=shifted trains the same network: the same outputs and, up to summation order, the same
    gradients for every parameter as native, in fp32 and under bf16 autocast (where the weight gradient
    still lands in the fp32 weight); auto picks native or shifted by map size and CPU."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    grads, outs = {}, {}
    for mode in ("native", "shifted"):
        torch.manual_seed(1)
        net = AirNet(AirNetConfig(widths=(8, 16, 16), conv_wgrad=mode), 10).to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(x.contiguous(memory_format=torch.channels_last))
        F.cross_entropy(out.float(), y).backward()
        outs[mode] = out.detach().float()
        grads[mode] = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    assert torch.equal(outs["native"], outs["shifted"])  # the forward pass is the native kernel in both
    tol = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-4, atol=1e-5)
    for n, gn in grads["native"].items():
        assert grads["shifted"][n].dtype == torch.float32
        torch.testing.assert_close(grads["shifted"][n], gn, **tol, msg=n)


def test_conv_wgrad_auto_picks_by_map_size_dtype_and_cpu(monkeypatch):
    from ablations.models import airnet
    x8, x15 = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 15, 15)
    for amx in (True, False):
        monkeypatch.setattr(airnet, "_cpu_has_amx", lambda: amx)
        assert airnet._use_shifted("auto", x8, torch.bfloat16) is amx
        assert not airnet._use_shifted("auto", x15, torch.bfloat16)
        assert not airnet._use_shifted("auto", x8, torch.float32)
        assert airnet._use_shifted("shifted", x15, torch.float32) and not airnet._use_shifted("native", x8, torch.bfloat16)


def _method(tmp_path, **over):
    cfg = STUDY.resolve("smoke", ["recipe"], sets={**SYNTH, **over})[0]
    return Supervised(cfg, setup(cfg.train, cfg.seed), tmp_path, {})


def test_altflip_alternates_each_images_flip(tmp_path):
    m = _method(tmp_path, **{"data.aug.train": []})
    m.prep = lambda x, gen=None, pipeline=None: x  # the stored bytes, as they leave batches()
    seen = {}
    for epoch in (1, 2, 3):
        g = torch.Generator().manual_seed(epoch)
        order = m.epoch_order(len(m.tx), torch.Generator().manual_seed(epoch))
        for i, (x, _) in enumerate(m.batches(epoch, g)):
            idx = order[i * m.bs:(i + 1) * m.bs]
            for j, n in enumerate(idx.tolist()):
                flipped = torch.equal(x[j], m.tx[n].flip(-1))
                assert flipped or torch.equal(x[j], m.tx[n])
                seen.setdefault(n, []).append(flipped)
    # the synthetic patterns are not mirror-symmetric, so every image's state is told apart
    for n, states in seen.items():
        assert states == [bool(m.flip0[n]), not m.flip0[n], bool(m.flip0[n])][:len(states)]
    assert 0.3 < m.flip0.float().mean() < 0.7


def test_progressive_resizing_trains_small_then_full(tmp_path):
    m = _method(tmp_path, **{"method.low_res": 16, "method.low_res_epochs": 1})
    g = torch.Generator().manual_seed(0)
    assert next(iter(m.batches(1, g)))[0].shape[-1] == 16
    assert next(iter(m.batches(2, g)))[0].shape[-1] == 32


def test_lookahead_pulls_weights_toward_the_slow_copy(tmp_path):
    m = _method(tmp_path)
    w = next(p for p in m.model.parameters() if p.ndim == 4 and p.requires_grad)
    start = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    total = m.steps_per_epoch() * m.cfg.train.epochs
    m.after_step(1)  # not a Lookahead step (every 5): nothing moves
    assert torch.allclose(w, start + 1)
    m.after_step(5)
    d = 0.95 ** 5 * (5 / total) ** 3
    assert torch.allclose(w, start + (1 - d), atol=1e-6)  # slow = lerp(slow, fast, 1 - d); fast = slow


@pytest.mark.parametrize("every", [4, 3])  # 6 steps in all: the last step is not / is an update step
def test_lookahead_ends_on_the_slow_weights(tmp_path, every):
    m = _method(tmp_path, **{"method.lookahead_every": every})
    total = m.steps_per_epoch() * m.cfg.train.epochs
    assert total == 6
    w = next(p for p in m.model.parameters() if p.ndim == 4 and p.requires_grad)
    start = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    m.after_step(total)
    # airbench: an update step first blends (decay 0.95^5 at the end), then the run copies the slow weights
    moved = 1 - 0.95 ** 5 if total % every == 0 else 0.0
    assert torch.allclose(w, start + moved, atol=1e-6)


# recipe (Lookahead's slow weights): 5 epochs, cut after 4, the whitening bias froze after epoch 3, before the
# cut (whiten_bias_epochs 3); muon (Muon's momentum buffers in the optimiser state): 3 epochs, cut after 2
@pytest.mark.parametrize("variant, epochs, cut", [("recipe", 5, 4), ("muon", 3, 2)])
def test_run_resumes_exactly(tmp_path, interrupted_run, variant, epochs, cut):
    cfg = STUDY.resolve("smoke", [variant], sets={**SYNTH, "train.epochs": epochs})[0]
    full = loop.run(cfg, tmp_path / "full")
    interrupted_run(cfg, tmp_path / "cut", epoch=cut)
    resumed = loop.run(cfg, tmp_path / "cut", resume=True)
    assert resumed["test_acc"] == full["test_acc"]
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "full" / rd.FINAL)), load_file(str(tmp_path / "cut" / rd.FINAL))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_norm_lr_scale_keeps_the_decay_per_step():
    net = AirNet(AirNetConfig(widths=(8, 8, 8)), 10)
    oc = OptimConfig(name="nesterov", lr=1.5, weight_decay=0.001, norm_lr_scale=64, decay_biases=True)
    opt = build_optimizer(oc, net)
    norm_ids = {id(p) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    for g in opt.param_groups:
        is_norm = {id(p) in norm_ids for p in g["params"]}
        assert len(is_norm) == 1
        if is_norm.pop():
            assert g["lr"] == pytest.approx(1.5 * 64) and g["weight_decay"] == pytest.approx(0.001 / 64)
        else:
            assert g["lr"] == pytest.approx(1.5) and g["weight_decay"] == pytest.approx(0.001)
    plain = build_optimizer(OptimConfig(weight_decay=0.001), net)  # defaults: no decay on 1-d params
    assert {g["weight_decay"] for g in plain.param_groups if all(p.ndim == 1 for p in g["params"])} == {0.0}


@settings(max_examples=60, deadline=None)
@given(total=st.integers(2, 3000), peak=st.floats(0, 1), start=st.floats(0, 1), end=st.floats(0, 1))
def test_triangle_schedule_shape(total, peak, start, end):
    spe = 10
    cfg = OptimConfig(schedule="triangle", warmup=peak * total / spe, start_lr=start, min_lr=end)
    fs = [lr_factor(s, total, spe, cfg) for s in range(total + 1)]
    warm = int(round(cfg.warmup * spe))
    assert all(0 <= f <= 1 + 1e-12 for f in fs)
    assert fs[0] == pytest.approx(start if warm else 1.0) and fs[total] == pytest.approx(end if warm < total else fs[total])
    if 0 < warm < total:
        assert fs[warm] == pytest.approx(1.0)
        assert all(a <= b + 1e-12 for a, b in zip(fs[:warm], fs[1:warm + 1]))  # up to the peak
    assert all(a >= b - 1e-12 for a, b in zip(fs[warm:], fs[warm + 1:]))  # then down


@pytest.mark.parametrize("sets, match", [
    ({"method.altflip": True, "data.aug.train": ["flip"]}, "altflip replaces the random flip"),
    ({"method.low_res": 24}, "low_res and low_res_epochs go together"),
    ({"method.low_res": 24, "method.low_res_epochs": 2, "train.epochs": 2}, "must be below train.epochs"),
    ({"method.tta": 3}, "method.tta"),
    ({"model.widths": [8, 0, 8]}, r"widths\[1\]"),
])
def test_bad_combinations_are_refused_at_load(sets, match):
    with pytest.raises(ConfigError, match=match):
        STUDY.resolve("smoke", ["recipe"], sets=sets)


def test_tta_report_section_pairs_each_run_with_itself(tmp_path):
    """The section's gain is the per-run difference (TTA - none), so it is exact for made-up runs whose seeds
    differ a lot but whose TTA gains do not; one-row tables skip the all-runs summary."""
    import json
    import statistics

    from ablations.config import make
    from ablations.report.render import write_report
    from ablations.report.stats import t_two_sided_p

    runs = {"recipe": [(80.0, 79.5, 79.0), (84.0, 83.6, 83.2), (82.0, 81.5, 81.1)], "relu": [(81.0, 80.0, 80.5)]}
    for variant, accs in runs.items():
        for seed, (tta, mirror, none) in enumerate(accs):
            d = tmp_path / "s" / variant / f"seed{seed}"
            d.mkdir(parents=True)
            (d / rd.CONFIG).write_text(json.dumps(make({"method.tta": 2}, study="s", variant=variant, seed=seed).to_dict()))
            (d / rd.RESULT).write_text(json.dumps({"test_acc": tta, "test_acc_mirror": mirror, "test_acc_no_tta": none,
                                                   "epochs": 1, "wall_time": 1}))
    md = write_report(tmp_path / "s").read_text()
    gains = [1.0, 0.8, 0.9]
    m, s = statistics.fmean(gains), statistics.stdev(gains)
    p = t_two_sided_p(m / (s / math.sqrt(3)), 2)
    assert "## Test-time augmentation" in md
    assert f"| recipe | mirror + 1 px shifts (6 views) | 82.00 ± 2.00 | 81.53 ± 2.05 | 81.10 ± 2.10 | " \
           f"+{m:.2f} ± {s:.2f} (significant, p={p:.2g}) | 3 |" in md
    assert "| relu | mirror + 1 px shifts (6 views) | 81.00 | 80.00 | 80.50 | +0.50 (n=1) | 1 |" in md
    assert "Over all 4 runs with TTA mirror + 1 px shifts (6 views): +0.80 ± " in md


@pytest.mark.parametrize("dtype, atol", [(torch.bfloat16, 0.03), (torch.float32, 1e-5)])
def test_newton_schulz_maps_singular_values_by_its_polynomial(dtype, atol):
    # NS(g) = U p(S / |g|_F) V^T: the singular vectors are g's, each singular value goes through the quintic
    # p(x) = a x + b x^3 + c x^5 three times (bf16 arithmetic inside: a loose tolerance; fp32: a tight one)
    from ablations.optimizers.muon import newton_schulz

    g = torch.randn(6, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u, s, vt = torch.linalg.svd(g, full_matrices=False)
    x = s / g.norm()
    for _ in range(3):
        x = 3.4445 * x - 4.7750 * x ** 3 + 2.0315 * x ** 5
    expected = u @ torch.diag(x) @ vt
    for m, e in ((g, expected), (g.T, expected.T)):  # wide and tall
        out = newton_schulz(m, dtype=dtype)
        assert out.shape == m.shape and out.dtype == m.dtype
        assert torch.allclose(out, e, atol=atol), (out - e).abs().max()
    assert 0.3 < float(x.min()) and float(x.max()) < 1.6  # roughly orthogonal, as the method intends


@pytest.mark.parametrize("native_bf16", [True, False])
def test_newton_schulz_runs_in_bf16_only_where_the_cpu_multiplies_bf16_natively(monkeypatch, native_bf16):
    from ablations.optimizers import muon

    monkeypatch.setattr(muon, "cpu_has_bf16", lambda: native_bf16)
    muon.ns_dtype.cache_clear()
    try:
        assert muon.ns_dtype("cpu") == (torch.bfloat16 if native_bf16 else torch.float32)
        assert muon.ns_dtype("cuda") == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
        g = torch.randn(4, 9, generator=torch.Generator().manual_seed(0))
        want = muon.newton_schulz(g, dtype=torch.bfloat16 if native_bf16 else torch.float32)
        assert torch.equal(muon.newton_schulz(g), want)  # the default is the device's dtype
    finally:
        muon.ns_dtype.cache_clear()  # the next test sees this machine's own answer


def test_bench_muon_ns_times_both_dtypes_per_round(tmp_path, bench_script, monkeypatch):
    """bench/muon_ns.py on the smoke network: a row per round with both dtypes' NS and step times, the
    filters it orthogonalises named by shape, and a second run appending its own section."""
    bench = bench_script("muon_ns")
    out = tmp_path / "ns.md"
    argv = ["muon_ns.py", "--preset", "smoke", "--rounds", "2", "--reps", "1", "--steps", "1", "--batch", "4",
            "--res", "16", "--threads", "1", "--out", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    ns_dtype = bench.muon.ns_dtype
    bench.main()
    bench.main()
    assert bench.muon.ns_dtype is ns_dtype  # the optimiser's own choice is back after each step timing
    md = out.read_text()
    assert md.count("# Muon's Newton-Schulz step") == 1 and md.count("\n## ") == 2
    cfg = next(c for c in get_study("cifar10-fast").resolve("smoke", ["muon_fast"]) if c.variant == "muon_fast")
    net = AirNet(cfg.model, 10)
    filters = bench.muon_filters(build_optimizer(cfg.optim, net))
    assert {id(p) for p in filters} == {id(p) for p in net.parameters() if p.ndim == 4 and p.requires_grad}
    assert f"filters ({', '.join(f'{len(p)}x{p[0].numel()}' for p in filters)})" in md
    rows = [ln for ln in md.splitlines() if re.match(r"\| [12] \|", ln)]
    assert len(rows) == 4 and all(len(r.split("|")) == 7 for r in rows)
    assert "NS bf16 / fp32: median" in md and "of its step" in md


def test_muon_step_by_hand():
    from ablations.optimizers.muon import newton_schulz

    net = AirNet(AirNetConfig(widths=(8, 8, 8)), 10)
    oc = OptimConfig(name="muon", lr=0.5, muon_lr=0.2, momentum=0.85, muon_momentum=0.6, weight_decay=0.01,
                     norm_lr_scale=64, decay_biases=True)
    opt = build_optimizer(oc, net)
    muon = [g for g in opt.param_groups if g["muon"]]
    assert len(muon) == 1 and all(p.ndim == 4 for p in muon[0]["params"]) and muon[0]["lr"] == pytest.approx(0.2)
    assert {id(p) for p in muon[0]["params"]} == {id(p) for p in net.parameters() if p.ndim == 4 and p.requires_grad}
    for g in opt.param_groups:  # every bias (the whitening one too) at 64x lr and wd / 64; the head at lr, wd
        if not g["muon"]:
            one_d = {p.ndim == 1 for p in g["params"]}
            assert len(one_d) == 1
            assert (g["lr"], g["weight_decay"]) == pytest.approx((32.0, 0.01 / 64) if one_d.pop() else (0.5, 0.01))
    conv, head = net.groups[0].conv2.weight, net.head.weight
    before = {n: p.detach().clone() for n, p in (("conv", conv), ("head", head))}
    for p in net.parameters():
        p.grad = torch.randn_like(p) if p.requires_grad else None
    gc, gh = conv.grad.clone(), head.grad.clone()
    opt.step()
    # Muon: rescale to norm sqrt(out), then minus lr * NS(g + m * g) (the first momentum buffer is g itself)
    w = before["conv"] * len(conv) ** 0.5 / before["conv"].norm()
    want = w - 0.2 * newton_schulz((1.6 * gc).reshape(len(gc), -1)).view_as(gc)
    assert torch.allclose(conv.detach(), want, atol=1e-6)
    # Nesterov SGD with L2 decay: d = g + wd p; buf = d; step = d + m buf
    d = gh + 0.01 * before["head"]
    assert torch.allclose(head.detach(), before["head"] - 0.5 * (d + 0.85 * d), atol=1e-6)


def test_bench_profile_splits_convolution_time_by_direction_and_shape(tmp_path, bench_script):
    """bench/cifar_fast.py --profile: the header's forward/backward split and one line per convolution shape,
    for a study other than cifar10-fast (its smoke network, a 4-image batch)."""
    bench = bench_script("cifar_fast")
    out = tmp_path / "profile.txt"
    text = bench.profile(out, "cifar100-fast", "smoke", "budget30_bf16_muon", batch=4, steps=1)
    assert out.read_text().strip() == text.strip()
    head = text.splitlines()[1]
    assert "100 classes, batch 4" in head and "(8, 16, 16)" in head  # the smoke preset's widths
    assert re.search(r"convolution forward [\d.]+ % and backward [\d.]+ %", head)
    per = text.split("Per convolution shape")[1].splitlines()[1:]
    # the smoke airnet's 7 convolutions (whitening + 2 per group, each group's second after a 2x pooling) have 6
    # distinct (input, weight) shapes: the second group's second and the third group's first both map 16 channels
    # at 7 x 7 to 16; each shape once forward and once backward
    per = [ln for ln in per if ln]
    assert sum(ln.startswith("aten::mkldnn_convolution") for ln in per) == 6
    assert sum(ln.startswith("aten::convolution_backward") for ln in per) == 6
    assert all("ms/step" in ln for ln in per)


@pytest.mark.parametrize("h", [1, 3, 5])
def test_bench_weight_gradient_formulations_equal_autograd(h, bench_script):
    """bench/conv_wgrad.py's two alternative weight gradients (im2col matrix product, batch/channel-swapped
    convolution) are the gradient autograd computes for a padded 3 x 3 convolution, in fp32."""
    bench = bench_script("conv_wgrad")
    g = torch.Generator().manual_seed(h)
    x = torch.randn(3, 5, h, h, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(7, 5, 3, 3, generator=g, requires_grad=True)
    go = torch.randn(3, 7, h, h, generator=g).contiguous(memory_format=torch.channels_last)
    F.conv2d(x, w, padding=1).backward(go)
    for f in (bench.wgrad_im2col, bench.wgrad_swapped):
        torch.testing.assert_close(f(x, go), w.grad, rtol=1e-5, atol=1e-5)


def test_bench_conv_wgrad_formulations_and_step_rounds(tmp_path, bench_script):
    """bench/conv_wgrad.py lists airnet's 3x3 convs once each (the two 256->256 convs at 7x7 are one shape), and
    --step's rounds time both conv_wgrad settings of a tiny airnet."""
    bench = bench_script("conv_wgrad")
    assert bench.shapes((64, 256, 256), 32) == [(24, 64, 31), (64, 64, 15), (64, 256, 15), (256, 256, 7), (256, 256, 3)]
    rows = bench.step_rounds((8, 16, 16), side=16, batch=4, classes=10, steps=1, rounds=2, dtype=None)
    assert [r["round"] for r in rows] == [1, 2] and all(r["native"] > 0 and r["auto"] > 0 for r in rows)


def test_bench_profile_cli_takes_the_studys_preset_and_variant(tmp_path, bench_script, monkeypatch):
    """--profile-study with --preset: the preset is used (not replaced by full), and the header's command
    names what was profiled; without --variant, recipe."""
    bench = bench_script("cifar_fast")
    out = tmp_path / "p.txt"
    monkeypatch.setattr("sys.argv", ["cifar_fast.py", "--profile", "--profile-study", "cifar100-fast", "--preset",
                                     "smoke", "--out", str(out)])
    bench.main()
    head = out.read_text().splitlines()[:2]
    assert head[0] == ("python bench/cifar_fast.py --profile --profile-study cifar100-fast --preset smoke "
                       "--variant recipe")
    assert "(8, 16, 16)" in head[1] and "100 classes, batch 512" in head[1]  # smoke widths, main's batch


def test_bench_allocator_times_a_real_run_and_tables_the_rounds(tmp_path, tiny_study, bench_script, monkeypatch):
    """bench/allocator.py: one() runs `ablations run` for real (glibc: no preload) and reads the second epoch's
    speed and the process's page faults; main() alternates the allocators' order by round and appends one table
    row per round and the median ratio."""
    bench = bench_script("allocator")
    got = bench.one("glibc", str(tiny_study), "smoke", "plain", steps=2, threads=1, sets=[])
    assert got["img_s"] > 0 and got["faults"] > 0 and got["user_s"] > 0

    calls = []

    def fake(alloc, study, preset, variant, steps, threads, sets):
        calls.append(alloc)
        return {"img_s": {"glibc": 100.0, "tcmalloc": 110.0}[alloc] + len(calls), "faults": 2e6, "user_s": 9.0,
                "sys_s": 1.0, "cpu": "cpu", "flags": "avx2", "torch": "x"}

    monkeypatch.setattr(bench, "one", fake)
    out = tmp_path / "allocator.md"
    monkeypatch.setattr("sys.argv", ["allocator.py", "--rounds", "3", "--out", str(out)])
    bench.main()
    assert calls == ["glibc", "tcmalloc", "tcmalloc", "glibc", "glibc", "tcmalloc"]
    text = out.read_text()
    assert "| 1 | 101 | 2.00 M | 9 | 1 | 112 | 2.00 M | 9 | 1 |" in text
    ratios = sorted([112 / 101, 113 / 104, 116 / 105])
    assert f"tcmalloc / glibc: median {ratios[1]:.3f} (range {ratios[0]:.3f}-{ratios[2]:.3f}, 3 rounds)" in text
    monkeypatch.setattr("sys.argv", ["allocator.py", "--allocators", "glibc", "glibc"])
    with pytest.raises(SystemExit) as e:
        bench.main()
    assert e.value.code == 2
