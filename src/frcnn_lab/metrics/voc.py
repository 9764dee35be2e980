"""Pascal VOC 2007 11-point interpolated AP, as the VOC devkit computes it (the paper's 69.9 / 73.2).

Per class, detections of all images are ranked by score. A detection is a true positive when its best
IoU with a ground-truth box of its class in its image exceeds 0.5 and that box is not yet taken; if the
best box is *difficult*, the detection counts neither way; otherwise it is a false positive. Difficult
boxes do not count as positives. AP is the mean over recall r in {0, 0.1, ..., 1} of the highest
precision at recall >= r, with r built as the devkit builds it (``np.arange(0, 1.1, 0.1)``). Boxes are
0-based xyxy with exclusive right / bottom edges, so the plain IoU here equals the devkit's "+1" IoU on
its 1-based inclusive coordinates.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from frcnn_lab.metrics.gathered import GatheredDetections

# The devkit's thresholds, bit for bit: np.arange builds 0.3 as 3 * 0.1 = 0.30000000000000004 (likewise 0.6,
# 0.7), so a recall of exactly 3/10 does not reach it.
DEVKIT_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1).tolist()


def voc07_ap(preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]], num_classes: int,
             iou_threshold: float = 0.5) -> dict[str, Tensor]:
    """preds: per image "boxes" (D, 4), "scores" (D,), "labels" (D,); targets: "boxes" (G, 4), "labels" (G,),
    optional "difficult" (G,) bool. -> {"ap": (num_classes,) float64 per label 1..K (NaN without positives),
    "map": mean over classes with positives}."""
    ap = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    for label in range(1, num_classes + 1):
        positives, ranked = 0, []
        for image, (pred, target) in enumerate(zip(preds, targets, strict=True)):
            gt = target["labels"] == label
            difficult = target.get("difficult", torch.zeros_like(target["labels"], dtype=torch.bool))
            positives += int((gt & ~difficult.bool()).sum())
            mine = pred["labels"] == label
            ranked += [(float(s), image, i) for i, s in zip(torch.nonzero(mine).flatten().tolist(),
                                                            pred["scores"][mine].tolist(), strict=True)]
        if positives == 0:
            continue
        ranked.sort(key=lambda item: -item[0])  # stable: equal scores keep image order, like the devkit
        taken: dict[int, Tensor] = {}
        tp, fp = [], []
        for _, image, index in ranked:
            target = targets[image]
            gt = torch.nonzero(target["labels"] == label).flatten()
            difficult = target.get("difficult", torch.zeros_like(target["labels"], dtype=torch.bool)).bool()
            hit = miss = 0
            if len(gt):
                overlaps = box_iou(preds[image]["boxes"][index].view(1, 4).float(), target["boxes"][gt].float())[0]
                best, at = overlaps.max(0)
                if best > iou_threshold:
                    used = taken.setdefault(image, torch.zeros(len(target["labels"]), dtype=torch.bool))
                    box = gt[at]
                    if difficult[box]:
                        continue
                    if not used[box]:
                        used[box] = True
                        hit = 1
                    else:
                        miss = 1
                else:
                    miss = 1
            else:
                miss = 1
            tp.append(hit)
            fp.append(miss)
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
