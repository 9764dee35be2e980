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

``resnet50_fpn`` is the layout of torchvision's ``fasterrcnn_resnet50_fpn`` (same modules, same names).
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

from frcnn_lab.model.folding import fold_frozen_batchnorm
from frcnn_lab.model.weights import load_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FPN_CHANNELS = 256
MLP_HEAD_SIZE = 1024
BOX_HEADS = ("classifier", "mlp")


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


def build_backbone(
    name: str, weights: str = "imagenet", freeze_stages: int = 0, frozen_bn: bool = True,
    pool_size: int | None = None, pretrained: bool = True, box_head: str | None = None,
) -> Backbone:
    """Build backbone ``name`` (one of ``BUILDERS``).

    ``weights``: ``imagenet`` (torchvision's IMAGENET1K_V1), ``none`` (random init), or the path of a
    state dict of the torchvision classification network. ``freeze_stages``: how many leading trunk
    stages get no gradient. ``frozen_bn``: BatchNorm layers keep the pretrained statistics (not with
    ``weights=none``), computed inside the convolutions before them (``frcnn_lab.model.folding``).
    ``pool_size``: the RoI size P the box head takes (None: the backbone's).
    ``pretrained=False`` builds the same layout without reading ``weights``. ``box_head``: one of
    ``BOX_HEADS`` (FPN layouts: ``mlp`` only); None: ``classifier`` for C4, ``mlp`` for FPN, the heads of
    checkpoints written before the choice existed.
    """
    if name not in BUILDERS:
        raise ValueError(f"backbone={name!r} is unknown; choose one of {sorted(BUILDERS)}")
    if box_head not in (None, *BOX_HEADS):
        raise ValueError(f"backbone.box_head={box_head!r} is unknown; choose one of {list(BOX_HEADS)}")
    constructor, enum, split = BUILDERS[name]
    # Random statistics are not worth freezing: without pretrained weights BatchNorm trains.
    kwargs = {"norm_layer": FrozenBatchNorm2d} if frozen_bn and weights != "none" and name != "vgg16" else {}
    network = constructor(weights=None, **kwargs)
    if pretrained and weights == "imagenet":
        network.load_state_dict(load_state_dict(enum.IMAGENET1K_V1))
    elif pretrained and weights != "none":
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone.weights={weights!r}: no such file (or use imagenet | none)")
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if kwargs:
        fold_frozen_batchnorm(network)  # the same arithmetic in fewer passes over the activations
    backbone = split(network, pool_size, box_head)
    if not 0 <= freeze_stages <= len(backbone.stages):
        raise ValueError(f"backbone.freeze_stages={freeze_stages} must be in [0, {len(backbone.stages)}] for {name}")
    for stage in backbone.stages[:freeze_stages]:
        stage.requires_grad_(False)
    return backbone


def feature_levels(name: str) -> dict[str, int]:
    """Backbone ``name``'s feature levels -> strides, finest first; built on the meta device (no memory, no
    weights), so it is cheap to ask before the model is built."""
    with torch.device("meta"):
        return build_backbone(name, "none", pretrained=False).strides


def single_level(
    trunk: SingleLevel, classifier: nn.Module, classifier_size: int, pool_size: int, box_head: str | None
) -> Backbone:
    """A C4 backbone with the ``classifier`` tail (of output size ``classifier_size``) or an MLP box head."""
    if box_head == "mlp":
        tail, size = TwoMLPHead(trunk.out_channels * pool_size**2, MLP_HEAD_SIZE), MLP_HEAD_SIZE
    else:
        tail, size = classifier, classifier_size
    return Backbone(trunk, tail, size, pool_size, {"c4": 16}, ("c4",), list(trunk), box_head or "classifier")


def split_vgg16(network: models.VGG, pool_size: int | None, box_head: str | None) -> Backbone:
    if box_head != "mlp" and pool_size not in (None, 7):
        raise ValueError(f"roi_head.pool_size={pool_size} must be 7 (or null) for vgg16's classifier: fc6 expects 7x7")
    f = network.features  # the last max-pool (index 30) is dropped: conv5_3 stays at stride 16
    trunk = SingleLevel([f[0:5], f[5:10], f[10:17], f[17:24], f[24:30]], out_channels=512)
    tail = nn.Sequential(nn.Flatten(), *network.classifier[:-1])  # fc6, relu, dropout, fc7, relu, dropout
    return single_level(trunk, tail, 4096, pool_size or 7, box_head)


def split_resnet50(network: models.ResNet, pool_size: int | None, box_head: str | None) -> Backbone:
    n = network
    trunk = SingleLevel([nn.Sequential(n.conv1, n.bn1, n.relu, n.maxpool), n.layer1, n.layer2, n.layer3], 1024)
    tail = nn.Sequential(n.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return single_level(trunk, tail, 2048, pool_size or 14, box_head)


def split_mobilenet_v2(network: models.MobileNetV2, pool_size: int | None, box_head: str | None) -> Backbone:
    f = network.features
    trunk = SingleLevel([f[0:2], f[2:4], f[4:7], f[7:11], f[11:14]], out_channels=96)
    tail = nn.Sequential(f[14:], nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return single_level(trunk, tail, 1280, pool_size or 7, box_head)


def with_fpn(
    network: nn.Module, return_layers: dict[str, str], in_channels: list[int], strides: list[int],
    stages: list[nn.Module], pool_size: int | None, box_head: str | None,
) -> Backbone:
    """torchvision's FPN on the ``return_layers`` of ``network`` (levels "0", "1", ... and "pool"), with a
    two-layer MLP box head."""
    if box_head not in (None, "mlp"):
        raise ValueError(f"backbone.box_head={box_head!r}: an FPN backbone's box head is mlp (no classifier tail)")
    trunk = BackboneWithFPN(network, return_layers, in_channels, FPN_CHANNELS, extra_blocks=LastLevelMaxPool())
    pool_size = pool_size or 7
    levels = {str(i): stride for i, stride in enumerate(strides)}
    return Backbone(
        trunk, TwoMLPHead(FPN_CHANNELS * pool_size**2, MLP_HEAD_SIZE), MLP_HEAD_SIZE, pool_size,
        {**levels, "pool": 2 * strides[-1]}, tuple(levels), stages, "mlp",
    )


def split_resnet50_fpn(network: models.ResNet, pool_size: int | None, box_head: str | None) -> Backbone:
    n = network
    return with_fpn(
        n, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}, [256, 512, 1024, 2048], [4, 8, 16, 32],
        [nn.ModuleList([n.conv1, n.bn1]), n.layer1, n.layer2, n.layer3, n.layer4], pool_size, box_head,
    )


def split_mobilenet_v2_fpn(network: models.MobileNetV2, pool_size: int | None, box_head: str | None) -> Backbone:
    f = network.features  # block 18 (the 1x1 conv to 1280 channels) is left out
    return with_fpn(
        f, {"6": "0", "13": "1", "17": "2"}, [32, 96, 320], [8, 16, 32],
        [f[0:2], f[2:4], f[4:7], f[7:11], f[11:14], f[14:18]], pool_size, box_head,
    )


BUILDERS = {
    "vgg16": (models.vgg16, models.VGG16_Weights, split_vgg16),
    "resnet50": (models.resnet50, models.ResNet50_Weights, split_resnet50),
    "mobilenet_v2": (models.mobilenet_v2, models.MobileNet_V2_Weights, split_mobilenet_v2),
    "resnet50_fpn": (models.resnet50, models.ResNet50_Weights, split_resnet50_fpn),
    "mobilenet_v2_fpn": (models.mobilenet_v2, models.MobileNet_V2_Weights, split_mobilenet_v2_fpn),
}
"""name -> (torchvision constructor, its weights enum, the function that cuts it into a Backbone)."""
