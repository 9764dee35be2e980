"""The file-based sources: config ``data.source`` -> annotation records per split.

``read_records(name, source, classes, class_map, issues)`` -> ``({split: [Record, ...]}, category_ids)``
for the splits the source config names among ``train``, ``val``, ``test`` and ``negatives``; ``train``
is required. ``category_ids`` maps source class names to the ids the source gives them (COCO category
ids; empty for sources without ids). It also checks that every class name the config asks for exists
in the source's train split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from frcnn_lab.data.coco import read_coco
from frcnn_lab.data.csv_source import read_csv
from frcnn_lab.data.openimages import read_subset
from frcnn_lab.data.records import DataError, IssueLog, Record
from frcnn_lab.data.voc import read_folder_set, read_image_set
from frcnn_lab.data.yolo import read_yolo

FILE_SOURCES = ("voc", "voc_folder", "openimages", "csv", "coco", "yolo")
SPLIT_KEYS = ("train", "val", "test", "negatives")
Records = dict[str, list[Record]]


def _sets(source: Mapping[str, Any], read) -> Records:
    """Each split's entries (one or a list) read with ``read(entry, split)``, concatenated."""
    records = {}
    for split in SPLIT_KEYS:
        sets = source.get(split)
        if sets:
            records[split] = [r for s in ([sets] if isinstance(sets, str) else sets) for r in read(str(s), split)]
    return records


def _voc(source: Mapping[str, Any], issues: IssueLog) -> tuple[Records, dict[str, int]]:
    download = source.get("download", False)
    return _sets(source, lambda entry, split: read_image_set(source["root"], entry, split, issues, download)), {}


def _voc_folder(source: Mapping[str, Any], issues: IssueLog) -> tuple[Records, dict[str, int]]:
    if not source.get("root"):
        raise DataError("data.source.root is required for data=voc_folder: the exported folder")
    return _sets(source, lambda entry, split: read_folder_set(source["root"], entry, split, issues)), {}


def _csv(source: Mapping[str, Any], issues: IssueLog) -> tuple[Records, dict[str, int]]:
    return {split: read_csv(source[split], source.get("root")) for split in SPLIT_KEYS if source.get(split)}, {}


def _coco(source: Mapping[str, Any], issues: IssueLog) -> tuple[Records, dict[str, int]]:
    """Category ids come from the train file; a name with another id in another split's file is counted."""
    records, category_ids = {}, {}
    for split in SPLIT_KEYS:
        entry = source.get(split)
        if not entry:
            continue
        if isinstance(entry, str):
            entry = {"annotations": entry}
        records[split], ids = read_coco(entry["annotations"], entry.get("images"), split, issues)
        if split == "train":
            category_ids = ids
        for name, category_id in ids.items():
            if name in category_ids and category_ids[name] != category_id:
                issues.add(split, f"{entry['annotations']}: category {name!r} id {category_id} (train: "
                                  f"{category_ids[name]})", "category: id differs from the train file's, train's used")
    return records, category_ids


def _openimages(source: Mapping[str, Any], issues: IssueLog) -> tuple[Records, dict[str, int]]:
    return read_subset(source["root"], issues), {}


def _yolo(source: Mapping[str, Any], issues: IssueLog) -> tuple[Records, dict[str, int]]:
    return read_yolo(source["yaml"], issues, source.get("negatives")), {}


READERS = {"voc": _voc, "voc_folder": _voc_folder, "csv": _csv, "coco": _coco, "openimages": _openimages,
           "yolo": _yolo}
REQUIRED = {"voc": "train", "voc_folder": "train", "csv": "train", "coco": "train", "yolo": "yaml"}


def requested_names(classes: Sequence[str], class_map: Mapping[str, str]) -> set[str]:
    """Source class names the config uses: the class_map's keys and the classes nothing maps to."""
    return set(class_map) | (set(classes) - set(class_map.values()))


def read_records(name: str, source: Mapping[str, Any], classes: Sequence[str], class_map: Mapping[str, str],
                 issues: IssueLog) -> tuple[Records, dict[str, int]]:
    if name not in READERS:
        raise DataError(f"data={name!r} is not a file source; choose one of {list(READERS)}")
    if (key := REQUIRED.get(name)) and not source.get(key):
        raise DataError(f"data.source.{key} is required for data={name}")
    records, category_ids = READERS[name](source, issues)
    vocabulary = {n for r in records["train"] for n in r.names}
    if unknown := sorted(requested_names(classes, class_map) - vocabulary):
        raise DataError(
            f"data.classes / data.class_map name {unknown}, which the {name} train split has no box of; "
            f"its classes: {sorted(vocabulary)}"
        )
    return records, category_ids
