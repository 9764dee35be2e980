"""The dataset browser: GT boxes drawn on their edges in the class colour, a contact sheet, the summary plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageColor

from frcnn_lab.browse import browse, class_color
from support import compose_config

GREY = (128, 128, 128)
SIZE = (48, 64)  # (height, width); image_size 48 / max_size 64 keep it: the transforms' resize is 1:1
BOXES = {"camera": (10, 8, 40, 30), "phone": (44, 20, 60, 44)}  # xyxy, right / bottom edges exclusive


def write_grey_dataset(root: Path, count: int = 6) -> Path:
    root.mkdir(parents=True)
    lines = []
    for i in range(count):
        Image.new("RGB", SIZE[::-1], GREY).save(root / f"{i}.png")
        lines += [f"{i}.png,{','.join(map(str, box))},{name}" for name, box in BOXES.items()]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root / "train.csv"


def run_browser(tmp_path: Path, *overrides: str) -> dict:
    csv = write_grey_dataset(tmp_path / "data")
    cfg = compose_config("browse", ["data=csv", "data.classes=[camera,phone]", f"data.source.train={csv}",
                                    "data.image_size=48", "data.max_size=64", "data.num_workers=0",
                                    "data.split_fractions=[0.5,0.5,0.0]", *overrides], tmp_path / "run")
    return browse(cfg)


def edge_pixels(box: tuple[int, int, int, int]) -> dict[str, tuple[int, int]]:
    """(x, y) on the left, right and bottom edges (the top edge carries the name) and well inside."""
    x1, y1, x2, y2 = box
    return {"left": (x1, (y1 + y2) // 2), "right": (x2 - 1, (y1 + y2) // 2), "bottom": ((x1 + x2) // 2, y2 - 1),
            "inside": ((x1 + x2) // 2, y2 - 4)}


def check_picture(path: Path, boxes: dict[str, tuple[int, int, int, int]]) -> None:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[:2] == SIZE
    for label, (name, box) in enumerate(boxes.items(), start=1):
        colour = ImageColor.getrgb(class_color(label))
        for where, (x, y) in edge_pixels(box).items():
            expected = GREY if where == "inside" else colour
            assert tuple(pixels[y, x]) == expected, (path.name, name, where)


def test_browser_draws_each_box_on_its_edges_in_its_class_colour(tmp_path):
    written = run_browser(tmp_path, "n=2")
    assert len(written["pictures"]) == 2
    for picture in written["pictures"]:
        check_picture(picture, BOXES)
    run = tmp_path / "run"
    assert written["contact_sheet"] == run / "contact_sheet.png" and Image.open(run / "contact_sheet.png").size[0] > 0
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["splits"]["train"]["boxes_per_class"] == {"camera": 3, "phone": 3}
    with Image.open(run / "data_summary.png") as plots:
        assert plots.size[0] > 500 and plots.size[1] > 300


def test_browser_shows_the_train_transforms_when_augmented(tmp_path):
    written = run_browser(tmp_path, "n=16", "augmented=true", "data.augment.hflip=1.0")
    assert len(written["pictures"]) == 3  # all train images: fewer than n
    width = SIZE[1]
    mirrored = {name: (width - x2, y1, width - x1, y2) for name, (x1, y1, x2, y2) in BOXES.items()}
    for picture in written["pictures"]:
        check_picture(picture, mirrored)


def test_browser_refuses_an_unknown_split(tmp_path):
    with pytest.raises(ValueError, match=r"split='training' is unknown"):
        run_browser(tmp_path, "split=training")
