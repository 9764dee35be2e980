"""YOLO txt exports with a ``data.yaml`` (Ultralytics, Roboflow "YOLOv8", CVAT "Ultralytics YOLO Detection").

``data.yaml`` gives ``names`` (a list, or a mapping class id -> name; ``nc``, when present, must match)
and ``train`` / ``val`` / ``test``: each an image folder (read with its subfolders), a list file of
image paths (``.txt``, one per line, relative to the list file's folder), or a list of those. Relative
paths are relative to the yaml's ``path`` key (itself relative to the yaml's folder) or else to the
yaml's folder; as in Ultralytics, an entry ``../x`` that does not exist is tried as ``x`` (Roboflow
writes ``../train/images`` beside a ``train/`` folder).

An image's labels are the ``.txt`` file of the same name with the last ``images`` folder of its path
replaced by ``labels`` (``images/train/a.jpg`` -> ``labels/train/a.txt``), or else beside the image
(CVAT's and LabelImg's layout). Each line is ``class cx cy w h``, normalised to [0, 1] by the image's
width and height; a line ``class x1 y1 ... xn yn`` (a segmentation polygon, n >= 3) gives the polygon's
bounding box. An empty label file is an image without objects; a missing one too, counted. Malformed
lines, class ids not in ``names``, coordinates outside [0, 1] and repeated lines are left out and
counted; an image whose label lines are all left out is left out (counted), not used as an empty image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from frcnn_lab.data.records import DataError, IssueLog, Record

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp")
SPLIT_KEYS = ("train", "val", "test")


def load_data_yaml(path: str | os.PathLike) -> tuple[dict[int, str], Path, dict[str, Any]]:
    """(class id -> name, dataset root, the document); DataError naming the file and key when malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: YOLO data.yaml not found")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{line}: malformed YAML ({getattr(error, 'problem', None) or error})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    if not isinstance(document, dict):
        raise DataError(f"{path}: expected a mapping with keys 'names', 'train' and 'val'")
    names = _names(document.get("names"), path)
    if "nc" in document and document["nc"] != len(names):
        raise DataError(f"{path}: key 'nc' is {document['nc']!r} but key 'names' has {len(names)} entries")
    root = path.parent
    if document.get("path"):
        root = root / str(document["path"])
        if not root.is_dir():
            raise DataError(f"{path}: key 'path': {document['path']!r} is not a folder ({root})")
    return names, root, document


def _names(value: Any, path: Path) -> dict[int, str]:
    if isinstance(value, list):
        items = list(enumerate(value))
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        raise DataError(f"{path}: key 'names' must be a list of class names or a mapping id -> name, got {value!r}")
    names = {}
    for key, name in items:
        try:
            class_id = int(key)
        except (TypeError, ValueError):
            raise DataError(f"{path}: key 'names': class id {key!r} is not an integer") from None
        if class_id < 0 or isinstance(name, (dict, list)) or name is None or str(name) == "":
            raise DataError(f"{path}: key 'names': entry {key!r}: {name!r} is not a class id >= 0 with a name")
        names[class_id] = str(name)
    if not names:
        raise DataError(f"{path}: key 'names' is empty")
    return names


def _resolve(root: Path, entry: str, where: str) -> Path:
    candidate = root / entry
    if not candidate.exists() and entry.startswith("../"):
        candidate = root / entry[3:]
    if not candidate.exists():
        raise DataError(f"{where}: {entry!r} not found (looked for {root / entry})")
    return candidate


def image_paths(root: Path, value: Any, where: str) -> list[Path]:
    """The images of a split entry: folders (recursive), ``.txt`` list files, or a list of them."""
    entries = value if isinstance(value, list) else [value]
    images: list[Path] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            raise DataError(f"{where}: expected a folder or a list file, got {entry!r}")
        found = _resolve(root, entry, where)
        if found.is_dir():
            files = sorted(p for p in found.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise DataError(f"{where}: no images in {found}")
            images += files
        else:
            try:
                lines = found.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as error:
                raise DataError(f"{where}: {found} is not a UTF-8 list of image paths ({error})") from None
            listed = [found.parent / line.strip() for line in lines if line.strip()]
            if not listed:
                raise DataError(f"{where}: list file {found} names no images")
            images += listed
    return images


def label_path(image: Path) -> Path:
    """``.../images/x/a.jpg`` -> ``.../labels/x/a.txt`` when that exists or the path has no ``images``
    folder; else ``a.txt`` beside the image when that exists."""
    parts = list(image.parts)
    folders = [i for i, part in enumerate(parts[:-1]) if part == "images"]
    if folders:
        parts[folders[-1]] = "labels"
    mirrored, beside = Path(*parts).with_suffix(".txt"), image.with_suffix(".txt")
    return beside if not mirrored.is_file() and beside.is_file() else mirrored


def _box(values: list[float]) -> list[float] | None:
    """Normalised xyxy of ``cx cy w h`` or of a polygon ``x1 y1 ... xn yn``; None for another count."""
    if len(values) == 4:
        cx, cy, w, h = values
        return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    if len(values) >= 6 and len(values) % 2 == 0:
        xs, ys = values[0::2], values[1::2]
        return [min(xs), min(ys), max(xs), max(ys)]
    return None


def read_labels(path: Path, names: Mapping[int, str], split: str, issues: IssueLog) -> tuple[list, list, list] | None:
    """(boxes normalised xyxy, names, where per box) of one label file; None when every line was left out."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        issues.add(split, str(path), "label: not a UTF-8 text file, image left out")
        return None
    boxes, classes, wheres, seen = [], [], [], set()
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        box = _box(values[1:]) if values and values[0].is_integer() else None
        if box is None:
            issues.add(split, where, "label: malformed line (expected 'class cx cy w h')")
        elif int(values[0]) not in names:
            issues.add(split, where, "label: class id not in data.yaml names")
        elif not all(0.0 <= v <= 1.0 for v in values[1:]):
            issues.add(split, where, "label: coordinate outside [0, 1] (not normalised)")
        elif tuple(fields) in seen:
            issues.add(split, where, "label: repeated line, left out")
        else:
            seen.add(tuple(fields))
            boxes.append(box)
            classes.append(names[int(values[0])])
            wheres.append(where)
    if not boxes and any(line.strip() for line in lines):
        issues.add(split, str(path), "label: no usable line, image left out")
        return None
    return boxes, classes, wheres


def _image_id(image: Path, root: Path) -> str:
    try:
        return image.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(image)


def read_split(images: list[Path], root: Path, names: Mapping[int, str], split: str, where: str,
               issues: IssueLog) -> list[Record]:
    """Records of ``images`` with their label files; DataError when none of them has one (a layout error)."""
    records, labelled = [], 0
    for image in images:
        labels = label_path(image)
        record = Record.empty(_image_id(image, root), image, f"{image}")
        record.normalized = True
        if not labels.is_file():
            issues.add(split, str(labels), "label: no label file, image without objects")
        else:
            labelled += 1
            read = read_labels(labels, names, split, issues)
            if read is None:
                continue
            boxes, classes, wheres = read
            record.boxes = np.array(boxes, np.float32).reshape(-1, 4)
            record.names, record.box_where = classes, wheres
            record.difficult = np.zeros(len(classes), bool)
        records.append(record)
    if images and not labelled:
        raise DataError(f"{where}: none of the {len(images)} images has a label file (looked for "
                        f"{label_path(images[0])} for {images[0]}); labels go in a labels/ folder mirroring images/")
    return records


def read_yolo(path: str | os.PathLike, issues: IssueLog, negatives: str | None = None) -> dict[str, list[Record]]:
    """Records of each split the data.yaml names (``train`` required), and of ``negatives`` (an image
    folder or list file, relative to the dataset root) when given."""
    path = Path(path)
    names, root, document = load_data_yaml(path)
    if not document.get("train"):
        raise DataError(f"{path}: key 'train' is missing or empty (an image folder or a list file)")
    entries = {split: document[split] for split in SPLIT_KEYS if document.get(split)}
    if negatives:
        entries["negatives"] = negatives
    records = {}
    for split, entry in entries.items():
        where = f"{path}: key {split!r}" if split != "negatives" else "data.source.negatives"
        records[split] = read_split(image_paths(root, entry, where), root, names, split, where, issues)
    return records
