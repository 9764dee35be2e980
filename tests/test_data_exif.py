"""EXIF-rotated photos whose annotation states the image size: boxes drawn on the stored pixels are turned
with the image, boxes drawn on the upright view are kept (VOC ``<size>``, COCO ``width`` / ``height``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from frcnn_lab.data.images import exif_transpose_boxes
from test_data_folders import datamodule
from test_data_formats import voc_xml

STORED = (40, 60)  # (height, width) of the stored pixels
RAW_BOX = [8.0, 4.0, 30.0, 20.0]  # xyxy on the stored pixels: a red rectangle
ORIENTATION = 6  # "turn 90 degrees clockwise to view": displayed 40 wide, 60 high


@pytest.mark.parametrize("orientation", range(1, 9))
def test_box_transpose_matches_pil_exif_transpose(orientation):
    mask = np.zeros(STORED, np.uint8)
    x1, y1, x2, y2 = (int(v) for v in RAW_BOX)
    mask[y1:y2, x1:x2] = 255
    image = Image.fromarray(mask)
    image.getexif()[0x0112] = orientation
    upright = ImageOps.exif_transpose(image)
    turned = exif_transpose_boxes(np.array([RAW_BOX], np.float32), orientation, *STORED)
    np.testing.assert_array_equal(turned[0], upright.getbbox())


def write_rotated_photo(path: Path, orientation: int = ORIENTATION) -> None:
    """A JPEG stored 60 x 40 with a red rectangle at RAW_BOX and an EXIF orientation."""
    pixels = np.full((*STORED, 3), 90, np.uint8)
    x1, y1, x2, y2 = (int(v) for v in RAW_BOX)
    pixels[y1:y2, x1:x2] = (255, 0, 0)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif, quality=95)


UPRIGHT_BOX = exif_transpose_boxes(np.array([RAW_BOX], np.float32), ORIENTATION, *STORED)[0].tolist()
CASES = {  # image id: (annotated (height, width), box as annotated)
    "stored_view": (STORED, RAW_BOX),
    "upright_view": (STORED[::-1], UPRIGHT_BOX),
    "other_size": ((100, 100), UPRIGHT_BOX),
}


def check_boxes(module) -> None:
    samples = {Path(s.image_id).stem: s for s in module.datasets["train"].source.samples}
    for image_id in ("stored_view", "upright_view", "other_size"):
        np.testing.assert_allclose(samples[image_id].boxes, [UPRIGHT_BOX], err_msg=image_id)
    index = [s.image_id for s in module.datasets["train"].source.samples].index(samples["stored_view"].image_id)
    item = module.datasets["train"].source[index]
    x1, y1, x2, y2 = (int(v) for v in item["boxes"][0])
    assert item["image"].shape[:2] == STORED[::-1]
    assert item["image"][y1 + 1:y2 - 1, x1 + 1:x2 - 1, 0].mean() > 230  # the red rectangle, upright
    assert item["image"][y1 + 1:y2 - 1, x1 + 1:x2 - 1, 1].mean() < 30
    counts = Counter(e["reason"] for e in module.issues.entries if e["split"] == "train")
    assert counts["image: EXIF-rotated, boxes drawn on the stored pixels turned with it"] == 1
    assert counts["image: annotated size differs from the file's, boxes used as they are"] == 1
    assert any("annotated 100x100, file 40x60" in e["where"] for e in module.issues.entries)


def test_voc_size_says_which_view_the_boxes_were_drawn_on(tmp_path):
    for image_id, ((height, width), box) in CASES.items():
        write_rotated_photo(tmp_path / "JPEGImages" / f"{image_id}.jpg")
        xml = voc_xml(f"{image_id}.jpg", (height, width), [("red", [box[0] + 1, box[1] + 1, box[2], box[3]], 0)])
        (tmp_path / "Annotations").mkdir(exist_ok=True)
        (tmp_path / "Annotations" / f"{image_id}.xml").write_text(xml)
    module = datamodule("voc_folder", {"root": str(tmp_path), "train": ["."], "val": ["."]}, ["red"])
    check_boxes(module)


def test_coco_size_says_which_view_the_boxes_were_drawn_on(tmp_path):
    images, annotations = [], []
    for number, (image_id, ((height, width), box)) in enumerate(CASES.items(), start=1):
        write_rotated_photo(tmp_path / "images" / f"{image_id}.jpg")
        images.append({"id": number, "file_name": f"{image_id}.jpg", "width": width, "height": height})
        annotations.append({"id": number, "image_id": number, "category_id": 5, "iscrowd": 0,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    document = {"images": images, "annotations": annotations, "categories": [{"id": 5, "name": "red"}]}
    (tmp_path / "train.json").write_text(json.dumps(document))
    source = {"train": {"annotations": str(tmp_path / "train.json"), "images": str(tmp_path / "images")}}
    module = datamodule("coco", {**source, "val": source["train"]}, ["red"])
    for sample in module.datasets["train"].source.samples:
        sample.image_id = Path(sample.path).stem  # COCO ids are numbers: name the samples by file for the checks
    check_boxes(module)


def test_a_size_that_fits_both_views_keeps_the_boxes_and_is_counted(tmp_path):
    # Orientation 3 (turned 180 degrees) keeps the size: the file cannot tell which view was annotated.
    for image_id in ("a", "b"):
        write_rotated_photo(tmp_path / f"{image_id}.jpg", orientation=3)
        xml = voc_xml(f"{image_id}.jpg", STORED, [("red", [RAW_BOX[0] + 1, RAW_BOX[1] + 1, *RAW_BOX[2:]], 0)])
        (tmp_path / f"{image_id}.xml").write_text(xml)
    module = datamodule("voc_folder", {"root": str(tmp_path), "train": ["."], "val": ["."]}, ["red"])
    for sample in module.datasets["train"].source.samples:
        np.testing.assert_allclose(sample.boxes, [RAW_BOX])
    reason = "image: EXIF-rotated, annotated size fits both views, boxes taken as drawn on the upright image"
    entries = [e for e in module.issues.entries if e["split"] == "train" and e["reason"] == reason]
    assert len(entries) == 2 and "(EXIF orientation 3)" in entries[0]["where"]
