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
from torchmetrics import Metric
from torchvision.ops import box_iou

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


class VOC07AveragePrecision(Metric):
    """torchmetrics wrapper of ``voc07_ap``: update(preds, targets) per batch, compute() -> {"ap", "map"}.

    torchmetrics squeezes one-element results, so with a single class "ap" is 0-dimensional: read it
    with ``result["ap"].reshape(-1)``.

    Keeps every image's detections and ground truth; under DDP they are gathered from all processes.
    """

    full_state_update = False

    def __init__(self, num_classes: int, iou_threshold: float = 0.5) -> None:
        super().__init__()
        self.num_classes, self.iou_threshold = num_classes, iou_threshold
        for name in ("det_boxes", "det_scores", "det_labels", "det_image",
                     "gt_boxes", "gt_labels", "gt_difficult", "gt_image"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._images = 0  # this process's images since reset, for the image keys

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        for pred, target in zip(preds, targets, strict=True):
            # A process-unique image key: updates interleave across processes, so count per process.
            key = self._images * torch.distributed.get_world_size() + torch.distributed.get_rank() \
                if distributed else self._images
            self._images += 1
            difficult = target.get("difficult", torch.zeros_like(target["labels"], dtype=torch.bool))
            self.det_boxes.append(pred["boxes"].detach().float().reshape(-1, 4))
            self.det_scores.append(pred["scores"].detach().float().reshape(-1))
            self.det_labels.append(pred["labels"].detach().long().reshape(-1))
            self.det_image.append(torch.full((len(pred["labels"]),), key, dtype=torch.long, device=self.device))
            self.gt_boxes.append(target["boxes"].detach().float().reshape(-1, 4))
            self.gt_labels.append(target["labels"].detach().long().reshape(-1))
            self.gt_difficult.append(difficult.detach().bool().reshape(-1))
            self.gt_image.append(torch.full((len(target["labels"]),), key, dtype=torch.long, device=self.device))

    def reset(self) -> None:
        super().reset()
        self._images = 0

    def compute(self) -> dict[str, Tensor]:
        def cat(state, shape) -> Tensor:
            if isinstance(state, Tensor):
                return state.cpu()
            return torch.cat([s.cpu() for s in state]) if state else torch.zeros(shape)

        det_image, gt_image = cat(self.det_image, (0,)).long(), cat(self.gt_image, (0,)).long()
        keys = torch.unique(torch.cat([det_image, gt_image]))
        det = (cat(self.det_boxes, (0, 4)), cat(self.det_scores, (0,)), cat(self.det_labels, (0,)).long())
        gt = (cat(self.gt_boxes, (0, 4)), cat(self.gt_labels, (0,)).long(), cat(self.gt_difficult, (0,)).bool())
        preds = [{"boxes": det[0][det_image == k], "scores": det[1][det_image == k], "labels": det[2][det_image == k]}
                 for k in keys]
        targets = [{"boxes": gt[0][gt_image == k], "labels": gt[1][gt_image == k], "difficult": gt[2][gt_image == k]}
                   for k in keys]
        return voc07_ap(preds, targets, self.num_classes, self.iou_threshold)
