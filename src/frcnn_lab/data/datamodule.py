"""LightningDataModule: a source's splits -> albumentations -> batches of (images, targets).

A source item is ``{"image": uint8 (H, W, 3) RGB, "boxes": float32 (N, 4) xyxy pixels, "labels": int64 (N,)
in 1..K, "difficult": bool (N,), "image_id": str, "original_size": (h, w)}``; label 0 is background.
After the transforms a target holds "boxes" (xyxy pixels of the resized image), "labels", "difficult"
(boxes evaluation must ignore: VOC difficult, COCO crowd; never set in the train split unless
``use_difficult``), "image_id" and "original_size".

Splits: ``train``, ``val``, ``test`` and ``negatives`` (images of other categories with no box of
``classes``, for the false-positive figure).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from frcnn_lab.checks import typed
from frcnn_lab.data.config import DataConfig
from frcnn_lab.data.images import load
from frcnn_lab.data.records import (
    DataError,
    IssueLog,
    Sample,
    class_lookup,
    curate,
    prepare,
    random_split,
    read_id_list,
    seeded_order,
)
from frcnn_lab.data.samplers import (
    GroupedBatchSampler,
    RepeatFactorSampler,
    orientation_groups,
    processes,
    repeat_factors,
)
from frcnn_lab.data.sources import read_records
from frcnn_lab.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.data.synthetic_hard import ClutteredScenes
from frcnn_lab.data.tiles import TiledImages
from frcnn_lab.data.transforms import apply_transforms, build_transforms
from frcnn_lab.errors import ConfigError
from frcnn_lab.model.preprocess import PreprocessConfig

SCENE_GENERATORS = {"easy": SyntheticScenes, "hard": ClutteredScenes}
SPLITS = ("train", "val", "test")
ALL_SPLITS = (*SPLITS, "negatives")

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]
Annotation = tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]
"""(height, width) of the stored image, boxes (N, 4) xyxy, labels (N,), difficult (N,)."""


class FileImages(Dataset):
    """Checked samples read from disk: item -> source item dict (see the module docstring)."""

    def __init__(self, samples: Sequence[Sample], preprocess: PreprocessConfig) -> None:
        self.samples, self.preprocess = list(samples), preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def sizes(self) -> list[tuple[int, int]]:
        return [(s.height, s.width) for s in self.samples]

    def annotation(self, index: int) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
        s = self.samples[index]
        return (s.height, s.width), s.boxes, s.labels, s.difficult

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        # A reduced JPEG decode suits shortest_side, which resizes whatever is loaded to its sides;
        # fixed_scale multiplies the loaded size, so it needs the file's own.
        shortest_side = self.preprocess.resize == "shortest_side"
        image = (load(sample.path, self.preprocess.image_size, self.preprocess.max_size) if shortest_side
                 else load(sample.path))
        height, width = image.shape[:2]
        # JPEGs may be decoded at a reduced scale: boxes follow the pixels actually loaded.
        scale = np.array([width / sample.width, height / sample.height] * 2, np.float32)
        boxes = np.clip(sample.boxes * scale, 0, [width, height, width, height]).astype(np.float32)
        return {"image": image, "boxes": boxes, "labels": sample.labels, "difficult": sample.difficult,
                "image_id": sample.image_id, "original_size": (sample.height, sample.width)}


class DrawnScenes:
    """Drawn scenes kept in memory up to ``max_bytes`` of pixels, the least recently used dropped first.

    A scene is a function of its generator's seed and index, so a kept one is the scene itself; a large canvas is
    slow to draw, and a tiled or long run reads each one many times. One per process (each data loader
    worker keeps its own).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()

    def get(self, scenes: SyntheticScenes, index: int) -> dict[str, Any]:
        """Scene ``index`` of ``scenes`` (a generator alive as long as this): a copy of the kept one, else drawn
        (and kept when it fits)."""
        key = (id(scenes), index)
        if key in self.items:
            self.items.move_to_end(key)
            return copied(self.items[key])
        item = scenes[index]
        size = item["image"].nbytes
        if size <= self.max_bytes:
            while self.bytes + size > self.max_bytes:
                self.bytes -= self.items.popitem(last=False)[1]["image"].nbytes
            self.items[key] = copied(item)
            self.bytes += size
        return item


def copied(item: dict[str, Any]) -> dict[str, Any]:
    """The item with its arrays copied: what reads it may change them in place."""
    return {key: value.copy() if isinstance(value, np.ndarray) else value for key, value in item.items()}


class SceneRange(Dataset):
    """Items ``start .. stop - 1`` of a SyntheticScenes generator, through ``drawn`` when given."""

    def __init__(self, scenes: SyntheticScenes, start: int, stop: int, drawn: DrawnScenes | None = None) -> None:
        self.scenes, self.start, self.stop, self.drawn = scenes, start, stop, drawn

    def __len__(self) -> int:
        return self.stop - self.start

    def sizes(self) -> list[tuple[int, int]]:
        return [self.scenes.image_size(i) for i in range(self.start, self.stop)]

    def annotation(self, index: int) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
        item = self[index]
        return item["image"].shape[:2], item["boxes"], item["labels"], item["difficult"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index += self.start
        item = self.drawn.get(self.scenes, index) if self.drawn is not None else self.scenes[index]
        item["difficult"] = np.zeros(len(item["labels"]), bool)
        item["original_size"] = item["image"].shape[:2]
        return item


class DetectionDataset(Dataset):
    """A source with transforms: item -> (image (3, H, W) float in [0, 1], target dict)."""

    def __init__(self, source: FileImages | SceneRange, transforms) -> None:
        self.source, self.transforms = source, transforms

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        # albumentations draws from its own generator: seed it from torch's, which Lightning seeds per
        # process and per loader worker, so `seed=N` repeats the augmentation too.
        self.transforms.set_random_seed(int(torch.randint(2**31, ())))
        return apply_transforms(self.transforms, self.source[index])


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> Batch:
    """Images of different sizes stay a list; the detector pads them."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def synthetic_splits(num_train: int, num_val: int, num_test: int, seed: int, num_negatives: int = 0,
                     difficulty: str = "easy", cache_mb: float = 0,
                     train_class_weights: Mapping[str, float] | None = None,
                     **scene_args: Any) -> dict[str, SceneRange]:
    """Disjoint index ranges of one seeded generator (train, val, test); negatives from their own stream.

    ``difficulty``: ``easy`` (:class:`SyntheticScenes`) or ``hard`` (:class:`ClutteredScenes`); the other
    ``scene_args`` go to that generator. ``cache_mb``: drawn scenes kept in memory (``DrawnScenes``), 0 for none.
    ``train_class_weights``: {class: weight} (a class left out weighs 1): the train scenes draw each object's class
    with these odds (an imbalanced train split, e.g. ``{phone: 0.05}``), from a second generator with the same
    seed, so each train scene keeps its size and background; val and test keep equal odds.
    """
    if difficulty not in SCENE_GENERATORS:
        raise ValueError(f"data.source.difficulty={difficulty!r} is unknown; choose one of {list(SCENE_GENERATORS)}")
    if isinstance(cache_mb, bool) or not isinstance(cache_mb, (int, float)) or cache_mb < 0:
        raise ValueError(f"data.source.cache_mb={cache_mb!r} must be a number >= 0")
    drawn = DrawnScenes(int(cache_mb * 2**20)) if cache_mb else None
    generator = SCENE_GENERATORS[difficulty]
    scenes = generator(num_train + num_val + num_test, seed=seed, **scene_args)
    bounds = [0, num_train, num_train + num_val, num_train + num_val + num_test]
    splits = {split: SceneRange(scenes, bounds[i], bounds[i + 1], drawn) for i, split in enumerate(SPLITS)}
    if train_class_weights:
        if unknown := sorted(set(train_class_weights) - set(SYNTHETIC_CLASSES)):
            raise ValueError(f"data.source.train_class_weights names {unknown}; the classes are "
                             f"{list(SYNTHETIC_CLASSES)}")
        weights = [float(train_class_weights.get(name, 1.0)) for name in SYNTHETIC_CLASSES]
        weighted = generator(bounds[-1], seed=seed, class_weights=weights, **scene_args)
        splits["train"] = SceneRange(weighted, 0, num_train, drawn)
    negative_args = {**scene_args, "empty_fraction": 1.0}
    if difficulty == "easy":
        negative_args.update(min_distractors=1, distractors=True)
    negatives = generator(num_negatives, seed=seed, stream=1, **negative_args)
    splits["negatives"] = SceneRange(negatives, 0, num_negatives, drawn)
    return splits


def source_label(name: str, source: Mapping[str, Any]) -> str:
    """The data as summaries and tables name it: a file source's name, or the synthetic variant from its source keys,
    e.g. ``synthetic (hard)`` (data=synthetic_hard), ``synthetic (hard, canvases up to 2000 x 1500)``
    (data=synthetic_large)."""
    if name != "synthetic":
        return name
    variant = [] if source.get("difficulty", "easy") == "easy" else [str(source["difficulty"])]
    if source.get("image_sizes"):
        height, width = max(source["image_sizes"], key=lambda size: size[0] * size[1])
        variant.append(f"canvases up to {width} x {height}")
    return f"synthetic ({', '.join(variant)})" if variant else "synthetic"


class DetectionDataModule(L.LightningDataModule):
    """The data of ``config`` (a ``DataConfig``, or a mapping of its keys such as ``cfg.data``; None: the
    embedded synthetic data, as the CLI's default).

    ``name`` selects the source; ``source`` holds its own arguments (see docs/datasets.md). ``classes``: label
    1..K in this order; ``class_map``: more source class names for a class (``{"Mobile phone": camera}``).
    ``resize``: ``shortest_side`` (``image_size``: shortest side after resizing; ``max_size``: cap on the long
    side) or ``fixed_scale`` (every image times ``scale``): the detector's ``preprocess`` (``PreprocessConfig``).
    ``tiles``: the train split as overlapping tiles of its photos (``frcnn_lab.data.tiles``). ``split``:
    ``official`` (the source's splits) or ``random`` (``split_fractions`` of the source's train set, seeded by
    ``split_seed``). ``limit``: at most this many images per split (a file source's: a seeded choice; a synthetic
    split's: its first scenes).
    ``include`` / ``exclude``: curation files of image ids. ``num_negatives``: size of the negatives set
    (synthetic) or its cap. ``augment``: train only.

    ``category_ids``: the id of each class in ``classes`` order for results files: 1..K, or for data=coco
    (after ``setup``) the source's own category ids; a class that merges several categories takes the id
    of the first of them in the file's category list.
    """

    def __init__(self, config: DataConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config = typed(DataConfig, config, "data")
        self.name, self.classes, self.class_map = config.name, list(config.classes), dict(config.class_map or {})
        self.source_args = dict(config.source)
        self.preprocess = config.preprocess()
        self.tiles = asdict(config.tiles)
        self.batch_size, self.num_workers, self.augment = config.batch_size, config.num_workers, asdict(config.augment)
        self.split, self.split_fractions = config.split, list(config.split_fractions)
        self.split_seed = config.split_seed
        self.limit, self.include, self.exclude = config.limit, config.include, config.exclude
        self.use_difficult, self.num_negatives = config.use_difficult, config.num_negatives
        self.verify_images, self.group_aspect_ratio = config.verify_images, config.group_aspect_ratio
        self.sampler, self.repeat_threshold = config.sampler, config.repeat_threshold
        self.category_ids = list(range(1, len(self.classes) + 1))
        self.issues = IssueLog()
        self.notes: list[str] = []
        self.datasets: dict[str, DetectionDataset] = {}
        self._input_annotations: dict[str, list[Annotation]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        sources = self._synthetic() if self.name == "synthetic" else self._files()
        for split, source in sources.items():
            train = split == "train"
            # Tiling reads every train annotation: not worth it for evaluation alone (stage "test").
            if train and self.tiles.get("size") is not None and stage != "test":
                source = TiledImages(source, factor=self.preprocess.factor, seed=self.split_seed, **self.tiles)
            transforms = build_transforms(self.preprocess, train, **(self.augment if train else {}))
            self.datasets[split] = DetectionDataset(source, transforms)

    def _synthetic(self) -> dict[str, SceneRange]:
        if self.classes != list(SYNTHETIC_CLASSES):
            raise ConfigError(f"data.classes={self.classes} must be {list(SYNTHETIC_CLASSES)} for the synthetic source")
        splits = synthetic_splits(**self.source_args, num_negatives=self.num_negatives or 0)
        for split in SPLITS:
            scenes = splits[split]
            if self.limit is not None and len(scenes) > self.limit:
                # The first scenes of the split's own range: the same ones whatever the other splits' sizes.
                self.notes.append(f"{split}: {self.limit} of {len(scenes)} images used (limit)")
                splits[split] = SceneRange(scenes.scenes, scenes.start, scenes.start + self.limit, scenes.drawn)
        return splits

    def _id_list(self, paths: str | Sequence[str] | None) -> set[str] | None:
        if paths is None:
            return None
        return set().union(*(read_id_list(p) for p in ([paths] if isinstance(paths, str) else paths)))

    def _files(self) -> dict[str, FileImages]:
        records, source_ids = read_records(self.name, self.source_args, self.classes, self.class_map, self.issues)
        lookup = class_lookup(self.classes, self.class_map)
        if source_ids:
            first = {}
            for name, category_id in source_ids.items():
                first.setdefault(lookup.get(name), category_id)
            self.category_ids = [first.get(label, label) for label in range(1, len(self.classes) + 1)]
        include, exclude = self._id_list(self.include), self._id_list(self.exclude) or set()
        if include is not None:
            known = {r.image_id for part in records.values() for r in part}
            if missing := include - known:
                self.notes.append(f"{len(missing)} ids of the include list are not in the source")
        workers = max(1, min(8, self.num_workers or 1, len(records.get("train", ())) // 64 + 1))
        samples: dict[str, list[Sample]] = {}
        for split, part in records.items():
            kept = curate(part, include if split != "negatives" else None, exclude, split, self.issues)
            chosen, unselected = prepare(kept, split, lookup, self.issues, use_difficult=self.use_difficult,
                                         verify_images=self.verify_images, workers=workers)
            if split == "negatives":
                for sample in chosen:
                    if len(sample.boxes):
                        self.issues.add(split, str(sample.path), "image: has a box of data.classes, not a negative")
                chosen = [s for s in chosen if not len(s.boxes)] + unselected
            samples[split] = chosen
        if self.split == "random":
            pool = samples["train"]
            parts = random_split(pool, [s.image_id for s in pool], self.split_fractions, self.split_seed)
            samples.update(zip(SPLITS, parts, strict=True))
        elif "val" not in samples:
            raise DataError(f"data={self.name} has no val split: set data.source.val, or data.split=random")
        samples.setdefault("test", [])
        used = {s.image_id for split in SPLITS for s in samples[split]}
        negatives = []
        for sample in samples.get("negatives", []):
            if sample.image_id in used:
                self.issues.add("negatives", str(sample.path), "image: also in train/val/test, not a negative")
            else:
                negatives.append(sample)
        samples["negatives"] = negatives
        for split in ALL_SPLITS:
            cap = self.num_negatives if split == "negatives" else self.limit
            if cap is not None and len(samples[split]) > cap:
                order = seeded_order([s.image_id for s in samples[split]], self.split_seed)
                self.notes.append(f"{split}: {cap} of {len(samples[split])} images used (limit)")
                samples[split] = [samples[split][i] for i in order[:cap]]
        if not samples["train"]:
            raise DataError(f"data={self.name}: no training image left; see the skipped items above")
        return {split: FileImages(samples[split], self.preprocess) for split in ALL_SPLITS}

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        """Batches of ``split``: in order, or (``shuffle``, training) drawn by ``data.sampler`` and grouped by
        orientation with ``data.group_aspect_ratio``."""
        dataset = self.datasets[split]
        common = {"num_workers": self.num_workers, "collate_fn": collate, "persistent_workers": self.num_workers > 0}
        repeat = shuffle and self.sampler == "repeat_factor"
        if repeat:
            order = self.repeat_sampler(split)
        else:
            order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        if shuffle and self.group_aspect_ratio:
            if repeat and (world := processes()[1]) > 1:
                # Lightning swaps the sampler inside a batch sampler for its DistributedSampler: the repeats would go.
                raise DataError(f"data.sampler=repeat_factor with data.group_aspect_ratio=true cannot run on {world} "
                                "processes: under DDP Lightning replaces the sampler inside the orientation-grouped "
                                "batch sampler, which would drop the repeats. Set data.group_aspect_ratio=false (the "
                                "repeat-factor sampler then shards the images across the processes itself).")
            groups = orientation_groups(dataset.source.sizes())
            return DataLoader(dataset, batch_sampler=GroupedBatchSampler(order, groups, self.batch_size), **common)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=order, **common)

    def repeat_sampler(self, split: str = "train") -> RepeatFactorSampler:
        """The repeat-factor sampler of ``split`` at ``data.repeat_threshold``, seeded by the run's seed (Lightning's
        ``PL_GLOBAL_SEED``, which seeds its own DistributedSampler) and the epoch."""
        labels = [labels for _, _, labels, _ in self.input_annotations(split)]
        factors, _ = repeat_factors(labels, self.repeat_threshold)
        return RepeatFactorSampler(factors, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))

    def size_bin_edges(self) -> list[float] | None:
        """The tertiles of the train boxes' side sqrt(w * h) in input pixels (px, 2 decimals): the edges of the
        evaluation's size bins (``frcnn_lab.metrics.sizes``). None with fewer than 3 train boxes or tertiles that
        coincide."""
        boxes = [b for _, b, _, _ in self.input_annotations("train")]
        boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
        sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        if len(sides) < 3:
            return None
        edges = [round(float(e), 2) for e in np.quantile(sides, [1 / 3, 2 / 3])]
        return edges if 0 < edges[0] < edges[1] else None

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def negatives_dataloader(self) -> DataLoader | None:
        """Images with no box of ``classes`` (evaluation transforms), or None when the source has none."""
        self.setup()
        return self.loader("negatives") if len(self.datasets["negatives"]) else None

    def tiling(self) -> dict[str, Any] | None:
        """What tiling did to the train split (``TilingCounts`` as a dict), or None without tiles."""
        self.setup()
        source = self.datasets["train"].source
        return asdict(source.counts) if isinstance(source, TiledImages) else None

    def input_annotations(self, split: str) -> list[Annotation]:
        """Every image of ``split`` with its boxes in input pixels: after the resize, before augmentation (the
        scale the anchors live at). Read once per split: the synthetic source draws each image to know it."""
        self.setup()
        if split not in self._input_annotations:
            annotations = []
            for index in range(len(self.datasets[split].source)):
                (height, width), boxes, labels, difficult = self.datasets[split].source.annotation(index)
                scale = self.preprocess.factor(height, width)
                annotations.append(((height, width), np.asarray(boxes, np.float32).reshape(-1, 4) * scale,
                                    np.asarray(labels), np.asarray(difficult)))
            self._input_annotations[split] = annotations
        return self._input_annotations[split]

    def write_summary(self, output_dir: str | Path, anchors: dict[str, Any] | None = None) -> Path:
        """Print the dataset summary and write it to ``output_dir/data_summary.json``; ``anchors``: the
        anchor-fit report of the train split (``frcnn_lab.model.anchor_fit.fit_report``)."""
        from frcnn_lab.data.summary import write_summary

        self.setup()
        return write_summary(self, Path(output_dir), anchors)
