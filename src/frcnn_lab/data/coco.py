"""COCO detection JSON (what CVAT, Label Studio, Roboflow and others export).

Reads ``images`` (id, file_name, width, height), ``annotations`` (image_id, category_id, bbox
``[x, y, width, height]`` in pixels, iscrowd) and ``categories`` (id, name); category names are the class
names; each class keeps its category id (``read_coco`` returns name -> id, the first category of a name
when several share it). ``width`` / ``height``, when given, are the size the boxes were drawn on.
``file_name`` is relative to the images folder. A crowd box (``iscrowd: 1``) covers a group of
objects: like a VOC difficult box it is left out of training (unless ``data.use_difficult``) and marked
``difficult`` in evaluation splits, so evaluation neither rewards nor penalises detections on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from frcnn_lab.data.records import DataError, IssueLog, Record, inside_root


def _load(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: COCO annotation file not found")
    try:
        with open(path, encoding="utf-8") as document:
            data = json.load(document)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: malformed JSON ({error.msg}, column {error.colno})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: key {key!r} is missing or not a list")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: key 'annotations' is not a list")
    return data


def category_names(path: str | os.PathLike) -> list[str]:
    """The category names of a COCO file, in file order."""
    return [str(c.get("name")) for c in _load(Path(path))["categories"]]


def _size(image: dict) -> tuple[int, int] | None:
    height, width = image.get("height"), image.get("width")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (height, width))
    return (int(height), int(width)) if numbers else None


def read_coco(path: str | os.PathLike, images: str | os.PathLike | None, split: str,
              issues: IssueLog) -> tuple[list[Record], dict[str, int]]:
    """Records of every image in the file (images without annotations have no boxes), and category name ->
    category id in file order."""
    path = Path(path)
    image_dir = Path(images) if images else path.parent
    data = _load(path)
    try:
        categories = {c["id"]: str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError):
        raise DataError(f"{path}: every category needs an 'id' and a 'name'") from None
    if bad := [i for i in categories if not isinstance(i, int) or isinstance(i, bool)]:
        raise DataError(f"{path}: category ids must be integers, got {bad[0]!r}")
    category_ids: dict[str, int] = {}
    for category_id, name in categories.items():
        category_ids.setdefault(name, category_id)
    records: dict = {}
    for position, image in enumerate(data["images"]):
        where = f"{path}: images[{position}]"
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            raise DataError(f"{where}: needs 'id' and 'file_name'")
        if image["id"] in records:
            raise DataError(f"{where}: duplicate image id {image['id']!r}")
        file = inside_root(image_dir, str(image["file_name"]), where)
        records[image["id"]] = Record(str(image["id"]), file, np.zeros((0, 4), np.float32), [], np.zeros(0, bool),
                                      f"{where} ({image['file_name']})", size=_size(image))
    if not records:
        raise DataError(f"{path}: no images in the annotation file")
    boxes: dict = {key: [] for key in records}
    for position, annotation in enumerate(data.get("annotations", [])):
        where = f"{path}: annotations[{position}]"
        if not isinstance(annotation, dict):
            raise DataError(f"{where}: not an object")
        if annotation.get("image_id") not in records:
            issues.add(split, where, "annotation: unknown image_id")
            continue
        if annotation.get("category_id") not in categories:
            issues.add(split, where, "annotation: unknown category_id")
            continue
        bbox = annotation.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise DataError(f"{where}: bbox must be [x, y, width, height] numbers, got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        boxes[annotation["image_id"]].append(
            ([x, y, x + w, y + h], categories[annotation["category_id"]], bool(annotation.get("iscrowd", 0)), where)
        )
    for key, record in records.items():
        if boxes[key]:
            coordinates, names, crowd, wheres = zip(*boxes[key], strict=True)
            record.boxes = np.array(coordinates, np.float32).reshape(-1, 4)
            record.names, record.difficult, record.box_where = list(names), np.array(crowd, bool), list(wheres)
    return list(records.values()), category_ids
