"""The decoder-only transformer language model (models/transformer.py): the RNNs' interface (logits, state),
causality, the context carried as state, the sliding window over long inputs, config checks, training.

Tiny sizes on the CPU: the whole file runs in seconds."""
import math

import pytest
import torch
import torch.nn.functional as F

from ablations.config import ConfigError, FieldError, make
from ablations.data.base import DataSpec
from ablations.data.text import Vocab, batch_at, sample_offsets
from ablations.models.rnn import detach_state, map_state
from ablations.models.transformer import TransformerConfig, TransformerLM
from ablations.registry import MODELS

V = 13  # vocabulary size of the synthetic tests


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads (and the machine may be shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(block: int = 8, **kw) -> TransformerLM:
    torch.manual_seed(0)
    cfg = TransformerConfig(name="transformer", **{"layers": 2, "heads": 2, "width": 16, "block": block, **kw})
    return MODELS.get("transformer")(cfg, DataSpec(vocab_size=V)).eval()


def ids(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def test_registered_as_a_text_model():
    entry = MODELS.entry("transformer")
    assert entry.meta.get("input") == "text" and entry.Config is TransformerConfig
    d = TransformerConfig()
    assert (d.layers, d.heads, d.width, d.block, d.dropout, d.bias) == (4, 4, 128, 64, 0.0, True)
    m = tiny(block=8)
    assert m.context == 8 and m.vocab_size == V


@pytest.mark.parametrize("t", [1, 5, 8, 9, 23])
def test_logits_shape_and_state_layout(t):
    m = tiny(block=8)
    logits, state = m(ids(3, t))
    assert logits.shape == (3, t, V) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert isinstance(state, tuple) and len(state) == 1
    (ctx,) = state
    assert ctx.dtype == torch.int64 and ctx.shape == (1, 3, min(7, t))


def test_state_holds_the_latest_tokens_capped_at_block_minus_1():
    m = tiny(block=8)
    x = ids(2, 5)
    _, s = m(x)
    assert torch.equal(s[0][0], x)  # (1, B, 5): everything so far
    y = ids(2, 4, seed=2)
    _, s = m(y, s)
    assert s[0].shape == (1, 2, 7) and torch.equal(s[0][0], torch.cat([x, y], 1)[:, -7:])
    z = ids(2, 30, seed=3)
    _, s = m(z, s)
    assert s[0].shape == (1, 2, 7) and torch.equal(s[0][0], z[:, -7:])
    _, s = m(ids(2, 1, seed=4), s)
    assert s[0].shape == (1, 2, 7)
    m1 = tiny(block=1)  # a context of one token: nothing to carry
    logits, s = m1(ids(2, 6))
    assert logits.shape == (2, 6, V) and s[0].shape == (1, 2, 0)


def test_causal():
    """Changing a later token leaves the logits of every earlier position unchanged (short and long inputs)."""
    m = tiny(block=8)
    for t in (8, 21):
        x = ids(2, t)
        a, _ = m(x)
        for k in (t // 2, t - 1):
            x2 = x.clone()
            x2[:, k] = (x2[:, k] + 1) % V
            b, _ = m(x2)
            assert torch.allclose(a[:, :k], b[:, :k], atol=1e-6)
            assert not torch.allclose(a[:, k], b[:, k], atol=1e-6)


@pytest.mark.parametrize("split", [1, 3, 7])
def test_state_carries_the_context(split):
    """A sequence of length <= block in one call equals its first part, then the rest with the state."""
    m = tiny(block=8)
    x = ids(3, 8)
    whole, _ = m(x)
    a, s = m(x[:, :split])
    b, _ = m(x[:, split:], s)
    assert torch.allclose(whole, torch.cat([a, b], 1), atol=1e-5)


def test_token_by_token_equals_one_pass_within_the_block():
    m = tiny(block=8)
    x = ids(2, 8)
    whole, _ = m(x)
    state, steps = None, []
    for t in range(8):
        logits, state = m(x[:, t:t + 1], state)
        steps.append(logits)
    assert torch.allclose(whole, torch.cat(steps, 1), atol=1e-5)


def reference(m: TransformerLM, ctx: torch.Tensor, x: torch.Tensor, block: int) -> torch.Tensor:
    """The sliding window written out: x in pieces of block // 2 tokens, each run (one public forward call
    of at most `block` tokens, no state) with the up to block - len(piece) tokens before it."""
    stride = max(1, block // 2)
    seq = torch.cat([ctx, x], 1)
    L, out = ctx.shape[1], []
    for s in range(0, x.shape[1], stride):
        piece = x[:, s:s + stride]
        end = L + s + piece.shape[1]
        window = seq[:, max(0, end - block):end]
        assert window.shape[1] <= block
        out.append(m(window)[0][:, -piece.shape[1]:])
    return torch.cat(out, 1)


@pytest.mark.parametrize("block", [8, 7, 2])
@pytest.mark.parametrize("ctx_len", [0, 3, "full"])
def test_long_input_is_the_sliding_window(block, ctx_len):
    m = tiny(block=block)
    L = block - 1 if ctx_len == "full" else min(ctx_len, block - 1)
    ctx = ids(2, L, seed=5)
    x = ids(2, 29)
    state = (ctx[None],) if L else None
    got, new = m(x, state)
    assert torch.allclose(got, reference(m, ctx, x, block), atol=1e-5)
    assert torch.equal(new[0][0], torch.cat([ctx, x], 1)[:, -(block - 1):] if block > 1 else x[:, :0])


def test_every_token_sees_at_least_block_minus_stride_tokens():
    """Changing a token changes the predictions up to block - stride positions later (it is in their context),
    while in one long call a token far before (more than `block` back) can influence nothing."""
    m = tiny(block=8)  # stride 4
    x = ids(1, 40)
    a, _ = m(x)
    x2 = x.clone()
    x2[0, 10] = (x2[0, 10] + 1) % V
    b, _ = m(x2)
    changed = ~torch.isclose(a[0], b[0], atol=1e-6).all(-1)  # (T,)
    assert changed[10:10 + 8 - 4].all()  # the next block - stride positions always see token 10
    assert not changed[10 + 8:].any()  # nothing further than a block away does
    assert not changed[:10].any()


def test_chunks_with_carried_state_equal_one_long_call():
    """Evaluation feeds chunks with the state carried: when the chunks are longer than the block and multiples of
    the stride, this is the same sliding window as one call over the whole text."""
    m = tiny(block=8)
    x = ids(2, 48)
    whole, _ = m(x)
    state, parts = None, []
    for t in range(0, 48, 12):
        logits, state = m(x[:, t:t + 12], state)
        parts.append(logits)
    assert torch.allclose(whole, torch.cat(parts, 1), atol=1e-5)


def test_beam_search_state_helpers():
    m = tiny(block=8)
    x = ids(3, 5)
    _, s = m(x)
    idx = torch.tensor([2, 0, 0])
    r = map_state(s, lambda h: h.index_select(1, idx))
    assert isinstance(r, tuple) and r[0].shape == (1, 3, 5) and torch.equal(r[0][0], x[idx])
    assert torch.equal(detach_state(s)[0], s[0])
    # reordered state gives the reordered rows' predictions
    y = ids(3, 1, seed=9)
    a, _ = m(y[idx], r)
    b, _ = m(torch.cat([x, y], 1)[idx])
    assert torch.allclose(a, b[:, -1:], atol=1e-5)


def test_heads_must_divide_width():
    with pytest.raises(FieldError) as e:
        TransformerConfig(name="transformer", width=10, heads=4).check()
    assert e.value.key == "heads"
    TransformerConfig(name="transformer", width=12, heads=4).check()
    with pytest.raises(ConfigError, match=r"model\.heads: .*do not divide width 10"):
        make({"model": {"name": "transformer", "width": 10, "heads": 4}})


def test_init_and_tied_head():
    m = tiny(block=8, layers=3, width=32)
    # the head has no matrix of its own: the only (V, width) tensor in the weights is the embedding
    vocab_shaped = [k for k, v in m.state_dict().items() if v.shape == m.embed.weight.shape]
    assert vocab_shaped == ["embed.weight"]
    for name, p in m.named_parameters():
        if name.endswith("bias"):
            assert not p.any(), name
    big = TransformerLM(V, layers=2, heads=4, width=256, block=8)
    std = {n: float(p.detach().std()) for n, p in big.named_parameters() if p.ndim == 2}
    assert std["blocks.0.attn.qkv.weight"] == pytest.approx(0.02, rel=0.05)
    assert std["blocks.1.mlp.proj.weight"] == pytest.approx(0.02 / math.sqrt(4), rel=0.05)
    assert std["blocks.0.attn.proj.weight"] == pytest.approx(0.02 / math.sqrt(4), rel=0.05)
    nb = TransformerLM(V, layers=1, heads=2, width=8, block=4, bias=False)
    assert not any(n.endswith("bias") for n, _ in nb.named_parameters())


def test_final_weights_save_and_load(tmp_path):
    """The run's final.safetensors (rundir.save_final) takes the state dict: no tensor is stored twice."""
    from safetensors.torch import load_file

    from ablations import rundir as rd

    m = tiny(block=8)
    rd.save_final(tmp_path, m.state_dict())
    m2 = TransformerLM(V, layers=2, heads=2, width=16, block=8).eval()
    m2.load_state_dict(load_file(str(tmp_path / rd.FINAL)))
    x = ids(2, 10)
    assert torch.allclose(m(x)[0], m2(x)[0])


def test_one_adamw_step_lowers_the_loss():
    m = tiny(block=8, dropout=0.1)
    x = ids(4, 12)
    y = torch.roll(x, -1, 1)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)

    def eval_loss() -> float:  # both losses in eval mode: dropout must not decide the comparison
        m.eval()
        with torch.no_grad():
            return float(F.cross_entropy(m(x)[0].flatten(0, 1), y.flatten()))

    before = eval_loss()
    m.train()
    torch.manual_seed(0)
    loss = F.cross_entropy(m(x)[0].flatten(0, 1), y.flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert eval_loss() < before


CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 12


def test_overfits_a_tiny_corpus_and_decodes():
    """As tests/test_text.py's overfit test for the RNNs; then sampling and beam search run on it."""
    from ablations.methods.language_model import evaluate
    from ablations.sampling import decode

    torch.manual_seed(0)
    vocab = Vocab.build(list(CORPUS), "char")
    data = vocab.encode(CORPUS)
    counts = torch.bincount(data).double()
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * p.log()).sum())  # ~3 nats/char
    m = MODELS.get("transformer")(TransformerConfig(name="transformer", layers=2, heads=2, width=32, block=32),
                                  DataSpec(vocab_size=len(vocab)))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    offsets = sample_offsets(len(data), 32, 16, 150, gen)
    for step in range(150):
        x, y = batch_at(data, offsets[step], 32)
        loss = F.cross_entropy(m(x)[0].flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = evaluate(m, data, torch.device("cpu"), None)  # chunks of 256 with the context carried
    assert final < 0.3 * unigram, (final, unigram)
    assert len(decode(m, vocab, "First", 40, temperature=0.8, top_p=0.9)) == 40
    beam = decode(m, vocab, "First", 20, beam=3)
    assert len(beam) == 20
