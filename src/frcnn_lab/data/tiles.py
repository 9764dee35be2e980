"""Training on overlapping tiles of large photos (``data.tiles``).

A photo is cut into ``size`` x ``size`` tiles (in input pixels, at the ``fixed_scale`` resize) with
``overlap`` (a share of ``size``) between neighbours, laid out as ``sahi.slicing.get_slice_bboxes`` lays
them: from the top-left corner with a step of ``size - int(overlap * size)``, the last row and column
moved back to end at the photo's border, so every tile is whole (a photo smaller than a tile is one tile).
A box cut by a tile's edge is kept, clipped to the tile, when at least ``min_visible`` of its area lies in
the tile, and dropped from that tile otherwise. Tiles left without boxes are kept as a seeded
``empty_fraction`` of them (negatives: the background the detector must learn to leave alone).

sahi itself is not a dependency: it requires ``opencv-python``, which installs the same ``cv2`` package as
albumentations' ``opencv-python-headless`` and needs GUI libraries a server may lack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset

Window = tuple[int, int, int, int]  # x1, y1, x2, y2 in the photo's pixels, right / bottom exclusive


def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start offsets of tiles of ``size`` along a side of ``length`` (see the module docstring)."""
    if length <= size:
        return [0]
    step = size - int(overlap * size)
    return [*range(0, length - size, step), length - size]


def tile_windows(height: int, width: int, size: int, overlap: float) -> list[Window]:
    """Tiles of a (height, width) photo, row by row: (x1, y1, x2, y2), each ``size`` a side (less only where
    the photo is smaller)."""
    if size < 1 or not 0 <= overlap < 1:
        raise ValueError(f"data.tiles.size={size} must be >= 1 and data.tiles.overlap={overlap} in [0, 1)")
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in tile_starts(height, size, overlap) for x in tile_starts(width, size, overlap)]


def boxes_in_window(boxes: np.ndarray, window: Window, min_visible: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Boxes (N, 4) xyxy in the photo -> (indices of the boxes kept, their boxes (K, 4) clipped to the window in
    the window's coordinates, boxes clipped, boxes dropped). A box at least partly inside is kept when the share
    of its area inside is at least ``min_visible`` (clipped when that share is below 1), dropped otherwise."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    x1, y1, x2, y2 = window
    clipped = np.clip(boxes, [x1, y1, x1, y1], [x2, y2, x2, y2])
    inside = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
    visible = inside / np.maximum(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1), 1e-9)
    touched = inside > 0
    kept = np.flatnonzero(touched & (visible >= min_visible))
    cut, dropped = int(np.sum(visible[kept] < 1)), int(np.sum(touched & (visible < min_visible)))
    return kept, (clipped[kept] - [x1, y1, x1, y1]).astype(np.float32), cut, dropped


@dataclass
class TilingCounts:
    """What tiling did to a split, for ``data_summary.json``."""

    photos: int = 0
    tiles: int = 0
    tiles_with_boxes: int = 0
    empty_tiles_kept: int = 0
    empty_tiles_left_out: int = 0
    boxes_clipped: int = 0  # cut by a tile edge, visible enough: kept, clipped
    boxes_dropped: int = 0  # cut by a tile edge, too little visible: left out of that tile
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tile:
    photo: int  # index in the source
    window: Window
    boxes: np.ndarray  # (K, 4) in the tile's pixels
    labels: np.ndarray
    difficult: np.ndarray


class TiledImages(Dataset):
    """The tiles of a source's photos: item -> source item dict of one tile (image crop, its boxes).

    ``source``: FileImages or SceneRange (``annotation``, ``__getitem__``); ``factor(height, width)``: the
    photo's resize factor (``Resize.factor``), so that ``size`` is in input pixels. The layout is computed
    once from the annotations; ``counts`` says what it kept and left out; ``seed`` picks the empty tiles kept.
    """

    def __init__(self, source, size: int, overlap: float, min_visible: float, empty_fraction: float,
                 factor, seed: int = 0) -> None:
        self.source = source
        self.counts = TilingCounts(settings={"size": size, "overlap": overlap, "min_visible": min_visible,
                                             "empty_fraction": empty_fraction})
        self.tiles: list[Tile] = []
        empty: list[Tile] = []
        for index in range(len(source)):
            (height, width), boxes, labels, difficult = source.annotation(index)
            side = max(1, round(size / factor(height, width)))  # the tile side in the photo's pixels
            self.counts.photos += 1
            for window in tile_windows(height, width, side, overlap):
                kept, clipped, cut, dropped = boxes_in_window(boxes, window, min_visible)
                self.counts.boxes_clipped += cut
                self.counts.boxes_dropped += dropped
                tile = Tile(index, window, clipped, np.asarray(labels)[kept], np.asarray(difficult)[kept])
                (self.tiles if len(kept) else empty).append(tile)
        self.counts.tiles_with_boxes = len(self.tiles)
        keep = round(empty_fraction * len(empty))
        chosen = sorted(np.random.default_rng(seed).permutation(len(empty))[:keep].tolist())
        self.tiles += [empty[i] for i in chosen]
        self.counts.empty_tiles_kept, self.counts.empty_tiles_left_out = keep, len(empty) - keep
        self.counts.tiles = len(self.tiles)

    def __len__(self) -> int:
        return len(self.tiles)

    def sizes(self) -> list[tuple[int, int]]:
        return [(y2 - y1, x2 - x1) for x1, y1, x2, y2 in (tile.window for tile in self.tiles)]

    def annotation(self, index: int) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
        tile = self.tiles[index]
        x1, y1, x2, y2 = tile.window
        return (y2 - y1, x2 - x1), tile.boxes, tile.labels, tile.difficult

    def __getitem__(self, index: int) -> dict[str, Any]:
        tile = self.tiles[index]
        x1, y1, x2, y2 = tile.window
        item = self.source[tile.photo]
        return {"image": np.ascontiguousarray(item["image"][y1:y2, x1:x2]), "boxes": tile.boxes,
                "labels": tile.labels, "difficult": tile.difficult, "image_id": f"{item['image_id']}@{x1},{y1}",
                "original_size": (y2 - y1, x2 - x1)}
