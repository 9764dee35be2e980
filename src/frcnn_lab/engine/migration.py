"""Checkpoints of every earlier layout, upgraded to what today's ``DetectionModule`` takes: the one place that knows
the older layouts.

A checkpoint's ``hyper_parameters`` hold the module's arguments. Older layouts lack some of them:

- no ``backbone.box_head``: C4 backbones had their classifier tail, FPN ones the MLP head;
- ``image_size``, ``max_size``, ``resize``, ``scale`` and ``normalization`` as separate arguments: today's
  ``preprocess`` group (the detector's input, ``frcnn_lab.model.preprocess``);
- no ``image_size`` / ``max_size``: the sizes come from the training run's ``.hydra/config.yaml`` when the checkpoint
  is inside its run folder, else they stay unknown (inference then asks for them);
- no ``resize`` / ``scale``: every model resized the shortest side; no ``slicing``: whole images;
- no ``category_ids``, ``normalization``, ``channels_last``: 1..K, the backbone's mean / std, NHWC weights (the same
  figures either way);
- no ``weights`` / ``init_classes`` (``model.weights``): none / new, the model started from its backbone's weights;
- ``on_nonfinite`` / ``val_images`` among the module's arguments: training settings, not the model's; left out.

Config groups missing a key take today's default for it (every such key was added with the value older code used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from frcnn_lab.runs.folders import run_data_config

RETIRED_ARGUMENTS = ("on_nonfinite", "val_images")


def read_hparams(ckpt_path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``hyper_parameters``, read without loading its tensors into memory."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    return dict(checkpoint.get("hyper_parameters", {}))


def upgrade_hparams(hparams: dict[str, Any], ckpt_path: str | Path) -> dict[str, Any]:
    """``hparams`` of a checkpoint of any layout -> the arguments of today's ``DetectionModule``."""
    upgraded = {key: value for key, value in hparams.items() if key not in RETIRED_ARGUMENTS}
    backbone = dict(upgraded["backbone"])
    if backbone.get("box_head") is None:
        backbone["box_head"] = "mlp" if backbone["name"].endswith("_fpn") else "classifier"
    upgraded["backbone"] = backbone
    if "preprocess" not in upgraded:
        upgraded["preprocess"] = flat_input_settings(upgraded, ckpt_path)
    for key in ("slicing", "category_ids"):
        upgraded.setdefault(key, None)
    upgraded.setdefault("channels_last", True)
    return upgraded


def flat_input_settings(hparams: dict[str, Any], ckpt_path: str | Path) -> dict[str, Any]:
    """The ``preprocess`` group of a layout that kept its input settings as separate arguments (removed from
    ``hparams``): ``image_size``, ``max_size``, ``resize``, ``scale`` and ``normalization``."""
    image_size, max_size = hparams.pop("image_size", None), hparams.pop("max_size", None)
    if image_size is None:
        data = run_data_config(ckpt_path)
        image_size, max_size = (int(data["image_size"]), int(data["max_size"])) if data else (None, None)
    normalization = hparams.pop("normalization", None) or {}
    return {"resize": hparams.pop("resize", "shortest_side"), "image_size": image_size, "max_size": max_size,
            "scale": hparams.pop("scale", 1.0), "image_mean": normalization.get("mean"),
            "image_std": normalization.get("std")}
