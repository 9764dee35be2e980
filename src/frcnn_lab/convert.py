"""Turn a torchvision COCO Faster R-CNN into a self-contained frcnn_lab checkpoint:
``python -m frcnn_lab.convert SOURCE OUTPUT --backbone resnet50_fpn [key=value ...]``.

``SOURCE`` is ``coco`` (torchvision's COCO_V1 weights of the layout, from torchvision's cache or downloaded) or the
path of a torchvision detection state dict (``torch.save(model.state_dict(), path)`` of ``fasterrcnn_resnet50_fpn``,
``fasterrcnn_mobilenet_v3_large_fpn`` or ``fasterrcnn_mobilenet_v3_large_320_fpn``). The checkpoint has COCO's 90
labels (classes named as COCO, ``category_ids`` COCO's; the ids COCO does not use are named ``unused_<id>``), the
layout's torchvision settings (input size from min_size / max_size, proposals, score thresholds:
``frcnn_lab.model.detection_weights.torchvision_settings``) and every weight, so ``evaluate``, ``predict``,
``export`` and ``serve`` run it as it is, and ``train model.weights=OUTPUT`` fine-tunes from it. ``key=value``
overrides any key of the config tree after torchvision's settings (e.g. ``rpn.post_nms_top_n_test=300``).
An existing OUTPUT is never replaced.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from frcnn_lab.checks import typed
from frcnn_lab.config import CONFIG_DIR, validate
from frcnn_lab.data.config import DataConfig
from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.errors import USER_ERROR_EXIT_CODE, UserError
from frcnn_lab.model.detection_weights import TORCHVISION_DETECTORS, coco_classes, torchvision_settings

MODEL_GROUPS = ["backbone", "rpn", "roi_head", "loss", "optim", "data", "model"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m frcnn_lab.convert",
        description="Turn a torchvision COCO Faster R-CNN (state dict, or coco for torchvision's COCO_V1 weights) "
                    "into a self-contained frcnn_lab checkpoint with COCO's classes and torchvision's settings.",
    )
    parser.add_argument("source", help="coco | path of a torchvision detection state dict")
    parser.add_argument("output", type=Path, help="the checkpoint to write (.ckpt); never replaced")
    parser.add_argument("--backbone", required=True, choices=list(TORCHVISION_DETECTORS),
                        help="the layout of the source: fasterrcnn_<backbone> in torchvision")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config tree, after torchvision's "
                                                     "settings (e.g. rpn.post_nms_top_n_test=300)")
    return parser.parse_intermixed_args(argv)  # overrides may follow --backbone


def converted_config(backbone: str, overrides: list[str]) -> DictConfig:
    """The config tree of ``backbone`` with torchvision's settings of its layout, then ``overrides``; validated."""
    settings = [f"{group}.{key}={json.dumps(value)}" for group, values in torchvision_settings(backbone).items()
                for key, value in values.items()]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", [f"backbone={backbone}", *settings, *overrides])
    GlobalHydra.instance().clear()
    validate(OmegaConf.masked_copy(cfg, MODEL_GROUPS))  # the run's groups (logger, paths) need a Hydra run
    return cfg


def convert(source: str, output: Path, backbone: str, overrides: list[str] = ()) -> DetectionModule:
    """Write the checkpoint of ``source`` (coco | a torchvision state dict of ``backbone``'s layout) to ``output``."""
    if output.exists():
        raise FileExistsError(f"{output} exists: choose another output (a checkpoint is never replaced)")
    cfg = converted_config(backbone, list(overrides))
    classes, category_ids = coco_classes()
    groups = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in MODEL_GROUPS[:5]}
    module = DetectionModule(
        **groups, classes=classes, category_ids=category_ids, channels_last=cfg.model.channels_last,
        preprocess=typed(DataConfig, cfg.data, "data").preprocess(), weights=source, init_classes="by_name",
    )
    if len(module.init_classes_from) != len(classes):  # every COCO label keeps its own rows
        missing = sorted(set(classes) - set(module.init_classes_from))
        raise ValueError(f"{source}: no rows for the COCO classes {missing}")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__}, partial)
    partial.replace(output)  # atomic: a reader never sees half a checkpoint
    return module


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        module = convert(args.source, args.output, args.backbone, args.overrides)
    except (UserError, FileExistsError, ValueError) as error:  # what the user can fix: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    print(f"{args.output}: {args.backbone}, {len(module.classes)} COCO classes, input {module.preprocess.image_size} / "
          f"{module.preprocess.max_size} px")


if __name__ == "__main__":
    main()
