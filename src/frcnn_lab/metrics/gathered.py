"""A torchmetrics base for metrics that need every image's detections and ground truth at compute time."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class GatheredDetections(Metric):
    """Keeps per image the detections ("boxes" (D, 4), "scores" (D,), "labels" (D,)) and the ground truth
    ("boxes" (G, 4), "labels" (G,), optional "difficult" (G,)); under DDP they are gathered from all
    processes. Subclasses implement ``compute`` on ``self.images_seen()`` -> (preds, targets) per image."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
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

    def images_seen(self) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
        """Every image's (detections, ground truth) on the CPU, in key order; images with neither are absent."""

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
        return preds, targets
