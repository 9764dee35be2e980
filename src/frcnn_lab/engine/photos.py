"""Detection on photos, for ``predict`` and ``serve``: one loader for a trained detector (a ``.ckpt`` or an
exported ``.onnx``) with its input size, and the training resize around it, boxes back in the photo's pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from frcnn_lab.data.transforms import apply_transforms, build_transforms
from frcnn_lab.engine.checkpoints import input_sizes, load_module, requested_input_size, resolve_device
from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.errors import ConfigError
from frcnn_lab.inference.onnx_detector import OnnxDetector
from frcnn_lab.inference.slicing import Slicing, detect_images


def trained_resize(model: DetectionModule | OnnxDetector) -> dict[str, Any]:
    """The resize policy the model was trained with: ``{"resize": ..., "scale": ...}`` (``data.resize`` /
    ``data.scale``)."""
    source = model.hparams if isinstance(model, DetectionModule) else vars(model)
    return {"resize": source["resize"], "scale": source["scale"]}


class PhotoDetector:
    """uint8 (H, W, 3) RGB photo -> {"boxes" (D, 4) xyxy in the photo's pixels, "scores" (D,), "labels" (D,)}.

    ``classes`` (label i is ``classes[i - 1]``), their dataset ``category_ids`` and the resize
    (``image_size``, ``max_size``) are the model's. With ``slicing`` the resized photo is detected tile by tile
    (``inference.slicing``).
    """

    def __init__(self, model: DetectionModule | OnnxDetector, image_size: int, max_size: int,
                 slicing: Slicing | None = None) -> None:
        self.model, self.classes, self.category_ids = model, list(model.classes), list(model.category_ids)
        self.image_size, self.max_size, self.slicing = image_size, max_size, slicing
        self.transforms = build_transforms(image_size, max_size, train=False, **trained_resize(model))
        self.device = next(model.parameters()).device if isinstance(model, DetectionModule) else torch.device("cpu")

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> dict[str, Tensor]:
        sample = {"image": pixels, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                  "image_id": "photo"}
        tensor, _ = apply_transforms(self.transforms, sample)
        budget = self.model.proposals_per_image if isinstance(self.model, DetectionModule) else None
        (detection,) = detect_images(self.model, [tensor.to(self.device)], self.slicing,
                                     original_sizes=[pixels.shape[:2]], budget=budget)
        return {k: v.cpu() for k, v in detection.items()}


def load_photo_detector(ckpt_path: str | Path | None = None, model: str | Path | None = None,
                        image_size: int | None = None, max_size: int | None = None,
                        device: str = "auto", slicing: Slicing | None = None) -> PhotoDetector:
    """The detector named by exactly one of ``ckpt_path`` (a checkpoint, on ``device``: auto | cpu | cuda[:N])
    and ``model`` (an exported ``.onnx``, run by onnxruntime on the CPU), fed at ``image_size`` / ``max_size``,
    else at the size it was trained at (``checkpoints.requested_input_size``), whole or by ``slicing``."""
    if model is not None and ckpt_path is not None:
        raise ConfigError(f"ckpt_path={ckpt_path} and model={model}: name one of them")
    if model is not None:
        exported = OnnxDetector(model)
        trained = exported.image_size, exported.max_size
        return PhotoDetector(exported, *requested_input_size(trained, image_size, max_size), slicing)
    if ckpt_path is None:
        raise ConfigError("name the detector: ckpt_path=<file>.ckpt or model=<file>.onnx")
    module = load_module(ckpt_path, resolve_device(device))
    return PhotoDetector(module, *input_sizes(module, image_size, max_size), slicing)


def configured_photo_detector(cfg: DictConfig) -> PhotoDetector:
    """``load_photo_detector`` with the inference keys of ``predict`` / ``serve``: ``ckpt_path`` or ``model``,
    ``image_size``, ``max_size``, ``device`` and ``inference.slicing``."""
    return load_photo_detector(cfg.ckpt_path, cfg.model, cfg.image_size, cfg.max_size, cfg.device,
                               Slicing.from_config(cfg.inference.slicing))
