"""What every image dataset shares: its typed options (ImageDataConfig), what a dataset returns (RawData:
the splits it ships, nothing carved yet) and what the methods train on (Splits: made by splits.make_splits,
the one place that carves validation sets, limits, label noise, labeled/unlabeled parts and core-sets)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

from ..config import DataConfig, FieldError, RunRef, opt


@dataclass(frozen=True)
class ImageDataConfig(DataConfig):
    limit: int = opt(0, "use at most this many training examples (0: all); for smoke runs", ge=0)
    limit_eval: int = opt(0, "at most this many validation/test examples (0: all)", ge=0)
    val_fraction: float = opt(0.1, "share of the training set held out for validation (seeded)", ge=0, lt=1)
    normalize: Literal["unit", "standard", "model"] = opt(
        "standard", "unit: [0,1]; standard: the training split's per-channel mean/std; model: the backbone's own")
    image_size: int = opt(0, "input side, pixels (0: the model's default, else the stored size)", ge=0)
    # < 1: with every label replaced there is nothing left to learn from (and "symmetric" has no meaning)
    label_noise: float = opt(0.0, "share of training labels replaced by a wrong class (seeded)", ge=0, lt=1)
    noise_kind: Literal["symmetric", "asymmetric"] = opt(
        "symmetric", "symmetric: a uniformly random other class; asymmetric: a fixed similar class "
        "(noise_map; default on CIFAR-10: truck->automobile, bird->airplane, deer->horse, cat<->dog; else "
        "class k -> k+1)")
    noise_map: dict = opt(factory=dict, doc="asymmetric noise: {source class: the class its labels flip to}, by "
                          "class name (empty: the default above); classes not named keep their labels")
    labels_csv: Optional[str] = opt(None, "CSV of training labels by image path (fast.ai's noisy_imagenette.csv "
                                    "format: path, noisy_labels_0/1/5/25/50, is_valid); image-folder datasets only")
    labels_column: str = opt("noisy_labels_0", "the labels_csv column to train on (the folder's class stays the "
                             "true label)")
    labeled_fraction: float = opt(1.0, "share of the training split that keeps its labels; the rest becomes the "
                                  "unlabeled split (seeded, stratified by class)", gt=0, le=1)
    labeled_per_class: int = opt(0, "labeled training examples per class (0: use labeled_fraction)", ge=0)
    subset: Optional[str] = opt(None, "file of training-split indices to keep (JSON list, or one per line): "
                                "a core-set")
    coreset_keep: float = opt(1.0, "share of the training pool kept (a core-set), the highest-scoring first",
                              gt=0, le=1)
    coreset_score: Literal["random", "least_confidence", "entropy", "margin", "forgetting", "el2n"] = opt(
        "least_confidence", "how the kept examples are chosen: random (seeded), or the proxy run's score "
        "(higher = harder = kept first)")
    coreset_proxy: RunRef = opt(RunRef(""), "the variant whose scores.pt ranks the training pool (a run with "
                                "method.score_examples); it runs first, same seed")
    coreset_per_class: bool = opt(False, "keep the share within each class (the highest scores of each class) "
                                  "rather than the highest scores overall, which keep more of the hard classes")
    coreset_skip: float = opt(0.0, "share of the training pool with the very highest proxy scores left out before "
                              "the kept share is taken (the hardest images are often ambiguous or mislabelled)",
                              ge=0, lt=1)
    coreset_random: float = opt(0.0, "share of the training pool kept at random (seeded) from the examples the "
                                "proxy's ranking leaves out, in place of as many of the hardest: coreset_keep = "
                                "0.6 with 0.1 keeps the 50 % hardest and a random tenth of the pool from the easier "
                                "rest (typical examples mixed into the hard ones)", ge=0, lt=1)
    aug: dict = opt(factory=dict, doc="augmentation pipelines by role, batched on the training device, e.g. "
                    "{train: [flip, {translate: 4}], strong: [randaugment]}; see `ablations list` for the names")

    def check(self) -> None:
        from .augment import parse_pipeline  # the AUGS registry types each entry of each role

        for role, spec in self.aug.items():
            try:
                parse_pipeline(spec)
            except FieldError as e:
                raise FieldError(f"aug.{role}{e.key}", e.message) from None
        if self.labeled_fraction < 1.0 and self.labeled_per_class:
            raise FieldError("labeled_per_class", "set labeled_per_class or labeled_fraction, not both")
        if self.coreset_keep < 1 and self.coreset_score != "random" and not self.coreset_proxy:
            raise FieldError("coreset_proxy", f"coreset_score={self.coreset_score} ranks by a proxy run's scores: "
                             "name the proxy variant (or use coreset_score=random)")
        for key, what in (("coreset_skip", "leaves out the highest proxy scores of a core-set"),
                          ("coreset_random", "mixes random examples into a proxy-scored core-set")):
            if getattr(self, key) > 0 and (self.coreset_keep >= 1 or self.coreset_score == "random"):
                raise FieldError(key, f"{what}: it needs coreset_keep < 1 and a proxy score, got coreset_keep="
                                 f"{self.coreset_keep}, coreset_score={self.coreset_score}")
        if self.coreset_random >= self.coreset_keep:
            raise FieldError("coreset_random", f"must be below coreset_keep ({self.coreset_keep}), got "
                             f"{self.coreset_random} (an all-random core-set is coreset_score=random)")
        if self.coreset_keep + self.coreset_skip > 1:
            raise FieldError("coreset_skip", f"coreset_keep + coreset_skip must be <= 1, got {self.coreset_keep} + "
                             f"{self.coreset_skip}")
        if self.noise_map and self.noise_kind != "asymmetric":
            raise FieldError("noise_map", "a class map is for noise_kind=asymmetric (symmetric noise draws the "
                             "wrong class uniformly)")
        for src, dst in self.noise_map.items():
            if not isinstance(dst, str) or str(src).strip().lower() == dst.strip().lower():  # names match in any case
                raise FieldError(f"noise_map.{src}", f"must name another class, got {dst!r}")
        if self.labels_csv and self.label_noise > 0:
            raise FieldError("labels_csv", "set labels_csv (noise from a file) or label_noise (drawn), not both")


@dataclass
class RawData:
    """A dataset as it ships: uint8 (N, 3, H, W) images and int64 (N,) labels per split."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str  # where the bytes came from (path / URL), for the report
    title: str = ""  # e.g. "CIFAR-10", for the split descriptions
    test_name: str = "official test"  # what the test split is, for the report
    val_x: Optional[torch.Tensor] = None  # a validation split the dataset ships (else carved from train)
    val_y: Optional[torch.Tensor] = None
    train_files: Optional[list] = None  # 'train/<class>/<file>' per training image (image folders): labels_csv


@dataclass
class Splits:
    """What a method trains and evaluates on (uint8 NCHW images, int64 labels)."""
    train_x: torch.Tensor
    train_y: torch.Tensor  # labels as trained on (noisy when data.label_noise > 0)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]  # per-channel mean of the training split, [0,1] units
    std: tuple[float, float, float]
    source: str
    splits: dict = field(default_factory=dict)  # what each split is, e.g. {"val": "5000 held out of train (seed 0)"}
    train_y_true: Optional[torch.Tensor] = None  # clean labels of the training split (label-noise studies)
    unlabeled_x: Optional[torch.Tensor] = None  # training images whose labels are withheld (semi-supervised)
    unlabeled_y: Optional[torch.Tensor] = None  # their true labels: for measuring pseudo-labels only
    train_index: Optional[torch.Tensor] = None  # index of each training example in the dataset's train split
    unlabeled_index: Optional[torch.Tensor] = None  # ... of each unlabeled one
    val_index: Optional[torch.Tensor] = None  # ... of each validation one (None: the dataset's own val split)
    # the dataset's train split as shipped (a reference, not a copy): what the indices above index; the
    # semi-supervised methods compute augmented views of it once for every seed and label budget
    all_train_x: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class DataSpec:
    """What a model builder needs to know of its data: `MODELS[name](cfg.model, spec)`."""
    classes: list = field(default_factory=list)  # class names (image classifiers)
    image_size: int = 0  # input side, pixels
    vocab_size: int = 0  # tokens (language models)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
