"""Decoding text from a trained language model: temperature, top-k, nucleus (top-p), greedy, beam search.

Sampling filters compose in the order temperature -> top-k -> top-p: the logits are divided by the
temperature, then all but the k most likely tokens are dropped, then all but the smallest set of the
remaining tokens whose probability mass reaches p (Holtzman et al., "The Curious Case of Neural Text
Degeneration", ICLR 2020). Temperature 0 is greedy decoding. Beam search keeps the `beam` most likely
continuations; with a stop string, finished hypotheses are ranked by log-probability divided by the
GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016). Without a stop string every
hypothesis has the same length and the penalty cannot change the ranking.

The command `ablations generate RUN_DIR ...` (generate.py) streams text to stdout as it is produced.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

from .data.text import Vocab

VOCAB_FILE = "vocab.json"  # written by the language loop next to config.json
CORPUS_WORDS = "corpus_words.txt"  # the training split's distinct words, one a line (spelling dictionary)


# ---------------------------------------------------------------- filters and one sampling step

def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits (..., V) -> float64 logits with the filtered-out tokens at -inf.

    temperature <= 0: greedy (only the argmax survives). top_k <= 0 or >= V: off. top_p >= 1: off.
    float64 so that the top-p cut is exact for the property tests (and cheap: V is at most ~20k).
    """
    x = logits.double()
    if temperature <= 0:
        keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, x.argmax(-1, keepdim=True), True)
        return x.masked_fill(~keep, float("-inf"))
    x = x / temperature
    v = x.shape[-1]
    if 0 < top_k < v:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]  # (..., 1)
        x = x.masked_fill(x < kth, float("-inf"))  # ties with the k-th are kept (rare; keeps it order-free)
    if top_p < 1.0:
        probs = torch.softmax(x, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the strictly more likely tokens
        # keep a token while the mass before it is still short of p: the smallest set reaching p;
        # the most likely token always stays (its mass-before is 0 < p)
        keep_sorted = before < top_p
        keep_sorted[..., 0] = True
        keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
        x = x.masked_fill(~keep, float("-inf"))
    return x


def next_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    return torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)


def sample_next(logits: torch.Tensor, gen: torch.Generator, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0) -> int:
    """One token id from logits (V,), drawn with `gen` (so a seed reproduces the text)."""
    if temperature <= 0:
        return int(logits.argmax())
    return int(torch.multinomial(next_probs(logits, temperature, top_k, top_p), 1, generator=gen))


# ---------------------------------------------------------------- whole texts

def _prompt_ids(vocab: Vocab, prompt: str) -> torch.Tensor:
    ids = vocab.encode(prompt)
    if len(ids) == 0:  # an empty prompt: start as after a line break (as text starts), or any token
        nl = vocab.index.get("\n", 1 if len(vocab) > 1 else 0)
        ids = torch.tensor([nl])
    return ids


@contextlib.contextmanager
def single_step_kernels():
    """Token-by-token decoding without oneDNN: its LSTM kernel costs ~0.8-1.7 ms per call at batch 1
    against ~0.2-0.35 ms for torch's own (measured, 512 units, one core). Training keeps oneDNN (2x faster)."""
    prev = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = prev


def _no_unk(logits: torch.Tensor) -> torch.Tensor:
    """Never emit <unk> (id 0): it stands for characters unseen in training, not for text."""
    if logits.shape[-1] > 1:
        logits = logits.clone()
        logits[..., 0] = float("-inf")
    return logits


@torch.no_grad()
def sample(model, vocab: Vocab, prompt: str, length: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, seed: int = 0, stop: str = "",
           on_text: Optional[Callable[[str], None]] = None) -> str:
    """`length` tokens after `prompt` (the prompt not included), one at a time; on_text gets each piece."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    logits, state = model(_prompt_ids(vocab, prompt)[None])  # (1, P, V)
    last = _no_unk(logits[0, -1])
    out: list[str] = []
    for _ in range(length):
        tok = sample_next(last, gen, temperature, top_k, top_p)
        piece = vocab.decode([tok])
        out.append(piece)
        if on_text:
            on_text(piece)
        if stop and "".join(out[-len(stop):]).endswith(stop):
            break
        logits, state = model(torch.tensor([[tok]]), state)
        last = _no_unk(logits[0, -1])
    return "".join(out)


def length_penalty(n: int, alpha: float) -> float:
    return ((5 + n) / 6) ** alpha


@torch.no_grad()
def beam_search(model, vocab: Vocab, prompt: str, length: int, beam: int = 4, alpha: float = 0.6,
                stop: str = "", on_text: Optional[Callable[[str], None]] = None) -> str:
    """The most likely continuation of at most `length` tokens found with `beam` hypotheses.

    Streams the prefix all live and finished hypotheses agree on, as soon as it is settled.
    """
    from .models.rnn import map_state

    model.eval()
    logits, state = model(_prompt_ids(vocab, prompt)[None])
    logp = torch.log_softmax(_no_unk(logits[:, -1].double()), -1)  # (K=1, V)
    scores = torch.zeros(1, dtype=torch.float64)  # (K,) summed log-probabilities of the live hypotheses
    seqs: list[list[int]] = [[]]
    finished: list[tuple[float, list[int]]] = []  # (length-penalised score, tokens)
    stop_ids = vocab.encode(stop).tolist() if stop else []
    streamed = 0
    v = logp.shape[-1]
    for _ in range(length):
        cand = (scores[:, None] + logp).flatten()  # (K*V,)
        # 2 x beam candidates, so that the beam stays full when some of them finish (end with the stop text)
        top = torch.topk(cand, min(2 * beam, int(torch.isfinite(cand).sum())))
        src = torch.div(top.indices, v, rounding_mode="floor")  # which hypothesis each candidate extends
        tok = top.indices % v
        live: list[int] = []  # candidate ranks that go on
        for rank in range(len(top.indices)):
            seq = seqs[int(src[rank])] + [int(tok[rank])]
            if stop_ids and seq[-len(stop_ids):] == stop_ids:
                if rank < beam:  # a finished hypothesis counts only if it made the beam
                    finished.append((float(top.values[rank]) / length_penalty(len(seq), alpha), seq))
            elif len(live) < beam:
                live.append(rank)
        keep = torch.tensor(live, dtype=torch.long)
        seqs = [seqs[int(src[r])] + [int(tok[r])] for r in live]
        scores = top.values[keep]
        best_done = max((f[0] for f in finished), default=float("-inf"))
        # stop when no live hypothesis can still beat the best finished one: log-probabilities only fall,
        # and dividing by the largest penalty reachable (alpha >= 0) bounds the normalised score from above
        if not live or (finished and alpha >= 0 and float(scores.max()) / length_penalty(length, alpha) < best_done):
            break
        state = map_state(state, lambda h: h.index_select(1, src[keep]))  # (1, K, H) per tensor
        logits, state = model(tok[keep][:, None], state)  # (K, 1, V)
        logp = torch.log_softmax(_no_unk(logits[:, -1].double()), -1)
        if on_text:  # stream what every hypothesis shares
            everyone = seqs + [f[1] for f in finished]
            n = min(len(s) for s in everyone)
            common = 0
            while common < n and all(s[common] == everyone[0][common] for s in everyone):
                common += 1
            if common > streamed:
                on_text(vocab.decode(everyone[0][streamed:common]))
                streamed = common
    pool = finished + [(float(sc) / length_penalty(len(q), alpha), q) for sc, q in zip(scores, seqs)]
    best = max(pool, key=lambda f: f[0])[1]
    if on_text and len(best) > streamed:
        on_text(vocab.decode(best[streamed:]))
    return vocab.decode(best)


def decode(model, vocab: Vocab, prompt: str, length: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, beam: int = 1, seed: int = 0, stop: str = "", alpha: float = 0.6,
           on_text: Optional[Callable[[str], None]] = None) -> str:
    """One entry point for every strategy: beam > 1 is beam search, else (filtered) sampling."""
    with single_step_kernels():
        if beam > 1:
            return beam_search(model, vocab, prompt, length, beam, alpha, stop, on_text)
        return sample(model, vocab, prompt, length, temperature, top_k, top_p, seed, stop, on_text)
