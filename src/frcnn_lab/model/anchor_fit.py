"""How well the RPN's anchors fit a dataset's boxes, and anchors suggested from the boxes.

The fit is a *shape match*, as YOLOv5's autoanchor measures it: each GT box and each anchor are centred
on the same point and compared with ``torchvision.ops.box_iou``; a box's fit is the IoU of its best anchor.
The shape match asks only whether the configured sizes and aspect ratios can match the boxes, which is
what ``rpn.anchor_sizes`` / ``rpn.aspect_ratios`` control. On the actual anchor grid a box also loses IoU
to the offset between its centre and the nearest anchor centre (up to half a stride), which depends on
where the object happens to lie; the shape match is the upper bound the grid can reach.

Anchors are torchvision's (``AnchorGenerator.generate_anchors``: area size², height / width = ratio,
half-sides rounded), so the figures describe the anchors the RPN really places.

Suggestions use quantiles of the boxes' log sides sqrt(w * h) (and of log h / w for ratios), not k-means:
they need no seed or initialisation, give the same answer on every run, and give each anchor size an
equal share of the boxes; on one-dimensional log sizes k-means would land on similar points while
following dense modes, which leaves rare sizes without an anchor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import box_iou

from frcnn_lab.errors import ConfigError
from frcnn_lab.model.rpn import anchor_sizes_per_level

AUTO = "auto"
AUTO_SIZES_ONE_LEVEL = 4  # rpn.anchor_sizes=auto on a single-level (C4) backbone: as many as the default
AUTO_ASPECT_RATIOS = 3  # rpn.aspect_ratios=auto: at most this many
FIT_THRESHOLDS = (0.5, 0.3)  # reported besides rpn.fg_iou
WARN_IOU = 0.5
WARN_SHARE = 0.9
"""Below this share of train boxes with a best-anchor shape IoU >= WARN_IOU, the run warns and suggests
anchors. With sizes an octave apart a square box midway between two sizes reaches exactly 0.5, so
well-spaced anchors cover nearly every box at 0.5 while the share at rpn.fg_iou (0.7) is low on any data:
the matcher still makes each box's best anchor positive, but a box whose best anchor is under 0.5 gets a
poor regression start and, on the grid, often no positive anchor at all."""


def centred(widths: np.ndarray, heights: np.ndarray) -> torch.Tensor:
    """Widths, heights (N,) -> (N, 4) xyxy boxes centred on the origin."""
    half = torch.as_tensor(np.stack([widths, heights], axis=1), dtype=torch.float32) / 2
    return torch.cat([-half, half], dim=1)


def level_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """(len(sizes) * len(aspect_ratios), 4) zero-centred anchors of one level, as the RPN generates them."""
    return AnchorGenerator().generate_anchors(list(sizes), list(aspect_ratios))


def anchor_fit(
    widths: np.ndarray, heights: np.ndarray, sizes_per_level: dict[str, Sequence[float]],
    aspect_ratios: Sequence[float], fg_iou: float,
) -> dict[str, Any]:
    """The shape-match fit of boxes (widths, heights (N,) in input pixels) to anchors.

    ``sizes_per_level``: level name -> its anchor sizes. Returns the share of boxes whose best anchor over
    all levels has IoU >= ``fg_iou``, 0.5 and 0.3 (``share_best_iou_at_least``), per level the boxes whose
    best anchor is on that level and that level's share at ``fg_iou``, the shares of boxes smaller than the
    smallest anchor side / larger than the largest, and ``warn`` (share at 0.5 below ``WARN_SHARE``).
    """
    boxes = centred(np.asarray(widths, np.float32), np.asarray(heights, np.float32))
    per_level = {name: box_iou(boxes, level_anchors(sizes, aspect_ratios)).max(dim=1).values
                 if len(boxes) else torch.zeros(0) for name, sizes in sizes_per_level.items()}
    best = torch.stack(list(per_level.values()), dim=1) if len(boxes) else torch.zeros(0, len(per_level))
    best_iou, best_level = best.max(dim=1) if len(boxes) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
    thresholds = sorted({float(fg_iou), *FIT_THRESHOLDS}, reverse=True)
    shares = {str(t): _share(best_iou >= t) for t in thresholds}
    sides = np.sqrt(np.asarray(widths) * np.asarray(heights))
    all_sizes = [s for sizes in sizes_per_level.values() for s in sizes]
    return {
        "method": "shape match: boxes and anchors centred together, torchvision.ops.box_iou",
        "boxes": len(boxes),
        "aspect_ratios": [float(r) for r in aspect_ratios],
        "share_best_iou_at_least": shares,
        "levels": {name: {"anchor_sizes": [float(s) for s in sizes_per_level[name]],
                          "boxes_best_here": int((best_level == i).sum()),
                          f"share_iou_at_least_{fg_iou}": _share(iou >= fg_iou)}
                   for i, (name, iou) in enumerate(per_level.items())},
        "share_smaller_than_smallest_anchor": _share(torch.as_tensor(sides < min(all_sizes))),
        "share_larger_than_largest_anchor": _share(torch.as_tensor(sides > max(all_sizes))),
        "warn": bool(len(boxes)) and shares[str(WARN_IOU)] < WARN_SHARE,
    }


def _share(mask: torch.Tensor) -> float:
    return round(float(mask.float().mean()), 4) if mask.numel() else 0.0


def suggest_anchor_sizes(widths: np.ndarray, heights: np.ndarray, count: int) -> list[float]:
    """``count`` anchor sizes (increasing, whole pixels, distinct): the quantiles of the boxes' log side
    sqrt(w * h) at (i + 0.5) / count, so each size stands for an equal share of the boxes."""
    log_sides = np.log(np.sqrt(np.asarray(widths) * np.asarray(heights)))
    if not len(log_sides):
        raise ConfigError("rpn.anchor_sizes=auto needs boxes in the train split, and it has none")
    points = np.exp(np.quantile(log_sides, (np.arange(count) + 0.5) / count))
    sizes = np.maximum(np.round(points), 1.0)
    for i in range(1, count):
        sizes[i] = max(sizes[i], sizes[i - 1] + 1)
    return [float(s) for s in sizes]


def suggest_aspect_ratios(widths: np.ndarray, heights: np.ndarray, count: int) -> list[float]:
    """``count`` height / width ratios: quantiles of the boxes' log(h / w) at (i + 0.5) / count, rounded to
    0.01 (repeats removed: square-ish boxes may give fewer)."""
    log_ratios = np.log(np.asarray(heights) / np.maximum(np.asarray(widths), 1e-6))
    if not len(log_ratios):
        raise ConfigError("rpn.aspect_ratios=auto needs boxes in the train split, and it has none")
    points = np.round(np.exp(np.quantile(log_ratios, (np.arange(count) + 0.5) / count)), 2)
    return [float(r) for r in dict.fromkeys(points.tolist())]


def fit_report(
    widths: np.ndarray, heights: np.ndarray, anchor_sizes: Sequence[float] | str,
    aspect_ratios: Sequence[float] | str, fg_iou: float, levels: Sequence[str],
) -> dict[str, Any]:
    """The anchors to use and how well they fit boxes (widths, heights (N,) in input pixels).

    ``anchor_sizes`` / ``aspect_ratios``: the config's values, or ``"auto"`` to use the suggestion: one size
    per level on several levels (FPN), ``AUTO_SIZES_ONE_LEVEL`` on one (C4); up to ``AUTO_ASPECT_RATIOS``
    ratios. Returns ``used`` (the flat sizes and the ratios the model is to be built with), ``auto``
    (which of the two were suggested), ``fit`` (``anchor_fit`` of the used anchors on ``levels``) and
    ``suggested`` (sizes as many as used, ratios, and the share of boxes they fit at IoU 0.5; None
    without boxes).
    """
    auto = {"anchor_sizes": anchor_sizes == AUTO, "aspect_ratios": aspect_ratios == AUTO}
    auto_size_count = len(levels) if len(levels) > 1 else AUTO_SIZES_ONE_LEVEL
    size_count = auto_size_count if auto["anchor_sizes"] else len(anchor_sizes)
    ratio_count = AUTO_ASPECT_RATIOS if auto["aspect_ratios"] else len(aspect_ratios)
    suggested = None
    if len(widths) or any(auto.values()):
        suggested = {"anchor_sizes": suggest_anchor_sizes(widths, heights, size_count),
                     "aspect_ratios": suggest_aspect_ratios(widths, heights, ratio_count)}
        suggested_fit = anchor_fit(widths, heights, _per_level(suggested["anchor_sizes"], levels),
                                   suggested["aspect_ratios"], fg_iou)
        suggested["share_best_iou_at_least_0.5"] = suggested_fit["share_best_iou_at_least"][str(WARN_IOU)]
    # sizes as configured: flat, or one list per level (the MobileNetV3-FPN layouts)
    configured = [[float(s) for s in level] if isinstance(level, (list, tuple)) else float(level)
                  for level in anchor_sizes] if not auto["anchor_sizes"] else None
    used = {"anchor_sizes": suggested["anchor_sizes"] if auto["anchor_sizes"] else configured,
            "aspect_ratios": suggested["aspect_ratios"] if auto["aspect_ratios"] else [float(r) for r in aspect_ratios]}
    fit = anchor_fit(widths, heights, _per_level(used["anchor_sizes"], levels), used["aspect_ratios"], fg_iou)
    return {"used": used, "auto": auto, "fit": fit, "suggested": suggested}


def _per_level(sizes: list, levels: Sequence[str]) -> dict[str, list[float]]:
    return dict(zip(levels, anchor_sizes_per_level(sizes, list(levels)), strict=True))
