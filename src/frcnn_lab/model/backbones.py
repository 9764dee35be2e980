"""Backbones: a trunk that returns named feature levels with their strides, and a box head for pooled RoIs.

Each builder takes a torchvision classification network, loads its weights, and returns a ``Backbone``:

- ``trunk``: ``(B, 3, H, W) -> OrderedDict{level: (B, C, ceil(H/s), ceil(W/s))}``, finest level first,
  with an ``out_channels`` attribute (C, the same at every level), as torchvision's detectors take it;
- ``tail``: the box head, ``(R, C, P, P) -> (R, D)``, applied to every pooled RoI.

C4 layouts have one level at stride 16. Their box head (``box_head``) is either ``classifier``, the rest of
the classification network (the paper's layout, pretrained), or ``mlp``, torchvision's ``TwoMLPHead`` (two
fully connected layers of 1024, newly initialised) on the flattened ``(C, P, P)`` RoI. FPN layouts add
torchvision's ``FeaturePyramidNetwork`` (256 channels, top-down and lateral connections, ``LastLevelMaxPool``
for the extra "pool" level at twice the last stride) and a two-layer MLP box head (torchvision's
``TwoMLPHead``, 1024). RoIs are pooled from every level but "pool".

| name | levels (stride) | C | RoI size P | ``classifier`` box head (D) |
| --- | --- | --- | --- | --- |
| vgg16 | c4 (16): conv1_1 .. conv5_3 | 512 | 7 | fc6, fc7 with dropout (4096) |
| resnet50 | c4 (16): stem .. stage 4 | 1024 | 14 | stage 5 + average pool (2048) |
| mobilenet_v2 | c4 (16): blocks 0 .. 13 | 96 | 7 | blocks 14 .. 18 + average pool (1280) |
| resnet50_fpn | 0-3 (4, 8, 16, 32) from stages 2-5, pool (64) | 256 | 7 | TwoMLPHead (1024) |
| mobilenet_v2_fpn | 0-2 (8, 16, 32) from blocks 6, 13, 17, pool (64) | 256 | 7 | TwoMLPHead (1024) |
| mobilenet_v3_large_fpn | 0-1 (32, 32) from blocks 13, 16, pool (64) | 256 | 7 | TwoMLPHead (1024) |
| mobilenet_v3_large_320_fpn | as mobilenet_v3_large_fpn | 256 | 7 | TwoMLPHead (1024) |

``resnet50_fpn``, ``mobilenet_v3_large_fpn`` and ``mobilenet_v3_large_320_fpn`` are the layouts of torchvision's
``fasterrcnn_resnet50_fpn``, ``fasterrcnn_mobilenet_v3_large_fpn`` and ``fasterrcnn_mobilenet_v3_large_320_fpn``
(same modules, same names), so their COCO weights load (``frcnn_lab.model.detection_weights``). The two MobileNetV3
layouts differ only in their settings (input size, proposals), which their config options set. Both of their levels
are at stride 32, as in torchvision, whose RoI Align then reads level 0 only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from frcnn_lab.checks import Checks
from frcnn_lab.errors import MissingInputError
from frcnn_lab.model.folding import fold_frozen_batchnorm
from frcnn_lab.model.weights import load_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FPN_CHANNELS = 256
MLP_HEAD_SIZE = 1024
BOX_HEADS = ("classifier", "mlp")


@dataclass
class BackboneConfig:
    """``backbone.*``: which trunk and box head, and how it starts. The defaults are the CLI's ``backbone``."""

    name: str = "mobilenet_v2"  # one of BUILDERS
    weights: str = "imagenet"  # imagenet (torchvision's IMAGENET1K_V1) | none | <path to a state dict of the network>
    freeze_stages: int = 2  # leading trunk stages without gradient (0 = train all)
    frozen_bn: bool = True  # BatchNorm keeps the pretrained statistics (ignored with weights=none and for vgg16)
    box_head: str = "mlp"  # mlp: TwoMLPHead (1024), new | classifier: the network's own tail, pretrained (C4 only)

    def __post_init__(self) -> None:
        check = Checks("backbone")
        known = check.choice("name", self.name, sorted(BUILDERS))
        check.choice("box_head", self.box_head, BOX_HEADS)
        check.require("weights", self.weights, isinstance(self.weights, str) and bool(self.weights),
                      "imagenet, none or the path of a state dict")
        check.integer("freeze_stages", self.freeze_stages, 0)
        if known and self.name.endswith("_fpn") and self.box_head != "mlp":
            check.fail(f"backbone.box_head={self.box_head!r}: an FPN backbone's box head is mlp")
        check.done()


@dataclass
class Backbone:
    """The parts a backbone gives the detector (see the module docstring for the shapes)."""

    trunk: nn.Module
    tail: nn.Module  # the box head
    representation_size: int
    pool_size: int
    strides: dict[str, int]  # every level of the trunk's output, in order -> its stride in input pixels
    pooled_levels: tuple[str, ...]  # the levels RoIs are pooled from
    stages: list[nn.Module]  # the trunk's stages from the input on: ``freeze_stages`` counts these
    box_head: str  # which of BOX_HEADS ``tail`` is
    # torchvision's ImageNet weights expect RGB in [0, 1] normalised with these.
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    @property
    def out_channels(self) -> int:
        return self.trunk.out_channels


class SingleLevel(nn.Sequential):
    """A stride-16 trunk of stages: ``(B, 3, H, W) -> {"c4": (B, C, ceil(H/16), ceil(W/16))}``."""

    def __init__(self, stages: list[nn.Module], out_channels: int) -> None:
        super().__init__(*stages)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return OrderedDict(c4=super().forward(x))


def build_backbone(config: BackboneConfig | None = None, pool_size: int | None = None,
                   pretrained: bool = True, detection_weights: bool = False) -> Backbone:
    """The backbone ``config`` describes (default: ``BackboneConfig()``).

    ``weights``: ``imagenet`` (torchvision's IMAGENET1K_V1), ``none`` (random init), or the path of a
    state dict of the torchvision classification network. ``freeze_stages``: how many leading trunk
    stages get no gradient. ``frozen_bn``: BatchNorm layers keep the pretrained statistics (not with
    ``weights=none``), computed inside the convolutions before them (``frcnn_lab.model.folding``).
    ``pool_size``: the RoI size P the box head takes (None: the backbone's).
    ``pretrained=False`` builds the same layout without reading ``weights`` (a checkpoint fills them in).
    ``detection_weights``: a detector's weights (``model.weights``) will fill the trunk in, statistics included, so
    ``weights`` is not read and BatchNorm is frozen as with pretrained weights.
    """
    config = config or BackboneConfig()
    constructor, enum, split = BUILDERS[config.name]
    weights = config.weights
    # Random statistics are not worth freezing: without pretrained weights BatchNorm trains.
    frozen = config.frozen_bn and (weights != "none" or detection_weights) and config.name != "vgg16"
    kwargs = {"norm_layer": FrozenBatchNorm2d} if frozen else {}
    network = constructor(weights=None, **kwargs)
    pretrained = pretrained and not detection_weights
    if pretrained and weights == "imagenet":
        network.load_state_dict(load_state_dict(enum.IMAGENET1K_V1))
    elif pretrained and weights != "none":
        path = Path(weights)
        if not path.is_file():
            raise MissingInputError(f"backbone.weights={weights!r}: no such file (or use imagenet | none)")
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if kwargs:
        fold_frozen_batchnorm(network)  # the same arithmetic in fewer passes over the activations
    backbone = split(network, pool_size, config.box_head)
    if config.freeze_stages > len(backbone.stages):
        raise ValueError(f"backbone.freeze_stages={config.freeze_stages} must be in [0, {len(backbone.stages)}] "
                         f"for {config.name}")
    for stage in backbone.stages[: config.freeze_stages]:
        stage.requires_grad_(False)
    return backbone


def feature_levels(name: str) -> dict[str, int]:
    """Backbone ``name``'s feature levels -> strides, finest first; built on the meta device (no memory, no
    weights), so it is cheap to ask before the model is built."""
    with torch.device("meta"):
        return build_backbone(BackboneConfig(name=name, weights="none", freeze_stages=0), pretrained=False).strides


def pool_size_problem(name: str, box_head: str, pool_size: int | None) -> str | None:
    """Why ``roi_head.pool_size`` cannot feed this backbone's box head, or None."""
    if name == "vgg16" and box_head == "classifier" and pool_size not in (None, 7):
        return f"roi_head.pool_size={pool_size} must be 7 (or null) for vgg16's classifier: fc6 expects 7x7"
    return None


def single_level(
    trunk: SingleLevel, classifier: nn.Module, classifier_size: int, pool_size: int, box_head: str
) -> Backbone:
    """A C4 backbone with the ``classifier`` tail (of output size ``classifier_size``) or an MLP box head."""
    if box_head == "mlp":
        tail, size = TwoMLPHead(trunk.out_channels * pool_size**2, MLP_HEAD_SIZE), MLP_HEAD_SIZE
    else:
        tail, size = classifier, classifier_size
    return Backbone(trunk, tail, size, pool_size, {"c4": 16}, ("c4",), list(trunk), box_head)


def split_vgg16(network: models.VGG, pool_size: int | None, box_head: str) -> Backbone:
    if problem := pool_size_problem("vgg16", box_head, pool_size):
        raise ValueError(problem)
    f = network.features  # the last max-pool (index 30) is dropped: conv5_3 stays at stride 16
    trunk = SingleLevel([f[0:5], f[5:10], f[10:17], f[17:24], f[24:30]], out_channels=512)
    tail = nn.Sequential(nn.Flatten(), *network.classifier[:-1])  # fc6, relu, dropout, fc7, relu, dropout
    return single_level(trunk, tail, 4096, pool_size or 7, box_head)


def split_resnet50(network: models.ResNet, pool_size: int | None, box_head: str) -> Backbone:
    n = network
    trunk = SingleLevel([nn.Sequential(n.conv1, n.bn1, n.relu, n.maxpool), n.layer1, n.layer2, n.layer3], 1024)
    tail = nn.Sequential(n.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return single_level(trunk, tail, 2048, pool_size or 14, box_head)


def split_mobilenet_v2(network: models.MobileNetV2, pool_size: int | None, box_head: str) -> Backbone:
    f = network.features
    trunk = SingleLevel([f[0:2], f[2:4], f[4:7], f[7:11], f[11:14]], out_channels=96)
    tail = nn.Sequential(f[14:], nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return single_level(trunk, tail, 1280, pool_size or 7, box_head)


def with_fpn(
    network: nn.Module, return_layers: dict[str, str], in_channels: list[int], strides: list[int],
    stages: list[nn.Module], pool_size: int | None, box_head: str, pooled: int | None = None,
) -> Backbone:
    """torchvision's FPN on the ``return_layers`` of ``network`` (levels "0", "1", ... and "pool"), with a
    two-layer MLP box head. RoIs are pooled from the first ``pooled`` levels (None: all but "pool")."""
    trunk = BackboneWithFPN(network, return_layers, in_channels, FPN_CHANNELS, extra_blocks=LastLevelMaxPool())
    pool_size = pool_size or 7
    levels = {str(i): stride for i, stride in enumerate(strides)}
    return Backbone(
        trunk, TwoMLPHead(FPN_CHANNELS * pool_size**2, MLP_HEAD_SIZE), MLP_HEAD_SIZE, pool_size,
        {**levels, "pool": 2 * strides[-1]}, tuple(levels)[:pooled], stages, "mlp",
    )


def split_resnet50_fpn(network: models.ResNet, pool_size: int | None, box_head: str) -> Backbone:
    n = network
    return with_fpn(
        n, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}, [256, 512, 1024, 2048], [4, 8, 16, 32],
        [nn.ModuleList([n.conv1, n.bn1]), n.layer1, n.layer2, n.layer3, n.layer4], pool_size, box_head,
    )


def split_mobilenet_v2_fpn(network: models.MobileNetV2, pool_size: int | None, box_head: str) -> Backbone:
    f = network.features  # block 18 (the 1x1 conv to 1280 channels) is left out
    return with_fpn(
        f, {"6": "0", "13": "1", "17": "2"}, [32, 96, 320], [8, 16, 32],
        [f[0:2], f[2:4], f[4:7], f[7:11], f[11:14], f[14:18]], pool_size, box_head,
    )


def split_mobilenet_v3_large_fpn(network: models.MobileNetV3, pool_size: int | None, box_head: str) -> Backbone:
    """torchvision's ``_mobilenet_extractor(fpn=True)``: the last two stages (blocks 13 and 16, both at stride 32)."""
    f = network.features  # stages start at the strided blocks 2, 4, 7, 13, as torchvision counts them
    # Two levels of one stride: torchvision's MultiScaleRoIAlign maps every box to the first.
    return with_fpn(
        f, {"13": "0", "16": "1"}, [160, 960], [32, 32],
        [f[0:2], f[2:4], f[4:7], f[7:13], f[13:16], f[16:]], pool_size, box_head, pooled=1,
    )


BUILDERS = {
    "vgg16": (models.vgg16, models.VGG16_Weights, split_vgg16),
    "resnet50": (models.resnet50, models.ResNet50_Weights, split_resnet50),
    "mobilenet_v2": (models.mobilenet_v2, models.MobileNet_V2_Weights, split_mobilenet_v2),
    "resnet50_fpn": (models.resnet50, models.ResNet50_Weights, split_resnet50_fpn),
    "mobilenet_v2_fpn": (models.mobilenet_v2, models.MobileNet_V2_Weights, split_mobilenet_v2_fpn),
    "mobilenet_v3_large_fpn": (models.mobilenet_v3_large, models.MobileNet_V3_Large_Weights,
                               split_mobilenet_v3_large_fpn),
    "mobilenet_v3_large_320_fpn": (models.mobilenet_v3_large, models.MobileNet_V3_Large_Weights,
                                   split_mobilenet_v3_large_fpn),
}
"""name -> (torchvision constructor, its weights enum, the function that cuts it into a Backbone)."""
