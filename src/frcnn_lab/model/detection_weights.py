"""A detector that starts from a trained detector: torchvision's COCO Faster R-CNNs or a frcnn_lab checkpoint.

``model.weights``: ``none`` | ``coco`` (torchvision's ``COCO_V1`` weights of the backbone's layout, through
torchvision's cache: ``frcnn_lab.model.weights``) | the path of a torchvision detection state dict (what
``model.state_dict()`` of ``fasterrcnn_resnet50_fpn`` / ``fasterrcnn_mobilenet_v3_large_fpn`` /
``fasterrcnn_mobilenet_v3_large_320_fpn`` saves) or of a frcnn_lab checkpoint.

The trunk (with its FPN), the RPN head and the box head are copied; the class-specific predictor is the run's own,
newly initialised (``roi_head.class_prior`` sets its class bias), or with ``model.init_classes=by_name`` each of the
run's classes named like a class of the source starts from that class's rows, and background from the source's
(names compared in lower case, ``_`` and ``-`` as spaces, through ``COCO_ALIASES``:
``phone`` takes COCO's ``cell phone``); the other classes keep the run's initialisation. torchvision's label ``l`` is
COCO category id ``l`` (``coco_classes``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import _meta
from torchvision.models.detection import (
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    FasterRCNN_MobileNet_V3_Large_FPN_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
)

from frcnn_lab.errors import ConfigError
from frcnn_lab.model.backbones import BUILDERS, BackboneConfig, build_backbone
from frcnn_lab.model.weights import load_state_dict

log = logging.getLogger(__name__)

TORCHVISION_DETECTORS = {
    "resnet50_fpn": (fasterrcnn_resnet50_fpn, FasterRCNN_ResNet50_FPN_Weights.COCO_V1),
    "mobilenet_v3_large_fpn": (fasterrcnn_mobilenet_v3_large_fpn, FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1),
    "mobilenet_v3_large_320_fpn": (fasterrcnn_mobilenet_v3_large_320_fpn,
                                   FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1),
}
"""backbone name -> (torchvision's detector of that layout, its COCO weights)."""

INIT_CLASSES = ("new", "by_name")

COCO_ALIASES = {
    "phone": "cell phone", "mobile phone": "cell phone", "cellphone": "cell phone", "smartphone": "cell phone",
    "telephone": "cell phone", "mug": "cup", "coffee cup": "cup", "aeroplane": "airplane", "motorbike": "motorcycle",
    "sofa": "couch", "tvmonitor": "tv", "tv monitor": "tv", "television": "tv", "diningtable": "dining table",
    "pottedplant": "potted plant", "bike": "bicycle", "ball": "sports ball", "glasses": "sunglasses",
}
"""Class names (canonical: lower case, spaces) -> the COCO category they start from with init_classes=by_name: Pascal
VOC's names and the thesis's objects. A name that is COCO's own (``person``, ``cup``, ``book``) needs no entry."""

# torchvision's name for the category ids COCO left unused; our classes must be distinct names
_UNUSED = "N/A"


def coco_classes() -> tuple[list[str], list[int]]:
    """(names, category ids) of the 90 labels of torchvision's COCO detectors: label ``l`` is category id ``l``.
    The ten ids COCO does not use (torchvision's "N/A") are named ``unused_<id>``."""
    names = [name if name != _UNUSED else f"unused_{i}" for i, name in enumerate(_meta._COCO_CATEGORIES)][1:]
    return names, list(range(1, len(names) + 1))


def canonical(name: str) -> str:
    """The name ``by_name`` compares: lower case, ``_`` / ``-`` as spaces, then through COCO_ALIASES."""
    key = " ".join(name.lower().replace("_", " ").replace("-", " ").split())
    return COCO_ALIASES.get(key, key)


@dataclass
class DetectionWeights:
    """A trained detector's weights under this project's names (``trunk.*``, ``rpn.head.*``, ``roi_head.tail.*``,
    ``roi_head.predictor.*``), the names of its labels 1..K, and where they came from."""

    state: dict[str, Tensor]
    classes: list[str]
    source: str


TORCHVISION_KEYS = (
    ("backbone.", "trunk."),
    ("rpn.head.conv.0.0.", "rpn.head.conv."),  # torchvision >= 0.13 wraps the conv in Conv2dNormActivation
    ("rpn.head.conv.", "rpn.head.conv."),  # older files (COCO_V1 of resnet50_fpn) have the bare conv
    ("rpn.head.", "rpn.head."),
    ("roi_heads.box_head.", "roi_head.tail."),
    ("roi_heads.box_predictor.", "roi_head.predictor."),
)


def from_torchvision(state: dict[str, Tensor], source: str) -> DetectionWeights:
    """A torchvision FasterRCNN state dict (91 COCO labels) under this project's names."""
    renamed = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue  # FrozenBatchNorm2d has none; a BatchNorm2d counts batches for its momentum only
        for theirs, ours in TORCHVISION_KEYS:
            if key.startswith(theirs):
                renamed[ours + key[len(theirs):]] = value
                break
        else:
            raise ConfigError(f"{source}: {key!r} is no key of a torchvision Faster R-CNN state dict")
    return DetectionWeights(renamed, coco_classes()[0], source)


def read_detection_weights(weights: str, backbone: str) -> DetectionWeights:
    """``model.weights`` (coco or a path) read for ``backbone``; offline without the COCO file: WeightsUnavailableError
    naming the file and torchvision's cache folder."""
    if weights == "coco":
        if backbone not in TORCHVISION_DETECTORS:
            raise ConfigError(f"model.weights=coco: torchvision has COCO weights for backbone="
                              f"{' | '.join(TORCHVISION_DETECTORS)}, not {backbone}")
        enum = TORCHVISION_DETECTORS[backbone][1]
        state = load_state_dict(enum, "COCO detection", "or start from a file with model.weights=<path>")
        return from_torchvision(state, f"model.weights=coco ({enum})")
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"model.weights={weights!r}: no such file (or use coco | none)")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in loaded and "hyper_parameters" in loaded:  # a frcnn_lab (Lightning) checkpoint
        state = {key.removeprefix("detector."): value for key, value in loaded["state_dict"].items()
                 if key.startswith("detector.") and not key.endswith("num_batches_tracked")}
        return DetectionWeights(state, list(loaded["hyper_parameters"]["classes"]), f"model.weights={weights}")
    return from_torchvision(loaded, f"model.weights={weights}")


def trunk_shapes(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()
            if key.startswith("trunk.") and not key.endswith("num_batches_tracked")}


def layouts_of(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The backbones whose trunk has exactly these parameter names and shapes (built on the meta device)."""
    found = []
    for name in BUILDERS:
        with torch.device("meta"):
            trunk = build_backbone(BackboneConfig(name=name, weights="none", freeze_stages=0), pretrained=False).trunk
        if trunk_shapes({f"trunk.{k}": v for k, v in trunk.state_dict().items()}) == shapes:
            found.append(name)
    return found


def load_detection_weights(detector: nn.Module, weights: DetectionWeights, backbone: str, classes: list[str],
                           init_classes: str = "new") -> dict[str, str]:
    """Copy ``weights`` into ``detector`` (a ``FasterRCNN`` of backbone ``backbone`` for ``classes``): trunk, RPN
    head, box head; with ``init_classes=by_name`` also the predictor's rows of the classes named alike. Returns
    {our class: the source's class it starts from}. Raises ConfigError, in one line, for a source of another layout."""
    own = detector.state_dict()
    wanted = {key for key in own
              if not key.startswith("roi_head.predictor.") and not key.endswith("num_batches_tracked")}
    if trunk_shapes(weights.state) != trunk_shapes({key: own[key] for key in wanted}):
        theirs = " / ".join(layouts_of(trunk_shapes(weights.state))) or "an unknown"
        raise ConfigError(f"{weights.source} has the {theirs} layout; backbone={backbone} has the {backbone} layout: "
                         f"they cannot share weights (choose backbone={theirs.split(' / ')[0]})")
    for key in sorted(wanted):
        if key not in weights.state:
            raise ConfigError(f"{weights.source} lacks {key} that backbone={backbone} needs")
        if weights.state[key].shape != own[key].shape:
            raise ConfigError(f"{weights.source}: {key} is {tuple(weights.state[key].shape)} there, "
                             f"{tuple(own[key].shape)} here (rpn.anchor_sizes, rpn.aspect_ratios and "
                             "roi_head.pool_size must be the source's)")
    detector.load_state_dict({key: weights.state[key] for key in wanted}, strict=False)
    if init_classes != "by_name" or detector.roi_head is None:
        return {}
    return copy_rows_by_name(detector.roi_head.predictor, weights, classes)


def copy_rows_by_name(predictor: nn.Module, weights: DetectionWeights, classes: list[str]) -> dict[str, str]:
    """The predictor's background rows and those of each class named like a source class, from the source; the
    other classes keep their own initialisation (``roi_head.class_prior``'s bias where set)."""
    theirs = {canonical(name): label for label, name in enumerate(weights.classes, start=1)}
    pairs = {0: 0}  # background starts from the source's background
    matched = {}
    for label, name in enumerate(classes, start=1):
        if (source_label := theirs.get(canonical(name))) is not None:
            pairs[label] = source_label
            matched[name] = weights.classes[source_label - 1]
    ours_rows, their_rows = list(pairs), list(pairs.values())
    state = weights.state
    with torch.no_grad():
        predictor.cls_score.weight[ours_rows] = state["roi_head.predictor.cls_score.weight"][their_rows]
        predictor.cls_score.bias[ours_rows] = state["roi_head.predictor.cls_score.bias"][their_rows]
        size = predictor.bbox_pred.weight.shape[-1]
        box_weight = predictor.bbox_pred.weight.view(-1, 4, size)  # views: writes land in the parameters
        box_bias = predictor.bbox_pred.bias.view(-1, 4)
        box_weight[ours_rows] = state["roi_head.predictor.bbox_pred.weight"].view(-1, 4, size)[their_rows]
        box_bias[ours_rows] = state["roi_head.predictor.bbox_pred.bias"].view(-1, 4)[their_rows]
    log.info("model.init_classes=by_name: %s start from %s", list(matched) or "no class", weights.source)
    return matched


def torchvision_settings(backbone: str) -> dict[str, dict]:
    """The settings of torchvision's detector of ``backbone``'s layout (read from the model, built on the meta
    device) as this project's keys: ``rpn.*``, ``roi_head.*`` and the input size ``data.image_size`` /
    ``data.max_size`` (torchvision's min_size / max_size)."""
    with torch.device("meta"):
        model = TORCHVISION_DETECTORS[backbone][0](weights=None, weights_backbone=None)
    rpn, heads = model.rpn, model.roi_heads
    return {
        "rpn": {
            "anchor_sizes": [list(sizes) for sizes in rpn.anchor_generator.sizes],
            "aspect_ratios": list(rpn.anchor_generator.aspect_ratios[0]),
            "fg_iou": rpn.proposal_matcher.high_threshold, "bg_iou": rpn.proposal_matcher.low_threshold,
            "batch_size_per_image": rpn.fg_bg_sampler.batch_size_per_image,
            "positive_fraction": rpn.fg_bg_sampler.positive_fraction,
            "pre_nms_top_n_train": rpn._pre_nms_top_n["training"],
            "post_nms_top_n_train": rpn._post_nms_top_n["training"],
            "pre_nms_top_n_test": rpn._pre_nms_top_n["testing"],
            "post_nms_top_n_test": rpn._post_nms_top_n["testing"],
            "nms_iou": rpn.nms_thresh, "score_thresh": rpn.score_thresh,
            "num_rois": heads.fg_bg_sampler.batch_size_per_image,
        },
        "roi_head": {
            "positive_fraction": heads.fg_bg_sampler.positive_fraction, "fg_iou": heads.proposal_matcher.high_threshold,
            "bg_iou_hi": heads.proposal_matcher.low_threshold, "score_thresh": heads.score_thresh,
            "nms_iou": heads.nms_thresh, "detections_per_image": heads.detections_per_img,
        },
        "data": {"image_size": model.transform.min_size[0], "max_size": model.transform.max_size},
    }
