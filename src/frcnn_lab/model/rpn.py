"""Region Proposal Network: anchors, objectness and box deltas, training targets, proposals.

Usable on any feature maps: ``RegionProposalNetwork(in_channels=C, config=RPNConfig(anchor_sizes=[32, 64]))``
takes named levels ``{name: (B, C, h_l, w_l)}`` of images padded to ``(H, W)`` (one level for a C4 trunk, several
for FPN, the anchor sizes split in order over them, one shared head) and returns per-image proposals. Used
alone (with the RPN losses only), it is a single-class detector whose objectness is the class score.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder, _topk_min
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from frcnn_lab.checks import Checks, is_sequence, positive_numbers
from frcnn_lab.model.losses import LossConfig, rpn_losses
from frcnn_lab.model.sampling import BalancedSampler


@dataclass
class RPNConfig:
    """``rpn.*``. Defaults follow the paper / torchvision unless noted; they are the CLI's."""

    # anchor sides in input pixels, split in order over the backbone's levels (C4: all at its one level; FPN: one
    # per level); paper: 128, 256, 512 at 600 px; thesis: 64, 128, 256 at 300 px; auto: fitted to the train boxes
    anchor_sizes: Any = field(default_factory=lambda: [32, 64, 128, 256])
    aspect_ratios: Any = field(default_factory=lambda: [0.5, 1.0, 2.0])  # height / width; auto: fitted
    head_channels: int | None = None  # channels of the 3x3 conv (None: the trunk's)
    fg_iou: float = 0.7  # anchors with IoU >= fg_iou to a GT box are foreground (plus each GT box's best anchor)
    bg_iou: float = 0.3  # anchors with max IoU < bg_iou are background; those in between are ignored
    batch_size_per_image: int = 256  # anchors sampled per image for the RPN losses
    positive_fraction: float = 0.5  # at most this share of them foreground
    pre_nms_top_n_train: int = 1000  # proposals kept by objectness before NMS, per level, training (torchvision: 2000)
    post_nms_top_n_train: int = 1000  # ... after NMS, training: the RoIs the head samples from
    pre_nms_top_n_test: int = 1000  # before NMS, per level, inference
    post_nms_top_n_test: int = 100  # after NMS, inference (thesis: 300; torchvision: 1000)
    nms_iou: float = 0.7  # NMS IoU among proposals of a level
    min_size: float = 1e-3  # proposals with a side below this (pixels) are dropped
    score_thresh: float = 0.0  # proposals with objectness probability below this are dropped
    box_weights: Any = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])  # (dx, dy, dw, dh) target scaling
    num_rois: int = 64  # RoIs sampled per image for the RoI head in training (thesis: 4 vs 50; torchvision: 512)

    def __post_init__(self) -> None:
        check = Checks("rpn")
        sizes, ratios = self.anchor_sizes, self.aspect_ratios
        check.require("anchor_sizes", sizes, sizes == "auto" or positive_numbers(sizes),
                      "a non-empty list of numbers > 0 (or of such lists, one per level), or auto")
        check.require("aspect_ratios", ratios, ratios == "auto" or (positive_numbers(ratios) and not any(
            is_sequence(r) for r in ratios)), "a non-empty list of numbers > 0 (the same at every level), or auto")
        if self.head_channels is not None:
            check.integer("head_channels", self.head_channels, 1)
        fractions = {name: check.fraction(name, getattr(self, name))
                     for name in ("fg_iou", "bg_iou", "positive_fraction", "nms_iou")}
        if fractions["fg_iou"] and fractions["bg_iou"] and self.bg_iou > self.fg_iou:
            check.fail(f"rpn.bg_iou={self.bg_iou} must be <= rpn.fg_iou={self.fg_iou}")
        for name in ("batch_size_per_image", "pre_nms_top_n_train", "post_nms_top_n_train", "pre_nms_top_n_test",
                     "post_nms_top_n_test", "num_rois"):
            check.integer(name, getattr(self, name), 1)
        check.non_negative("min_size", self.min_size)
        check.non_negative("score_thresh", self.score_thresh)
        check.box_weights("box_weights", self.box_weights)
        check.done()


def anchor_sizes_per_level(sizes: list[Any], levels: list[str] | None = None) -> list[list[float]]:
    """The flat ``rpn.anchor_sizes`` split in order into equal parts, one per level, finest first (a list of lists
    is taken as one list per level). One level (C4) takes all sizes; five levels (FPN) and five sizes give one size
    per level, as torchvision's FPN detectors have it. ``levels`` None: one level, or as many as the lists."""
    sizes = list(sizes)
    nested = bool(sizes) and all(isinstance(level, (list, tuple)) for level in sizes)
    levels = levels if levels is not None else [str(i) for i in range(len(sizes))] if nested else ["c4"]
    if nested:
        if len(sizes) != len(levels):
            raise ValueError(f"rpn.anchor_sizes={sizes} has {len(sizes)} lists for the {len(levels)} levels {levels}")
        return [list(level) for level in sizes]
    if len(sizes) % len(levels):
        raise ValueError(
            f"rpn.anchor_sizes={sizes} has {len(sizes)} sizes for the {len(levels)} levels {levels}: give a "
            f"multiple of {len(levels)} sizes, split in order over the levels"
        )
    per_level = len(sizes) // len(levels)
    return [sizes[i : i + per_level] for i in range(0, len(sizes), per_level)]


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs for objectness and deltas.

    (B, C, h, w) -> objectness logits (B, A, h, w), deltas (B, 4A, h, w), A anchors per location.
    """

    def __init__(self, in_channels: int, num_anchors: int, hidden_channels: int | None = None) -> None:
        super().__init__()
        hidden = hidden_channels or in_channels
        self.conv = nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(hidden, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(hidden, 4 * num_anchors, kernel_size=1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        hidden = torch.relu(self.conv(features))
        return self.cls_logits(hidden), self.bbox_pred(hidden)


def assign_anchor_labels(anchors: Tensor, gt_boxes: Tensor, fg_iou: float, bg_iou: float) -> tuple[Tensor, Tensor]:
    """Label anchors for the RPN: 1 foreground, 0 background, -1 ignored.

    anchors (A, 4), gt_boxes (G, 4) -> labels (A,) float, index of the matched GT box (A,) long.
    Foreground: IoU >= fg_iou with some GT box, or the best anchor(s) of a GT box (so every GT box that
    touches an anchor has a positive, even when none reaches fg_iou). Background: max IoU < bg_iou.
    """
    if gt_boxes.numel() == 0:
        return anchors.new_zeros(len(anchors)), torch.zeros(len(anchors), dtype=torch.long, device=anchors.device)
    iou = box_iou(gt_boxes, anchors)  # (G, A)
    max_iou, matched = iou.max(dim=0)
    best_per_gt = iou.max(dim=1, keepdim=True).values
    is_best = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=0)
    # torch.where rather than masked assignment, which asks the host for the mask's size
    labels = torch.where(max_iou < bg_iou, 0.0, -1.0)
    labels = torch.where((max_iou >= fg_iou) | is_best, 1.0, labels)
    return labels, matched


class RegionProposalNetwork(nn.Module):
    """Anchors + RPNHead + targets + proposal filtering (top-N per level, clip, min size, NMS per level, top-N).

    forward(images, features, targets) -> (proposals [(P_i, 4)], scores [(P_i,)], losses, stats)
    ``images`` is an ImageList: padded tensor (B, 3, H, W) and the unpadded sizes; ``features`` the named
    levels {name: (B, C, h_l, w_l)}, finest first, the ``levels`` the RPN was built for (``config.anchor_sizes``
    split in order over them; every level has the same number of sizes, as the head is shared). Losses and stats
    are computed when ``targets`` (dicts with "boxes" (G_i, 4)) are given.
    """

    def __init__(self, in_channels: int, config: RPNConfig | None = None, levels: list[str] | None = None,
                 loss: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or RPNConfig()
        if config.anchor_sizes == "auto" or config.aspect_ratios == "auto":
            raise ValueError("rpn.anchor_sizes / rpn.aspect_ratios = auto must be fitted to the train boxes first "
                             "(frcnn_lab.model.anchor_fit)")
        sizes = tuple(tuple(level) for level in anchor_sizes_per_level(config.anchor_sizes, levels))
        if len({len(level) for level in sizes}) != 1:
            raise ValueError(f"rpn.anchor_sizes={config.anchor_sizes} must give each level the same number of sizes")
        ratios = tuple(config.aspect_ratios)
        self.anchor_generator = AnchorGenerator(sizes=sizes, aspect_ratios=(ratios,) * len(sizes))
        self.head = RPNHead(in_channels, len(sizes[0]) * len(ratios), config.head_channels)
        self.box_coder = BoxCoder(tuple(config.box_weights))
        self.sampler = BalancedSampler(config.batch_size_per_image, config.positive_fraction)
        self.fg_iou, self.bg_iou = config.fg_iou, config.bg_iou
        self.pre_nms_top_n = {"train": config.pre_nms_top_n_train, "test": config.pre_nms_top_n_test}
        self.post_nms_top_n = {"train": config.post_nms_top_n_train, "test": config.post_nms_top_n_test}
        self.nms_iou, self.min_size, self.score_thresh = config.nms_iou, config.min_size, config.score_thresh
        self.smooth_l1_beta = (loss or LossConfig()).rpn_smooth_l1_beta

    def forward(
        self, images: ImageList, features: Mapping[str, Tensor], targets: list[dict[str, Tensor]] | None = None,
        proposals_per_image: int | None = None,
    ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor], dict[str, Tensor]]:
        levels = list(features.values())
        if len(levels) != len(self.anchor_generator.sizes):
            raise ValueError(
                f"the RPN has anchor sizes for {len(self.anchor_generator.sizes)} level(s), "
                f"the features have {len(levels)}: {list(features)}"
            )
        num_images = len(images.image_sizes)
        objectness, deltas = [], []
        for level in levels:
            # fp32 from here on under autocast: proposals, losses and scores keep full precision
            level_objectness, level_deltas = (t.float() for t in self.head(level))
            # (B, A, h, w) -> (B, h*w*A): the order of AnchorGenerator's anchors (location-major)
            objectness.append(level_objectness.permute(0, 2, 3, 1).reshape(num_images, -1))
            deltas.append(
                level_deltas.reshape(num_images, -1, 4, *level_deltas.shape[-2:])
                .permute(0, 3, 4, 1, 2).reshape(num_images, -1, 4)
            )
        anchors_per_level = [o.shape[1] for o in objectness]
        objectness, deltas = torch.cat(objectness, dim=1), torch.cat(deltas, dim=1)
        anchors = self.anchor_generator(images, levels)[0]  # (sum h*w*A, 4), the same for every image

        boxes = self.box_coder.decode_single(deltas.detach().reshape(-1, 4), anchors.repeat(num_images, 1))
        proposals, scores = self.filter_proposals(
            boxes.reshape(num_images, -1, 4), objectness.detach(), images.image_sizes, anchors_per_level,
            proposals_per_image,
        )

        losses: dict[str, Tensor] = {}
        stats: dict[str, Tensor] = {}
        if targets is not None:
            gt_boxes = [t["boxes"] for t in targets]
            labels, target_deltas, sampled, stats = self.targets(anchors, gt_boxes)
            losses = rpn_losses(
                objectness.reshape(-1), deltas.reshape(-1, 4), labels, target_deltas, sampled, self.smooth_l1_beta
            )
            stats.update(proposal_stats(proposals, gt_boxes))
        return proposals, scores, losses, stats

    def targets(self, anchors: Tensor, gt_boxes: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Labels (B*A,), regression targets (B*A, 4), sampled mask (B*A,) and sampling counts."""
        labels, matched_boxes = [], []
        for boxes in gt_boxes:
            image_labels, matched = assign_anchor_labels(anchors, boxes, self.fg_iou, self.bg_iou)
            matched_boxes.append(boxes[matched] if boxes.numel() else torch.zeros_like(anchors))
            labels.append(image_labels)
        # one encoding for the whole batch: the coder's ~40 small ops per call add up on a CPU
        target_deltas = self.box_coder.encode_single(torch.cat(matched_boxes), anchors.repeat(len(gt_boxes), 1))
        positive, negative = self.sampler(labels)
        positive, negative = torch.cat(positive), torch.cat(negative)
        stats = {
            "rpn_pos_anchors": positive.sum() / len(gt_boxes),
            "rpn_neg_anchors": negative.sum() / len(gt_boxes),
        }
        return torch.cat(labels), target_deltas, positive | negative, stats

    def filter_proposals(
        self, boxes: Tensor, objectness: Tensor, image_sizes: list[tuple[int, int]], anchors_per_level: list[int],
        proposals_per_image: int | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """``select_proposals`` for each image: boxes (B, A, 4), objectness logits (B, A), A = sum of
        ``anchors_per_level`` -> proposals [(P_i, 4)], objectness probabilities [(P_i,)], highest first.
        ``proposals_per_image`` replaces the post-NMS top-N (e.g. a tile's share of an image's budget)."""
        proposals, scores = [], []
        for image_boxes, image_objectness, size in zip(boxes, objectness, image_sizes, strict=True):
            image_proposals, image_scores = self.select_proposals(image_boxes, image_objectness, size,
                                                                  anchors_per_level, proposals_per_image)
            proposals.append(image_proposals)
            scores.append(image_scores)
        return proposals, scores

    def select_proposals(
        self, boxes: Tensor, objectness: Tensor, image_size: tuple[int, int], anchors_per_level: list[int],
        proposals_per_image: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One image: top-N by objectness in each level, clip, drop tiny boxes and low scores, NMS within
        each level, keep the top-N of all levels (torchvision's order of steps).

        boxes (A, 4), objectness logits (A,) level by level -> proposals (P, 4), probabilities (P,), highest
        first. Traceable (``torch.onnx.export``) with the image and level sizes dynamic: the top-N is bounded
        by torchvision's ``_topk_min`` and the levels are cut with ``split``, so no size is frozen.
        """
        stage = "train" if self.training else "test"
        top, levels, offset = [], [], 0
        for level, level_objectness in enumerate(objectness.split(anchors_per_level)):
            level_top = level_objectness.topk(_topk_min(level_objectness, self.pre_nms_top_n[stage], 0)).indices
            top.append(level_top + offset)
            levels.append(torch.full_like(level_top, level))
            offset += level_objectness.shape[0]
        top, levels = torch.cat(top), torch.cat(levels)
        boxes, scores = clip_boxes_to_image(boxes[top], image_size), objectness[top].sigmoid()
        keep = remove_small_boxes(boxes, self.min_size)
        keep = keep[scores[keep] >= self.score_thresh]
        keep = keep[batched_nms(boxes[keep], scores[keep], levels[keep], self.nms_iou)]
        keep = keep[: proposals_per_image or self.post_nms_top_n[stage]]
        return boxes[keep], scores[keep]


def proposal_stats(proposals: list[Tensor], gt_boxes: list[Tensor], iou: float = 0.5) -> dict[str, Tensor]:
    """The thesis's "mean overlapping bboxes" (proposals with IoU >= 0.5 to some GT box, per image) and
    RPN recall (share of GT boxes covered by a proposal at IoU >= 0.5), over images that have GT boxes."""
    overlapping, covered, total = [], [], []
    for boxes, gt in zip(proposals, gt_boxes, strict=True):
        if gt.numel() == 0:
            continue
        overlaps = box_iou(gt, boxes) >= iou if boxes.numel() else gt.new_zeros((len(gt), 0), dtype=torch.bool)
        overlapping.append(overlaps.any(dim=0).sum())
        covered.append(overlaps.any(dim=1).sum())
        total.append(len(gt))
    if not total:
        return {}
    return {
        "rpn_overlapping_proposals": torch.stack(overlapping).float().mean(),
        "rpn_recall": torch.stack(covered).sum() / sum(total),
    }
