"""Detection on photos, for ``predict`` and ``serve``: one loader for a trained detector (a ``.ckpt`` or an
exported ``.onnx``) with the resize it was trained with (its ``preprocess``), boxes back in the photo's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from frcnn_lab.data.transforms import apply_transforms, build_transforms
from frcnn_lab.engine.checkpoints import load_module, resolve_device
from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.errors import ConfigError
from frcnn_lab.inference.onnx_detector import OnnxDetector
from frcnn_lab.inference.slicing import Slicing, detect_images
from frcnn_lab.model.preprocess import PreprocessConfig


class PhotoDetector:
    """uint8 (H, W, 3) RGB photo -> {"boxes" (D, 4) xyxy in the photo's pixels, "scores" (D,), "labels" (D,)}.

    ``classes`` (label i is ``classes[i - 1]``) and their dataset ``category_ids`` are the model's; the photo is
    resized by ``preprocess`` (the model's, or the model's at another input size). With ``slicing`` the resized
    photo is detected tile by tile (``inference.slicing``).
    """

    def __init__(self, model: DetectionModule | OnnxDetector, preprocess: PreprocessConfig | None = None,
                 slicing: Slicing | None = None) -> None:
        self.model, self.classes, self.category_ids = model, list(model.classes), list(model.category_ids)
        self.preprocess, self.slicing = preprocess or model.preprocess, slicing
        self.transforms = build_transforms(self.preprocess, train=False)
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
    else at the size it was trained at (``PreprocessConfig.at``), whole or by ``slicing``."""
    if model is not None and ckpt_path is not None:
        raise ConfigError(f"ckpt_path={ckpt_path} and model={model}: name one of them")
    if model is not None:
        detector = OnnxDetector(model)
    elif ckpt_path is None:
        raise ConfigError("name the detector: ckpt_path=<file>.ckpt or model=<file>.onnx")
    else:
        detector = load_module(ckpt_path, resolve_device(device))
    return PhotoDetector(detector, detector.preprocess.at(image_size, max_size), slicing)


def configured_photo_detector(cfg: DictConfig) -> PhotoDetector:
    """``load_photo_detector`` with the inference keys of ``predict`` / ``serve``: ``ckpt_path`` or ``model``,
    ``image_size``, ``max_size``, ``device`` and ``inference.slicing``."""
    return load_photo_detector(cfg.ckpt_path, cfg.model, cfg.image_size, cfg.max_size, cfg.device,
                               Slicing.from_config(cfg.inference.slicing))
