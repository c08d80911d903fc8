"""The language-model loop (char-level by default): truncated BPTT on random-offset sequences.

Epoch e's randomness (sequence offsets, dropout) is a pure function of (seed, e), and the carried hidden
state (model.carry_state) restarts at each epoch, so a run resumed from an epoch checkpoint equals one
that never stopped. Losses are in nats per character (at word level: the summed nats of a split divided
by its characters, so numbers stay comparable across levels); bits/char = nats/char / ln 2.

Evaluation reads a split once, in order: it is cut into a few long streams processed in parallel, each
with its hidden state carried from chunk to chunk, so nearly every character is predicted from its
whole preceding stream (only each stream's first characters start cold).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data.text import TextData, batch_at, sample_offsets
from ..generate import CORPUS_WORDS, VOCAB_FILE, decode
from ..models.rnn import detach_state
from ..registry import DATASETS, MODELS, TASKS
from ..textmetrics import Dictionary, text_metrics, words
from . import Task, runtime as rt
from .optim import build_optimizer, lr_factor, set_lr

SAMPLES_JSON, SAMPLES_MD = "samples.json", "samples.md"
# the sampling grid each run decodes at its end (override with extra.sampling: {...} in a study)
SAMPLING = {"prompt": "\n", "length": 600, "seed": 0, "headline_temperature": 0.8,
            "temperature": [0.5, 0.8, 1.0, 1.2], "top_p": [0.5, 0.8, 0.9, 0.95], "beam": [1, 4]}
EVAL_STREAM_MIN = 2048  # tokens per evaluation stream at least: cold starts touch < ~5 % of the text
EVAL_CHUNK = 256  # tokens per forward call during evaluation (state carries, so only speed depends on it)


@torch.no_grad()
def evaluate(model, data: torch.Tensor, device, dtype) -> float:
    """Mean nats per token of `data` (1-D ids), every token after the first predicted exactly once."""
    n = len(data) - 1  # targets
    if n < 1:
        return float("nan")
    streams = max(1, min(64, n // EVAL_STREAM_MIN))
    length = math.ceil(n / streams)
    pad = streams * length - n
    x = F.pad(data[:-1], (0, pad)).view(streams, length).to(device)  # (S, L)
    y = F.pad(data[1:], (0, pad), value=-100).view(streams, length).to(device)  # -100: ignored padding
    model.eval()
    state, total = None, 0.0
    for t in range(0, length, EVAL_CHUNK):
        with rt.autocast(device, dtype):
            logits, state = model(x[:, t:t + EVAL_CHUNK], state)  # (S, c, V)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), y[:, t:t + EVAL_CHUNK].flatten(),
                                       ignore_index=-100, reduction="sum"))
    return total / n


def decode_grid(model, data: TextData, sampling: dict, dictionary: Dictionary) -> list[dict]:
    """Samples and text metrics for each decoding setting of the grid (the report's sampling table)."""
    s = {**SAMPLING, **sampling}
    settings = ([("temperature", t, {"temperature": t}) for t in s["temperature"]]
                + [("top_p", p, {"temperature": 1.0, "top_p": p}) for p in s["top_p"]]
                + [("beam", b, {"temperature": 0.0} if b == 1 else {"beam": b}) for b in s["beam"]])
    rows = []
    for kind, value, kw in settings:
        t0 = time.time()
        text = decode(model, data.vocab, s["prompt"], s["length"], seed=s["seed"], **kw)
        rows.append({"kind": kind, "value": value, "settings": kw, "prompt": s["prompt"], "text": text,
                     "seconds": time.time() - t0, **text_metrics(text, dictionary)})
    return rows


def _write_samples(run_dir: Path, cfg: RunConfig, rows: list[dict], dictionary: Dictionary) -> None:
    rt.write_json(run_dir / SAMPLES_JSON, {"dictionary": dictionary.source, "rows": rows})
    md = [f"# Samples: {cfg.study} / {cfg.variant} (seed {cfg.seed})", "",
          f"Dictionary for correct_words: {dictionary.source}.", ""]
    for r in rows:
        md += [f"## {r['kind']} = {r['value']}  ({', '.join(f'{k}={v}' for k, v in r['settings'].items())})", "",
               f"correct words {r['correct_words']:.1f} %, distinct-1 {r['distinct_1']:.3f}, "
               f"distinct-2 {r['distinct_2']:.3f}, repetition {r['repetition']:.3f}", "", "```",
               r["prompt"] + r["text"], "```", ""]
    rt.atomic_write_text(run_dir / SAMPLES_MD, "\n".join(md))


def _glove_init(model, data: TextData, cfg: RunConfig) -> None:
    from ..config import ConfigError
    from ..data.text import glove_vectors

    if cfg.data.level != "word" or cfg.model.embed != 50:
        raise ConfigError("model.embed_init=glove needs data.level=word and model.embed=50 (GloVe 6B 50-d)")
    vecs, found = glove_vectors(data.vocab.tokens)
    with torch.no_grad():
        model.embed.weight[found] = vecs[found].to(model.embed.weight.device)
    print(f"GloVe: {int(found.sum())} of {len(found)} vocabulary words initialised", file=sys.stderr)


def fit(cfg: RunConfig, run_dir: Path, resume: bool = False, on_epoch=None) -> dict:
    """Train cfg into run_dir; `on_epoch(record)` (optional) sees each epoch's metrics record (bench hook)."""
    run_dir, tc = Path(run_dir), cfg.train
    t_start = time.time()
    # auto -> bf16 autocast on CPUs with native bf16: measured 1.5-4x faster than fp32 for every RNN size
    # here (e.g. 2x512 LSTM 4.3k -> 6.9k chars/s on one AVX512-BF16 core); the loss itself is fp32
    device, dtype = rt.setup(tc, cfg.seed)
    data: TextData = DATASETS.get(cfg.data.name)(cfg)
    vocab_size = len(data.vocab)
    model = MODELS.get(cfg.model.name)(cfg.model, vocab_size).to(device)
    if cfg.model.embed_init == "glove" and not resume:
        _glove_init(model, data, cfg)
    if not resume:  # the record of what runs, before the first step
        rt.write_json(run_dir / rt.CONFIG, cfg.to_dict())
        rt.write_json(run_dir / rt.ENV, {**rt.environment(device, dtype, False), "data_source": data.source,
                                         "data_md5": data.md5, "splits": data.splits})
        rt.write_json(run_dir / VOCAB_FILE, data.vocab.to_dict())
        rt.atomic_write_text(run_dir / CORPUS_WORDS, "\n".join(sorted(set(words(data.train_text)))) + "\n")
    train = data.train.to(device)
    T, B = cfg.data.seq_len, tc.batch_size
    spe = tc.steps_per_epoch or max(1, (len(train) - 1) // (B * T))  # default: about one pass per epoch
    total = spe * tc.epochs
    opt = build_optimizer(cfg.optim, model)
    log = rt.MetricsLog(run_dir / rt.METRICS)
    start_epoch, step, best = 1, 0, {"val_loss": float("inf"), "epoch": 0}
    if resume:
        start_epoch, step, best = rt.restore_training_state(run_dir, model, opt, log)
    elapsed = sum(r.get("epoch_time", 0.0) for r in log.read())
    cpt = data.chars_per_token
    for epoch in range(start_epoch, tc.epochs + 1):
        t0 = time.time()
        torch.manual_seed(rt.epoch_seed(cfg.seed, epoch))  # dropout
        gen = torch.Generator().manual_seed(rt.epoch_seed(cfg.seed, epoch))
        offsets = sample_offsets(len(train), T, B, spe, gen, contiguous=cfg.model.carry_state).to(device)
        model.train()
        state, loss_sum = None, torch.zeros((), device=device)
        bar = rt.Progress(spe, f"{cfg.variant} epoch {epoch}/{tc.epochs}", tc.log_every)
        for i in range(spe):
            x, y = batch_at(train, offsets[i], T)  # (B, T) each
            lr = set_lr(opt, cfg.optim, lr_factor(step, total, spe, cfg.optim))
            with rt.autocast(device, dtype):
                logits, new_state = model(x, state)  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())  # nats/token, fp32
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            opt.step()
            step += 1
            loss = loss.detach()
            rt.check_finite(loss, step, epoch)
            if cfg.model.carry_state:  # next batch row b continues this row's text (see sample_offsets)
                state = detach_state(new_state)
            loss_sum += loss
            bar.update(1, loss=float(loss), lr=lr)
        bar.close()
        train_time = time.time() - t0
        val_loss = evaluate(model, data.val, device, dtype) / cpt["val"]
        elapsed += time.time() - t0
        rec = {"epoch": epoch, "step": step, "lr": lr, "train_loss": float(loss_sum) / spe / cpt["train"],
               "val_loss": val_loss, "val_bpc": val_loss / math.log(2), "epoch_time": time.time() - t0,
               "time": elapsed, "tokens_per_s": spe * B * T / train_time}
        if val_loss < best["val_loss"]:
            best = {"val_loss": val_loss, "epoch": epoch}
        log.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
        print(f"{cfg.variant} epoch {epoch}/{tc.epochs}: train {rec['train_loss']:.4f} val {val_loss:.4f} "
              f"nats/char, {rec['tokens_per_s']:,.0f} tok/s", file=sys.stderr, flush=True)
        if epoch % tc.checkpoint_every == 0 or epoch == tc.epochs:
            rt.save_training_state(run_dir, model, opt, epoch, step, best)
    records = log.read()
    # the reported numbers: the final model, evaluated in fp32 (bf16 logits shift losses by ~0.005)
    losses = {k: evaluate(model, getattr(data, k), device, None) / cpt[k]
              for k in (("val", "test", "last10") if tc.eval_test else ("val",))}
    result = {"epochs": tc.epochs, "steps": step, "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
              "params": rt.count_params(model), "vocab_size": vocab_size, "level": cfg.data.level,
              "device": str(device), "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
              "data_source": data.source, "splits": data.splits,
              "train_loss": records[-1]["train_loss"] if records else None,
              "tokens_per_s": sum(r["tokens_per_s"] for r in records) / max(1, len(records))}
    for k, v in losses.items():
        result[f"{k}_loss"] = v
        result[f"{k}_bpc"] = v / math.log(2)
    if "test" in losses:
        result["test_ppl"] = math.exp(losses["test"] * cpt["test"])  # per token (= per char at char level)
    rt.save_final(run_dir, model, {"study": cfg.study, "variant": cfg.variant, "seed": cfg.seed})
    # samples over the decoding grid; the headline metrics come from the headline temperature's sample
    model.cpu()
    dictionary = Dictionary(data.train_text, cfg.extra.get("wordlist"))
    sampling = {**SAMPLING, **cfg.extra.get("sampling", {})}
    rows = decode_grid(model, data, sampling, dictionary)
    _write_samples(run_dir, cfg, rows, dictionary)
    head = next((r for r in rows if r["kind"] == "temperature" and r["value"] == sampling["headline_temperature"]),
                rows[0])
    result.update({f"sample_{k}": head[k] for k in ("correct_words", "distinct_1", "distinct_2", "repetition")})
    result["sample_settings"] = head["settings"]
    result["train_time"] = elapsed  # seconds in epochs (train + val), summed over resumes
    result["wall_time"] = time.time() - t_start  # this invocation: data, training, evaluation and samples
    result["resumed"] = resume
    rt.write_json(run_dir / rt.RESULT, result)  # written last: its presence marks a finished run
    return result


def report_section(run_dirs: list[Path], out_dir: Path) -> str:
    from .language_report import render

    return render(run_dirs, out_dir)


TASKS.add("language", Task(fit=fit, report=report_section))
