"""Character (or word) language models: vanilla RNN (tanh), LSTM and GRU.

One class serves the three cells. Layers are separate single-layer torch modules (not one
`num_layers=N` module) so that dropout and optional layer norm can sit between them; on CPU torch
runs the layers one after another either way, so this costs nothing.

Shapes: x (B, T) int64 token ids -> logits (B, T, V) float; the state is a tuple with one entry per
layer: a tensor h (1, B, H) for rnn/gru, a pair (h, c) of those for lstm. Inside, activations are
time-major (T, B, .): torch's CPU (oneDNN) sequence kernels want that layout, and batch-first layers
cost a transpose copy of every layer's input and output, forward and backward (5 % of a 3x512 LSTM's
training step on an Intel Xeon with AMX, bf16).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, opt
from ..registry import MODELS
from .dropout import Dropout, dropout


@dataclass(frozen=True)
class RNNConfig(ModelConfig):
    hidden: int = opt(256, "units per recurrent layer", ge=1)
    layers: int = opt(1, "stacked recurrent layers", ge=1)
    embed: int = opt(64, "token embedding size (0: one-hot input)", ge=0)
    dropout: float = opt(0.0, "dropout between layers and before the output layer", ge=0, lt=1)
    locked_dropout: bool = opt(False, "that dropout with one mask per sequence, the same at every time step "
                                      "(variational dropout, Gal & Ghahramani 2016; AWD-LSTM's LockedDropout), "
                                      "instead of one per element")
    layer_norm: bool = opt(False, "layer norm on each layer's output")
    weight_drop: float = opt(0.0, "DropConnect on each layer's hidden-to-hidden weights while training (AWD-LSTM's "
                                  "WeightDrop): one mask per batch, shared by all time steps", ge=0, lt=1)

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

State = tuple  # per layer: Tensor (1, B, H) for rnn/gru, (Tensor, Tensor) for lstm


class CharRNN(nn.Module):
    def __init__(self, cell: str, vocab_size: int, hidden: int = 256, layers: int = 1, embed: int = 64,
                 dropout: float = 0.0, layer_norm: bool = False, weight_drop: float = 0.0,
                 locked_dropout: bool = False):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"unknown recurrent cell {cell!r}; choices: {', '.join(_CELLS)}")
        if layers < 1 or hidden < 1:
            raise ValueError(f"model needs layers >= 1 and hidden >= 1, got layers={layers} hidden={hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= weight_drop < 1.0:
            raise ValueError(f"model.weight_drop must be in [0, 1), got {weight_drop}")
        self.cell, self.vocab_size, self.hidden, self.n_layers = cell, vocab_size, hidden, layers
        # embed == 0: one-hot input, as in Karpathy's char-rnn; the first layer's input size is then V
        self.embed = nn.Embedding(vocab_size, embed) if embed > 0 else None
        in_size = embed if embed > 0 else vocab_size
        kw = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        self.rnns = nn.ModuleList(  # time-major: (T, B, .) in and out
            _CELLS[cell](in_size if i == 0 else hidden, hidden, **kw) for i in range(layers))
        # layer norm on each layer's output (between layers and before the head), not inside the cell:
        # an in-cell LayerNorm-LSTM needs a Python time loop, ~10x slower on CPU
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers)) if layer_norm else None
        # dropout on the non-recurrent connections only (Zaremba et al. 2014): after each layer's output
        # (models/dropout.py: its CPU mask costs a third of nn.Dropout's); locked: one mask per sequence,
        # shared along dim 0, the time steps of the time-major activations
        self.drop = Dropout(dropout, shared_dim=0 if locked_dropout else None)
        # DropConnect on the recurrent weights (Merity et al. 2018): dropout that reaches the recurrence
        # (the dropout above acts between layers only). The mask sits on the weight matrix, not on h, so the
        # fused sequence kernel still runs (oneDNN on CPU, measured 2-3 % slower for 3x512; on CUDA, untested,
        # cuDNN wants one weight buffer, so expect torch's "not part of single contiguous chunk" warning and a
        # copy per call), where dropout on h at each time step would need a Python time loop
        self.weight_drop = weight_drop
        self.head = nn.Linear(hidden, vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        for rnn in self.rnns:
            if self.cell == "lstm":
                # forget-gate bias 1 (Jozefowicz et al. 2015): remember by default early in training.
                # torch's gate order is input, forget, cell, output; b_ih and b_hh add, so set one of them
                for name, p in rnn.named_parameters():
                    if name.startswith("bias_ih"):
                        with torch.no_grad():
                            p[self.hidden:2 * self.hidden].fill_(1.0)

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> tuple[torch.Tensor, State]:
        # x: (B, T) int64 -> h: (T, B, E) or one-hot (T, B, V); the lookup of x.t() writes time-major directly
        xt = x.t()
        h = self.embed(xt) if self.embed is not None else F.one_hot(xt, self.vocab_size).float()
        new_state = []
        for i, rnn in enumerate(self.rnns):
            st = None if state is None else state[i]
            if self.training and self.weight_drop > 0:
                # the dropped copy stands in for the parameter in this call only; gradients reach the
                # parameter through the mask (zero where dropped, scaled by 1 / (1 - p) elsewhere)
                w = dropout(rnn.weight_hh_l0, self.weight_drop)  # (G * H, H), G gates
                h, s = torch.func.functional_call(rnn, {"weight_hh_l0": w}, (h, st))
            else:
                h, s = rnn(h, st)  # h: (T, B, H)
            new_state.append(s)
            if self.norms is not None:
                h = self.norms[i](h)
            h = self.drop(h)
        return self.head(h).transpose(0, 1), tuple(new_state)  # (B, T, V), a view of the (T, B, V) logits


def detach_state(state: Optional[State]) -> Optional[State]:
    """Cut the graph between truncated-BPTT segments while keeping the values (carry-over)."""
    if state is None:
        return None
    return tuple(tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach() for s in state)


def map_state(state: Optional[State], fn) -> Optional[State]:
    """Apply fn to every tensor of a state (e.g. index_select along the batch dim for beam search)."""
    if state is None:
        return None
    return tuple(tuple(fn(t) for t in s) if isinstance(s, tuple) else fn(s) for s in state)


def _builder(cell: str):
    def build(mc: RNNConfig, spec) -> CharRNN:
        return CharRNN(cell, spec.vocab_size, hidden=mc.hidden, layers=mc.layers, embed=mc.embed,
                       dropout=mc.dropout, layer_norm=mc.layer_norm, weight_drop=mc.weight_drop,
                       locked_dropout=mc.locked_dropout)

    build.__doc__ = f"{cell.upper()} language model: (cfg.model, spec) -> CharRNN over spec.vocab_size tokens"
    return build


for _cell in _CELLS:
    MODELS.add(_cell, _builder(_cell), RNNConfig, input="text")
