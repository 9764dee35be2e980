"""RoI head (the Fast R-CNN stage): sample RoIs, pool them, classify them and refine their boxes.

Usable on any feature maps: ``RoIHead(RoIPooler(...), tail, representation_size, num_classes, RoIHeadConfig())``
takes named levels ``{name: (B, C, h_l, w_l)}`` and per-image proposals in image pixels. ``tail`` is the box head,
pooled RoIs (R, C, P, P) -> (R, representation_size): the backbone's last stages for a C4 trunk, a
two-layer MLP for FPN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from frcnn_lab.checks import Checks, is_number
from frcnn_lab.model.losses import LossConfig, roi_losses
from frcnn_lab.model.roi_pooling import POOLERS, RoIPooler
from frcnn_lab.model.rpn import RPNConfig
from frcnn_lab.model.sampling import BalancedSampler


@dataclass
class RoIHeadConfig:
    """``roi_head.*``: RoI pooling and the Fast R-CNN head. Defaults follow torchvision unless noted; they are the
    CLI's. (The RoIs sampled per image for training are ``rpn.num_rois``, the thesis's name for them.)"""

    pooler: str = "roi_align"  # roi_pool (Fast R-CNN) | roi_align (Mask R-CNN) | crop_resize (Luminoth)
    pool_size: int | None = None  # RoI output size (None: the backbone's: 14 for resnet50, 7 for the others)
    sampling_ratio: int = 2  # roi_align: bilinear samples per bin side (0 = adaptive)
    aligned: bool = False  # roi_align: half-pixel correction
    positive_fraction: float = 0.25  # at most this share of the sampled RoIs are foreground (thesis: 0.5)
    fg_iou: float = 0.5  # RoIs with IoU >= fg_iou to a GT box are foreground
    bg_iou_lo: float = 0.0  # background band [bg_iou_lo, bg_iou_hi); RoIs below it are never sampled (thesis: 0.1)
    bg_iou_hi: float = 0.5
    add_gt_as_proposals: bool = True  # GT boxes join the proposals the head samples from
    box_weights: Any = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])  # (dx, dy, dw, dh); thesis: 8, 8, 4, 4
    # None: zero class-logit bias | pi in (0, 1): the fresh classifier gives the object classes pi together
    class_prior: float | None = None
    score_thresh: float = 0.05  # detections with a lower class score are dropped
    nms_iou: float = 0.5  # per-class NMS IoU among detections
    detections_per_image: int = 100  # highest-scoring detections kept per image
    min_size: float = 1e-2  # detections with a side below this (pixels) are dropped

    def __post_init__(self) -> None:
        check = Checks("roi_head")
        check.choice("pooler", self.pooler, POOLERS)
        if self.pool_size is not None:
            check.integer("pool_size", self.pool_size, 1)
        check.integer("sampling_ratio", self.sampling_ratio, 0)
        band = [check.fraction(name, getattr(self, name)) for name in ("bg_iou_lo", "bg_iou_hi", "fg_iou")]
        if all(band) and not self.bg_iou_lo < self.bg_iou_hi <= self.fg_iou:
            check.fail("the background band needs roi_head.bg_iou_lo < roi_head.bg_iou_hi <= roi_head.fg_iou, got "
                       f"{self.bg_iou_lo}, {self.bg_iou_hi}, {self.fg_iou}")
        check.fraction("positive_fraction", self.positive_fraction)
        check.fraction("nms_iou", self.nms_iou)
        check.box_weights("box_weights", self.box_weights)
        if self.class_prior is not None:
            check.require("class_prior", self.class_prior, is_number(self.class_prior) and 0 < self.class_prior < 1,
                          "null or in (0, 1)")
        check.non_negative("score_thresh", self.score_thresh)
        check.non_negative("min_size", self.min_size)
        check.integer("detections_per_image", self.detections_per_image, 1)
        check.done()


class BoxPredictor(nn.Module):
    """(R, D) -> class logits (R, K) and class-specific deltas (R, 4K); K includes background (0).

    ``class_prior`` pi: the class-logit bias makes the fresh classifier give background 1 - pi and each of the K - 1
    object classes pi / (K - 1); None: zero bias.
    """

    def __init__(self, representation_size: int, num_classes: int, class_prior: float | None = None) -> None:
        super().__init__()
        self.cls_score = nn.Linear(representation_size, num_classes)
        self.bbox_pred = nn.Linear(representation_size, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)  # the paper's initialisation
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        if class_prior is not None:  # RetinaNet's prior-probability init (Lin et al. 2017, 3.3), for a softmax
            nn.init.constant_(self.cls_score.bias[1:], math.log(class_prior / ((num_classes - 1) * (1 - class_prior))))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


def assign_roi_labels(
    proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, fg_iou: float, bg_iou_lo: float, bg_iou_hi: float
) -> tuple[Tensor, Tensor]:
    """Label proposals for the head: the GT class (>= 1), background 0, or -1 (never sampled).

    proposals (P, 4), gt_boxes (G, 4), gt_labels (G,) -> labels (P,) long, matched GT index (P,) long.
    Foreground: max IoU >= fg_iou. Background: bg_iou_lo <= max IoU < bg_iou_hi. A proposal of an image
    without GT boxes has IoU 0, so it is background only when bg_iou_lo is 0.
    """
    if gt_boxes.numel() == 0:
        max_iou = proposals.new_zeros(len(proposals))
        matched = torch.zeros(len(proposals), dtype=torch.long, device=proposals.device)
        labels = torch.full_like(matched, -1)
    else:
        max_iou, matched = box_iou(gt_boxes, proposals).max(dim=0)
        labels = torch.where(max_iou >= fg_iou, gt_labels[matched], -1)
    # torch.where rather than masked assignment, which asks the host for the mask's size
    labels = torch.where((max_iou >= bg_iou_lo) & (max_iou < bg_iou_hi), 0, labels)
    return labels, matched


class RoIHead(nn.Module):
    """Sampling + RoIPooler + box head (``tail``) + BoxPredictor + post-processing.

    forward(features, proposals, image_sizes, targets) -> (detections, losses, stats).
    Training (targets given): losses and stats, no detections. Inference: per image a dict with
    "boxes" (D, 4), "scores" (D,), "labels" (D,) in the coordinates of ``image_sizes``.
    """

    def __init__(
        self, pooler: RoIPooler, tail: nn.Module, representation_size: int, num_classes: int,
        config: RoIHeadConfig | None = None, num_rois: int = RPNConfig.num_rois, loss: LossConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config = config or RoIHeadConfig()
        self.pooler, self.tail = pooler, tail
        self.predictor = BoxPredictor(representation_size, num_classes, config.class_prior)
        self.sampler = BalancedSampler(num_rois, config.positive_fraction)
        self.box_coder = BoxCoder(tuple(config.box_weights))
        self.fg_iou, self.bg_iou_lo, self.bg_iou_hi = config.fg_iou, config.bg_iou_lo, config.bg_iou_hi
        self.add_gt_as_proposals = config.add_gt_as_proposals
        self.smooth_l1_beta = (loss or LossConfig()).roi_smooth_l1_beta
        self.score_thresh, self.nms_iou = config.score_thresh, config.nms_iou
        self.detections_per_image, self.min_size = config.detections_per_image, config.min_size

    def forward(
        self,
        features: Mapping[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor], dict[str, Tensor]]:
        if targets is None:
            class_logits, box_deltas = self.predict(features, proposals)
            return self.postprocess(class_logits, box_deltas, proposals, image_sizes), {}, {}
        rois, labels, target_deltas = self.sample(proposals, targets)
        representation = self.tail(self.pooler(features, rois))
        class_logits, box_deltas = self.classify(representation)
        losses = roi_losses(class_logits, box_deltas, labels, target_deltas, self.smooth_l1_beta)
        return [], losses, head_stats(class_logits.detach(), labels, len(targets), representation.detach())

    def predict(self, features: Mapping[str, Tensor], boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Pooled, tail, predictor -> class logits (R, K) and deltas (R, 4K), fp32 also under autocast."""
        return self.classify(self.tail(self.pooler(features, boxes)))

    def classify(self, representation: Tensor) -> tuple[Tensor, Tensor]:
        """The box head's representation (R, D) -> class logits (R, K) and deltas (R, 4K), in fp32."""
        class_logits, box_deltas = self.predictor(representation)
        return class_logits.float(), box_deltas.float()

    def sample(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Per image, ``num_rois`` RoIs with at most ``positive_fraction`` foreground.

        -> RoIs [(R_i, 4)], their labels (sum R_i,) and regression targets (sum R_i, 4).
        """
        all_labels, all_matched, candidates = [], [], []
        for image_proposals, target in zip(proposals, targets, strict=True):
            if self.add_gt_as_proposals:
                image_proposals = torch.cat([image_proposals, target["boxes"].to(image_proposals.dtype)])
            labels, matched = assign_roi_labels(
                image_proposals, target["boxes"], target["labels"], self.fg_iou, self.bg_iou_lo, self.bg_iou_hi
            )
            candidates.append(image_proposals)
            all_labels.append(labels)
            all_matched.append(matched)
        positive, negative = self.sampler(all_labels)
        rois, labels, matched_boxes = [], [], []
        for image_rois, image_labels, matched, pos, neg, target in zip(
            candidates, all_labels, all_matched, positive, negative, targets, strict=True
        ):
            keep = torch.where(pos | neg)[0]
            rois.append(image_rois[keep])
            labels.append(image_labels[keep])
            gt = target["boxes"][matched[keep]] if target["boxes"].numel() else image_rois[keep]
            matched_boxes.append(gt.to(image_rois.dtype))
        # one encoding for the whole batch, as in the RPN
        return rois, torch.cat(labels), self.box_coder.encode_single(torch.cat(matched_boxes), torch.cat(rois))

    def postprocess(
        self, class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """``detect`` for each image: class logits (sum R_i, K), deltas (sum R_i, 4K), proposals [(R_i, 4)]
        -> per image "boxes" (D, 4), "scores" (D,), "labels" (D,)."""
        counts = [p.shape[0] for p in proposals]
        return [
            self.detect(image_logits, image_deltas, image_proposals, size)
            for image_logits, image_deltas, image_proposals, size in zip(
                class_logits.split(counts), box_deltas.split(counts), proposals, image_sizes, strict=True)
        ]

    def detect(
        self, class_logits: Tensor, box_deltas: Tensor, proposals: Tensor, image_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """One image: softmax, class-specific decoding, clipping, score threshold, per-class NMS, top detections.

        class logits (R, K), deltas (R, 4K), proposals (R, 4) -> "boxes" (D, 4), "scores" (D,), "labels" (D,)
        in 1..K-1, best first. Traceable (``torch.onnx.export``) with the image size and R dynamic.
        """
        num_classes = class_logits.shape[-1]
        boxes = self.box_coder.decode_single(box_deltas, proposals).reshape(-1, num_classes, 4)
        boxes = clip_boxes_to_image(boxes, image_size)
        scores = F.softmax(class_logits, dim=-1)
        labels = torch.arange(num_classes, device=boxes.device).expand_as(scores)
        # drop the background column, then one candidate per (RoI, class)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        keep = keep[remove_small_boxes(boxes[keep], self.min_size)]
        keep = keep[batched_nms(boxes[keep], scores[keep], labels[keep], self.nms_iou)]
        keep = keep[: self.detections_per_image]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def head_stats(class_logits: Tensor, labels: Tensor, num_images: int, representation: Tensor) -> dict[str, Tensor]:
    """Foreground / background RoIs per image, the classifier's accuracy (all, and foreground only) and
    ``head_silent``: the share of the box head's output units (``representation`` (R, D)) at or below 0 on every
    RoI of the batch. A head whose last ReLU is silent everywhere gives the classifier nothing to tell the classes
    apart, and no gradient back (experiments/findings/collapse/)."""
    correct = class_logits.argmax(dim=1) == labels
    foreground = labels > 0
    stats = {
        "roi_fg": foreground.sum() / num_images,
        "roi_bg": (~foreground).sum() / num_images,
    }
    if labels.numel():
        stats["cls_accuracy"] = correct.float().mean()
        stats["head_silent"] = silent_share(representation)
    if foreground.any():  # the one wait for the GPU here: a step without foreground RoIs logs no fg accuracy
        stats["cls_accuracy_fg"] = (correct & foreground).sum() / foreground.sum()
    return stats


def silent_share(representation: Tensor) -> Tensor:
    """The share of the box head's output units (``representation`` (R, D)) at or below 0 on every one of the R RoIs."""
    return (representation.amax(dim=0) <= 0).float().mean()
