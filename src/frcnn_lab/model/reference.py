"""torchvision's FasterRCNN built from this project's parts and settings: the reference that parity tests
and benchmarks compare against."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from frcnn_lab.model.detector import FasterRCNN
from frcnn_lab.model.folding import unfold_frozen_batchnorm


def torchvision_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with torchvision's own layers (frozen BatchNorm as separate layers)."""
    duplicate = copy.deepcopy(module)
    unfold_frozen_batchnorm(duplicate)
    return duplicate


def torchvision_equivalent(
    ours: FasterRCNN, rpn: dict[str, Any], roi_head: dict[str, Any], min_size: int, share_modules: bool = False
) -> TorchvisionFasterRCNN:
    """torchvision's FasterRCNN with ``ours``'s trunk, tail and weights and the ``rpn`` / ``roi_head`` settings.

    Our trunk is torchvision's backbone as it is (named levels and ``out_channels``); each level gets our
    anchor sizes and the RoIs are pooled by ``MultiScaleRoIAlign`` from our pooler's levels. For
    ``resnet50_fpn`` its state dict is that of ``fasterrcnn_resnet50_fpn``, key for key.

    ``min_size``: the short side torchvision resizes to (the images' own short side: no resizing).
    ``share_modules``: use ``ours``'s trunk and tail objects instead of copies; the copies have torchvision's
    separate ``FrozenBatchNorm2d`` layers where ours computes them in the convolutions. Raises ValueError for
    settings torchvision cannot express: another pooler, a background band above IoU 0, RPN box weights.
    """
    if roi_head["pooler"] != "roi_align" or roi_head["aligned"] or roi_head["bg_iou_lo"] != 0.0:
        raise ValueError("torchvision's detector has RoI Align (aligned=False) and a background band from IoU 0 only")
    if tuple(rpn["box_weights"]) != (1.0, 1.0, 1.0, 1.0):
        raise ValueError(f"rpn.box_weights={rpn['box_weights']} differ from torchvision's fixed (1, 1, 1, 1)")
    share = (lambda module: module) if share_modules else torchvision_copy
    in_channels = ours.trunk.out_channels
    rpn_head = RPNHead(in_channels, ours.rpn.head.cls_logits.out_channels)
    rpn_head.conv[0][0].load_state_dict(ours.rpn.head.conv.state_dict())
    rpn_head.cls_logits.load_state_dict(ours.rpn.head.cls_logits.state_dict())
    rpn_head.bbox_pred.load_state_dict(ours.rpn.head.bbox_pred.state_dict())
    predictor = ours.roi_head.predictor
    box_predictor = FastRCNNPredictor(predictor.cls_score.in_features, predictor.cls_score.out_features)
    box_predictor.load_state_dict(predictor.state_dict())
    return TorchvisionFasterRCNN(
        share(ours.trunk),
        min_size=min_size, max_size=10 * min_size,
        image_mean=ours.preprocess.config.image_mean, image_std=ours.preprocess.config.image_std,
        rpn_anchor_generator=AnchorGenerator(ours.rpn.anchor_generator.sizes, ours.rpn.anchor_generator.aspect_ratios),
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=rpn["pre_nms_top_n_train"], rpn_post_nms_top_n_train=rpn["post_nms_top_n_train"],
        rpn_pre_nms_top_n_test=rpn["pre_nms_top_n_test"], rpn_post_nms_top_n_test=rpn["post_nms_top_n_test"],
        rpn_nms_thresh=rpn["nms_iou"], rpn_fg_iou_thresh=rpn["fg_iou"], rpn_bg_iou_thresh=rpn["bg_iou"],
        rpn_batch_size_per_image=rpn["batch_size_per_image"], rpn_positive_fraction=rpn["positive_fraction"],
        rpn_score_thresh=rpn["score_thresh"],
        box_roi_pool=MultiScaleRoIAlign(
            list(ours.roi_head.pooler.strides), ours.roi_head.pooler.output_size, roi_head["sampling_ratio"]
        ),
        box_head=share(ours.roi_head.tail), box_predictor=box_predictor,
        box_score_thresh=roi_head["score_thresh"], box_nms_thresh=roi_head["nms_iou"],
        box_detections_per_img=roi_head["detections_per_image"], box_fg_iou_thresh=roi_head["fg_iou"],
        box_bg_iou_thresh=roi_head["bg_iou_hi"], box_batch_size_per_image=rpn["num_rois"],
        box_positive_fraction=roi_head["positive_fraction"], bbox_reg_weights=tuple(roi_head["box_weights"]),
    )
