"""Pascal VOC 2007 11-point interpolated AP, as the VOC devkit computes it (the paper's 69.9 / 73.2).

Per class, detections of all images are ranked by score; each is a true positive, a false positive or
ignored by the devkit's rule (``frcnn_lab.metrics.matching``: its best IoU with a ground-truth box of its
class in its image must exceed 0.5, the box must be free, a *difficult* box makes it count neither way).
Difficult boxes do not count as positives. AP is the mean over recall r in {0, 0.1, ..., 1} of the highest
precision at recall >= r, with r built as the devkit builds it (``np.arange(0, 1.1, 0.1)``). Boxes are
0-based xyxy with exclusive right / bottom edges, so the plain IoU here equals the devkit's "+1" IoU on
its 1-based inclusive coordinates.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from frcnn_lab.metrics.gathered import GatheredDetections
from frcnn_lab.metrics.matching import FALSE_POSITIVE, IGNORED, TRUE_POSITIVE, match_detections

# The devkit's thresholds, bit for bit: np.arange builds 0.3 as 3 * 0.1 = 0.30000000000000004 (likewise 0.6,
# 0.7), so a recall of exactly 3/10 does not reach it.
DEVKIT_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1).tolist()


def voc07_ap(preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]], num_classes: int,
             iou_threshold: float = 0.5) -> dict[str, Tensor]:
    """preds: per image "boxes" (D, 4), "scores" (D,), "labels" (D,); targets: "boxes" (G, 4), "labels" (G,),
    optional "difficult" (G,) bool. -> {"ap": (num_classes,) float64 per label 1..K (NaN without positives),
    "map": mean over classes with positives}."""
    ap = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    outcomes = [match_detections(pred, target, iou_threshold) for pred, target in zip(preds, targets, strict=True)]
    for label in range(1, num_classes + 1):
        positives, ranked = 0, []
        for pred, target, outcome in zip(preds, targets, outcomes, strict=True):
            difficult = target.get("difficult", torch.zeros_like(target["labels"], dtype=torch.bool)).bool()
            positives += int(((target["labels"] == label) & ~difficult).sum())
            mine = (pred["labels"] == label).cpu()
            ranked += list(zip(pred["scores"].cpu()[mine].tolist(), outcome[mine].tolist(), strict=True))
        if positives == 0:
            continue
        ranked.sort(key=lambda item: -item[0])  # stable: equal scores keep image order, like the devkit
        tp = [outcome == TRUE_POSITIVE for _, outcome in ranked if outcome != IGNORED]
        fp = [outcome == FALSE_POSITIVE for _, outcome in ranked if outcome != IGNORED]
        tps, fps = torch.tensor(tp, dtype=torch.float64).cumsum(0), torch.tensor(fp, dtype=torch.float64).cumsum(0)
        recall = tps / positives
        precision = tps / torch.clamp(tps + fps, min=1e-12)
        total = 0.0
        for threshold in DEVKIT_RECALL_THRESHOLDS:
            reached = recall >= threshold
            total += float(precision[reached].max()) if reached.any() else 0.0
        ap[label - 1] = total / 11
    valid = ~torch.isnan(ap)
    return {"ap": ap, "map": ap[valid].mean() if valid.any() else torch.tensor(float("nan"))}


class VOC07AveragePrecision(GatheredDetections):
    """torchmetrics wrapper of ``voc07_ap``: update(preds, targets) per batch, compute() -> {"ap", "map"}.

    torchmetrics squeezes one-element results, so with a single class "ap" is 0-dimensional: read it
    with ``result["ap"].reshape(-1)``.

    Keeps every image's detections and ground truth; under DDP they are gathered from all processes.
    """

    def __init__(self, num_classes: int, iou_threshold: float = 0.5) -> None:
        super().__init__()
        self.num_classes, self.iou_threshold = num_classes, iou_threshold

    def compute(self) -> dict[str, Tensor]:
        preds, targets = self.images_seen()
        return voc07_ap(preds, targets, self.num_classes, self.iou_threshold)
