"""Which detections are true positives: the PASCAL VOC rule, for one image, used by the VOC07 AP and the
per-image TP / FP / FN counts.

Detections are taken highest score first (equal scores in their order). Each looks at the ground-truth box
of its class with which its IoU is highest: above ``iou_threshold``, it is a true positive and takes the box
when the box is free, it is ignored (neither way) when the box is *difficult*, and it is a false positive when
the box is already taken; at or below the threshold, or without a box of its class, it is a false positive.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

TRUE_POSITIVE, FALSE_POSITIVE, IGNORED = 1, 0, -1


def match_detections(pred: dict[str, Tensor], target: dict[str, Tensor], iou_threshold: float = 0.5) -> Tensor:
    """pred: "boxes" (D, 4), "scores" (D,), "labels" (D,); target: "boxes" (G, 4), "labels" (G,), optional
    "difficult" (G,) bool -> the outcome of each detection (D,) int8: ``TRUE_POSITIVE``, ``FALSE_POSITIVE`` or
    ``IGNORED``."""
    scores = pred["scores"].cpu()
    outcome = torch.full((len(scores),), FALSE_POSITIVE, dtype=torch.int8)
    gt_labels = target["labels"].cpu()
    if not len(gt_labels) or not len(scores):
        return outcome
    difficult = target.get("difficult", torch.zeros_like(gt_labels, dtype=torch.bool)).cpu().bool()
    iou = box_iou(pred["boxes"].cpu().float(), target["boxes"].cpu().float())  # (D, G)
    iou = iou.where(pred["labels"].cpu()[:, None] == gt_labels[None, :], torch.tensor(-1.0))
    best_iou, best_box = iou.max(dim=1)
    taken = torch.zeros(len(gt_labels), dtype=torch.bool)
    for index in scores.argsort(descending=True, stable=True).tolist():
        if best_iou[index] <= iou_threshold:
            continue
        box = best_box[index]
        if difficult[box]:
            outcome[index] = IGNORED
        elif not taken[box]:
            taken[box] = True
            outcome[index] = TRUE_POSITIVE
    return outcome


def match_counts(pred: dict[str, Tensor], target: dict[str, Tensor], score_threshold: float,
                 iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """One image's (TP, FP, FN) among the detections scoring >= ``score_threshold`` (``match_detections``);
    FN: the ground-truth boxes, difficult ones aside, that no detection took."""
    kept = pred["scores"] >= score_threshold
    outcome = match_detections({k: v[kept] for k, v in pred.items()}, target, iou_threshold)
    difficult = target.get("difficult", torch.zeros_like(target["labels"], dtype=torch.bool)).bool()
    tp, fp = int((outcome == TRUE_POSITIVE).sum()), int((outcome == FALSE_POSITIVE).sum())
    return tp, fp, int((~difficult).sum()) - tp
