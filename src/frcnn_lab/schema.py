"""Typed schemas of the main config groups, registered in Hydra's ConfigStore as ``schema/<group>``.

Each option of a group (``conf/<group>/*.yaml``) starts from its schema (``defaults: [/schema/<group>@_here_]``),
so Hydra itself refuses, while composing, a value of the wrong type and a key the group does not have, in an
override, an option or an experiment preset, naming the key. Values and their ranges, choices and cross-field
rules are checked afterwards by ``frcnn_lab.config.validate``. Fields typed ``Any`` hold values of several shapes
(a list of anchor sizes or one list per feature level) or each source's own keys (``data.source``); ``validate``
checks the list-valued ones.
"""

# OmegaConf reads the annotations at runtime and knows Optional[...], not X | None:
# ruff: noqa: UP007, UP045
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class BackboneSchema:
    name: str = MISSING
    weights: str = MISSING
    freeze_stages: int = MISSING
    frozen_bn: bool = MISSING
    box_head: str = MISSING


@dataclass
class RPNSchema:
    anchor_sizes: Any = MISSING
    aspect_ratios: Any = MISSING
    head_channels: Optional[int] = MISSING
    fg_iou: float = MISSING
    bg_iou: float = MISSING
    batch_size_per_image: int = MISSING
    positive_fraction: float = MISSING
    pre_nms_top_n_train: int = MISSING
    post_nms_top_n_train: int = MISSING
    pre_nms_top_n_test: int = MISSING
    post_nms_top_n_test: int = MISSING
    nms_iou: float = MISSING
    min_size: float = MISSING
    score_thresh: float = MISSING
    box_weights: Any = MISSING
    num_rois: int = MISSING


@dataclass
class RoIHeadSchema:
    pooler: str = MISSING
    pool_size: Optional[int] = MISSING
    sampling_ratio: int = MISSING
    aligned: bool = MISSING
    positive_fraction: float = MISSING
    fg_iou: float = MISSING
    bg_iou_lo: float = MISSING
    bg_iou_hi: float = MISSING
    add_gt_as_proposals: bool = MISSING
    box_weights: Any = MISSING
    score_thresh: float = MISSING
    nms_iou: float = MISSING
    detections_per_image: int = MISSING
    min_size: float = MISSING


@dataclass
class LossWeightsSchema:
    rpn_cls: float = MISSING
    rpn_reg: float = MISSING
    roi_cls: float = MISSING
    roi_reg: float = MISSING


@dataclass
class LossSchema:
    weights: LossWeightsSchema = field(default_factory=LossWeightsSchema)
    rpn_smooth_l1_beta: float = MISSING
    roi_smooth_l1_beta: float = MISSING


@dataclass
class OptimSchema:
    optimizer: Any = MISSING  # {_target_: torch.optim.<class>, lr: ..., and that class's own arguments}
    warmup_steps: int = MISSING
    schedule: str = MISSING
    min_lr_ratio: float = MISSING


@dataclass
class AugmentSchema:
    hflip: float = MISSING
    vflip: float = MISSING
    rot90: float = MISSING
    scale_jitter: Any = None  # null or [lo, hi]
    extra: Any = MISSING  # albumentations transforms as Hydra configs


@dataclass
class TilesSchema:
    size: Optional[int] = None
    overlap: float = 0.2
    min_visible: float = 0.5
    empty_fraction: float = 0.1


@dataclass
class DataSchema:
    """The keys every source shares; ``source`` holds each source's own (files, folders, scene counts). The split
    keys, which the embedded sources leave out, default to DetectionDataModule's defaults."""

    name: str = MISSING
    classes: Any = MISSING
    class_map: Any = MISSING
    source: Any = MISSING
    split: str = "official"
    split_fractions: Any = field(default_factory=lambda: [0.8, 0.2, 0.0])
    split_seed: int = 0
    limit: Optional[int] = MISSING
    include: Any = MISSING
    exclude: Any = MISSING
    use_difficult: bool = False
    num_negatives: Optional[int] = MISSING
    verify_images: bool = True
    image_size: int = MISSING
    max_size: int = MISSING
    resize: str = "shortest_side"
    scale: float = 1.0
    tiles: TilesSchema = field(default_factory=TilesSchema)
    batch_size: int = MISSING
    num_workers: int = MISSING
    group_aspect_ratio: bool = MISSING
    augment: AugmentSchema = field(default_factory=AugmentSchema)


SCHEMAS = {"backbone": BackboneSchema, "rpn": RPNSchema, "roi_head": RoIHeadSchema, "loss": LossSchema,
           "optim": OptimSchema, "data": DataSchema}


def register() -> None:
    """Store each group's schema as ``schema/<group>`` (idempotent; ``frcnn_lab.config`` calls it on import, before
    any entry point or test composes)."""
    store = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        store.store(group="schema", name=group, node=schema)
