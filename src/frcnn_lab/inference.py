"""Detection on one photo, for the tools that serve or export a trained detector: the training resize, the
checkpoint's module or an exported ONNX model, boxes back in the photo's pixels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from frcnn_lab.data.transforms import apply_transforms, build_transforms
from frcnn_lab.lit_module import DetectionModule
from frcnn_lab.onnx_runner import OnnxDetector


def trained_resize(model: DetectionModule | OnnxDetector) -> dict[str, Any]:
    """The resize policy the model was trained with: ``{"resize": ..., "scale": ...}`` (``data.resize`` /
    ``data.scale``; shortest side for models that predate them)."""
    source = model.hparams if isinstance(model, DetectionModule) else vars(model)
    return {"resize": source.get("resize", "shortest_side"), "scale": source.get("scale", 1.0)}


class PhotoDetector:
    """uint8 (H, W, 3) RGB photo -> {"boxes" (D, 4) xyxy in the photo's pixels, "scores" (D,), "labels" (D,)}."""

    def __init__(self, model: DetectionModule | OnnxDetector, image_size: int, max_size: int) -> None:
        self.model, self.classes = model, list(model.classes)
        self.image_size, self.max_size = image_size, max_size
        self.transforms = build_transforms(image_size, max_size, train=False, **trained_resize(model))
        self.device = next(model.parameters()).device if isinstance(model, DetectionModule) else torch.device("cpu")

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> dict[str, Tensor]:
        sample = {"image": pixels, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                  "image_id": "photo"}
        tensor, _ = apply_transforms(self.transforms, sample)
        (detection,) = self.model([tensor.to(self.device)], original_sizes=[pixels.shape[:2]])
        return {k: v.cpu() for k, v in detection.items()}
