"""Batched image augmentation on the training device: named entries in the AUGS registry, composed into
pipelines per role (data.aug, e.g. {train: [flip, {translate: 4}], strong: [...]}).

A pipeline spec (YAML / --set) is a list whose items are
    flip                      a name: that entry with its defaults
    {translate: 4}            name -> scalar: the entry's FIRST field
    {crop: {min_area: 0.5}}   name -> mapping of fields
parse_pipeline(spec) types it (one frozen AugConfig per item; every error one line naming the item),
build_pipeline(spec) makes the callable Pipeline: pipeline(x, g, size=None) -> tensor.

All ops take (N, C, H, W) batches on any device, uint8 (0..255) or float ([0,1] units, before
normalisation), and return the same dtype. Randomness comes only from the explicit generator: it is
drawn on the generator's device (a CPU generator for a CUDA batch is fine: only N numbers move), so the
result is a pure function of (batch, config, generator state).

A new augmentation is one registered builder (here or in any module of the plugin packages):

    @dataclass(frozen=True)
    class BlurConfig(AugConfig):
        name: str = opt("blur", "registry key")
        sigma: float = opt(1.0, "Gaussian sigma, pixels", gt=0)

    @AUGS.register("blur", BlurConfig)
    def build_blur(cfg: BlurConfig) -> Aug: ...   # an Aug (or any callable op(x, g, size) -> tensor)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import Component, FieldError, opt, type_section
from ..errors import ConfigError
from ..registry import AUGS, UnknownName

__all__ = ["AugConfig", "Aug", "FlipTranslate", "Affine", "ColorJitter", "Cutout", "Pipeline", "parse_pipeline",
           "build_pipeline", "describe", "flip_translate", "random_affine_crop", "color_jitter", "cutout",
           "center_crop", "resize", "normalize"]

# ---------------------------------------------------------------- batched functions


def _rand(n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device).to(device)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect indices into [0, n-1] without repeating the edge (like F.pad mode='reflect'); valid for
    overshoot < n."""
    return (n - 1) - ((n - 1) - i.abs()).abs()


def flip_translate(x: torch.Tensor, flip: bool, pad: int, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip (p=0.5) then a random shift of dy, dx in [-pad, pad] pixels, as ONE
    gather over H*W. Padding is by reflection rather than zeros: after normalisation a zero pixel is
    not "nothing" but a black (far-from-mean) border the net can key on, and reflection keeps the
    image statistics (what airbench-style CIFAR pipelines do; Keras' tutorial default 'nearest' is
    similar in spirit)."""
    if not flip and pad <= 0:
        return x
    N, C, H, W = x.shape
    dev = x.device
    pad = min(int(pad), H - 1, W - 1)
    f = _rand(N, g, dev) < 0.5 if flip else torch.zeros(N, dtype=torch.bool, device=dev)
    if pad > 0:
        dy = torch.randint(-pad, pad + 1, (N,), generator=g, device=g.device).to(dev)
        dx = torch.randint(-pad, pad + 1, (N,), generator=g, device=g.device).to(dev)
    else:
        dy = dx = torch.zeros(N, dtype=torch.int64, device=dev)
    rows = _reflect(torch.arange(H, device=dev)[None, :] + dy[:, None], H)  # (N, H) source row
    cols = _reflect(torch.arange(W, device=dev)[None, :] + dx[:, None], W)  # (N, W) source col
    cols = torch.where(f[:, None], (W - 1) - cols, cols)  # flip the source: out(i,j) = x(r, W-1-c)
    idx = (rows[:, :, None] * W + cols[:, None, :]).reshape(N, 1, H * W).expand(N, C, H * W)
    return x.reshape(N, C, H * W).gather(2, idx).view(N, C, H, W)


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _to_float(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Float working copy and its full-scale value (255 for uint8, 1 for float)."""
    return (x.float(), 255.0) if x.dtype == torch.uint8 else (x, 1.0)


def _back(y: torch.Tensor, like: torch.Tensor, top: float) -> torch.Tensor:
    y = y.clamp(0.0, top)
    return y.round().to(torch.uint8) if like.dtype == torch.uint8 else y.to(like.dtype)


def random_affine_crop(x: torch.Tensor, size: int | Sequence[int], crop_scale: float, rotate: float,
                       scale: float, g: torch.Generator, ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random-resized-crop (area fraction in [crop_scale, 1], aspect ratio log-uniform in `ratio`),
    rotation (uniform in +-rotate degrees) and zoom (1 +- scale), all as one affine_grid + grid_sample
    to (N, C, size, size). Bilinear sampling with reflection at the borders; no antialiasing, so keep
    downscaling modest (fine for ~160 px sources -> 128..224 px). Draws, in this order: area and ratio
    (only when crop_scale < 1), centre x, centre y, angle (only when rotate > 0), zoom (only when
    scale > 0)."""
    N, C, H, W = x.shape
    oh, ow = _as_size(size)
    dev = x.device
    if crop_scale < 1.0:
        area = (crop_scale + (1 - crop_scale) * _rand(N, g, dev)) * H * W  # pixels^2
        lo, hi = math.log(ratio[0]), math.log(ratio[1])
        r = torch.exp(lo + (hi - lo) * _rand(N, g, dev))
        cw = (area * r).sqrt().clamp(max=W)  # crop width, pixels
        ch = (area / r).sqrt().clamp(max=H)
    else:
        cw = torch.full((N,), float(W), device=dev)
        ch = torch.full((N,), float(H), device=dev)
    cx = cw / 2 + (W - cw) * _rand(N, g, dev)  # crop centre, pixels (image spans [0, W])
    cy = ch / 2 + (H - ch) * _rand(N, g, dev)
    th = (2 * _rand(N, g, dev) - 1) * math.radians(rotate) if rotate > 0 else torch.zeros(N, device=dev)
    z = 1 + (2 * _rand(N, g, dev) - 1) * scale if scale > 0 else torch.ones(N, device=dev)
    cos, sin = th.cos(), th.sin()
    # output u in [-1,1]^2 -> input pixel p = c + R(th) diag(cw/2, ch/2) u / z -> normalised 2p/W - 1
    theta = torch.zeros(N, 2, 3, device=dev)
    theta[:, 0, 0] = cos * cw / z / W
    theta[:, 0, 1] = -sin * ch / z / W
    theta[:, 1, 0] = sin * cw / z / H
    theta[:, 1, 1] = cos * ch / z / H
    theta[:, 0, 2] = 2 * cx / W - 1
    theta[:, 1, 2] = 2 * cy / H - 1
    xf, top = _to_float(x)
    grid = F.affine_grid(theta.to(xf.dtype), [N, C, oh, ow], align_corners=False)
    y = F.grid_sample(xf, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return _back(y, x, top)


def color_jitter(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors each uniform in [1-s, 1+s] per image (ITU-R 601
    luma for grey), applied in that order, clamped to the valid range."""
    if strength <= 0:
        return x
    N = x.shape[0]
    dev = x.device
    xf, top = _to_float(x)
    b, c, s = ((1 + (2 * _rand(N, g, dev) - 1) * strength).clamp(min=0).view(N, 1, 1, 1) for _ in range(3))
    w = torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=xf.dtype).view(1, 3, 1, 1)
    y = (xf * b).clamp(0, top)
    m = (y * w).sum(1, keepdim=True).mean((2, 3), keepdim=True)  # (N,1,1,1) mean luma
    y = ((y - m) * c + m).clamp(0, top)
    grey = (y * w).sum(1, keepdim=True)  # (N,1,H,W)
    y = (y - grey) * s + grey
    return _back(y, x, top)


def cutout(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """One size x size square per image, centred on a uniformly random pixel and clipped at the borders,
    filled with that image's own per-channel mean (so after normalisation it is "average", not a black
    hole). Draws: centre row, then centre column."""
    if size <= 0:
        return x
    N, C, H, W = x.shape
    dev = x.device
    cy = torch.randint(0, H, (N,), generator=g, device=g.device).to(dev)
    cx = torch.randint(0, W, (N,), generator=g, device=g.device).to(dev)
    y0, x0 = cy - size // 2, cx - size // 2  # top-left, may be outside the image (clipped below)
    r = torch.arange(H, device=dev)[None, :]
    c = torch.arange(W, device=dev)[None, :]
    inside = (((r >= y0[:, None]) & (r < y0[:, None] + size))[:, :, None]
              & ((c >= x0[:, None]) & (c < x0[:, None] + size))[:, None, :])  # (N, H, W)
    xf, top = _to_float(x)
    fill = _back(xf.float().mean((2, 3), keepdim=True), x, top)  # (N, C, 1, 1), x's dtype
    return torch.where(inside[:, None], fill, x)


def center_crop(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """The central h x w window of (N, C, H, W). Images smaller than the window are first upsampled
    (bilinear, aspect kept) so their shorter side fits: 32 px CIFAR for a 224 px backbone."""
    h, w = _as_size(size)
    H, W = x.shape[-2:]
    if h > H or w > W:
        k = max(h / H, w / W)
        x = resize(x, (max(h, math.ceil(H * k - 1e-6)), max(w, math.ceil(W * k - 1e-6))))
        H, W = x.shape[-2:]
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


def resize(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinear resize with antialiasing (for downscaling) to (N, C, *size); keeps the dtype."""
    xf, top = _to_float(x)
    y = F.interpolate(xf, size=_as_size(size), mode="bilinear", align_corners=False, antialias=True)
    return _back(y, x, top)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (0..255) or float ([0,1]) images -> float32 (x/255 - mean)/std per channel; mean/std in
    [0,1] units (use mean=0, std=1 for plain [0,1] scaling). Keeps the memory format (channels_last)."""
    C = x.shape[1]
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, C, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, C, 1, 1)
    unit = 255.0 if x.dtype == torch.uint8 else 1.0
    # one multiply-add: x * (1/(unit*std)) - mean/std
    return torch.addcmul(-m / s, x.float(), 1.0 / (unit * s))


# ---------------------------------------------------------------- ops (what a builder returns)

class Aug:
    """A built augmentation: op(x, g, size=None) -> tensor. `geometric` ops produce their output at
    `size` (None: the batch's own H, W); the others keep the batch's size and ignore it. `fuse(nxt)`
    may return one op doing self then nxt with the same draws (the pipeline calls it on neighbours)."""
    geometric: bool = False

    def __call__(self, x: torch.Tensor, g: torch.Generator,
                 size: Optional[int | Sequence[int]] = None) -> torch.Tensor:
        raise NotImplementedError

    def fuse(self, nxt: Any) -> Optional["Aug"]:
        return None


@dataclass(frozen=True)
class FlipTranslate(Aug):
    """flip (p=0.5) and/or reflection-padded shift in [-pad, pad] px: one gather (flip_translate)."""
    flip: bool
    pad: int

    def __call__(self, x, g, size=None):
        return flip_translate(x, self.flip, self.pad, g)

    def fuse(self, nxt):
        # flip then translate == flip_translate(flip=True, pad): the old data.flip + data.translate draws
        if isinstance(nxt, FlipTranslate) and self.flip and self.pad == 0 and not nxt.flip:
            return FlipTranslate(True, nxt.pad)
        return None


@dataclass(frozen=True)
class Affine(Aug):
    """Random-resized crop, rotation and/or zoom: one random_affine_crop (affine grid_sample) to `size`.
    None: that part is absent (a fused op has each part from at most one entry)."""
    crop: Optional[float] = None  # min area fraction
    rotate: Optional[float] = None  # degrees
    zoom: Optional[float] = None  # relative
    geometric = True

    def __call__(self, x, g, size=None):
        hw = _as_size(size) if size is not None else tuple(x.shape[-2:])
        return random_affine_crop(x, hw, 1.0 if self.crop is None else self.crop, self.rotate or 0.0,
                                  self.zoom or 0.0, g)

    def fuse(self, nxt):
        if not isinstance(nxt, Affine):
            return None
        mine, theirs = (self.crop, self.rotate, self.zoom), (nxt.crop, nxt.rotate, nxt.zoom)
        if any(a is not None and b is not None for a, b in zip(mine, theirs)):
            return None  # e.g. two rotations: two resamplings, as written
        return Affine(*(a if a is not None else b for a, b in zip(mine, theirs)))


@dataclass(frozen=True)
class ColorJitter(Aug):
    strength: float

    def __call__(self, x, g, size=None):
        return color_jitter(x, self.strength, g)


@dataclass(frozen=True)
class Cutout(Aug):
    size: int

    def __call__(self, x, g, size=None):
        return cutout(x, self.size, g)


# ---------------------------------------------------------------- registered entries

@dataclass(frozen=True)
class AugConfig(Component):
    """Base of every augmentation's options (the first own field is what {name: scalar} sets)."""

    def describe(self) -> str:
        """Short text for reports, e.g. 'translate 4 px'."""
        own = [f for f in fields(self) if f.name != "name"]
        return " ".join([self.name] + [f"{f.name}={getattr(self, f.name)}" for f in own])


@dataclass(frozen=True)
class FlipConfig(AugConfig):
    """Random horizontal flip, p = 0.5."""
    name: str = opt("flip", "registry key")

    def describe(self) -> str:
        return "flip"


@dataclass(frozen=True)
class TranslateConfig(AugConfig):
    """Random shift of x and y, each uniform in [-pad, pad] pixels, reflection-padded."""
    name: str = opt("translate", "registry key")
    pad: int = opt(4, "largest shift, pixels (x and y each uniform in [-pad, pad]); reflection padding", ge=0)

    def describe(self) -> str:
        return f"translate {self.pad} px"


@dataclass(frozen=True)
class CropConfig(AugConfig):
    """Random-resized crop to the output size (aspect ratio log-uniform in [3/4, 4/3])."""
    name: str = opt("crop", "registry key")
    min_area: float = opt(0.35, "smallest crop, as a fraction of the image area (uniform in [min_area, 1]; "
                          "1: the whole image, only resized)", gt=0, le=1)

    def describe(self) -> str:
        return f"crop {self.min_area:g}-1 of the area"


@dataclass(frozen=True)
class RotateConfig(AugConfig):
    """Random rotation about the centre, reflection at the borders."""
    name: str = opt("rotate", "registry key")
    degrees: float = opt(15.0, "largest rotation, degrees (uniform in [-degrees, degrees])", ge=0, le=180)

    def describe(self) -> str:
        return f"rotate +-{self.degrees:g} deg"


@dataclass(frozen=True)
class ZoomConfig(AugConfig):
    """Random zoom in or out about the centre, reflection at the borders."""
    name: str = opt("zoom", "registry key")
    scale: float = opt(0.1, "largest relative zoom (factor uniform in [1-scale, 1+scale]; 0.1: +-10 %)", ge=0, lt=1)

    def describe(self) -> str:
        return f"zoom +-{100 * self.scale:g}%"


@dataclass(frozen=True)
class ColorJitterConfig(AugConfig):
    """Brightness, contrast, then saturation, each factor uniform in [1-strength, 1+strength] per image."""
    name: str = opt("color_jitter", "registry key")
    strength: float = opt(0.4, "largest relative change of brightness, contrast and saturation (0.4: +-40 %)",
                          ge=0)

    def describe(self) -> str:
        return f"color jitter {self.strength:g}"


@dataclass(frozen=True)
class CutoutConfig(AugConfig):
    """One square per image at a random centre (clipped at the borders), filled with the image's mean colour."""
    name: str = opt("cutout", "registry key")
    size: int = opt(8, "side of the square, pixels", ge=1)

    def describe(self) -> str:
        return f"cutout {self.size} px"


@AUGS.register("flip", FlipConfig)
def build_flip(cfg: FlipConfig) -> Aug:
    return FlipTranslate(True, 0)


@AUGS.register("translate", TranslateConfig)
def build_translate(cfg: TranslateConfig) -> Aug:
    return FlipTranslate(False, cfg.pad)


@AUGS.register("crop", CropConfig)
def build_crop(cfg: CropConfig) -> Aug:
    return Affine(crop=cfg.min_area)


@AUGS.register("rotate", RotateConfig)
def build_rotate(cfg: RotateConfig) -> Aug:
    return Affine(rotate=cfg.degrees)


@AUGS.register("zoom", ZoomConfig)
def build_zoom(cfg: ZoomConfig) -> Aug:
    return Affine(zoom=cfg.scale)


@AUGS.register("color_jitter", ColorJitterConfig)
def build_color_jitter(cfg: ColorJitterConfig) -> Aug:
    return ColorJitter(cfg.strength)


@AUGS.register("cutout", CutoutConfig)
def build_cutout(cfg: CutoutConfig) -> Aug:
    return Cutout(cfg.size)


# ---------------------------------------------------------------- pipelines

_EXAMPLE = "[flip, {translate: 4}]"
_MARK = "\x00aug"  # origin tag that type_section puts in front of its messages; stripped again


def _own_fields(cls: type) -> list:
    return [f for f in fields(cls) if f.name != "name"]


def _parse_item(item: Any, registry=AUGS) -> AugConfig:
    """One spec item -> its typed config; ConfigError or UnknownName with a message (no index) on failure."""
    if isinstance(item, Component) and item.name in registry:  # already typed
        return item
    if isinstance(item, str):
        name, value = item, None
    elif isinstance(item, dict):
        if len(item) != 1:
            raise ConfigError(f"expected one name per item, like {{translate: 4}}; got {item!r}")
        (name, value), = item.items()
    else:
        raise ConfigError(f"expected a name or a one-key mapping like {{translate: 4}}, got {item!r}")
    if not isinstance(name, str):
        raise ConfigError(f"expected an augmentation name, got {name!r}")
    entry = registry.entry(name)  # UnknownName: did-you-mean and the choices
    cls = entry.Config or AugConfig
    if value is None:
        raw: dict = {}
    elif isinstance(value, dict):
        raw = dict(value)
        if "name" in raw:
            raise ConfigError(f"{name}: 'name' is not an option (the item's key names the augmentation)")
    else:
        own = _own_fields(cls)
        if not own:
            raise ConfigError(f"{name} takes no options, got {value!r}")
        raw = {own[0].name: value}
    raw["name"] = entry.name
    try:
        return type_section(name, raw, cls, {"": _MARK}, "", registry=registry)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg[len(_MARK) + 2:] if msg.startswith(_MARK + ": ") else msg) from None


def parse_pipeline(spec: Any, registry=AUGS) -> list[AugConfig]:
    """A pipeline spec (see the module doc) -> one typed, range-checked config per item. Raises
    FieldError("[i]", one-line message) for a bad item, FieldError("", ...) when spec is not a list.
    `registry`: whose entries the names are (AUGS for images; TEXT_AUGS for data/text_augment.py)."""
    if isinstance(spec, Pipeline):
        return list(spec.configs)
    if not isinstance(spec, (list, tuple)):
        raise FieldError("", f"expected a list like {_EXAMPLE}, got {spec!r}")
    out = []
    for i, item in enumerate(spec):
        try:
            out.append(_parse_item(item, registry))
        except (ConfigError, UnknownName) as e:  # a registry that cannot load its plugins: as is
            raise FieldError(f"[{i}]", str(e)) from None
    return out


def _build_op(cfg: AugConfig) -> Callable:
    return AUGS.get(cfg.name)(cfg)


class Pipeline:
    """The entries of one role applied in order: pipeline(x, g, size=None) -> tensor.

    Geometric entries (crop, rotate, zoom) resample to `size` (None: the batch's H, W); without one the
    batch keeps its size whatever `size` says (the caller center-crops/resizes first). For speed,
    neighbouring entries fuse: consecutive crop/rotate/zoom (each at most once) into ONE
    random_affine_crop, and flip directly followed by translate into ONE flip_translate gather; the
    draws then follow those functions' order (the same as the old data.crop_scale/rotate/scale/flip/
    translate/color_jitter options, whose pipeline is [crop, rotate, zoom, flip, translate, color_jitter]).
    An empty pipeline returns x itself."""

    def __init__(self, configs: Sequence[AugConfig]):
        self.configs: list[AugConfig] = list(configs)
        ops: list[Callable] = []
        for cfg in self.configs:
            op = _build_op(cfg)
            fuse = getattr(ops[-1], "fuse", None) if ops else None
            fused = fuse(op) if fuse is not None else None
            if fused is not None:
                ops[-1] = fused
            else:
                ops.append(op)
        self.ops: list[Callable] = ops  # after fusion (len(self.ops) <= len(self))

    @property
    def geometric(self) -> bool:
        """Whether the output is resampled to `size` (some entry is crop, rotate or zoom)."""
        return any(getattr(op, "geometric", False) for op in self.ops)

    @property
    def random(self) -> bool:
        """Whether the output is random (else training inputs are a fixed function of the stored images,
        e.g. so a frozen backbone's features can be computed once)."""
        return bool(self.configs)

    def __len__(self) -> int:
        return len(self.configs)

    def __call__(self, x: torch.Tensor, g: torch.Generator,
                 size: Optional[int | Sequence[int]] = None) -> torch.Tensor:
        hw = _as_size(size) if size is not None else tuple(x.shape[-2:])
        for op in self.ops:
            x = op(x, g, hw)
        return x

    def describe(self) -> str:
        return describe(self.configs)

    def __repr__(self) -> str:
        return f"Pipeline({self.describe()})"


def build_pipeline(spec: Any) -> Pipeline:
    """parse_pipeline(spec) -> a callable Pipeline (a Pipeline passes through)."""
    if isinstance(spec, Pipeline):
        return spec
    return Pipeline(parse_pipeline(spec))


def describe(spec: Any) -> str:
    """A pipeline for reports: 'flip, translate 4 px' ('none' when empty)."""
    configs = parse_pipeline(spec)
    return ", ".join(c.describe() for c in configs) or "none"
