"""Decoding: the sampling filters' properties (hypothesis), the sampler's empirical distribution, beam search."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from ablations.sampling import beam_search, filter_logits, next_probs, sample, sample_next


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add hand-off waits on a loaded machine
    yield
    torch.set_num_threads(n)


logit_lists = st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=2, max_size=40)


@settings(max_examples=200, deadline=None)
@given(logits=logit_lists, p=st.floats(0.01, 0.99))
def test_top_p_keeps_the_smallest_set_reaching_p(logits, p):
    x = torch.tensor(logits)
    probs = torch.softmax(x.double(), -1)
    kept = torch.isfinite(filter_logits(x, top_p=p))
    mass = float(probs[kept].sum())
    assert mass >= p - 1e-12  # the kept set reaches p ...
    assert mass - float(probs[kept].min()) < p + 1e-12  # ... and is minimal: dropping its least likely token falls short
    if (~kept).any():  # the kept tokens are the most likely ones
        assert float(probs[kept].min()) >= float(probs[~kept].max()) - 1e-15
    # renormalised over the kept set
    q = next_probs(x, top_p=p)
    assert torch.allclose(q[kept], probs[kept] / mass) and float(q[~kept].sum()) == 0.0


@settings(max_examples=100, deadline=None)
@given(logits=st.lists(st.integers(-50, 50), min_size=2, max_size=30, unique=True), k=st.integers(1, 40))
def test_top_k_keeps_the_k_most_likely(logits, k):
    x = torch.tensor(logits, dtype=torch.float32) / 7  # distinct values: no ties at the k-th
    kept = torch.isfinite(filter_logits(x, top_k=k))
    assert int(kept.sum()) == min(k, len(logits))
    assert set(torch.topk(x, min(k, len(logits))).indices.tolist()) == set(kept.nonzero().flatten().tolist())


@settings(max_examples=100, deadline=None)
@given(logits=st.lists(st.integers(-40, 40), min_size=2, max_size=30, unique=True))
def test_temperature_to_zero_approaches_greedy(logits):
    x = torch.tensor(logits, dtype=torch.float32) / 4  # distinct, gap >= 0.25 between the best two
    best = int(x.argmax())
    p_best = [float(next_probs(x, temperature=t)[best]) for t in (2.0, 1.0, 0.5, 0.1, 0.01)]
    assert all(a <= b + 1e-12 for a, b in zip(p_best, p_best[1:]))  # sharpens monotonically
    assert p_best[-1] > 0.999
    gen = torch.Generator().manual_seed(0)
    assert all(sample_next(x, gen, temperature=0.01) == best for _ in range(20))
    assert sample_next(x, gen, temperature=0.0) == best  # 0 is exactly greedy


def _expected(logits, temperature=1.0, top_k=0, top_p=1.0):
    """The composed distribution computed independently with numpy: temperature -> top-k -> top-p."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros(len(p), bool)
    keep[order[:top_k] if top_k else order] = True
    p = np.where(keep, p, 0)
    p /= p.sum()
    mass, out = 0.0, np.zeros(len(p), bool)
    for i in np.argsort(-p, kind="stable"):
        if mass >= top_p or p[i] == 0:
            break
        out[i] = True
        mass += p[i]
    p = np.where(out, p, 0)
    return p / p.sum()


@pytest.mark.parametrize("kw", [{}, {"top_p": 0.8}, {"temperature": 2.0, "top_k": 3},
                                {"temperature": 0.7, "top_k": 4, "top_p": 0.9}])
def test_sampler_matches_expected_distribution(kw):
    logits = torch.log(torch.tensor([0.40, 0.25, 0.15, 0.10, 0.06, 0.04]))
    exp = _expected(logits.numpy(), **kw)
    assert np.allclose(next_probs(logits, **kw).numpy(), exp)
    gen = torch.Generator().manual_seed(1234)
    n = 12_000
    counts = np.bincount([sample_next(logits, gen, **kw) for _ in range(n)], minlength=6)
    assert counts[exp == 0].sum() == 0  # filtered tokens are never drawn
    k = exp > 0
    chi2 = float((((counts[k] - n * exp[k]) ** 2) / (n * exp[k])).sum())
    # 99.9 % quantile of chi-square with df = kept - 1 (<= 5): 20.5; a fixed seed keeps this deterministic
    assert chi2 < 20.5, (counts, n * exp)


def test_temperature_is_applied_before_top_p():
    x = torch.tensor([2.0, 1.0, 0.0, -1.0])
    # at temperature 0.5 the top token alone holds > 80 % of the mass; at temperature 1 it does not
    assert int(torch.isfinite(filter_logits(x, temperature=0.5, top_p=0.8)).sum()) == 1
    assert int(torch.isfinite(filter_logits(x, temperature=1.0, top_p=0.8)).sum()) == 2


class Markov(torch.nn.Module):
    """A fixed first-order character model: logits of the next token depend on the current one only."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table  # (V, V) logits

    def forward(self, x, state=None):
        return self.table[x], (torch.zeros(1, x.shape[0], 1),)  # (B, T, V), a dummy per-batch state


def _vocab(n):
    from ablations.data.text import UNK, Vocab

    return Vocab([UNK] + [chr(ord("a") + i) for i in range(n - 1)])


def _logp(table, first, text, vocab):
    ids = [first] + [vocab.index[c] for c in text]
    lp = torch.log_softmax(table.double(), -1)
    return sum(float(lp[a, b]) for a, b in zip(ids, ids[1:]))


def test_beam_search_finds_a_likelier_text_than_greedy():
    # from 'a', greedy takes 'b' (0.5) but then every step is a coin toss; 'c' (0.4) leads to a sure 'c' chain
    V = 5
    t = torch.full((V, V), -20.0)
    t[1, 2], t[1, 3], t[1, 4] = math.log(0.5), math.log(0.4), math.log(0.1)
    t[2, 1] = t[2, 4] = math.log(0.5)
    t[3, 3] = 0.0
    t[4, 1] = 0.0
    vocab, model = _vocab(V), Markov(t)
    greedy = sample(model, vocab, "a", 6, temperature=0.0)
    beam = beam_search(model, vocab, "a", 6, beam=3)
    assert greedy[0] == "b" and beam == "cccccc"
    assert _logp(t, 1, beam, vocab) > _logp(t, 1, greedy, vocab)
    streamed = []
    assert beam_search(model, vocab, "a", 6, beam=3, on_text=streamed.append) == "".join(streamed)


def test_sampling_is_reproducible_with_a_seed_and_never_emits_unk():
    torch.manual_seed(0)
    t = torch.randn(8, 8) * 2
    t[:, 0] = 10.0  # <unk> would dominate if it were not masked
    vocab, model = _vocab(8), Markov(t)
    a = sample(model, vocab, "ab", 200, temperature=1.0, top_p=0.95, seed=7)
    b = sample(model, vocab, "ab", 200, temperature=1.0, top_p=0.95, seed=7)
    c = sample(model, vocab, "ab", 200, temperature=1.0, top_p=0.95, seed=8)
    assert a == b and a != c and len(a) == 200 and "\ufffd" not in a


def test_beam_length_penalty_ranks_finished_hypotheses():
    # from 'a': stop at once ('d', p 0.4) or 'b' (0.6); from 'b': 'b' or 'd' (0.5 each). Raw log-prob prefers
    # the short "d" (-0.92 vs -1.20 for "bd"); a strong length penalty (alpha 2) prefers "bd" (-0.88)
    t = torch.full((5, 5), -30.0)
    t[1, 4], t[1, 2] = math.log(0.4), math.log(0.6)
    t[2, 2] = t[2, 4] = math.log(0.5)
    vocab, model = _vocab(5), Markov(t)
    assert beam_search(model, vocab, "a", 10, beam=3, alpha=0.0, stop="d") == "d"
    assert beam_search(model, vocab, "a", 10, beam=3, alpha=2.0, stop="d") == "bd"
