"""Text-quality metrics of generated samples, beyond the loss.

- correct_words: % of generated words found in a dictionary = the training corpus's own words plus a
  system word list (Debian's `wamerican`: /usr/share/dict/american-english, configurable). Counting the
  corpus's words keeps archaic spellings ("thou", "art", "o'er") from being judged misspelt.
- distinct_1 / distinct_2: unique word unigrams / bigrams over all of them (Li et al. 2016): diversity.
- repetition: share of word 4-grams that repeat an earlier 4-gram of the same sample
  (seq-rep-4 of Welleck et al. 2020): loops such as beam search's show up here.

Words are maximal runs of letters with inner apostrophes, lower-cased ("O'er" -> "o'er").

Generated Python code (datasets registered with code=True) also gets code_metrics: the share of lines that
parse on their own and of complete top-level blocks that compile.
"""
from __future__ import annotations

import ast
import os
import re
import warnings
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


# ---------------------------------------------------------------- generated code

# compound-statement headers; the line is parsed with a `pass` body (and the context some need) added
_HEADER = re.compile(r"(?:async\s+)?(def|class|if|for|while|with|try|elif|else|except|finally|match|case)\b")
_CONTEXT = {"elif": "if x:\n    pass\n", "else": "if x:\n    pass\n",
            "except": "try:\n    pass\n", "finally": "try:\n    pass\n", "case": "match x:\n"}
_CONTINUES = re.compile(r"(elif|else|except|finally)\b")  # top-level lines that continue the block before
# keywords that only ever begin a statement: at column 0 they end an unclosed bracket (broken generated code)
_NEW_TOP = re.compile(r"(def|class|async|import|from|return|raise|pass|break|continue|global|nonlocal|del|assert"
                      r"|while|with|try|elif|except|finally)\b|@")


def _parses(src: str) -> bool:
    try:
        ast.parse(src)
    except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError: does not parse
        return False
    return True


def _compiles(src: str) -> bool:
    try:
        compile(src, "<sample>", "exec", dont_inherit=True)  # not this module's `from __future__` flags
    except Exception:
        return False
    return True


def _line_parses(s: str) -> bool:
    """One stripped, non-blank line: parses alone, or as a block header with a `pass` body."""
    if s.startswith("#") or _parses(s):
        return True
    if s.startswith("@"):  # a decorator: needs something to decorate
        return _parses(s + "\ndef f(): pass")
    m = _HEADER.match(s)
    if m is None:
        return False
    kw = m.group(1)
    pre = _CONTEXT.get(kw, "")
    ind = "    " if kw == "case" else ""
    body = "\n" + ind + ("    case _:\n        pass" if kw == "match" else "    pass")
    post = "\nfinally:\n    pass" if kw == "try" else ""
    # with a body added (a header), else as it is (a one-line compound statement such as `else: x = 1`)
    return _parses(pre + ind + s + body + post) or bool(pre or post) and _parses(pre + ind + s + post)


def _statement_starts(lines: list[str]) -> list[bool]:
    """Per line: does it begin a new logical line, i.e. not inside a string, brackets or a backslash
    continuation? A light scanner, robust to broken code: a line at column 0 that starts with a keyword
    only a statement can start with (def, class, import, return, ..., or @), or a def/class line at any
    indentation, is always a new statement, so one unclosed bracket does not swallow the rest of a
    generated sample."""
    starts, depth, quote, cont = [], 0, "", False
    for line in lines:
        if depth and not quote and (_NEW_TOP.match(line) or _DEF.match(line)):  # a def never sits in brackets
            depth = 0
        starts.append(not (depth or quote or cont))
        cont, i, n = False, 0, len(line)
        while i < n:
            c = line[i]
            if quote:
                if c == "\\":
                    i += 2
                    continue
                if line.startswith(quote, i):
                    i, quote = i + len(quote), ""
                    continue
            elif c == "#":
                break
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                depth = max(0, depth - 1)
            elif c in "'\"":
                quote = c * 3 if line.startswith(c * 3, i) else c
                i += len(quote)
                continue
            elif c == "\\" and i == n - 1:
                cont = True
            i += 1
        if len(quote) == 1 and not line.endswith("\\"):  # an unterminated one-line string ends with its line
            quote = ""
    return starts


def code_metrics(text: str) -> dict:
    """Metrics of one sample of generated Python code; percentages in %.

    - code_lines: non-blank lines; code_lines_parse: % of them that parse on their own (ast.parse) after
      stripping their indentation. Comment lines count as parsing; a compound-statement header
      (`def f(x):`, `else:`, `except E as e:`, `case 1:` ...) parses when it does with a `pass` body and,
      for elif/else/except/finally/case, a suitable preceding header; a decorator when something follows it.
      Lines inside a multi-line string or a bracketed continuation are judged alone too and mostly fail,
      so even real code scores below 100 % (~80 %): compare models with each other, not with 100.
    - code_blocks: complete top-level blocks; code_blocks_compile: % of them that compile(). A block starts
      at each line at column 0 that begins a statement (not a comment, not inside a string or brackets:
      see _statement_starts), is not elif/else/except/finally and does not follow a decorator; it runs to
      the next block start. Real code scores 100 %.
      The sample's last block is dropped (sampling cut it off), as are lines before the first block (the
      sample may start inside one). No complete block: code_blocks = 0 and code_blocks_compile = nan.
    - code_defs: complete `def` / `class` definitions at any indentation (_def_blocks), dedented;
      code_defs_compile: % of them that compile(). nan when there is none.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    with warnings.catch_warnings():  # random code makes compile() warn (invalid escapes, `is` with a literal)
        warnings.simplefilter("ignore")
        stripped = [s for s in (line.strip() for line in lines) if s]
        ok_lines = sum(_line_parses(s) for s in stripped)
        blocks, cur, after_decorator = [], None, False
        for line, start in zip(lines, _statement_starts(lines)):
            s = line.strip()
            top = start and bool(s) and not s.startswith("#") and not line[0].isspace()
            if top and not after_decorator and not _CONTINUES.match(s):
                cur = [line]
                blocks.append(cur)
            elif cur is not None:
                cur.append(line)
            if top:
                after_decorator = s.startswith("@")
        complete = blocks[:-1]
        ok_blocks = sum(_compiles("\n".join(b) + "\n") for b in complete)
        defs = _def_blocks(lines, _statement_starts(lines))
        ok_defs = sum(_compiles("\n".join(b) + "\n") for b in defs)
    return {
        "code_lines": len(stripped),
        "code_lines_parse": 100.0 * ok_lines / len(stripped) if stripped else float("nan"),
        "code_blocks": len(complete),
        "code_blocks_compile": 100.0 * ok_blocks / len(complete) if complete else float("nan"),
        "code_defs": len(defs),
        "code_defs_compile": 100.0 * ok_defs / len(defs) if defs else float("nan"),
    }


_DEF = re.compile(r"(\s*)(?:async\s+)?(?:def|class)\s")


def _def_blocks(lines: list[str], starts: list[bool]) -> list[list[str]]:
    """Complete function / class definitions at ANY indentation, dedented: a `def`/`class` line (with its
    decorators) and every following line up to the next statement line indented no deeper than it. A
    definition still open when the sample ends is dropped. Methods are what generated code is mostly made
    of, and a 1,500-character sample rarely holds a whole top-level block, so this is the code metric that
    has enough cases per sample."""
    out = []
    for i, (line, start) in enumerate(zip(lines, starts)):
        m = _DEF.match(line) if start else None
        if not m:
            continue
        ind = len(m.group(1).expandtabs())
        j = i + 1
        while j < len(lines) and not (starts[j] and lines[j].strip() and not lines[j].lstrip().startswith("#")
                                      and len(lines[j]) - len(lines[j].lstrip()) <= ind):
            j += 1
        if j == len(lines):  # still open at the end of the sample: cut off by sampling
            continue
        k = i
        while k > 0 and starts[k - 1] and lines[k - 1].strip().startswith("@"):  # its decorators
            k -= 1
        out.append([ln[ind:] if ln[:ind].strip() == "" else ln.lstrip() for ln in lines[k:j]])
    return out
