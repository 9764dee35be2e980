"""Every default is written once: each part built in Python without arguments is the part the CLI builds by
default (the config tree's default options are the parts' own dataclasses, and nothing may override them)."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from frcnn_lab.checks import typed
from frcnn_lab.config import PARTS
from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.inference.slicing import Slicing
from frcnn_lab.model.backbones import BackboneConfig, build_backbone
from frcnn_lab.model.detector import build_detector
from frcnn_lab.model.losses import LossConfig
from frcnn_lab.model.preprocess import PreprocessConfig
from frcnn_lab.model.roi_head import RoIHead, RoIHeadConfig
from frcnn_lab.model.roi_pooling import RoIPooler
from frcnn_lab.model.rpn import RegionProposalNetwork, RPNConfig

SETTINGS = (bool, int, float, str, type(None))


def settings(value: Any) -> Any:
    """The plain settings a value holds (numbers, strings, and containers and dataclasses of them)."""
    if is_dataclass(value):
        return settings(asdict(value))
    if isinstance(value, dict):
        return {k: settings(v) for k, v in value.items() if settings(v) is not None or v is None}
    if isinstance(value, (list, tuple)):
        return [settings(v) for v in value]
    if isinstance(value, SETTINGS):
        return value
    if hasattr(value, "__dict__") and not isinstance(value, (nn.Module, torch.Tensor)):  # a sampler, a box coder
        return {type(value).__name__: settings(vars(value))}
    return None


def describe(module: nn.Module) -> dict[str, Any]:
    """Each submodule's class, its plain attributes, and each parameter's shape and whether it trains."""
    layout = {name or ".": (type(sub).__name__, settings({k: v for k, v in vars(sub).items() if not k.startswith("_")}))
              for name, sub in module.named_modules()}
    parameters = {name: (tuple(p.shape), p.requires_grad) for name, p in module.named_parameters()}
    return {"layout": layout, "parameters": parameters}


def test_each_part_built_bare_is_the_default_configs_part(make_config):
    cfg = make_config([])
    part = {key: typed(cls, OmegaConf.select(cfg, key)) for key, cls in PARTS.items()}
    for key, cls in PARTS.items():  # the config the CLI composes by default is each dataclass's defaults
        assert part[key] == cls(), key

    torch.manual_seed(0)
    assert describe(build_backbone(pretrained=False).trunk) == describe(
        build_backbone(part["backbone"], pretrained=False).trunk)
    assert describe(RegionProposalNetwork(96)) == describe(RegionProposalNetwork(96, part["rpn"], loss=part["loss"]))
    pooler = RoIPooler("roi_align", 7, {"c4": 16})
    assert describe(RoIHead(pooler, nn.Flatten(), 8, 3)) == describe(
        RoIHead(pooler, nn.Flatten(), 8, 3, part["roi_head"], part["rpn"].num_rois, part["loss"]))
    assert part["data"].preprocess() == PreprocessConfig()
    assert describe(build_detector(pretrained=False)) == describe(build_detector(
        part["backbone"], part["rpn"], part["roi_head"], part["loss"], len(part["data"].classes), pretrained=False,
        preprocess=part["data"].preprocess()))

    bare, configured = DetectionModule(pretrained_backbone=False), DetectionModule(
        **{k: OmegaConf.to_container(cfg[k]) for k in ("backbone", "rpn", "roi_head", "loss", "optim")},
        classes=list(cfg.data.classes), mode=cfg.model.mode, channels_last=cfg.model.channels_last,
        score_threshold=cfg.eval.score_threshold, preprocess=part["data"].preprocess(), pretrained_backbone=False)
    assert dict(bare.hparams) == dict(configured.hparams)
    assert DetectionDataModule().config == DetectionDataModule(cfg.data).config
    assert Slicing.from_config(None) is Slicing.from_config(cfg.inference.slicing) is None
    bare_trainer = instantiate(OmegaConf.structured(PARTS["trainer"]()), logger=False, enable_checkpointing=False)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert (bare_trainer.max_epochs, bare_trainer.gradient_clip_val, bare_trainer.precision) == (
        trainer.max_epochs, trainer.gradient_clip_val, trainer.precision)


def test_a_constructor_keeps_no_default_of_its_own():
    """The parts' settings come from their configs: a part built with a config that differs in one key differs
    in exactly that setting."""
    changed = RegionProposalNetwork(96, RPNConfig(pre_nms_top_n_train=2000))
    assert changed.pre_nms_top_n["train"] == 2000 and RegionProposalNetwork(96).pre_nms_top_n["train"] == 1000
    pooler = RoIPooler("roi_align", 7, {"c4": 16})
    assert RoIHead(pooler, nn.Flatten(), 8, 3).sampler.batch_size_per_image == RPNConfig().num_rois
    assert RoIHead(pooler, nn.Flatten(), 8, 3, RoIHeadConfig(nms_iou=0.3)).nms_iou == 0.3
    assert RegionProposalNetwork(96, loss=LossConfig(rpn_smooth_l1_beta=1.0)).smooth_l1_beta == 1.0
    assert BackboneConfig().name == "mobilenet_v2"
