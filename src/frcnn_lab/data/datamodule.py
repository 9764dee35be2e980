"""LightningDataModule: a source's splits -> albumentations -> batches of (images, targets).

A *source* is a sequence of samples ``{"image": uint8 (H, W, 3) RGB, "boxes": float (N, 4) xyxy pixels,
"labels": int64 (N,) in [1, K], "image_id": str}``; label 0 is background.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from frcnn_lab.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.data.transforms import apply_transforms, build_transforms

SOURCES = ("synthetic",)
SPLITS = ("train", "val", "test")

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]


class DetectionDataset(Dataset):
    """A source with transforms: item -> (image (3, H, W) float in [0, 1], target dict)."""

    def __init__(self, source: Sequence[dict[str, Any]], transforms) -> None:
        self.source, self.transforms = source, transforms

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return apply_transforms(self.transforms, self.source[index])


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> Batch:
    """Images of different sizes stay a list; the detector pads them."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def synthetic_splits(num_train: int, num_val: int, num_test: int, seed: int, **scene_args: Any) -> dict[str, Subset]:
    """Disjoint index ranges of one seeded scene generator: train, then val, then test."""
    scenes = SyntheticScenes(num_train + num_val + num_test, seed=seed, **scene_args)
    bounds = [0, num_train, num_train + num_val, num_train + num_val + num_test]
    return {split: Subset(scenes, range(bounds[i], bounds[i + 1])) for i, split in enumerate(SPLITS)}


class DetectionDataModule(L.LightningDataModule):
    """``name`` selects the source; ``source`` holds its own arguments.

    ``image_size``: shortest side after resizing; ``max_size``: cap on the long side. ``augment``:
    ``hflip``, ``vflip``, ``rot90`` probabilities and ``extra`` albumentations transforms (train only).
    """

    def __init__(
        self, name: str, classes: Sequence[str], source: dict[str, Any], image_size: int, max_size: int,
        batch_size: int, num_workers: int, augment: dict[str, Any],
    ) -> None:
        super().__init__()
        if name not in SOURCES:
            raise ValueError(f"data={name!r} is unknown; choose one of {list(SOURCES)}")
        self.name, self.classes, self.source_args = name, list(classes), dict(source)
        self.image_size, self.max_size = image_size, max_size
        self.batch_size, self.num_workers, self.augment = batch_size, num_workers, dict(augment)
        self.datasets: dict[str, DetectionDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.classes != list(SYNTHETIC_CLASSES):
            raise ValueError(f"data.classes={self.classes} must be {list(SYNTHETIC_CLASSES)} for the synthetic source")
        splits = synthetic_splits(**self.source_args)
        for split, source in splits.items():
            train = split == "train"
            transforms = build_transforms(self.image_size, self.max_size, train, **(self.augment if train else {}))
            self.datasets[split] = DetectionDataset(source, transforms)

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
            collate_fn=collate, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
