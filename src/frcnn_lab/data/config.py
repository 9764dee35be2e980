"""``data.*``: the typed config of the data module, its tiles and its augmentation.

The defaults are the embedded synthetic data's (the CLI's ``data=synthetic``); each file source's option
(``conf/data/<source>.yaml``) sets its ``source`` whole and the keys it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from frcnn_lab.checks import Checks, is_number, is_sequence
from frcnn_lab.data.sources import FILE_SOURCES
from frcnn_lab.model.preprocess import PreprocessConfig

SOURCES = ("synthetic", *FILE_SOURCES)
SPLIT_MODES = ("official", "random")
SAMPLERS = ("random", "repeat_factor")


def synthetic_source() -> dict[str, Any]:
    """``data.source`` of ``data=synthetic``: the seeded scene generator's settings."""
    return {
        "difficulty": "easy",  # easy (the quickstart's scenes) | hard (data=synthetic_hard: small objects, clutter)
        "num_train": 320,
        "num_val": 100,
        "num_test": 100,
        "seed": 0,  # the scenes' seed (independent of the training seed)
        "empty_fraction": 0.15,  # images with no camera or phone
        "max_objects": 3,
        "cache_mb": 512,  # drawn scenes kept in memory per data loader process (0: drawn at every read)
        "train_class_weights": None,  # e.g. {camera: 1, phone: 0.05}: the train scenes' odds of each class
    }


@dataclass
class TilesConfig:
    """``data.tiles.*``: train on overlapping tiles of the photos (needs ``data.resize=fixed_scale``)."""

    size: int | None = None  # tile side in input pixels (None: whole photos)
    overlap: float = 0.2  # share of the tile side shared by neighbouring tiles
    min_visible: float = 0.5  # a box cut by a tile edge is kept (clipped) when this share of its area is in the tile
    empty_fraction: float = 0.1  # share of the tiles without boxes kept as negatives (seeded by data.split_seed)

    def __post_init__(self) -> None:
        check = Checks("data.tiles")
        if self.size is not None:
            check.integer("size", self.size, 1)
        check.require("overlap", self.overlap, 0 <= self.overlap < 1, "in [0, 1)")
        check.require("min_visible", self.min_visible, 0 < self.min_visible <= 1, "in (0, 1]")
        check.fraction("empty_fraction", self.empty_fraction)
        check.done()


@dataclass
class AugmentConfig:
    """``data.augment.*``: train split only; probabilities."""

    hflip: float = 0.5
    vflip: float = 0.0
    rot90: float = 0.0
    scale_jitter: Any = None  # [lo, hi]: training images rescaled after the resize by a factor drawn from it
    extra: Any = field(default_factory=list)  # albumentations transforms as Hydra configs ({_target_: ..., p: 0.5})

    def __post_init__(self) -> None:
        check = Checks("data.augment")
        for name in ("hflip", "vflip", "rot90"):
            check.fraction(name, getattr(self, name))
        if self.scale_jitter is not None:
            jitter = self.scale_jitter
            ok = is_sequence(jitter) and len(jitter) == 2 and 0 < jitter[0] <= jitter[1]
            check.require("scale_jitter", jitter, ok, "[lo, hi] with 0 < lo <= hi, or null")
        check.done()


@dataclass
class DataConfig:
    """``data.*``: the source, the classes, the splits, the detector's resize, batching and augmentation."""

    name: str = "synthetic"  # the source: one of SOURCES
    classes: Any = field(default_factory=lambda: ["camera", "phone"])  # label 1..K in this order
    class_map: Any = None  # more source class names per class (file sources), e.g. {"Mobile phone": camera}
    source: Any = field(default_factory=synthetic_source)  # the source's own keys (docs/datasets.md)
    split: str = "official"  # official (the source's splits) | random (split_fractions of its train set)
    split_fractions: Any = field(default_factory=lambda: [0.8, 0.2, 0.0])
    split_seed: int = 0
    limit: int | None = None  # at most this many images per split (file sources: a seeded choice; synthetic: the first)
    include: Any = None  # curation: file(s) of image ids to keep (file sources)
    exclude: Any = None  # curation: file(s) of image ids to leave out (file sources)
    use_difficult: bool = False  # train on difficult / crowd boxes
    num_negatives: int | None = 50  # the negatives set for the false-positive figure: its size (synthetic) or cap
    verify_images: bool = True  # decode every image once at setup: corrupt files are reported, not hit mid-run
    # The detector's resize (frcnn_lab.model.preprocess.PreprocessConfig, whose defaults and checks these are)
    resize: str = PreprocessConfig.resize
    image_size: int = PreprocessConfig.image_size
    max_size: int = PreprocessConfig.max_size
    scale: float = PreprocessConfig.scale
    tiles: TilesConfig = field(default_factory=TilesConfig)
    batch_size: int = 4
    num_workers: int = 0
    group_aspect_ratio: bool = True  # batch landscape and portrait images apart (training)
    sampler: str = "random"  # random | repeat_factor (train images with rare classes repeated, as LVIS / Detectron2)
    repeat_threshold: float = 0.001  # repeat_factor: t in r_c = max(1, sqrt(t / f_c)), f_c: share of images with c
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        check = Checks("data")
        check.choice("name", self.name, SOURCES)
        check.choice("split", self.split, SPLIT_MODES)
        check.require("image_size", self.image_size, self.image_size is not None, "an integer >= 1")
        check.part(self.preprocess)
        check.integer("batch_size", self.batch_size, 1)
        check.integer("num_workers", self.num_workers, 0)
        check.choice("sampler", self.sampler, SAMPLERS)
        check.require("repeat_threshold", self.repeat_threshold,
                      is_number(self.repeat_threshold) and 0 < self.repeat_threshold <= 1, "in (0, 1]")
        for name in ("limit", "num_negatives"):
            if getattr(self, name) is not None:
                check.integer(name, getattr(self, name), 0)
        if self.tiles.size is not None and self.resize != "fixed_scale":
            check.fail(f"data.tiles.size={self.tiles.size} needs data.resize=fixed_scale (got {self.resize}): tiles "
                       "are cut at one scale for every photo")
        check.require("source", self.source, self.source is not None, f"the keys of the {self.name} source")
        check.done()

    def preprocess(self) -> PreprocessConfig:
        """The detector's resize these keys set (its normalisation is the backbone's)."""
        return PreprocessConfig(self.resize, self.image_size, self.max_size, self.scale)
