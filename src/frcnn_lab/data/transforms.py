"""Albumentations pipelines: resize (``data.resize``: shortest side, or one fixed factor), then bbox-aware
augmentation.

Boxes are ``pascal_voc`` (x1, y1, x2, y2 in pixels) throughout; augmentation runs on the train split only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.augmentations.geometric.resize import MaxSizeTransform
from hydra.utils import instantiate

RESIZE_POLICIES = ("shortest_side", "fixed_scale")


@dataclass(frozen=True)
class Resize:
    """How a photo becomes the model's input (``data.resize``).

    ``shortest_side``: the shortest side to ``image_size`` unless the long side would pass ``max_size`` (up
    or down): photos of any size fill the same input, so an object's size in the input varies with the
    photo's pixel size. ``fixed_scale``: every photo times ``scale`` (1.0 keeps the photos' own scale):
    an object keeps its size from photo to photo whatever their pixel sizes, as orthophoto tiles, drone
    surveys or microscopy at one ground resolution need; ``image_size`` / ``max_size`` play no part.
    """

    policy: str = "shortest_side"
    image_size: int = 600
    max_size: int = 1000
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.policy not in RESIZE_POLICIES:
            raise ValueError(f"data.resize={self.policy!r} is unknown; choose one of {list(RESIZE_POLICIES)}")
        if not self.scale > 0:
            raise ValueError(f"data.scale={self.scale} must be > 0")

    def factor(self, height: int, width: int) -> float:
        """The factor a (height, width) photo is resized by."""
        if self.policy == "fixed_scale":
            return self.scale
        return min(self.image_size / min(height, width), self.max_size / max(height, width))


class PolicyResize(MaxSizeTransform):
    """Resize by ``Resize.factor``, keeping the aspect ratio; boxes follow."""

    def __init__(self, resize: Resize, p: float = 1.0) -> None:
        super().__init__(max_size=resize.image_size, p=p)
        self.resize = resize

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, float]:
        height, width = params["shape"][:2]
        return {"scale": self.resize.factor(height, width)}


def build_transforms(
    image_size: int, max_size: int, train: bool, hflip: float = 0.0, vflip: float = 0.0, rot90: float = 0.0,
    extra: Sequence[Any] = (), resize: str = "shortest_side", scale: float = 1.0,
    scale_jitter: Sequence[float] | None = None,
) -> A.Compose:
    """The ``resize`` policy (see ``Resize``), then for training the augmentation.

    ``hflip``, ``vflip``, ``rot90`` are probabilities (the thesis's three augmentations); ``scale_jitter``
    ``[lo, hi]`` rescales every training image (and its boxes) after the resize by a factor drawn
    uniformly from it (albumentations' RandomScale), so the model sees each object at several sizes;
    ``extra`` holds albumentations transforms, or Hydra configs of them (``_target_: albumentations.ColorJitter``...).
    """
    steps: list[A.BasicTransform] = [PolicyResize(Resize(resize, image_size, max_size, scale))]
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
