"""The one place that cuts a dataset as it ships (RawData) into what a method trains on (Splits), for
every image dataset.

Order (each random step draws from its own seeded stream, so changing one knob never shifts another's
draws; stream numbers are fixed: they define which examples a seed picks):

    1  validation carve     round(val_fraction * N) of the train split            stream 1
    2  subset (core-set)    the training indices listed in a file (no randomness)  -
    3  limit                that many of the training pool                        stream 2
       coreset_keep         that share of it: a proxy run's highest scores, or     stream 7 (random)
                            at random
    4  labeled/unlabeled    labeled_per_class or labeled_fraction, per class       stream 6
    5  label noise          on the labeled training labels only                   stream 5
                            (or labels_csv: the file's column replaces them; no randomness)
    6  limit_eval           val and test subsampled                               streams 3 (val), 4 (test)
    7  mean/std             exact per-channel statistics of the labeled training images

With no subset, everything labeled and symmetric noise this gives the very tensors the former
images.make_splits gave (tests/test_splits.py holds a copy of it and compares).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from ..config import ConfigError
from .base import ImageDataConfig, RawData, Splits

__all__ = ["make_splits", "channel_stats", "symmetric_noise", "asymmetric_noise", "asymmetric_map",
           "named_noise_map", "stratified_take", "read_subset", "CIFAR10_ASYMMETRIC"]

# seeded streams (see the module docstring); never renumber: a stream number is part of what a seed means
STREAM_VAL, STREAM_LIMIT, STREAM_VAL_EVAL, STREAM_TEST_EVAL, STREAM_NOISE, STREAM_LABELED = 1, 2, 3, 4, 5, 6
STREAM_CORESET = 7

# the usual CIFAR-10 asymmetric noise (Patrini et al. 2017): a source class -> the class it is confused with
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_ASYMMETRIC = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}


def _gen(seed: int, stream: int) -> torch.Generator:
    """Independent seeded streams (split, limit, noise, ...) so changing one knob never shifts another."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream * 7_919 + 17) % 2**63)


def _subsample(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """k sorted indices out of range(n) (all when k <= 0 or k >= n)."""
    if k <= 0 or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=g)[:k].sort().values


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images (N, C, H, W), [0,1] units, from a byte
    histogram per channel: no float copy of the data set (45k CIFAR images would be 550 MB as fp32)."""
    if len(x) == 0:
        return (0.0,) * x.shape[1], (1.0,) * x.shape[1]
    v = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        h = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = h.sum()
        m = (h * v).sum() / n
        var = (h * (v - m) ** 2).sum() / n
        means.append(float(m))
        stds.append(max(float(var.sqrt()), 1e-6))
    return tuple(means), tuple(stds)


# ---------------------------------------------------------------- label noise

def symmetric_noise(y: torch.Tensor, rate: float, n_classes: int, g: torch.Generator) -> torch.Tensor:
    """Replace round(rate * N) labels, chosen at random, by a uniformly random *different* class, so
    the share of wrong labels is exactly `rate` (not rate * (K-1)/K)."""
    y = y.clone()
    k = int(round(rate * len(y)))
    if k <= 0 or n_classes < 2:
        return y
    idx = torch.randperm(len(y), generator=g)[:k]
    shift = torch.randint(1, n_classes, (k,), generator=g)
    y[idx] = (y[idx] + shift) % n_classes
    return y


def _is_cifar10(classes: Sequence[str]) -> bool:
    return sorted(str(c).strip().lower() for c in classes) == sorted(CIFAR10_CLASSES)


def asymmetric_map(classes: Sequence[str]) -> dict[int, int]:
    """Class index -> the class its labels are flipped to. CIFAR-10 (recognised by its ten class names,
    in any order and case): truck->automobile, bird->airplane, deer->horse, cat<->dog, other classes
    untouched. Any other class list: k -> (k+1) mod K for every class (nothing when K < 2)."""
    names = [str(c).strip().lower() for c in classes]
    if _is_cifar10(classes):
        at = {c: i for i, c in enumerate(names)}
        return {at[s]: at[t] for s, t in CIFAR10_ASYMMETRIC.items()}
    k = len(names)
    return {c: (c + 1) % k for c in range(k)} if k >= 2 else {}


def named_noise_map(names: Mapping[str, str], classes: Sequence[str], where: str = "data.noise_map") -> dict[int, int]:
    """A user's asymmetric map {source class name: target class name} as class indices (names matched
    case-insensitively); a name that is not one of the dataset's classes is one clear error."""
    import difflib

    from .sources import DataError

    at = {str(c).strip().lower(): i for i, c in enumerate(classes)}

    def index(name: str, key: str) -> int:
        i = at.get(str(name).strip().lower())
        if i is None:
            close = difflib.get_close_matches(str(name).strip().lower(), list(at), n=1)
            hint = f" (did you mean {classes[at[close[0]]]!r}?)" if close else ""
            shown = ", ".join(map(str, list(classes)[:12])) + (", ..." if len(classes) > 12 else "")
            raise DataError(f"{key}: unknown class {name!r}{hint}; the {len(classes)} classes: {shown}")
        return i

    return {index(s, f"{where}.{s}"): index(t, f"{where}.{s}") for s, t in names.items()}


def asymmetric_noise(y: torch.Tensor, rate: float, classes: Union[Sequence[str], Mapping[int, int]],
                     g: torch.Generator) -> torch.Tensor:
    """Flip exactly round(rate * n_candidates) labels, chosen at random among the candidates (the
    examples whose class has an entry in the map), to their mapped class. `classes` is the class-name
    list (the map is then asymmetric_map(classes)) or the map itself."""
    mapping = dict(classes) if isinstance(classes, Mapping) else asymmetric_map(classes)
    y = y.clone()
    if not mapping or len(y) == 0:
        return y
    size = max(max(mapping), int(y.max())) + 1
    table = torch.arange(size)  # class -> target class (identity where unmapped)
    is_src = torch.zeros(size, dtype=torch.bool)
    for s, t in mapping.items():
        table[s], is_src[s] = t, True
    cand = is_src[y].nonzero().flatten()
    k = int(round(rate * len(cand)))
    if k <= 0:
        return y
    idx = cand[torch.randperm(len(cand), generator=g)[:k]]
    y[idx] = table[y[idx]]
    return y


# ---------------------------------------------------------------- labeled / unlabeled

def stratified_take(y: torch.Tensor, per_class: Union[int, Mapping[int, int], Sequence[int]],
                    g: torch.Generator) -> torch.Tensor:
    """Sorted positions in y of a seeded, stratified sample: per_class[c] examples of class c (an int:
    the same count for every class; a class with fewer keeps all it has; a class missing from a
    mapping keeps none). One random order is drawn for the whole of y and each class keeps its first
    examples in that order, so for the same y and generator state a larger count gives a superset."""
    n = len(y)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    n_cls = int(y.max()) + 1
    if isinstance(per_class, int):
        want = torch.full((n_cls,), per_class, dtype=torch.int64)
    else:
        items = per_class.items() if isinstance(per_class, Mapping) else enumerate(per_class)
        want = torch.zeros(n_cls, dtype=torch.int64)
        for c, k in items:
            if 0 <= c < n_cls:
                want[c] = int(k)
    rank = torch.empty(n, dtype=torch.int64)
    rank[torch.randperm(n, generator=g)] = torch.arange(n)
    order = (y.long() * n + rank).argsort()  # by class, then by the random rank
    ys = y[order]
    counts = torch.bincount(y, minlength=n_cls)
    start = counts.cumsum(0) - counts
    within = torch.arange(n) - start[ys]  # 0, 1, 2, ... inside each class
    return order[within < want[ys]].sort().values


def _labeled_counts(y: torch.Tensor, fraction: float) -> dict[int, int]:
    """round(fraction * n_c) per class, at least 1 for a class that has any when fraction > 0."""
    counts = torch.bincount(y) if len(y) else torch.zeros(0, dtype=torch.int64)
    out = {}
    for c, n_c in enumerate(counts.tolist()):
        k = int(round(fraction * n_c))
        out[c] = max(k, 1) if fraction > 0 and n_c > 0 else k
    return out


# ---------------------------------------------------------------- subset (core-set) files

def read_subset(path: str) -> list[int]:
    """Indices from a JSON list of ints, or a text file with one int per line (blank lines and lines
    starting with '#' are skipped), in file order. ConfigError naming the file for anything else."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise ConfigError(f"data.subset: cannot read {path} ({why})") from None
    if text.lstrip().startswith("["):
        try:
            vals = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"data.subset: {path} is not valid JSON (line {e.lineno}: {e.msg})") from None
        if not isinstance(vals, list):
            raise ConfigError(f"data.subset: {path} must hold a JSON list of training indices")
        for i, v in enumerate(vals):
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"data.subset: {path}: entry {i} is {v!r}, not an integer index")
        return vals
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            out.append(int(s))
        except ValueError:
            raise ConfigError(f"data.subset: {path}, line {lineno}: {s!r} is not an integer index") from None
    return out


def _subset_pool(path: str, n: int, val_idx: torch.Tensor, val_fraction: float, seed: int) -> torch.Tensor:
    """The subset file's indices, checked against the train split and the validation carve; sorted,
    duplicates dropped."""
    vals = read_subset(path)
    if not vals:
        raise ConfigError(f"data.subset: {path} lists no training indices")
    idx = torch.tensor(vals, dtype=torch.int64)
    out_of_range = (idx < 0) | (idx >= n)
    in_val = torch.zeros(n, dtype=torch.bool)
    in_val[val_idx] = True
    bad = out_of_range | in_val[idx.clamp(0, max(n - 1, 0))] if n else out_of_range
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        i = vals[first]
        why = (f"out of range (the train split has {n} examples, 0..{n - 1})" if bool(out_of_range[first])
               else f"in the validation carve (val_fraction {val_fraction}, seed {seed}); "
                    f"a subset must come from the training pool")
        raise ConfigError(f"data.subset: {path}: index {i} (entry {first}) is {why}; "
                          f"{int(bad.sum())} of its {len(vals)} indices are bad")
    return idx.unique(sorted=True)


# ---------------------------------------------------------------- the splits

def read_labels_csv(path: str, column: str, files: Optional[Sequence[str]], classes: Sequence[str],
                    where: str = "data.labels_csv") -> torch.Tensor:
    """Training labels from a CSV in fast.ai's noisy_imagenette.csv format (columns path, noisy_labels_0/1/5/
    25/50, is_valid; path like 'train/n02979186/n02979186_9036.JPEG') for the training images `files`
    ('train/<class>/<file>', in the dataset's order): a label per image, as class indices. Rows of other
    splits are ignored; an image the file lacks, or a label that is not a class, is one clear error."""
    import csv

    from .sources import DataError

    if files is None:
        raise DataError(f"{where}={path}: this dataset does not record its images' file names; labels_csv works "
                        "with image-folder datasets (imagefolder, imagewoof)")
    try:
        with open(Path(path).expanduser(), newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"{where}={path}: cannot read ({e.strerror or e})") from None
    if not rows or "path" not in rows[0] or column not in rows[0]:
        have = ", ".join(rows[0]) if rows else "no rows"
        raise DataError(f"{where}={path}: needs the columns path and {column} (data.labels_column); has {have}")
    by_file = {"/".join(Path(r["path"]).parts[-3:]): r[column].strip() for r in rows}
    cidx = {c: i for i, c in enumerate(classes)}
    out = torch.empty(len(files), dtype=torch.int64)
    missing = []
    for i, name in enumerate(files):
        lab = by_file.get(name)
        if lab is None:
            missing.append(name)
            continue
        if lab not in cidx:
            raise DataError(f"{where}={path}: {name}: label {lab!r} in column {column} is not one of the "
                            f"{len(classes)} classes ({', '.join(list(classes)[:5])}, ...)")
        out[i] = cidx[lab]
    if missing:
        raise DataError(f"{where}={path}: {len(missing)} of the {len(files)} training images have no row, "
                        f"e.g. {missing[0]}")
    return out


def _pct(r: float) -> str:
    """0.2 -> '20%', 0.125 -> '12.5%' (two decimals at most)."""
    return (f"{r * 100:.2f}".rstrip("0").rstrip(".") or "0") + "%"


def coreset_pool(pool: torch.Tensor, cfg: ImageDataConfig, seed: int, scores: Optional[dict],
                 where: str = "", labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The kept round(coreset_keep * len(pool)) training indices of `pool` (sorted): at random (seeded), or
    those with the highest proxy score after the round(coreset_skip * len(pool)) highest (ties broken at random,
    seeded), of which round(coreset_random * len(pool)) are instead drawn at random (seeded) from the lower rest.
    `scores`: the proxy's scores.pt ({"index": train-split indices it scored, score name: values}); every pool
    example must have a score. With coreset_per_class, each class keeps round(coreset_keep * its count) of its
    own examples, chosen the same way (`labels`: the train split's labels)."""
    if cfg.coreset_per_class:
        if labels is None:
            raise ValueError("coreset_per_class needs the training labels")
        y = labels[pool]
        kept = [coreset_pool(pool[y == c], replace(cfg, coreset_per_class=False), seed, scores, where)
                for c in y.unique().tolist()]
        return torch.cat(kept).sort().values
    k = max(1, int(round(cfg.coreset_keep * len(pool))))
    if cfg.coreset_score == "random":
        return pool[_subsample(len(pool), k, _gen(seed, STREAM_CORESET))]
    if scores is None or cfg.coreset_score not in scores:
        raise ConfigError(f"data.coreset_score={cfg.coreset_score}: the proxy run {where} has no such score")
    n = int(max(int(pool.max()) if len(pool) else 0, int(scores["index"].max())) + 1)
    dense = torch.full((n,), float("nan"), dtype=torch.float64)
    dense[scores["index"]] = scores[cfg.coreset_score].double()
    s = dense[pool]
    if bool(s.isnan().any()):
        missing = pool[s.isnan()]
        raise ConfigError(f"data.coreset_proxy: the proxy run {where} scored {int((~s.isnan()).sum())} of the "
                          f"{len(pool)} training examples (e.g. not index {int(missing[0])}): it must train on the "
                          "same pool (same seed, val_fraction, subset and limit)")
    # highest score first; ties (a short proxy's forgetting counts are mostly 0 or 1) broken at random, seeded:
    # by index they would favour the first classes of a class-sorted dataset; coreset_skip leaves out the top
    skip = int(round(cfg.coreset_skip * len(pool)))
    g = _gen(seed, STREAM_CORESET)
    shuffle = torch.randperm(len(pool), generator=g)
    ranked = shuffle[torch.sort(-s[shuffle], stable=True).indices]  # positions in pool, hardest first
    # coreset_random: that share of the pool comes at random from below the hard part (the skipped top stays out)
    n_rand = min(int(round(cfg.coreset_random * len(pool))), k - 1)
    hard, rest = ranked[skip:skip + k - n_rand], ranked[skip + k - n_rand:]
    order = torch.cat([hard, rest[torch.randperm(len(rest), generator=g)[:n_rand]]])
    return pool[order].sort().values


def make_splits(raw: RawData, cfg: ImageDataConfig, seed: int, scores: Optional[dict] = None,
                scores_from: str = "") -> Splits:
    """RawData -> Splits, in the order of the module docstring. `scores`: a proxy run's example scores
    (data.coreset_proxy), read from `scores_from`."""
    tx, ty = raw.train_x, raw.train_y
    n = len(tx)
    title = raw.title
    classes = list(raw.classes)

    # 1. validation carve (none when the dataset ships its own validation split)
    own_val = raw.val_x is not None
    n_val = 0 if own_val else int(round(cfg.val_fraction * n))
    perm = torch.randperm(n, generator=_gen(seed, STREAM_VAL))
    val_idx, pool = perm[:n_val].sort().values, perm[n_val:].sort().values

    # 2. subset (indices into the train split), 3. limit
    if cfg.subset:
        pool = _subset_pool(cfg.subset, n, val_idx, cfg.val_fraction, seed)
    n_pool = len(pool)
    pool = pool[_subsample(n_pool, cfg.limit, _gen(seed, STREAM_LIMIT))]
    n_limited = len(pool)
    if cfg.coreset_keep < 1:  # of the limited pool: a proxy with the same limit scored exactly these
        pool = coreset_pool(pool, cfg, seed, scores, scores_from, labels=ty)
    n_kept = len(pool)

    # 4. labeled / unlabeled
    unl_idx: Optional[torch.Tensor] = None
    labeled_how = ""
    if cfg.labeled_per_class > 0 or cfg.labeled_fraction < 1.0:
        if cfg.labeled_per_class > 0:
            per_class: Union[int, dict[int, int]] = cfg.labeled_per_class
            labeled_how = f"{cfg.labeled_per_class} per class"
        else:
            per_class = _labeled_counts(ty[pool], cfg.labeled_fraction)
            labeled_how = f"{_pct(cfg.labeled_fraction)} of each class"
        keep = torch.zeros(len(pool), dtype=torch.bool)
        keep[stratified_take(ty[pool], per_class, _gen(seed, STREAM_LABELED))] = True
        if not bool(keep.all()):
            unl_idx = pool[~keep]
        pool = pool[keep]
    tr_idx = pool

    # 5. label noise (labeled training labels only)
    noise_map = named_noise_map(cfg.noise_map, classes) if cfg.noise_map else asymmetric_map(classes)
    train_y = ty[tr_idx]
    train_y_true = None
    if cfg.labels_csv:
        train_y_true = train_y
        train_y = read_labels_csv(cfg.labels_csv, cfg.labels_column, raw.train_files, classes)[tr_idx]
    elif cfg.label_noise > 0:
        train_y_true = train_y
        if cfg.noise_kind == "asymmetric":
            train_y = asymmetric_noise(train_y, cfg.label_noise, noise_map, _gen(seed, STREAM_NOISE))
        else:
            train_y = symmetric_noise(train_y, cfg.label_noise, len(classes), _gen(seed, STREAM_NOISE))

    # 6. limit_eval
    vx, vy = (raw.val_x, raw.val_y) if own_val else (tx, ty)
    if own_val:
        val_idx = torch.arange(len(raw.val_x))
    n_val_all = len(val_idx)
    val_idx = val_idx[_subsample(n_val_all, cfg.limit_eval, _gen(seed, STREAM_VAL_EVAL))]
    te_idx = _subsample(len(raw.test_x), cfg.limit_eval, _gen(seed, STREAM_TEST_EVAL))

    # 7. statistics of the labeled training images (of the whole pool when nothing is labeled)
    train_x = tx[tr_idx]
    unlabeled_x = tx[unl_idx] if unl_idx is not None else None
    stats_x = train_x if len(train_x) or unlabeled_x is None else unlabeled_x
    mean, std = channel_stats(stats_x)

    # what each split is, in words
    subset = f", those listed in {cfg.subset} ({n_pool} indices)" if cfg.subset else ""
    lim = f", limited to {n_limited} (seed {seed})" if cfg.limit and cfg.limit < n_pool else ""
    if cfg.coreset_keep < 1:
        how = (f"at random (seed {seed})" if cfg.coreset_score == "random"
               else f"with the highest {cfg.coreset_score} score of the proxy run {cfg.coreset_proxy}")
        how += f" after the highest {_pct(cfg.coreset_skip)}" if cfg.coreset_skip else ""
        how += (f" ({_pct(cfg.coreset_random)} of the pool of them drawn instead at random (seed {seed}) from the "
                "lower-scored rest)") if cfg.coreset_random else ""
        how += ", that share of each class" if cfg.coreset_per_class else ""
        lim += f", a core-set: {n_kept} of those {n_limited} ({_pct(cfg.coreset_keep)}) {how}"
    lab = f", {labeled_how} labeled (seed {seed})" if labeled_how else ""
    noise = ""
    if cfg.labels_csv:
        share = float((train_y != train_y_true).float().mean()) if len(train_y) else 0.0
        noise = (f", labels from {Path(cfg.labels_csv).name} column {cfg.labels_column} ({_pct(share)} differ from "
                 f"the folder's class)")
    elif cfg.label_noise:
        if cfg.noise_kind == "asymmetric":
            if cfg.noise_map or _is_cifar10(classes):
                pairs = ", ".join(f"{classes[s]}->{classes[t]}" for s, t in noise_map.items())
                noise = (f", {_pct(cfg.label_noise)} of the {pairs.count('->')} confusable classes' labels flipped "
                         f"to a similar class ({pairs}) (seed {seed})")
            else:
                noise = (f", {_pct(cfg.label_noise)} of labels flipped to the next class (k -> k+1 mod "
                         f"{len(classes)}) (seed {seed})")
        else:
            noise = f", {_pct(cfg.label_noise)} of labels replaced by a random other class (seed {seed})"
    n_test = len(raw.test_x)
    splits = {
        "train": f"{len(tr_idx)} of the {n} {title} training images{subset}{lim}{lab}{noise}".replace("  ", " "),
        "val": (f"{len(val_idx)} of the dataset's own {n_val_all} validation images" if own_val else
                f"{len(val_idx)} held out of the training images (val_fraction {cfg.val_fraction}")
               + (", limit_eval" if len(val_idx) < n_val_all else "") + f", seed {seed})",
        "test": f"{len(te_idx)} of the {n_test} {raw.test_name} images"
                + (f" (limit_eval, seed {seed})" if len(te_idx) < n_test else ""),
    }
    if unl_idx is not None:
        splits["unlabeled"] = (f"{len(unl_idx)} of the {n} {title} training images with labels withheld: "
                               f"the training pool{subset}{lim}{',' if subset or lim else ''} less the "
                               f"{labeled_how} labeled (seed {seed})").replace("  ", " ")
    return Splits(train_x=train_x, train_y=train_y, val_x=vx[val_idx], val_y=vy[val_idx],
                  test_x=raw.test_x[te_idx], test_y=raw.test_y[te_idx], classes=classes,
                  mean=mean, std=std, source=raw.source, splits=splits,  # type: ignore[arg-type]
                  train_y_true=train_y_true, unlabeled_x=unlabeled_x,
                  unlabeled_y=ty[unl_idx] if unl_idx is not None else None, train_index=tr_idx,
                  unlabeled_index=unl_idx, val_index=None if own_val else val_idx, all_train_x=tx)
