"""Text-quality metrics of generated samples, beyond the loss.

- correct_words: % of generated words found in a dictionary = the training corpus's own words plus a
  system word list (Debian's `wamerican`: /usr/share/dict/american-english, configurable). Counting the
  corpus's words keeps archaic spellings ("thou", "art", "o'er") from being judged misspelt.
- distinct_1 / distinct_2: unique word unigrams / bigrams over all of them (Li et al. 2016): diversity.
- repetition: share of word 4-grams that repeat an earlier 4-gram of the same sample
  (seq-rep-4 of Welleck et al. 2020): loops such as beam search's show up here.

Words are maximal runs of letters with inner apostrophes, lower-cased ("O'er" -> "o'er").
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

SYSTEM_WORDLIST = "/usr/share/dict/american-english"
ENV_WORDLIST = "ABLATIONS_WORDLIST"  # another word list file (one word a line); "" disables it

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")  # letters (any script), inner apostrophes kept


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


@lru_cache(maxsize=4)
def _wordlist(path: str) -> frozenset:
    p = Path(path)
    if not p.is_file():
        return frozenset()
    return frozenset(w.strip().lower() for w in p.read_text(encoding="utf-8", errors="replace").splitlines()
                     if w.strip())


def wordlist_path(path: Optional[str] = None) -> Optional[str]:
    """The system word list in use: `path`, else $ABLATIONS_WORDLIST, else wamerican's when installed."""
    if path is not None:
        return path or None
    env = os.environ.get(ENV_WORDLIST)
    if env is not None:
        return env or None
    return SYSTEM_WORDLIST if Path(SYSTEM_WORDLIST).is_file() else None


class Dictionary:
    """Known words: the corpus's (lower-cased) plus a word list. `source` says what it holds, for reports."""

    def __init__(self, corpus_text: str = "", wordlist: Optional[str] = None,
                 corpus_words: Iterable[str] = ()):
        path = wordlist_path(wordlist)
        system = _wordlist(path) if path else frozenset()
        self.corpus_words = frozenset(words(corpus_text)) | frozenset(corpus_words)
        self.system_words = system
        self.source = (f"{len(self.corpus_words):,} training-corpus words + "
                       + (f"{len(system):,} from {path}" if system else "no system word list (not installed)"))

    def __contains__(self, w: str) -> bool:
        if w in self.corpus_words or w in self.system_words:
            return True
        # possessives and elisions the word list spells without the apostrophe part ("king's", "look'd")
        base = w.split("'")[0]
        return bool(base) and "'" in w and (base in self.corpus_words or base in self.system_words)


def _ngrams(ws: list[str], n: int) -> list[tuple]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def distinct(ws: list[str], n: int) -> float:
    grams = _ngrams(ws, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(ws: list[str], n: int = 4) -> float:
    grams = _ngrams(ws, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def text_metrics(text: str, dictionary: Dictionary) -> dict:
    """Metrics of one sample; percentages in %, others as fractions in [0, 1]."""
    ws = words(text)
    known = sum(w in dictionary for w in ws)
    return {
        "words": len(ws),
        "correct_words": 100.0 * known / len(ws) if ws else 0.0,
        "distinct_1": distinct(ws, 1),
        "distinct_2": distinct(ws, 2),
        "repetition": repetition(ws, 4),
    }


def mean_metrics(rows: Iterable[dict]) -> dict:
    rows = list(rows)
    if not rows:
        return {}
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
