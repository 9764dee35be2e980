"""Detection on one photo, for the tools that serve or export a trained detector: the training resize, the
checkpoint's module or an exported ONNX model, boxes back in the photo's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

from frcnn_lab.data.transforms import apply_transforms, build_transforms
from frcnn_lab.evaluate import training_run_dir
from frcnn_lab.lit_module import DetectionModule
from frcnn_lab.onnx_runner import OnnxDetector


def resize_settings(ckpt_path: str | Path, image_size: int | None = None, max_size: int | None = None
                    ) -> tuple[int, int]:
    """(image_size, max_size): the values given, else the checkpoint's training run's ``data``."""
    run = training_run_dir(ckpt_path)
    data = OmegaConf.load(run / ".hydra" / "config.yaml").data if run is not None else None
    if image_size is None and data is None:
        raise ValueError(f"ckpt_path={ckpt_path} is not inside a training run: set image_size (and max_size)")
    image_size = int(image_size if image_size is not None else data.image_size)
    max_size = max_size if max_size is not None else data.max_size if data is not None else 1333
    return image_size, int(max(max_size, image_size))


class PhotoDetector:
    """uint8 (H, W, 3) RGB photo -> {"boxes" (D, 4) xyxy in the photo's pixels, "scores" (D,), "labels" (D,)}."""

    def __init__(self, model: DetectionModule | OnnxDetector, image_size: int, max_size: int) -> None:
        self.model, self.classes = model, list(model.classes)
        self.image_size, self.max_size = image_size, max_size
        self.transforms = build_transforms(image_size, max_size, train=False)
        self.device = next(model.parameters()).device if isinstance(model, DetectionModule) else torch.device("cpu")

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> dict[str, Tensor]:
        sample = {"image": pixels, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                  "image_id": "photo"}
        tensor, _ = apply_transforms(self.transforms, sample)
        (detection,) = self.model([tensor.to(self.device)], original_sizes=[pixels.shape[:2]])
        return {k: v.cpu() for k, v in detection.items()}
