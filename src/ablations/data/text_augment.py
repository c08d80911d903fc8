"""Text augmentation for language models: WordNet synonym replacement and EDA's random insertion, swap
and deletion (Wei & Zou, "EDA: Easy Data Augmentation Techniques...", EMNLP 2019), at a rate.

A pipeline is `data.augment: [{synonym: 0.1}, {swap: 0.05}]` (the image pipelines' spec syntax, typed
by the TEXT_AUGS registry). The language-model method rewrites the TRAINING split once per epoch with a
seed drawn from that epoch's generator, so the augmented text is a pure function of (seed, epoch) and a
resumed run sees the same text as one that never stopped. Validation and test text are never touched.

Units. The text is rewritten line by line (a line is EDA's "sentence": poems and code are line-based);
within a line only word tokens (runs of letters/digits) are edited, punctuation and spacing stay where
they are. `rate` is a probability per word:
- synonym: each eligible word (3+ letters, not a stop word, has a WordNet synonym the model can emit) is replaced
  by one of its synonyms, uniformly, with probability rate (capitalisation kept);
- insert: Binomial(words, rate) times per line, a synonym of a random eligible word of the line goes in
  at a random word position;
- swap: Binomial(words, rate) times per line, two random words of the line trade places;
- delete: each word is dropped with probability rate (a line keeps at least one word; the space before a
  dropped word goes with it).
At word level an edit that would make a token the vocabulary lacks is skipped (so the realised rates of
insert / swap / delete are a little below `rate` there; a line's first word, having no space before it,
is never deleted): an edit must never turn known text into <unk> targets.
Synonyms are single-word WordNet 3.0 lemmas of any synset holding the word's exact lemma (no
morphology: "dogs" finds nothing, as "dog" does). At word level, only synonyms in the model's
vocabulary are used: a synonym outside it would train the model to predict <unk>.

Back-translation (EDA's stronger sibling) needs a translation model, out of reach offline: a user who
has one registers an entry here (a `@TEXT_AUGS.register(name, Config)` builder returning
`op(words, rng, ctx) -> words`) that rewrites a line through it.

WordNet comes from its own dict files (data.noun, data.verb, data.adj, data.adv): Debian's
`wordnet-base` (/usr/share/wordnet), NLTK's corpus folder, or $ABLATIONS_WORDNET.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..config import Component, opt
from ..registry import TEXT_AUGS
from .sources import DataNotFound

ENV_WORDNET = "ABLATIONS_WORDNET"
WORDNET_DIRS = ("/usr/share/wordnet", "~/nltk_data/corpora/wordnet", "/usr/share/nltk_data/corpora/wordnet",
                "/usr/local/share/nltk_data/corpora/wordnet")
POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")

# EDA's stop words (NLTK's English list, abridged to the ones that matter here): never replaced, since a
# "synonym" of "a" or "will" rewrites grammar, not wording
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves what which who whom this that these those am is
are was were be been being have has had having do does did doing a an the and but if or because as until
while of at by for with about against between into through during before after above below to from up
down in out on off over under again further then once here there when where why how all any both each few
more most other some such no nor not only own same so than too very s t can will just don should now
thou thee thy thine art hath doth shall shalt wilt o
""".split())

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class TextAugConfig(Component):
    """Base of every text augmentation's options (the first own field is what {name: scalar} sets)."""
    rate: float = opt(0.1, "probability per word (see data/text_augment.py for each op's unit)", ge=0, le=1)

    def describe(self) -> str:
        return f"{self.name} {self.rate:g}"


# ---------------------------------------------------------------- WordNet

def wordnet_dir(explicit: Optional[str] = None) -> Path:
    """The folder with WordNet's data.* files: `explicit`, $ABLATIONS_WORDNET, then the usual places."""
    if explicit:  # a folder the user named must be the one used: no silent fall-back to another WordNet
        p = Path(explicit).expanduser()
        missing = [f for f in POS_FILES if not (p / f).is_file()]
        if missing:
            raise DataNotFound(f"data.wordnet={explicit}: no WordNet {', '.join(missing)} there (it needs data.noun, "
                               "data.verb, data.adj, data.adv: Debian's wordnet-base puts them in /usr/share/wordnet)")
        return p
    tried = []
    if os.environ.get(ENV_WORDNET):
        tried.append(os.environ[ENV_WORDNET])
    tried += list(WORDNET_DIRS)
    for d in tried:
        p = Path(d).expanduser()
        if all((p / f).is_file() for f in POS_FILES):
            return p
    raise DataNotFound("synonym augmentation needs WordNet 3.0's dict files (data.noun, data.verb, data.adj, "
                       f"data.adv): `apt install wordnet-base`, or set ${ENV_WORDNET} to their folder "
                       f"(looked in {', '.join(str(t) for t in tried)})")


@lru_cache(maxsize=4)
def load_wordnet(folder: str) -> dict[str, tuple[str, ...]]:
    """lower-case single-word lemma -> its synonyms (other single-word lemmas of its synsets), sorted.

    A data.* line is `offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt ...` with w_cnt
    in hex; lines starting with two spaces are the licence header. Adjective lemmas may carry a syntactic
    marker like "(a)", dropped here; multi-word lemmas (with '_') are skipped: they would change the line's
    token count in ways the rate does not describe. ~1 s for WordNet's 117k synsets."""
    syn: dict[str, set] = {}
    for name in POS_FILES:
        with open(Path(folder) / name, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                parts = line.split(" ", 4 + 2 * 255)
                try:
                    n = int(parts[3], 16)
                except (IndexError, ValueError):
                    continue
                lemmas = {re.sub(r"\(.*\)$", "", parts[4 + 2 * i]).lower() for i in range(n)}
                lemmas = {w for w in lemmas if w.isalpha()}
                for w in lemmas:
                    syn.setdefault(w, set()).update(lemmas - {w})
    return {w: tuple(sorted(s)) for w, s in syn.items() if s}


# ---------------------------------------------------------------- the ops

class Context:
    """What the ops share: synonyms(word) -> candidates the model can emit, in a fixed order."""

    def __init__(self, wordnet: Optional[dict] = None, known: Optional[Callable[[str], bool]] = None):
        self.wordnet = wordnet or {}
        self.known = known  # token (with its leading space, as the word tokenizer cuts it) -> in the vocab?
        self._cache: dict[tuple[str, str], tuple[str, ...]] = {}

    def synonyms(self, word: str, prefix: str = "") -> tuple[str, ...]:
        """Synonyms of `word` (case follows the word's first letter); prefix: the space before it."""
        key = (prefix, word)
        got = self._cache.get(key)
        if got is None:
            low = word.lower()
            # stop words and 1-2 letter words (initials, "o", "th") keep their form: a synonym would rewrite grammar
            cands = () if low in STOP_WORDS or len(low) < 3 else self.wordnet.get(low, ())
            if word[:1].isupper():
                cands = tuple(c[:1].upper() + c[1:] for c in cands)
            if self.known is not None:
                cands = tuple(c for c in cands if self.known(prefix + c))
            got = self._cache[key] = cands
        return got

    def ok(self, token: str) -> bool:
        """Can the model emit this token? (Always at char level; word level: is it in the vocabulary.)"""
        return self.known is None or self.known(token)


Op = Callable[[list, random.Random, Context], list]  # (line tokens, rng, ctx) -> line tokens


def _words(tokens: list[str]) -> list[int]:
    return [i for i, t in enumerate(tokens) if _WORD.fullmatch(t.lstrip(" "))]


def _split(tok: str) -> tuple[str, str]:
    word = tok.lstrip(" ")
    return tok[:len(tok) - len(word)], word


def _binomial(n: int, p: float, rng: random.Random) -> int:
    return sum(rng.random() < p for _ in range(n))


@TEXT_AUGS.register("synonym", TextAugConfig)
def synonym(cfg: TextAugConfig) -> Op:
    """WordNet synonym replacement: each eligible word replaced with probability rate."""
    def op(tokens, rng, ctx):
        out = list(tokens)
        for i in _words(tokens):
            prefix, w = _split(tokens[i])
            cands = ctx.synonyms(w, prefix)
            if cands and rng.random() < cfg.rate:
                out[i] = prefix + rng.choice(cands)
        return out
    return op


@TEXT_AUGS.register("insert", TextAugConfig)
def insert(cfg: TextAugConfig) -> Op:
    """EDA random insertion: Binomial(words, rate) synonyms of the line's eligible words inserted at random places."""
    def op(tokens, rng, ctx):
        idx = _words(tokens)
        eligible = [_split(tokens[i])[1].lower() for i in idx]
        eligible = [w for w in eligible if ctx.synonyms(w, " ")]
        out = list(tokens)
        for _ in range(_binomial(len(idx), cfg.rate, rng) if eligible else 0):
            src = rng.choice(eligible)
            at = rng.choice(_words(out))  # before a word; the inserted one takes that word's spacing
            prefix, w = _split(out[at])
            # word level: the new token and the shifted word must both be in the vocabulary (a line's first
            # word would otherwise lose its place at the line start to a synonym the vocabulary lacks)
            cands = [c for c in ctx.synonyms(src, " ") if ctx.ok(prefix + c)]
            if cands and ctx.ok(" " + w):
                out[at:at + 1] = [prefix + rng.choice(cands), " " + w]
        return out
    return op


@TEXT_AUGS.register("swap", TextAugConfig)
def swap(cfg: TextAugConfig) -> Op:
    """EDA random swap: Binomial(words, rate) times, two words of the line trade places (spacing stays)."""
    def op(tokens, rng, ctx):
        idx = _words(tokens)
        out = list(tokens)
        if len(idx) < 2:
            return out
        for _ in range(_binomial(len(idx), cfg.rate, rng)):
            a, b = rng.sample(idx, 2)
            (pa, wa), (pb, wb) = _split(out[a]), _split(out[b])
            if ctx.ok(pa + wb) and ctx.ok(pb + wa):  # word level: " death" -> "death" may not be a token
                out[a], out[b] = pa + wb, pb + wa
        return out
    return op


@TEXT_AUGS.register("delete", TextAugConfig)
def delete(cfg: TextAugConfig) -> Op:
    """EDA random deletion: each word dropped with probability rate (a line keeps at least one word)."""
    def op(tokens, rng, ctx):
        idx = _words(tokens)
        # word level: a word with no space before it (a line's first) stays, since dropping it would move
        # the next word, without its space, to a token the vocabulary may lack
        can = [i for i in idx if ctx.known is None or tokens[i].startswith(" ")]
        drop = {i for i in can if rng.random() < cfg.rate}
        if drop and len(drop) == len(idx):
            drop.discard(rng.choice(sorted(drop)))
        out, strip = [], False
        for i, t in enumerate(tokens):
            if i in drop:  # a dropped word without a space before it (a line's first) hands that on
                strip = strip or not t.startswith(" ")
                continue
            if strip and t.startswith(" "):
                t = t[1:]
            strip = False
            out.append(t)
        return out
    return op


# ---------------------------------------------------------------- a pipeline over a whole text

class TextAugmenter:
    """The ops of `configs` applied in order to every line: augmenter(text, seed) -> text.

    `known` (word level): which tokens the model's vocabulary holds, so synonyms stay emittable.
    WordNet is read only when an op needs synonyms."""

    def __init__(self, configs: Sequence[TextAugConfig], known: Optional[Callable[[str], bool]] = None,
                 wordnet: Optional[str] = None):
        from .augment import parse_pipeline

        self.configs = parse_pipeline(list(configs), registry=TEXT_AUGS)
        self.ops = [TEXT_AUGS.get(c.name)(c) for c in self.configs]
        needs_wn = any(c.name in ("synonym", "insert") and c.rate > 0 for c in self.configs)
        self.wordnet_source = str(wordnet_dir(wordnet)) if needs_wn else None
        self.ctx = Context(load_wordnet(self.wordnet_source) if needs_wn else None, known)

    def __call__(self, text: str, seed: int) -> str:
        from .text import tokenize

        rng = random.Random(seed)
        lines = text.split("\n")
        out = []
        for line in lines:
            toks = tokenize(line, "word")
            for op in self.ops:
                toks = op(toks, rng, self.ctx)
            out.append("".join(toks))
        return "\n".join(out)

    def eligible_share(self, text: str) -> float:
        """Share of the text's words that have a usable synonym (what `synonym`'s rate applies to)."""
        from .text import tokenize

        toks = tokenize(text, "word")
        ws = [_split(toks[i]) for i in _words(toks)]
        return sum(bool(self.ctx.synonyms(w, p)) for p, w in ws) / max(1, len(ws))

    def describe(self) -> str:
        return ", ".join(c.describe() for c in self.configs) or "none"
