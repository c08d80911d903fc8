"""A small decoder-only transformer language model (GPT-2 / nanoGPT layout), driven like the RNNs.

Pre-LayerNorm blocks (x + attn(ln(x)), then x + mlp(ln(x))), causal multi-head self-attention through
torch's scaled_dot_product_attention, a GELU MLP 4x as wide as the model, learned absolute position
embeddings, a final LayerNorm and an output head tied to the token embedding (one V x width matrix, used
as `F.linear(h, embed.weight)` so that the state dict holds it once: safetensors refuses shared tensors).
Initialisation as nanoGPT: weights normal(0, 0.02), the residual projections (attention and MLP output)
normal(0, 0.02 / sqrt(2 * layers)) so the residual stream's variance does not grow with depth, biases 0.

Same interface as models/rnn.py, so the language-model loop, its evaluation and sampling.py run unchanged:

    forward(x, state=None) -> (logits, new_state)
    x: (B, T) int64 token ids -> logits (B, T, V) float
    state: a tuple with one int64 tensor (1, B, L), L <= block - 1: the token ids that came just before x

The "state" of a transformer is its context: the last tokens it has seen, laid out (1, B, L) like an RNN's
h so that beam search's `map_state(state, lambda h: h.index_select(1, idx))` and `detach_state` work on
it. new_state holds the last min(block - 1, L + T) tokens of (context + x).

Why a sliding window: a transformer sees at most `block` tokens (its position embeddings stop there),
while an RNN carries its state over the whole text. Evaluation feeds a split in chunks of 256 tokens with
the state carried (methods/language_model.py), and training may feed more than `block` tokens at once. So
when L + T <= block, (context + x) goes through in one causal pass; when longer, x is processed in
consecutive pieces of stride = block // 2 tokens (at least 1), each run together with the up to
block - len(piece) tokens just before it, and the pieces' logits are concatenated. Every token is thus
predicted from at least block - stride tokens of context (or from all the text before it when less
exists), never from a cold start at a chunk boundary: the usual sliding-window evaluation of fixed-context
models (e.g. Hugging Face's perplexity guide), needed to compare them fairly with an RNN. It costs about
block / stride = 2x the compute of non-overlapping windows. Each token's logits come from exactly one pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FieldError, ModelConfig, opt
from ..registry import MODELS
from .dropout import Dropout


@dataclass(frozen=True)
class TransformerConfig(ModelConfig):
    layers: int = opt(4, "transformer blocks", ge=1)
    heads: int = opt(4, "attention heads per block (must divide width)", ge=1)
    width: int = opt(128, "embedding size (channels of the residual stream); the MLP is 4x as wide", ge=1)
    block: int = opt(64, "context length in tokens: positions the model can attend over", ge=1)
    dropout: float = opt(0.0, "dropout on embeddings, attention weights and residual branches", ge=0, lt=1)
    bias: bool = opt(True, "biases in the linear layers and LayerNorms")

    def check(self) -> None:
        if self.width % self.heads:
            raise FieldError("heads", f"{self.heads} heads do not divide width {self.width} "
                             f"(each head gets width / heads channels)")


State = tuple  # (ids,), ids: int64 (1, B, L), L <= block - 1: the context before the next input


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, bias: bool):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width, bias=bias)  # queries, keys, values of every head at once
        self.proj = nn.Linear(width, width, bias=bias)  # residual projection
        self.drop = Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, C = h.shape
        q, k, v = self.qkv(h).split(C, dim=-1)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, width: int, dropout: float, bias: bool):
        super().__init__()
        self.fc = nn.Linear(width, 4 * width, bias=bias)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * width, width, bias=bias)  # residual projection
        self.drop = Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(h))))


class Block(nn.Module):
    """Pre-LN: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, width: int, heads: int, dropout: float, bias: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, bias=bias)
        self.attn = SelfAttention(width, heads, dropout, bias)
        self.ln2 = nn.LayerNorm(width, bias=bias)
        self.mlp = MLP(width, dropout, bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.ln1(h))
        return h + self.mlp(self.ln2(h))


class TransformerLM(nn.Module):
    def __init__(self, vocab_size: int, layers: int = 4, heads: int = 4, width: int = 128, block: int = 64,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if layers < 1 or heads < 1 or width < 1 or block < 1:
            raise ValueError(f"model needs layers, heads, width, block >= 1, got {layers}, {heads}, {width}, {block}")
        if width % heads:
            raise ValueError(f"model.heads ({heads}) must divide model.width ({width})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        self.vocab_size, self.width, self.n_layers = vocab_size, width, layers
        self.context = block  # tokens the model can see at once (other code: this model's context is finite)
        self.stride = max(1, block // 2)  # tokens predicted per window when the input is longer than `block`
        self.embed = nn.Embedding(vocab_size, width)  # token embedding, also the output head (tied)
        self.pos = nn.Embedding(block, width)  # learned absolute positions 0 .. block-1 within a window
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout, bias) for _ in range(layers))
        self.norm = nn.LayerNorm(width, bias=bias)  # final LayerNorm before the head
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections: 0.02 / sqrt(2 * layers) (GPT-2)
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * self.n_layers))
            elif p.ndim == 2:  # linear weights, token and position embeddings
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):  # linear and LayerNorm biases; LayerNorm weights stay 1
                nn.init.zeros_(p)

    def _window(self, ids: torch.Tensor) -> torch.Tensor:
        """One causal pass: ids (B, n), n <= block -> logits (B, n, V), positions 0 .. n-1."""
        n = ids.shape[1]
        h = self.drop(self.embed(ids) + self.pos(torch.arange(n, device=ids.device)))  # (B, n, C)
        for blk in self.blocks:
            h = blk(h)
        return F.linear(self.norm(h), self.embed.weight)  # (B, n, V): head tied to the token embedding

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> tuple[torch.Tensor, State]:
        # Token-by-token decoding (sampling.py: T = 1 with the state) re-runs the whole window every step,
        # without a key/value cache: at this size (block 64 tokens, width 128) one window costs well under a
        # millisecond on a CPU core, and once the window is full every token's learned absolute position
        # shifts by one each step, so cached keys and values would no longer be the right ones anyway.
        B, T = x.shape
        ctx = state[0][0] if state is not None else x.new_zeros(B, 0)  # (B, L) token ids before x
        L = ctx.shape[1]
        seq = torch.cat([ctx.to(x.device, x.dtype), x], 1)  # (B, L + T)
        if L + T <= self.context:  # everything fits: one pass; x's positions are the last T
            logits = self._window(seq)[:, L:]
        else:  # sliding window: pieces of `stride` tokens, each with up to block - len(piece) tokens before it
            parts = []
            for s in range(0, T, self.stride):
                end = L + min(T, s + self.stride)  # (exclusive) end of this piece in seq
                n = end - (L + s)  # tokens in the piece
                parts.append(self._window(seq[:, max(0, end - self.context):end])[:, -n:])
            logits = torch.cat(parts, 1) if parts else seq.new_zeros(B, 0, self.vocab_size, dtype=torch.float)
        # the next call's context: the last block-1 tokens (with one new token, a full window)
        keep = min(self.context - 1, L + T)
        return logits, (seq[:, seq.shape[1] - keep:].unsqueeze(0),)  # (1, B, keep)


@MODELS.register("transformer", TransformerConfig, input="text")
def build(mc: TransformerConfig, spec) -> TransformerLM:
    """Decoder-only transformer language model: (cfg.model, spec) -> TransformerLM over spec.vocab_size tokens"""
    return TransformerLM(spec.vocab_size, layers=mc.layers, heads=mc.heads, width=mc.width, block=mc.block,
                         dropout=mc.dropout, bias=mc.bias)
