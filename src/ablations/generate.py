"""`ablations generate RUN_DIR ...`: text from a trained language-model run, streamed to stdout as it is
produced (decoding itself: sampling.py)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from . import rundir as rd
from .data.text import Vocab
from .errors import RunError
from .sampling import CORPUS_WORDS, VOCAB_FILE, decode


# ---------------------------------------------------------------- loading a run

def load_run(run_dir: Path):
    """(model in eval mode, vocab, RunConfig) from a run dir: final.safetensors, else checkpoint.pt."""
    from .config import from_dict
    from .data.base import DataSpec
    from .registry import MODELS

    run = rd.Run.read(Path(run_dir))
    run_dir = run.dir
    cfg = from_dict(run.config, str(run_dir / rd.CONFIG))
    if cfg.method.name != "language_model" or not (run_dir / VOCAB_FILE).exists():
        raise RunError(f"{run_dir}: not a language-model run (method {cfg.method.name!r}, no {VOCAB_FILE})")
    vocab = Vocab.from_dict(rd.read_json(run_dir / VOCAB_FILE))
    model = MODELS.get(cfg.model.name)(cfg.model, DataSpec(vocab_size=len(vocab)))
    if (run_dir / rd.FINAL).exists():
        from safetensors.torch import load_file

        state = load_file(str(run_dir / rd.FINAL))
    elif (run_dir / rd.CHECKPOINT).exists():
        state = rd.load_checkpoint(run_dir / rd.CHECKPOINT)["model"]
    else:
        raise RunError(f"{run_dir}: no weights yet ({rd.FINAL} or {rd.CHECKPOINT})")
    model.load_state_dict(state)
    return model.eval(), vocab, cfg


# ---------------------------------------------------------------- command line

def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished (or checkpointed) language-model run directory")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a line break)")
    p.add_argument("--length", type=int, default=500, help="tokens (characters) to generate (default 500)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default 1)")
    p.add_argument("--top-k", type=int, default=0, help="keep the K most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1: off)")
    p.add_argument("--beam", type=int, default=1, help="beam width; > 1 runs beam search (default 1: sampling)")
    p.add_argument("--length-penalty", type=float, default=0.6, help="beam search alpha (with --stop)")
    p.add_argument("--stop", default="", help="stop after this text is generated, e.g. $'\\n\\n'")
    p.add_argument("--seed", type=int, help="random seed (default: a fresh one, printed to stderr)")
    p.add_argument("--metrics", action="store_true", help="print text-quality metrics to stderr at the end")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: per-token steps are tiny)")


def _check(args) -> None:
    from .config import ConfigError

    if args.length < 1:
        raise ConfigError(f"--length must be >= 1, got {args.length}")
    if args.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0 or args.beam < 1:
        raise ConfigError("--top-k must be >= 0 and --beam >= 1")


def main(args: argparse.Namespace) -> int:
    _check(args)
    torch.set_num_threads(max(1, args.threads))
    model, vocab, cfg = load_run(Path(args.run_dir))
    seed = args.seed if args.seed is not None else int(time.time_ns() % 2**31)
    out = sys.stdout
    out.write(args.prompt)

    def emit(piece: str) -> None:
        out.write(piece)
        out.flush()

    text = decode(model, vocab, args.prompt, args.length, args.temperature, args.top_k, args.top_p, args.beam,
                  seed, args.stop, args.length_penalty, on_text=emit)
    out.write("\n")
    out.flush()
    if args.seed is None and args.beam == 1 and args.temperature > 0:
        print(f"(seed {seed})", file=sys.stderr)
    if args.metrics:
        from .textmetrics import Dictionary, text_metrics

        cw = Path(args.run_dir) / CORPUS_WORDS  # the training split's words, saved by the run
        known = cw.read_text(encoding="utf-8").split() if cw.exists() else []
        m = text_metrics(text, Dictionary(wordlist=cfg.method.wordlist, corpus_words=known))
        print(" ".join(f"{k}={v:.3g}" for k, v in m.items()), file=sys.stderr)
    return 0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ablations generate")
    add_generate_args(p)
    return p.parse_args(argv)
