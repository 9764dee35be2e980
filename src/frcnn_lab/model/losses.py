"""The four parts of the Faster R-CNN loss, and their weighted sum.

Both stages use the same recipe (as in the paper and torchvision): cross-entropy over the sampled
anchors / RoIs, and smooth-L1 over the positive ones only, summed and divided by the number sampled.
Selections are masks, not boolean indexing, so a training step does not wait for the GPU here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from frcnn_lab.checks import Checks

LOSS_PARTS = ("rpn_cls", "rpn_reg", "roi_cls", "roi_reg")


@dataclass
class LossWeights:
    """``loss.weights.*``: total = sum of weight * part."""

    rpn_cls: float = 1.0  # RPN objectness, binary cross-entropy over the sampled anchors
    rpn_reg: float = 1.0  # RPN box deltas, smooth L1 over the positive anchors
    roi_cls: float = 1.0  # head classification, cross-entropy over the sampled RoIs
    roi_reg: float = 1.0  # head class-specific box deltas, smooth L1 over the foreground RoIs


@dataclass
class LossConfig:
    """``loss.*``: the weight of each part and where smooth L1 turns linear (torchvision: 1/9 for both stages)."""

    weights: LossWeights = field(default_factory=LossWeights)
    rpn_smooth_l1_beta: float = 1.0 / 9
    roi_smooth_l1_beta: float = 1.0 / 9

    def __post_init__(self) -> None:
        check = Checks("loss")
        for part in LOSS_PARTS:
            check.non_negative(f"weights.{part}", getattr(self.weights, part))
        check.non_negative("rpn_smooth_l1_beta", self.rpn_smooth_l1_beta)
        check.non_negative("roi_smooth_l1_beta", self.roi_smooth_l1_beta)
        check.done()


def rpn_losses(
    objectness: Tensor, deltas: Tensor, labels: Tensor, target_deltas: Tensor, sampled: Tensor, beta: float
) -> dict[str, Tensor]:
    """RPN losses over all images' anchors, flattened.

    objectness (A,), deltas (A, 4), labels (A,) in {1, 0, -1}, target_deltas (A, 4), sampled (A,) bool.
    """
    positive = sampled & (labels == 1)
    num_sampled = sampled.sum().clamp(min=1)
    cls = F.binary_cross_entropy_with_logits(objectness, labels.clamp(min=0), reduction="none")
    cls = torch.where(sampled, cls, 0.0).sum() / num_sampled
    reg = regression_sum(deltas, target_deltas, positive, beta) / num_sampled
    return {"rpn_cls": cls, "rpn_reg": reg}


def roi_losses(
    class_logits: Tensor, box_deltas: Tensor, labels: Tensor, target_deltas: Tensor, beta: float
) -> dict[str, Tensor]:
    """RoI head losses over the sampled RoIs of all images.

    class_logits (R, K), box_deltas (R, 4K) class-specific, labels (R,) in [0, K), target_deltas (R, 4).
    Only the deltas of each RoI's true class are regressed, and only for foreground RoIs.
    """
    if labels.numel() == 0:  # e.g. only empty images and a background band that starts above IoU 0
        zero = class_logits.sum() * 0.0
        return {"roi_cls": zero, "roi_reg": zero}
    cls = F.cross_entropy(class_logits, labels)
    own_class_deltas = box_deltas.reshape(len(labels), -1, 4)[torch.arange(len(labels), device=labels.device), labels]
    reg = regression_sum(own_class_deltas, target_deltas, labels > 0, beta) / labels.numel()
    return {"roi_cls": cls, "roi_reg": reg}


def regression_sum(deltas: Tensor, target_deltas: Tensor, positive: Tensor, beta: float) -> Tensor:
    """Smooth-L1 summed over the rows (N, 4) where ``positive`` (N,) holds.

    Masks instead of boolean indexing (which asks the host for the count); the other rows regress onto their own
    detached prediction, so they add 0 and no gradient, whatever their targets (an image without GT boxes has none).
    """
    targets = torch.where(positive[:, None], target_deltas, deltas.detach())
    return F.smooth_l1_loss(deltas, targets, beta=beta, reduction="sum")


def weighted_total(losses: dict[str, Tensor], weights: LossWeights) -> Tensor:
    """Sum of the loss parts present in ``losses``, each times its weight."""
    return sum(getattr(weights, name) * value for name, value in losses.items())
