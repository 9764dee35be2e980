"""mAP through torchmetrics, and the share of images the detector leaves empty (the thesis's figure)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision


def metric_target(target: dict[str, Any]) -> dict[str, Tensor]:
    """A dataset target -> what the metrics read, on the target's own device. VOC's "difficult" boxes become
    torchmetrics' "iscrowd": detections on them are neither rewarded nor penalised, as the VOC protocol asks."""
    out = {"boxes": target["boxes"], "labels": target["labels"]}
    if "difficult" in target:
        out["difficult"] = target["difficult"].bool()
        out["iscrowd"] = out["difficult"].long()
    return out


# pycocotools' IoU and recall thresholds, in float64. torchmetrics' defaults come from torch.linspace in float32
# (0.55 -> 0.550000011920929, 0.3 -> 0.30000001192092896), so an IoU of exactly 0.55 or a recall of exactly
# 3/10 would miss the threshold that COCOeval counts it at.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).tolist()
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101).tolist()


def mean_average_precision(iou_thresholds: list[float] | None = None) -> MeanAveragePrecision:
    """COCO mAP@[.5:.95], mAP@0.5 and per-class AP on xyxy boxes, with the fast COCO backend and COCOeval's
    thresholds; ``iou_thresholds`` (e.g. [0.5]) narrows the per-class AP to those IoUs."""
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="faster_coco_eval",
                                iou_thresholds=iou_thresholds or COCO_IOU_THRESHOLDS,
                                rec_thresholds=COCO_RECALL_THRESHOLDS)


class DetectionRates(Metric):
    """Per image, whether anything is detected with score >= ``score_threshold``.

    compute() -> {"images": images seen, "fn_rate": share of images *with* GT boxes where nothing is detected
    (the thesis's "images without boxes"), "detections_per_image": mean count of such detections over all
    images, "fp_image_rate": share of images *without* GT boxes where something is detected}. Counts are
    summed across processes, so the figures cover the whole dataset under DDP. ``update`` stays on the inputs'
    device without waiting for it.
    """

    full_state_update = False

    def __init__(self, score_threshold: float = 0.5) -> None:
        super().__init__()
        self.score_threshold = score_threshold
        for name in ("images", "detections", "positive_images", "missed", "negative_images", "false_alarms"):
            self.add_state(name, default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        if not preds:
            return
        found = torch.stack([(pred["scores"] >= self.score_threshold).sum() for pred in preds])
        has_gt = torch.tensor([len(target["boxes"]) > 0 for target in targets], device=found.device)
        empty = found == 0
        self.images += len(preds)
        self.detections += found.sum()
        self.positive_images += has_gt.sum()
        self.missed += (has_gt & empty).sum()
        self.negative_images += (~has_gt).sum()
        self.false_alarms += (~has_gt & ~empty).sum()

    def compute(self) -> dict[str, Tensor]:
        def share(part: Tensor, whole: Tensor) -> Tensor:
            return part / whole if whole > 0 else torch.tensor(float("nan"))

        return {
            "images": self.images,
            "fn_rate": share(self.missed, self.positive_images),
            "detections_per_image": share(self.detections, self.images),
            "fp_image_rate": share(self.false_alarms, self.negative_images),
        }
