"""Tiled training (``data.tiles``): the tile layout (overlap, tiles at the border, photos smaller than a tile),
boxes cut by tile edges, empty tiles kept as a fraction, and the tiles of every source in the data module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.data.tiles import TiledImages, boxes_in_window, tile_windows
from support import compose_config


def test_tiles_overlap_by_the_share_and_the_last_row_and_column_end_at_the_border():
    windows = tile_windows(700, 1000, 400, 0.2)  # step 400 - 80 = 320
    xs, ys = sorted({w[0] for w in windows}), sorted({w[1] for w in windows})
    assert xs == [0, 320, 600] and ys == [0, 300]  # 600 = 1000 - 400 and 300 = 700 - 400: moved back, whole
    assert len(windows) == 6 and all((x2 - x1, y2 - y1) == (400, 400) for x1, y1, x2, y2 in windows)
    assert max(w[2] for w in windows) == 1000 and max(w[3] for w in windows) == 700
    assert windows[1][0] - windows[0][0] == 320  # neighbours share 80 px = 0.2 of a side
    covered = np.zeros((700, 1000), bool)
    for x1, y1, x2, y2 in windows:
        covered[y1:y2, x1:x2] = True
    assert covered.all()


def test_a_photo_smaller_than_a_tile_is_one_tile_and_an_exact_fit_adds_none():
    assert tile_windows(200, 300, 400, 0.2) == [(0, 0, 300, 200)]
    assert tile_windows(400, 720, 400, 0.2) == [(0, 0, 400, 400), (320, 0, 720, 400)]  # 320 + 400 = 720
    with pytest.raises(ValueError, match=r"data.tiles.overlap=1.0 in \[0, 1\)"):
        tile_windows(400, 400, 100, 1.0)


def test_a_box_across_a_tile_edge_is_clipped_or_dropped_by_its_visible_share():
    boxes = np.array([[380, 10, 420, 50],  # half inside window (0, 0, 400, 400)
                      [100, 100, 140, 140],  # wholly inside
                      [390, 300, 430, 340],  # a quarter inside
                      [500, 10, 540, 50]], np.float32)  # outside
    kept, clipped, cut, dropped = boxes_in_window(boxes, (0, 0, 400, 400), min_visible=0.5)
    assert kept.tolist() == [0, 1] and (cut, dropped) == (1, 1)
    assert clipped.tolist() == [[380, 10, 400, 50], [100, 100, 140, 140]]
    kept, clipped, cut, dropped = boxes_in_window(boxes, (320, 0, 720, 400), min_visible=0.2)
    assert kept.tolist() == [0, 2, 3] and (cut, dropped) == (0, 0)  # in this tile all three lie wholly inside
    assert clipped.tolist() == [[60, 10, 100, 50], [70, 300, 110, 340], [180, 10, 220, 50]]


class Photos:
    """A stand-in source: photos of distinct pixel values with given boxes."""

    def __init__(self, shapes, boxes):
        self.images = [np.random.default_rng(i).integers(0, 255, (*shape, 3), dtype=np.uint8)
                       for i, shape in enumerate(shapes)]
        self.boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]

    def __len__(self):
        return len(self.images)

    def annotation(self, index):
        boxes = self.boxes[index]
        return self.images[index].shape[:2], boxes, np.ones(len(boxes), np.int64), np.zeros(len(boxes), bool)

    def __getitem__(self, index):
        _, boxes, labels, difficult = self.annotation(index)
        return {"image": self.images[index], "boxes": boxes, "labels": labels, "difficult": difficult,
                "image_id": str(index)}


def test_tiles_crop_the_photo_and_keep_a_share_of_the_empty_ones():
    source = Photos([(700, 1000), (200, 300)], [[[380, 10, 420, 50], [650, 350, 690, 390]], []])
    tiles = TiledImages(source, size=200, overlap=0.0, min_visible=0.5, empty_fraction=0.5,
                        factor=lambda h, w: 0.5)  # 200 input px = 400 photo px
    counts = tiles.counts
    # photo 0: 3 x 2 tiles of 400 (x 0, 400, 600; y 0, 300). Box 0 is half in tiles (0, 0) and (400, 0):
    # clipped in both; box 1 lies wholly in (400, 0), (600, 0), (400, 300), (600, 300). Tile (0, 300) and
    # photo 1's one tile are empty.
    assert (counts.photos, counts.tiles_with_boxes) == (2, 5)
    empty = 2
    assert counts.empty_tiles_kept == round(0.5 * empty) and counts.empty_tiles_left_out == empty - round(0.5 * empty)
    assert counts.tiles == len(tiles) == counts.tiles_with_boxes + counts.empty_tiles_kept
    assert (counts.boxes_clipped, counts.boxes_dropped) == (2, 0)
    for index in range(len(tiles)):
        item = tiles[index]
        photo = int(item["image_id"].split("@")[0])
        x1, y1 = (int(v) for v in item["image_id"].split("@")[1].split(","))
        height, width = item["image"].shape[:2]
        assert np.array_equal(item["image"], source.images[photo][y1:y1 + height, x1:x1 + width])
        assert tiles.annotation(index)[0] == (height, width) and tiles.sizes()[index] == (height, width)
        assert np.all(item["boxes"] >= 0) and np.all(item["boxes"][:, 2] <= width)
        assert np.all(item["boxes"][:, 3] <= height)


def write_large_photos(root: Path) -> Path:
    """Two 600 x 800 photos with 30 px objects, one across the line x = 400."""
    root.mkdir(parents=True)
    lines = []
    for i, boxes in enumerate([[(385, 100, 415, 130), (50, 50, 80, 80)], [(700, 500, 730, 530)]]):
        Image.fromarray(np.full((600, 800, 3), 120 + i, np.uint8)).save(root / f"{i}.png")
        lines += [f"{i}.png,{','.join(map(str, box))},tree" for box in boxes]
    (root / "val.png").write_bytes((root / "1.png").read_bytes())
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "val.csv").write_text("val.png,10,10,40,40,tree\n")
    return root


def test_the_data_module_trains_on_tiles_and_counts_them_in_the_summary(tmp_path):
    root = write_large_photos(tmp_path / "data")
    cfg = compose_config("config", [
        "data=csv", "data.classes=[tree]", "data.split=official", f"data.source.train={root / 'train.csv'}",
        f"data.source.val={root / 'val.csv'}", "data.num_workers=0", "data.resize=fixed_scale",
        "data.tiles.size=400", "data.tiles.overlap=0.0", "data.tiles.min_visible=0.5", "data.tiles.empty_fraction=0"])
    module = DetectionDataModule(cfg.data)
    summary = json.loads(module.write_summary(tmp_path / "run").read_text())
    tiling = summary["tiling"]
    # 2 photos x 4 tiles of 400 (x 0, 400; y 0, 200): photo 0's boxes in (0, 0) and (400, 0), photo 1's in
    # (400, 200); the 5 empty tiles left out.
    assert (tiling["photos"], tiling["tiles_with_boxes"], tiling["tiles"]) == (2, 3, 3)
    assert tiling["empty_tiles_left_out"] == 5
    assert (tiling["boxes_clipped"], tiling["boxes_dropped"]) == (2, 0)  # the box at x 385-415, in two halves
    assert summary["splits"]["train"]["images"] == 3 and summary["splits"]["val"]["images"] == 1
    image, target = module.datasets["train"][0]
    assert tuple(image.shape[-2:]) == (400, 400) and len(target["boxes"])


def test_tiles_of_the_synthetic_source():
    cfg = compose_config("config", ["data.source.num_train=2", "data.source.num_val=1", "data.source.num_test=1",
                                    "data.num_negatives=0", "data.resize=fixed_scale", "data.tiles.size=160",
                                    "data.tiles.overlap=0", "data.tiles.empty_fraction=1.0"])
    module = DetectionDataModule(cfg.data)
    module.setup()
    train = module.datasets["train"]
    assert len(train) == 2 * 4  # every scene (240-320 px a side) in 2 x 2 tiles of 160, all kept
    image, target = train[0]
    assert max(image.shape[-2:]) <= 160


def test_tiles_need_the_fixed_scale():
    cfg = compose_config("config", ["data.tiles.size=160"])
    with pytest.raises(ValueError, match="data.tiles.size=160 needs data.resize=fixed_scale"):
        DetectionDataModule(cfg.data)
