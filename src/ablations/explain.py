"""`ablations explain RUN_DIR`: what a trained image classifier looks at, and whether the maps mean anything.

Attribution maps come from Captum (saliency, SmoothGrad, integrated gradients, Grad-CAM, guided backprop,
guided Grad-CAM) for a few test images of a finished image run; each method's figure (image, map, overlay; true
and predicted class) goes to RUN_DIR/explain/, with explain.json saying which images, which target class and
which layer Grad-CAM read. `--sanity` runs the model-randomisation test of Adebayo et al. (NeurIPS 2018): the
network's parametrised layers are re-initialised from the top down (cascading), the maps recomputed after each
step, and the Spearman rank correlation of each map with the trained model's map recorded (a map that stays the
same while the weights that made the prediction are destroyed explains the input, not the model).

    run dir (config.json, final.safetensors) -> model + test images -> maps -> RUN_DIR/explain/ -> report section
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import rundir as rd
from .config import ConfigError
from .errors import RunError

EXPLAIN_DIR = "explain"
EXPLAIN_JSON = "explain.json"
# the attribution methods, in the order figures and tables show them
XMETHODS = ("saliency", "smoothgrad", "integrated-gradients", "gradcam", "guided-backprop", "guided-gradcam")
NEEDS_LAYER = ("gradcam", "guided-gradcam")
NEEDS_RELU = ("guided-backprop", "guided-gradcam")  # Captum overrides the backward of nn.ReLU modules only


# ---------------------------------------------------------------- the run

@dataclasses.dataclass
class ImageRun:
    model: nn.Module  # eval mode, weights of the run
    prep: Callable[[torch.Tensor], torch.Tensor]  # uint8 (B, 3, H, W) -> normalised float input
    test_x: torch.Tensor  # uint8 test images as the run evaluated them
    test_y: torch.Tensor
    classes: list
    cfg: object
    dir: Path
    size: int  # the model's input side, px (stored images are center-cropped / upsampled to it)


def load_image_run(run_dir: Path) -> ImageRun:
    """The trained model of an image run and its test split, preprocessed as in training (same data config,
    same normalisation statistics; a core-set run reads its proxy's scores from the study layout)."""
    from .config import from_dict
    from .data.augment import center_crop, normalize
    from .data.base import DataSpec
    from .methods.supervised import build_data
    from .registry import METHODS, MODELS

    run = rd.Run.read(Path(run_dir))
    cfg = from_dict(run.config, str(run.dir / rd.CONFIG))
    cls = METHODS.get(cfg.method.name)
    if getattr(cls, "input", None) != "images":
        raise RunError(f"{run.dir}: method {cfg.method.name!r} is not an image classifier; explain reads image "
                       "runs (language models: see the study's samples)")
    if not cls.trains:
        raise RunError(f"{run.dir}: a run that trains nothing (method {cfg.method.name}) has no weights of its own")
    weights = run.dir / rd.FINAL
    if weights.exists():
        from safetensors.torch import load_file

        state = load_file(str(weights))
    elif (run.dir / rd.CHECKPOINT).exists():
        state = rd.load_checkpoint(run.dir / rd.CHECKPOINT)["model"]
    else:
        raise RunError(f"{run.dir}: no weights yet ({rd.FINAL} or {rd.CHECKPOINT})")
    refs = {key: run.dir.parent.parent / ref / run.dir.name for key, ref in cfg.refs().items()}
    entry = MODELS.entry(cfg.model.name)
    pre = entry.meta.get("preprocess")
    data = build_data(cfg, pre, refs)
    size = cfg.data.image_size or (pre["size"] if pre else data.train_x.shape[-1])
    mcfg = cfg.model
    if any(f.name == "pretrained" for f in dataclasses.fields(mcfg)):  # the run's own weights replace them
        mcfg = dataclasses.replace(mcfg, pretrained=False)
    model = entry.obj(mcfg, DataSpec(classes=list(data.classes), image_size=size))
    try:
        model.load_state_dict(state)
    except RuntimeError:  # an architecture that depends on the weights it was built with (folded BN): as trained
        model = entry.obj(cfg.model, DataSpec(classes=list(data.classes), image_size=size))
        model.load_state_dict(state)
    norm = cfg.data.normalize
    mean, std = ((0.0,) * 3, (1.0,) * 3) if norm == "unit" else \
        (tuple(pre["mean"]), tuple(pre["std"])) if norm == "model" else (data.mean, data.std)
    for m in model.modules():  # Captum's hooks cannot modify an in-place activation's output
        if getattr(m, "inplace", False):
            m.inplace = False
    return ImageRun(model=model.eval(), prep=lambda x: normalize(center_crop(x, size), mean, std),
                    test_x=data.test_x, test_y=data.test_y, classes=list(data.classes), cfg=cfg, dir=run.dir,
                    size=size)


def _probe(model: nn.Module, x: torch.Tensor, modules: dict[str, nn.Module], record: Callable) -> None:
    """One forward pass of x[:1] with record(name, output) called as each of `modules` finishes."""
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: record(name, out)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()


def spatial_modules(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple]]:
    """(name, output shape) of the modules whose output is a feature map (B, C, h, w) with h, w > 1, in the order
    the forward pass produces them. Each output tensor is named once: by the first module that produced it and
    runs once per forward (a container returning its last child's tensor is that child; a shared activation
    called by every block is skipped for the block that calls it, whose output the attribution can then read)."""
    seen: list[tuple[str, torch.Tensor]] = []  # the tensors are kept alive: their ids stay unique
    _probe(model, x, {name: m for name, m in model.named_modules() if name},
           lambda name, out: seen.append((name, out)) if isinstance(out, torch.Tensor) else None)
    calls: dict[str, int] = {}
    for name, _ in seen:
        calls[name] = calls.get(name, 0) + 1
    named: dict[int, tuple[str, tuple]] = {}
    for name, out in seen:
        if calls[name] == 1 and id(out) not in named:
            named[id(out)] = (name, tuple(out.shape))
    return [(n, shape) for n, shape in named.values() if len(shape) == 4 and shape[-1] > 1 and shape[-2] > 1]


def pick_layer(model: nn.Module, x: torch.Tensor, name: Optional[str] = None) -> tuple[str, nn.Module]:
    """Grad-CAM's layer: `name` (a module called once per forward, with a feature-map output), else the last such
    module of the convolutional trunk."""
    modules = dict(model.named_modules())
    maps = spatial_modules(model, x)
    if name:
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            raise ConfigError(f"--layer {name!r}: no such module in {type(model).__name__}"
                              + (f" (did you mean {', '.join(close)}?)" if close else ""))
        if name not in {n for n, _ in maps}:
            raise ConfigError(f"--layer {name!r}: not a feature map read once per forward (Grad-CAM needs one); "
                              f"candidates: {', '.join(n for n, _ in maps[-5:]) or '(none)'}")
        return name, modules[name]
    if not maps:
        raise RunError(f"{type(model).__name__}: no layer outputs a feature map; Grad-CAM needs one (--layer)")
    return maps[-1][0], modules[maps[-1][0]]


def has_relu_modules(model: nn.Module) -> bool:
    return any(isinstance(m, nn.ReLU) for m in model.modules())


class ReLU6AsReLU(nn.Sequential):
    """ReLU6 as an nn.ReLU then a clamp at 6: the same function, with a module Captum's guided backprop hooks (its
    rule, positive gradients only, applies at the ReLU; the clamp keeps ReLU6's zero gradient above 6)."""

    def __init__(self):
        super().__init__(nn.ReLU(), nn.Hardtanh(0.0, 6.0))


def relu6_as_relu(model: nn.Module) -> int:
    """Replace every nn.ReLU6 of `model` in place by ReLU6AsReLU (MobileNetV2, EfficientNet-Lite); how many."""
    n = 0
    for parent in list(model.modules()):
        for cname, child in list(parent.named_children()):
            if type(child) is nn.ReLU6:
                setattr(parent, cname, ReLU6AsReLU())
                n += 1
    return n


# ---------------------------------------------------------------- maps

def attribute(method: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: Optional[nn.Module],
              seed: int = 0) -> torch.Tensor:
    """(B, H, W) non-negative map of `method` for inputs x (B, 3, H, W) and class indices target (B,)."""
    from captum import attr

    x = x.detach().clone().requires_grad_(True)
    t = target.tolist()
    if method == "saliency":
        a = attr.Saliency(model).attribute(x, target=t, abs=True)
    elif method == "smoothgrad":  # noise 15 % of the batch's input range (the paper: of each image's)
        spread = float(x.detach().max() - x.detach().min())
        with torch.random.fork_rng():  # the noise samples: the same maps on every call, the caller's RNG untouched
            torch.manual_seed(seed)
            a = attr.NoiseTunnel(attr.Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=16,
                                                                 stdevs=0.15 * spread, target=t, abs=True)
    elif method == "integrated-gradients":  # baseline: input 0 (the normalisation's mean colour; black for unit)
        a = attr.IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=32,
                                                      internal_batch_size=64).abs()
    elif method == "gradcam":
        g = attr.LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)  # (B, 1, h, w)
        return F.interpolate(g.detach(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].clamp(min=0)
    elif method == "guided-backprop":
        a = attr.GuidedBackprop(model).attribute(x, target=t).abs()
    elif method == "guided-gradcam":
        a = attr.GuidedGradCam(model, layer).attribute(x, target=t, interpolate_mode="bilinear").abs()
    else:
        raise ConfigError(f"--method {method!r}: choices {', '.join(XMETHODS)}")
    if a.ndim != 4:  # Captum's own fallback (GuidedGradCam on a layer it cannot read returns an empty tensor)
        raise AssertionError(f"{method}: Captum returned no attribution (shape {tuple(a.shape)})")
    return a.detach().amax(dim=1)  # the strongest channel per pixel


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (any shape, flattened), ties given their average rank (Grad-CAM maps
    are zero over whole regions: ranking those zeros by position would invent a correlation); 0 when either map is
    constant."""
    def ranks(v: torch.Tensor) -> torch.Tensor:
        v = v.flatten().double()
        sv, order = v.sort(stable=True)
        _, inv, cnt = torch.unique_consecutive(sv, return_inverse=True, return_counts=True)
        avg = cnt.cumsum(0).double() - (cnt.double() - 1) / 2 - 1  # 0-based average rank of each tie group
        r = torch.empty_like(v)
        r[order] = avg[inv]
        return r
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else 0.0


def randomisation_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The leaf modules with parameters, from the output back to the input (the cascade's order): the order of
    the forward pass, reversed."""
    order: list[str] = []
    _probe(model, x, {name: m for name, m in model.named_modules()
                      if name and not list(m.children()) and any(True for _ in m.parameters(recurse=False))},
           lambda name, out: order.append(name))
    return list(reversed(list(dict.fromkeys(order))))


def reinitialise(model: nn.Module, names: list[str], seed: int) -> None:
    """Fresh random weights for the named modules (their own reset_parameters; else normal(0, 0.02))."""
    modules = dict(model.named_modules())
    with torch.no_grad(), torch.random.fork_rng():  # the caller's RNG untouched
        for k, n in enumerate(names):
            m = modules[n]
            torch.manual_seed(seed * 1_000_003 + k)  # layer k of the cascade: the same draw at every cut
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
                if isinstance(m, nn.modules.batchnorm._BatchNorm):  # reset_parameters sets weight 1, bias 0:
                    m.weight.normal_(1.0, 0.1)  # randomised, as the paper does every layer
                    m.bias.normal_(0.0, 0.1)
            else:
                for p in m.parameters(recurse=False):
                    p.normal_(0.0, 0.02)


def sanity(model: nn.Module, x: torch.Tensor, target: torch.Tensor, methods: list[str], layer_name: Optional[str],
           steps: int, seed: int) -> dict:
    """Cascading randomisation: after re-initialising the top k parametrised layers (k at `steps` points from 1
    to all), the mean Spearman correlation over the images between each method's map and the trained model's."""
    order = randomisation_order(model, x)
    if not order:
        raise RunError("the model has no parametrised layers to randomise")
    # the logits layer alone first, then evenly down to every layer (the paper's cascade, coarser for deep nets)
    cuts = sorted({1, len(order), *(max(1, round(len(order) * (i + 1) / steps)) for i in range(steps - 1))})
    ref = {m: attribute(m, model, x, target, _layer(model, layer_name) if m in NEEDS_LAYER else None, seed)
           for m in methods}
    curves: dict[str, list[float]] = {m: [] for m in methods}
    spread: dict[str, list[float]] = {m: [] for m in methods}  # std over the images: how far one map is from it
    for k in cuts:
        rnd = copy.deepcopy(model)
        reinitialise(rnd, order[:k], seed)
        for m in methods:
            maps = attribute(m, rnd, x, target, _layer(rnd, layer_name) if m in NEEDS_LAYER else None, seed)
            rho = torch.tensor([spearman(maps[i], ref[m][i]) for i in range(len(x))], dtype=torch.float64)
            curves[m].append(float(rho.mean()))
            spread[m].append(float(rho.std()) if len(rho) > 1 else 0.0)
    return {"order": order, "cuts": cuts, "last_randomised": [order[k - 1] for k in cuts], "spearman": curves,
            "spearman_std": spread, "n_images": len(x)}


def _layer(model: nn.Module, name: Optional[str]) -> Optional[nn.Module]:
    return dict(model.named_modules())[name] if name else None


# ---------------------------------------------------------------- figures

def _image(x: torch.Tensor):
    """uint8 (3, H, W) -> (H, W, 3) array for imshow."""
    return x.permute(1, 2, 0).cpu().numpy()


def plot_maps(images: torch.Tensor, maps: torch.Tensor, titles: list[str], method: str, path: Path) -> Path:
    """One row per image: the image, the map, the map over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n), squeeze=False)
    for i in range(n):
        img = images[i]
        if tuple(img.shape[-2:]) != tuple(maps.shape[-2:]):  # not at the model's input size: show it at that size
            img = F.interpolate(img[None].float(), size=maps.shape[-2:], mode="bilinear",
                                align_corners=False)[0].clamp(0, 255).to(torch.uint8)
        m = maps[i].float()
        # shown clipped at the 99th percentile (as Captum's visualiser does): a few extreme pixels would leave the
        # rest of a gradient map black
        hi = float(torch.quantile(m.flatten(), 0.99))
        m = ((m - m.min()) / (max(hi, float(m.min())) - m.min() + 1e-12)).clamp(0, 1)
        axes[i][0].imshow(_image(img))
        axes[i][0].set_title(titles[i].replace(", pred ", "\npred "), fontsize=7)  # two lines: long breed names fit
        axes[i][1].imshow(m.cpu().numpy(), cmap="inferno")
        axes[i][1].set_title(f"{method} (clipped at p99)", fontsize=7)
        axes[i][2].imshow(_image(img))
        axes[i][2].imshow(m.cpu().numpy(), cmap="inferno", alpha=0.55)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sanity(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = result["last_randomised"]
    for m, ys in result["spearman"].items():
        line, = ax.plot(range(len(ys)), ys, marker="o", label=m)
        sd = result.get("spearman_std", {}).get(m)
        if sd:  # +- one std over the images (the mean's own error is std / sqrt(n))
            ax.fill_between(range(len(ys)), [y - e for y, e in zip(ys, sd)], [y + e for y, e in zip(ys, sd)],
                            color=line.get_color(), alpha=0.12, lw=0)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
    ax.set_xlabel("randomised from the top down to (and including)")
    ax.set_ylabel("Spearman rank corr. with the trained map")
    ax.set_title(f"cascading randomisation: mean (+- std) over {result.get('n_images', '?')} test images", fontsize=9)
    ax.axhline(0, color="k", lw=0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- command line

def add_explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished (or checkpointed) image-classification run directory")
    p.add_argument("--method", action="append", choices=XMETHODS,
                   help="attribution method (repeatable; default: every one the model supports)")
    p.add_argument("--images", type=int, default=6, help="test images explained, drawn at random (seeded; default 6)")
    p.add_argument("--index", help="explain these test-split indices instead, e.g. 3,17,42")
    p.add_argument("--target", choices=("pred", "true"), default="pred",
                   help="the class each map explains: the model's prediction (default) or the true class")
    p.add_argument("--layer", help="Grad-CAM's layer (a module name; default: the last feature-map layer)")
    p.add_argument("--sanity", action="store_true", help="also run the cascading model-randomisation test")
    p.add_argument("--sanity-steps", type=int, default=8, help="randomisation steps from the top layer to all "
                   "(default 8)")
    p.add_argument("--sanity-images", type=int, default=16, help="test images the sanity curves average over "
                   "(at least): the explained ones, then more drawn at random (default 16; the check's time grows "
                   "with it: 16 x 16 SmoothGrad samples per map at the model's input size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image draw, SmoothGrad noise and re-init")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the machine's cores)")
    p.add_argument("--data-dir", help="folder holding local dataset copies (sets ABLATIONS_DATA)")


def _pick_images(n_test: int, args) -> list[int]:
    if args.index:
        try:
            idx = [int(v) for v in args.index.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--index {args.index!r}: a comma-separated list of integers, e.g. 3,17,42") from None
        idx = list(dict.fromkeys(idx))  # an index given twice: explained (and averaged) once
        bad = [i for i in idx if not 0 <= i < n_test]
        if bad or not idx:
            raise ConfigError(f"--index: {bad[0] if bad else '(empty)'} is not a test-split index (0..{n_test - 1})")
        return idx
    if args.images < 1:
        raise ConfigError(f"--images must be >= 1, got {args.images}")
    g = torch.Generator().manual_seed(args.seed)
    return torch.randperm(n_test, generator=g)[:args.images].sort().values.tolist()


def weights_stamp(run_dir: Path) -> list:
    """(size, mtime ns) of the run's weights: explanations of older weights are stale (a rerun with --overwrite)."""
    for name in (rd.FINAL, rd.CHECKPOINT):
        p = Path(run_dir) / name
        if p.exists():
            st = p.stat()
            return [st.st_size, st.st_mtime_ns]
    return []


def explain(args) -> Path:
    """Maps (and the sanity curves) of a run into RUN_DIR/explain/; returns explain.json's path."""
    if args.sanity_steps < 2:
        raise ConfigError(f"--sanity-steps must be >= 2 (the logits layer alone, then every layer), got "
                          f"{args.sanity_steps}")
    t0 = time.perf_counter()
    if args.sanity and args.sanity_images < 1:
        raise ConfigError(f"--sanity-images must be >= 1, got {args.sanity_images}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import captum  # noqa: F401
    except ImportError:
        raise RunError("explain needs Captum: pip install captum (or the project's `explain` extra)") from None
    r = load_image_run(Path(args.run_dir))
    idx = _pick_images(len(r.test_x), args)
    xs = r.test_x[idx]
    x = r.prep(xs).float()
    with torch.no_grad():
        pred = r.model(x).argmax(1)
    true = r.test_y[idx]
    target = pred if args.target == "pred" else true
    wanted = list(dict.fromkeys(args.method or XMETHODS))
    # guided backprop reads nn.ReLU modules: the same function built from one where the model has ReLU6 (before
    # the layer is picked: Grad-CAM must hook a module of the model as it runs)
    swapped = relu6_as_relu(r.model) if any(m in NEEDS_RELU for m in wanted) else 0
    needs_layer = args.layer or any(m in NEEDS_LAYER for m in wanted)  # a given --layer is checked either way
    layer_name, layer = pick_layer(r.model, x, args.layer) if needs_layer else (None, None)
    relu = has_relu_modules(r.model)
    skipped = {m: "the model has no nn.ReLU modules (Captum's guided backprop overrides those only)"
               for m in wanted if m in NEEDS_RELU and not relu}
    methods = [m for m in wanted if m not in skipped]
    if not methods:
        raise ConfigError(f"--method {', '.join(wanted)}: {next(iter(skipped.values()))}")
    out = r.dir / EXPLAIN_DIR
    out.mkdir(exist_ok=True)
    from .data.augment import center_crop
    from .models.pretrained import readable_classes

    shown = center_crop(xs, r.size)  # what the model saw (a pretrained run's stored images are larger)
    names = readable_classes([str(c) for c in r.classes])  # WordNet ids -> ImageNet names
    titles = [f"#{i} true {names[int(t)]}, pred {names[int(p)]}" for i, t, p in zip(idx, true, pred)]
    figures = {}
    for m in list(methods):
        try:
            maps = attribute(m, r.model, x, target, layer if m in NEEDS_LAYER else None, args.seed)
        except (AssertionError, IndexError) as e:  # Captum refusing this model or layer
            skipped[m] = f"Captum: {str(e).splitlines()[0][:160]}"
            methods.remove(m)
            continue
        figures[m] = plot_maps(shown, maps, titles, m, out / f"{m}.png").name
    if not methods:
        raise RunError(f"{r.dir}: no attribution method worked: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    record = {"images": idx, "true": [int(t) for t in true], "pred": [int(p) for p in pred],
              "classes": names, "target": args.target, "layer": layer_name, "methods": methods, "skipped": skipped,
              "figures": figures, "seed": args.seed, "weights": weights_stamp(r.dir), "relu6_as_relu": swapped}
    if args.sanity:
        sidx = list(idx)
        if len(sidx) < args.sanity_images:  # more images for a steadier mean: seeded, after the shown ones
            g = torch.Generator().manual_seed(args.seed + 1)
            explained = set(idx)
            more = [i for i in torch.randperm(len(r.test_x), generator=g).tolist() if i not in explained]
            sidx += more[:args.sanity_images - len(sidx)]
        sx = r.prep(r.test_x[sidx]).float()
        with torch.no_grad():
            spred = r.model(sx).argmax(1)
        starget = spred if args.target == "pred" else r.test_y[sidx]
        res = sanity(r.model, sx, starget, methods, layer_name, args.sanity_steps, args.seed)
        res["images"] = sidx
        res["figure"] = plot_sanity(res, out / "sanity.png").name
        record["sanity"] = res
    record["seconds"] = round(time.perf_counter() - t0, 1)  # model and data loading included
    record["threads"] = torch.get_num_threads()
    path = out / EXPLAIN_JSON
    rd.write_json(path, record)
    return path


def main(args: argparse.Namespace) -> int:
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    run = rd.Run.read(Path(args.run_dir))
    if (run.config.get("method") or {}).get("name") == "language_model":  # the LSTM cell page
        from .explain_text import explain_language_run

        given = [f for f, v in (("--method", args.method), ("--sanity", args.sanity), ("--index", args.index),
                                ("--layer", args.layer)) if v]
        if given:
            raise ConfigError(f"{' '.join(given)}: options of image runs; {run.dir} is a language model (its page "
                              "shows the LSTM cells)")
        if args.threads:
            torch.set_num_threads(args.threads)
        path = explain_language_run(run.dir)
        rec = rd.read_json(path)
        features = ", ".join(c["feature"] for c in rec["cells"])
        print(f"LSTM cells of {run.dir} ({features}) -> {path.parent / rec['page']}")
    else:
        path = explain(args)
        rec = rd.read_json(path)
        print(f"explained {len(rec['images'])} test images of {Path(args.run_dir)} with {', '.join(rec['methods'])} "
              f"(Grad-CAM layer {rec['layer']}): {path.parent}")
        for m, why in rec["skipped"].items():
            print(f"skipped {m}: {why}")
    study = next((d for d in Path(args.run_dir).resolve().parents[:3] if (d / rd.STUDY).is_file()), None)
    if study is not None:
        from .report.render import write_report

        print(f"report: {write_report(study)}")
    return 0
