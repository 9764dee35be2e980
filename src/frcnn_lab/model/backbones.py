"""Backbones split the way Faster R-CNN uses them: a stride-16 trunk and a tail that is the RoI head.

Each builder takes a torchvision classification network, loads its weights, and cuts it in two:

- ``trunk``: ``(B, 3, H, W) -> (B, C, ceil(H/16), ceil(W/16))``, an ``nn.Sequential`` of stages so the
  first ``freeze_stages`` can be frozen;
- ``tail``: ``(R, C, P, P) -> (R, D)``, applied to every pooled RoI.

| name | trunk (C) | RoI size P | tail (D) |
| --- | --- | --- | --- |
| vgg16 | conv1_1 .. conv5_3 (512) | 7 | fc6, fc7 with dropout (4096) |
| resnet50 | stem .. stage 4, the "C4" layout (1024) | 14 | stage 5 + average pool (2048) |
| mobilenet_v2 | blocks 0 .. 13 (96) | 7 | blocks 14 .. 18 + average pool (1280) |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.ops import FrozenBatchNorm2d

from frcnn_lab.model.weights import load_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    trunk: nn.Sequential
    tail: nn.Module
    out_channels: int
    representation_size: int
    pool_size: int
    stride: int = 16
    # torchvision's ImageNet weights expect RGB in [0, 1] normalised with these.
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD


def build_backbone(
    name: str, weights: str = "imagenet", freeze_stages: int = 0, frozen_bn: bool = True, pretrained: bool = True,
) -> Backbone:
    """Build backbone ``name`` (vgg16 | resnet50 | mobilenet_v2).

    ``weights``: ``imagenet`` (torchvision's IMAGENET1K_V1), ``none`` (random init), or the path of a
    state dict of the torchvision classification network. ``freeze_stages``: how many leading trunk
    stages get no gradient. ``frozen_bn``: BatchNorm layers keep the pretrained statistics
    (not with ``weights=none``). ``pretrained=False`` builds the same layout without reading ``weights``.
    """
    if name not in BUILDERS:
        raise ValueError(f"backbone={name!r} is unknown; choose one of {sorted(BUILDERS)}")
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
    backbone = split(network)
    if not 0 <= freeze_stages <= len(backbone.trunk):
        raise ValueError(f"backbone.freeze_stages={freeze_stages} must be in [0, {len(backbone.trunk)}] for {name}")
    for stage in backbone.trunk[:freeze_stages]:
        stage.requires_grad_(False)
    return backbone


def split_vgg16(network: models.VGG) -> Backbone:
    f = network.features  # the last max-pool (index 30) is dropped: conv5_3 stays at stride 16
    stages = [f[0:5], f[5:10], f[10:17], f[17:24], f[24:30]]
    tail = nn.Sequential(nn.Flatten(), *network.classifier[:-1])  # fc6, relu, dropout, fc7, relu, dropout
    return Backbone(nn.Sequential(*stages), tail, out_channels=512, representation_size=4096, pool_size=7)


def split_resnet50(network: models.ResNet) -> Backbone:
    n = network
    stages = [nn.Sequential(n.conv1, n.bn1, n.relu, n.maxpool), n.layer1, n.layer2, n.layer3]
    tail = nn.Sequential(n.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Backbone(nn.Sequential(*stages), tail, out_channels=1024, representation_size=2048, pool_size=14)


def split_mobilenet_v2(network: models.MobileNetV2) -> Backbone:
    f = network.features
    stages = [f[0:2], f[2:4], f[4:7], f[7:11], f[11:14]]
    tail = nn.Sequential(f[14:], nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Backbone(nn.Sequential(*stages), tail, out_channels=96, representation_size=1280, pool_size=7)


BUILDERS = {
    "vgg16": (models.vgg16, models.VGG16_Weights, split_vgg16),
    "resnet50": (models.resnet50, models.ResNet50_Weights, split_resnet50),
    "mobilenet_v2": (models.mobilenet_v2, models.MobileNet_V2_Weights, split_mobilenet_v2),
}
