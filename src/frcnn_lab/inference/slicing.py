"""Sliced inference (``inference.slicing``): detect on overlapping tiles of a large input, merge across tiles.

An input image (already at the trained resize) is cut into ``size`` x ``size`` tiles with ``overlap`` between
neighbours, by the layout of ``frcnn_lab.data.tiles.tile_windows`` (the one the tiled training uses), optionally
plus the whole image. The tiles go through the detector's own inference path, a batch at a time, each with its
share of the whole image's proposal budget (``detect_sliced``); their detections are shifted back
to the image's coordinates and merged across tiles, per class, by one of two rules:

- ``nms``: ``torchvision.ops.batched_nms`` at IoU ``match_threshold``: the highest-scoring box of a group of
  overlapping ones is kept, the others dropped.
- ``greedy_nmm``: greedy non-maximum merging, as ``sahi``'s ``GreedyNMMPostprocess`` does it: in score order, each
  box not yet taken takes the lower-scoring boxes of its class whose overlap with it (``match_metric``: IoU, or
  ``ios``, intersection over the smaller box's area) is at least ``match_threshold``, and is replaced by their
  union, one box at a time while the union still matches; the score is the highest one. An object cut by a
  tile edge is seen whole in one tile and as a fragment in the next; the fragment lies inside the whole box
  (``ios`` = 1), so merging reports the object once, where NMS at IoU keeps a fragment smaller than
  ``match_threshold`` of the box as a second detection.

The default is ``nms``: on trained detectors among clutter, ``greedy_nmm`` also merges true detections into
overlapping false positives and neighbours (docs/small_objects.md has the figures).

Every figure is then computed on the whole images, as without slicing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_area, box_iou

from frcnn_lab.checks import Checks, is_int, is_number, typed
from frcnn_lab.data.tiles import tile_windows
from frcnn_lab.model.preprocess import Preprocess

MERGE_RULES = ("nms", "greedy_nmm")
MATCH_METRICS = ("iou", "ios")

Detect = Callable[..., list[dict[str, Tensor]]]


@dataclass
class Slicing:
    """``inference.slicing``: tile side ``size`` in input pixels (at the trained resize; None: no slicing, whole
    images), ``overlap`` (share of ``size`` shared by neighbours), ``whole_image`` (also detect on the whole image),
    the ``merge`` rule and its ``match_metric`` / ``match_threshold``."""

    size: int | None = None  # tile side in input pixels, >= 32; None: whole images
    overlap: float = 0.2  # share of the tile side shared by neighbouring tiles (the layout of data.tiles)
    whole_image: bool = False  # also detect on the whole image and merge its detections with the tiles'
    merge: str = "nms"  # nms (keep the best, torchvision batched_nms) | greedy_nmm (merge into unions, as sahi)
    match_metric: str = "iou"  # iou | ios (intersection over the smaller box; greedy_nmm only)
    match_threshold: float = 0.5  # boxes of a class matching this are merged (greedy_nmm) or suppressed (nms)
    batch_size: int = 8  # tiles per pass through the detector

    def __post_init__(self) -> None:
        check = Checks("inference.slicing")
        if self.size is not None:
            check.require("size", self.size, is_int(self.size) and self.size >= 32,
                          "an integer >= 32 (input pixels), or null: no slicing")
        check.require("overlap", self.overlap, is_number(self.overlap) and 0 <= self.overlap < 1, "in [0, 1)")
        check.choice("merge", self.merge, MERGE_RULES)
        check.choice("match_metric", self.match_metric, MATCH_METRICS)
        if self.merge == "nms" and self.match_metric != "iou":
            check.fail("inference.slicing.merge=nms compares boxes by IoU (torchvision.ops.batched_nms): set "
                       "inference.slicing.match_metric=iou, or use inference.slicing.merge=greedy_nmm")
        check.integer("batch_size", self.batch_size, 1)
        check.require("match_threshold", self.match_threshold,
                      is_number(self.match_threshold) and 0 < self.match_threshold <= 1, "in (0, 1]")
        check.done()

    @classmethod
    def from_config(cls, config: Any) -> Slicing | None:
        """``inference.slicing`` (a mapping or a Slicing) -> Slicing, or None when ``size`` is null (slicing off)."""
        slicing = typed(cls, config, "inference.slicing")
        return slicing if slicing.size is not None else None


def overlap_matrix(boxes: Tensor, metric: str) -> Tensor:
    """Boxes (N, 4) xyxy -> (N, N) pairwise IoU, or intersection over the smaller area (``ios``)."""
    iou = box_iou(boxes, boxes)
    if metric == "iou":
        return iou
    areas = box_area(boxes)
    sums = areas[:, None] + areas[None, :]
    intersection = iou * sums / (1 + iou)  # iou = i / (a + b - i)
    return intersection / torch.minimum(areas[:, None], areas[None, :]).clamp(min=1e-9)


def greedy_nmm(boxes: Tensor, scores: Tensor, labels: Tensor, metric: str, threshold: float
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy non-maximum merging per class (see the module docstring) -> merged (boxes (M, 4), scores (M,),
    labels (M,)), highest score first."""
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    matches = (overlap_matrix(boxes, metric) >= threshold) & (labels[:, None] == labels[None, :])
    taken = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    kept, merged = [], []
    for i in range(len(boxes)):
        if taken[i]:
            continue
        candidates = matches[i].clone()
        candidates[: i + 1] = False
        candidates &= ~taken
        taken |= candidates
        box = boxes[i]
        for j in torch.nonzero(candidates).flatten().tolist():
            # sahi re-checks each candidate against the union so far before it joins
            if overlap_matrix(torch.stack([box, boxes[j]]), metric)[0, 1] >= threshold:
                box = torch.cat([torch.minimum(box[:2], boxes[j, :2]), torch.maximum(box[2:], boxes[j, 2:])])
        kept.append(i)
        merged.append(box)
    index = torch.tensor(kept, dtype=torch.long, device=boxes.device)
    merged_boxes = torch.stack(merged) if merged else boxes.new_zeros((0, 4))
    return merged_boxes, scores[index], labels[index]


def merge_detections(detection: dict[str, Tensor], slicing: Slicing) -> dict[str, Tensor]:
    """The detections of all tiles of one image, in its coordinates -> merged by ``slicing.merge``, highest
    score first."""
    boxes, scores, labels = detection["boxes"], detection["scores"], detection["labels"]
    if slicing.merge == "nms":
        keep = batched_nms(boxes, scores, labels, slicing.match_threshold)  # sorted by score
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    boxes, scores, labels = greedy_nmm(boxes, scores, labels, slicing.match_metric, slicing.match_threshold)
    return {"boxes": boxes, "scores": scores, "labels": labels}


def detect_sliced(detect: Detect, image: Tensor, slicing: Slicing, budget: int | None = None) -> dict[str, Tensor]:
    """One image (3, H, W) at the trained resize -> its detections from the tiles, merged, in its coordinates:
    {"boxes" (D, 4) xyxy, "scores" (D,), "labels" (D,)}.

    ``detect(images, proposals_per_image=)``: images -> detections in their coordinates. The tiles go through it
    ``slicing.batch_size`` at a time; with ``budget`` (the proposals a whole image gets), each tile gets the share of
    it that its area is of the image's (at least one), so that the RoI head's work stays that of the whole image
    plus the overlaps. The extra whole-image window (``whole_image``) gets the whole budget.
    """
    height, width = image.shape[-2:]
    windows = tile_windows(height, width, slicing.size, slicing.overlap)
    parts = []
    for start in range(0, len(windows), slicing.batch_size):
        batch = windows[start : start + slicing.batch_size]
        tile_budget = None
        if budget is not None:
            largest = max((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in batch)
            tile_budget = max(1, math.ceil(budget * largest / (height * width)))
        found = detect([image[:, y1:y2, x1:x2] for x1, y1, x2, y2 in batch], proposals_per_image=tile_budget)
        for detection, (x1, y1, _, _) in zip(found, batch, strict=True):
            parts.append({**detection, "boxes": detection["boxes"] + detection["boxes"].new_tensor([x1, y1, x1, y1])})
    if slicing.whole_image and len(windows) > 1:
        parts += detect([image], proposals_per_image=budget)
    joined = {key: torch.cat([part[key] for part in parts]) for key in ("boxes", "scores", "labels")}
    return merge_detections(joined, slicing)


def detect_images(detect: Callable[..., list[dict[str, Tensor]]], images: list[Tensor], slicing: Slicing | None,
                  original_sizes: list[tuple[int, int]] | None = None, budget: int | None = None,
                  ) -> list[dict[str, Tensor]]:
    """Detections of ``images`` (each (3, H_i, W_i) at the trained resize) by ``detect(images, original_sizes=,
    proposals_per_image=)``, whole or sliced (``budget``: a whole image's proposals, shared out over its tiles);
    boxes in the coordinates of ``original_sizes`` when given, else of the images. What validation, ``evaluate``,
    ``predict`` and ``serve`` all call."""
    if slicing is None:
        return detect(images, original_sizes=original_sizes)
    detections = [detect_sliced(detect, image, slicing, budget) for image in images]
    if original_sizes is not None:
        Preprocess.postprocess(detections, [tuple(image.shape[-2:]) for image in images], original_sizes)
    return detections
