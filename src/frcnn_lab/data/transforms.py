"""Albumentations pipelines: the detector's resize (``frcnn_lab.model.preprocess``: shortest side, or one fixed
factor), then bbox-aware augmentation.

Boxes are ``pascal_voc`` (x1, y1, x2, y2 in pixels) throughout; augmentation runs on the train split only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.augmentations.geometric.resize import MaxSizeTransform
from hydra.utils import instantiate

from frcnn_lab.model.preprocess import PreprocessConfig


class PolicyResize(MaxSizeTransform):
    """Resize by the detector's ``PreprocessConfig.factor``, keeping the aspect ratio; boxes follow."""

    def __init__(self, preprocess: PreprocessConfig, p: float = 1.0) -> None:
        super().__init__(max_size=1, p=p)  # the size comes from the policy, not from max_size
        self.preprocess = preprocess

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, float]:
        height, width = params["shape"][:2]
        return {"scale": self.preprocess.factor(height, width)}


def build_transforms(
    preprocess: PreprocessConfig, train: bool, hflip: float = 0.0, vflip: float = 0.0, rot90: float = 0.0,
    extra: Sequence[Any] = (), scale_jitter: Sequence[float] | None = None,
) -> A.Compose:
    """The detector's resize (``preprocess``: its policy and sizes), then for training the augmentation.

    ``hflip``, ``vflip``, ``rot90`` are probabilities (the thesis's three augmentations); ``scale_jitter``
    ``[lo, hi]`` rescales every training image (and its boxes) after the resize by a factor drawn
    uniformly from it (albumentations' RandomScale), so the model sees each object at several sizes;
    ``extra`` holds albumentations transforms, or Hydra configs of them (``_target_: albumentations.ColorJitter``...).
    """
    steps: list[A.BasicTransform] = [PolicyResize(preprocess)]
    if train:
        if scale_jitter is not None:
            low, high = (float(v) for v in scale_jitter)
            steps.append(A.RandomScale(scale_limit=(low - 1, high - 1), p=1.0))
        steps += [A.HorizontalFlip(p=hflip), A.VerticalFlip(p=vflip), A.RandomRotate90(p=rot90)]
        steps += [instantiate(t) if not isinstance(t, A.BasicTransform) else t for t in extra]
    # clip: float rounding in the resize may push an edge a hair past the border.
    bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels", "difficult"], clip=True)
    return A.Compose(steps, bbox_params=bbox_params)


def apply_transforms(transforms: A.Compose, sample: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """A source sample (uint8 HWC image, boxes, labels, image_id; optionally difficult, original_size)
    -> (image (3, H, W) float in [0, 1], target).

    The target holds "boxes" (N, 4) float32, "labels" (N,) int64, "difficult" (N,) bool, "image_id" and
    "original_size" (h, w) of the image file (the loaded image's own size when the sample has none).
    """
    image = sample["image"]
    difficult = sample.get("difficult", np.zeros(len(sample["labels"]), bool))
    out = transforms(image=image, bboxes=sample["boxes"].reshape(-1, 4), labels=sample["labels"], difficult=difficult)
    boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    # A read-only image (np.asarray of a PIL image) passes a scale of 1 untouched: torch wants it writable.
    tensor = torch.from_numpy(np.require(out["image"], requirements=["C", "W"])).permute(2, 0, 1).float().div_(255)
    target = {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.as_tensor(np.asarray(out["labels"]), dtype=torch.int64).reshape(-1),
        "difficult": torch.as_tensor(np.asarray(out["difficult"]), dtype=torch.bool).reshape(-1),
        "image_id": sample["image_id"],
        "original_size": tuple(sample.get("original_size", image.shape[:2])),
    }
    return tensor, target
