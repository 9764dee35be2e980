"""Checks of the composed config, before any heavy work: one error listing every problem."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from frcnn_lab.data.datamodule import SOURCES
from frcnn_lab.model.backbones import BUILDERS
from frcnn_lab.model.detector import MODES
from frcnn_lab.model.roi_pooling import POOLERS


class ConfigError(ValueError):
    """The config names an unknown choice, lacks a required key or holds an impossible value."""


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming each bad key with its valid choices or range."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError("required keys without a value: " + ", ".join(missing))
    problems = []

    def choice(key: str, allowed) -> None:
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            problems.append(f"{key}={value!r} is unknown; choose one of {sorted(allowed)}")

    def check(key: str, ok, expected: str) -> None:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
            problems.append(f"{key}={value!r} must be {expected}")

    choice("backbone.name", BUILDERS)
    choice("roi_head.pooler", POOLERS)
    choice("data.name", SOURCES)
    choice("model.mode", MODES)
    check("rpn.num_rois", lambda v: v >= 1, "an integer >= 1")
    check("rpn.batch_size_per_image", lambda v: v >= 1, "an integer >= 1")
    check("data.image_size", lambda v: v > 0, "> 0")
    check("data.max_size", lambda v: v >= cfg.data.image_size, f">= data.image_size ({cfg.data.image_size})")
    check("data.batch_size", lambda v: v >= 1, "an integer >= 1")
    for key in ("rpn.positive_fraction", "roi_head.positive_fraction", "rpn.fg_iou", "rpn.bg_iou",
                "roi_head.fg_iou", "roi_head.bg_iou_lo", "roi_head.bg_iou_hi", "rpn.nms_iou", "roi_head.nms_iou",
                "eval.score_threshold"):
        check(key, lambda v: 0 <= v <= 1, "in [0, 1]")
    if cfg.rpn.bg_iou > cfg.rpn.fg_iou:
        problems.append(f"rpn.bg_iou={cfg.rpn.bg_iou} must be <= rpn.fg_iou={cfg.rpn.fg_iou}")
    if not cfg.roi_head.bg_iou_lo < cfg.roi_head.bg_iou_hi <= cfg.roi_head.fg_iou:
        problems.append(
            "the background band needs roi_head.bg_iou_lo < roi_head.bg_iou_hi <= roi_head.fg_iou, got "
            f"{cfg.roi_head.bg_iou_lo}, {cfg.roi_head.bg_iou_hi}, {cfg.roi_head.fg_iou}"
        )
    if cfg.backbone.name == "vgg16" and cfg.roi_head.pool_size not in (None, 7):
        problems.append(f"roi_head.pool_size={cfg.roi_head.pool_size} must be 7 (or null) for vgg16: fc6 expects 7x7")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
