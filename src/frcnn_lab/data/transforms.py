"""Albumentations pipelines: resize (shortest side, capped long side), then bbox-aware augmentation.

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


def resized_scale(height: int, width: int, image_size: int, max_size: int) -> float:
    """Factor that brings the shortest side to ``image_size`` unless the long side would pass ``max_size``."""
    return min(image_size / min(height, width), max_size / max(height, width))


class ShortestSideResize(MaxSizeTransform):
    """Resize by ``resized_scale`` (up or down), keeping the aspect ratio; boxes follow."""

    def __init__(self, image_size: int, max_size: int, p: float = 1.0) -> None:
        super().__init__(max_size=image_size, p=p)
        self.image_size, self.long_side_cap = image_size, max_size

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, float]:
        height, width = params["shape"][:2]
        return {"scale": resized_scale(height, width, self.image_size, self.long_side_cap)}


def build_transforms(
    image_size: int, max_size: int, train: bool, hflip: float = 0.0, vflip: float = 0.0, rot90: float = 0.0,
    extra: Sequence[Any] = (),
) -> A.Compose:
    """Resize the shortest side to ``image_size`` unless the long side would pass ``max_size``.

    ``hflip``, ``vflip``, ``rot90`` are probabilities (the thesis's three augmentations); ``extra`` holds
    albumentations transforms, or Hydra configs of them (``_target_: albumentations.ColorJitter``...).
    """
    steps: list[A.BasicTransform] = [ShortestSideResize(image_size, max_size)]
    if train:
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
    tensor = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1).float().div_(255)
    target = {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.as_tensor(np.asarray(out["labels"]), dtype=torch.int64).reshape(-1),
        "difficult": torch.as_tensor(np.asarray(out["difficult"]), dtype=torch.bool).reshape(-1),
        "image_id": sample["image_id"],
        "original_size": tuple(sample.get("original_size", image.shape[:2])),
    }
    return tensor, target
