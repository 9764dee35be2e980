"""The detector: backbone trunk (named feature levels) -> RPN -> RoI pooling -> RoI head, or the RPN alone
(``mode=rpn_only``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from frcnn_lab.checks import Checks, typed
from frcnn_lab.model.backbones import BackboneConfig, build_backbone, pool_size_problem
from frcnn_lab.model.detection_weights import INIT_CLASSES
from frcnn_lab.model.losses import LossConfig
from frcnn_lab.model.preprocess import Preprocess, PreprocessConfig
from frcnn_lab.model.roi_head import RoIHead, RoIHeadConfig
from frcnn_lab.model.roi_pooling import RoIPooler
from frcnn_lab.model.rpn import RegionProposalNetwork, RPNConfig

MODES = ("full", "rpn_only")


@dataclass
class ModelConfig:
    """``model.*``: what the detector is made of beyond its parts, and the layout of its weights."""

    mode: str = "full"  # full | rpn_only (the RPN alone as a single-class detector)
    channels_last: bool = True  # convolution weights in NHWC layout: faster kernels, the same figures
    # none | coco (torchvision's COCO detector of the backbone's layout) | <path>: a torchvision detection state dict
    # or a frcnn_lab checkpoint; trunk, FPN, RPN and box head start from it (frcnn_lab/model/detection_weights.py)
    weights: str = "none"
    init_classes: str = "new"  # new: the predictor starts anew | by_name: a class named as a source's takes its rows

    def __post_init__(self) -> None:
        check = Checks("model")
        check.choice("mode", self.mode, MODES)
        check.choice("channels_last", self.channels_last, (False, True))
        check.require("weights", self.weights, isinstance(self.weights, str) and bool(self.weights),
                      "none, coco or the path of a detection state dict or checkpoint")
        check.choice("init_classes", self.init_classes, INIT_CLASSES)
        check.done()


@dataclass
class DetectorOutput:
    """Training fills ``losses`` and ``stats``; inference fills ``detections``."""

    detections: list[dict[str, Tensor]] = field(default_factory=list)
    losses: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)


class FasterRCNN(nn.Module):
    """images [(3, H_i, W_i)] RGB in [0, 1], resized by ``preprocess``'s policy -> DetectorOutput.

    ``preprocess`` normalises and pads the images into one batch; the trunk turns it into named feature levels that
    the RPN and the RoI head read. Targets: dicts with "boxes" (G_i, 4) xyxy pixels and "labels" (G_i,)
    in [1, K). Detections: "boxes", "scores", "labels" per image, in the coordinates of ``original_sizes``
    when given (e.g. the image before resizing), else of the input images. ``proposals_per_image`` replaces the
    RPN's post-NMS top-N at inference (sliced inference gives each tile its share). Without a RoI head the RPN is
    a single-class detector: its proposals are the detections, objectness is the score, the label is 1.
    """

    def __init__(self, preprocess: Preprocess, trunk: nn.Module, rpn: RegionProposalNetwork,
                 roi_head: RoIHead | None) -> None:
        super().__init__()
        self.preprocess, self.trunk, self.rpn, self.roi_head = preprocess, trunk, rpn, roi_head

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        original_sizes: list[tuple[int, int]] | None = None,
        proposals_per_image: int | None = None,
    ) -> DetectorOutput:
        if self.training and targets is None:
            raise ValueError("FasterRCNN in training mode needs targets")
        targets = targets if self.training else None
        batch = self.preprocess(images)
        features = self.trunk(batch.tensors)
        proposals, scores, losses, stats = self.rpn(batch, features, targets, proposals_per_image)
        if self.training and self.roi_head is None:
            return DetectorOutput(losses=losses, stats=stats)
        if self.roi_head is None:
            detections = [
                {"boxes": p, "scores": s, "labels": torch.ones_like(s, dtype=torch.long)}
                for p, s in zip(proposals, scores, strict=True)
            ]
        else:
            detections, head_losses, head_stats = self.roi_head(features, proposals, batch.image_sizes, targets)
            if self.training:
                return DetectorOutput(losses={**losses, **head_losses}, stats={**stats, **head_stats})
        if original_sizes is not None:
            self.preprocess.postprocess(detections, batch.image_sizes, original_sizes)
        return DetectorOutput(detections=detections)


def build_detector(
    backbone: BackboneConfig | Mapping | None = None, rpn: RPNConfig | Mapping | None = None,
    roi_head: RoIHeadConfig | Mapping | None = None, loss: LossConfig | Mapping | None = None, num_classes: int = 2,
    mode: str = ModelConfig.mode, pretrained: bool = True, detection_weights: bool = False,
    preprocess: PreprocessConfig | Mapping | None = None,
) -> FasterRCNN:
    """The detector of the part configs (each a typed config, or a mapping of its keys over the defaults; None: the
    defaults, the CLI's).

    ``num_classes`` counts the object classes; the head adds background. ``rpn.num_rois`` is the number
    of RoIs sampled per image for the head in training. ``rpn.anchor_sizes`` is split in order over the
    backbone's levels. ``pretrained=False``: the backbone's layout follows ``backbone.weights`` but no weights
    are read (a checkpoint's state dict fills them in). ``detection_weights``: a detector's weights will fill the
    model in (``model.weights``): no backbone weights are read, BatchNorm is frozen as with pretrained weights.
    ``preprocess`` without a normalisation takes the backbone's mean / std.
    """
    backbone, rpn = typed(BackboneConfig, backbone, "backbone"), typed(RPNConfig, rpn, "rpn")
    roi_head, loss = typed(RoIHeadConfig, roi_head, "roi_head"), typed(LossConfig, loss, "loss")
    if mode not in MODES:
        raise ValueError(f"model.mode={mode!r} is unknown; choose one of {list(MODES)}")
    if problem := pool_size_problem(backbone.name, backbone.box_head, roi_head.pool_size):
        raise ValueError(problem)
    parts = build_backbone(backbone, roi_head.pool_size, pretrained=pretrained, detection_weights=detection_weights)
    preprocess = typed(PreprocessConfig, preprocess, "data")
    if preprocess.image_mean is None or preprocess.image_std is None:
        preprocess = replace(preprocess, image_mean=list(parts.image_mean), image_std=list(parts.image_std))
    region_proposals = RegionProposalNetwork(parts.out_channels, rpn, list(parts.strides), loss)
    if mode == "rpn_only":
        return FasterRCNN(Preprocess(preprocess), parts.trunk, region_proposals, None)
    pooler = RoIPooler(
        roi_head.pooler, parts.pool_size, {level: parts.strides[level] for level in parts.pooled_levels},
        roi_head.sampling_ratio, roi_head.aligned,
    )
    box_head = RoIHead(pooler, parts.tail, parts.representation_size, num_classes + 1, roi_head, rpn.num_rois, loss)
    return FasterRCNN(Preprocess(preprocess), parts.trunk, region_proposals, box_head)


@contextmanager
def loss_path(detector: nn.Module, seed: int) -> Iterator[None]:
    """Inside: ``detector`` computes its training losses without changing anything a training step reads.

    The detector is in training mode (anchor and RoI sampling, losses) but every normalisation layer and dropout
    in eval mode: BatchNorm normalises with its running statistics and does not update them (the backbones'
    frozen BatchNorm has none to update; ``backbone.weights=none`` or ``frozen_bn=false`` trains real ones), and
    nothing is dropped. The sampling draws from the CPU's and the detector's CUDA device's generators reseeded
    with ``seed``, inside ``torch.random.fork_rng``: the same draws every time, and the training's random
    stream as it was. Gradients are off; every module's mode is put back after.
    """
    modes = {module: module.training for module in detector.modules()}
    device = next(detector.parameters()).device
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        detector.train()
        for module in detector.modules():
            if isinstance(module, (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)):
                module.eval()
        try:
            yield
        finally:
            for module, training in modes.items():
                module.training = training
