"""The file-based sources: config ``data.source`` -> annotation records per split.

``read_records(name, source, classes, class_map, issues)`` -> ``{split: [Record, ...]}`` for the splits
the source config names among ``train``, ``val``, ``test`` and ``negatives``; ``train`` is required.
It also checks that every class name the config asks for exists in the source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from frcnn_lab.data.coco import read_coco
from frcnn_lab.data.csv_source import read_csv
from frcnn_lab.data.openimages import read_subset
from frcnn_lab.data.records import DataError, IssueLog, Record
from frcnn_lab.data.voc import CLASSES as VOC_CLASSES
from frcnn_lab.data.voc import read_image_set

FILE_SOURCES = ("voc", "openimages", "csv", "coco")
SPLIT_KEYS = ("train", "val", "test", "negatives")


def _voc(source: Mapping[str, Any], issues: IssueLog) -> dict[str, list[Record]]:
    records = {}
    for split in SPLIT_KEYS:
        sets = source.get(split)
        if not sets:
            continue
        records[split] = [r for s in ([sets] if isinstance(sets, str) else sets)
                          for r in read_image_set(source["root"], str(s), split, issues, source.get("download", False))]
    return records


def _csv(source: Mapping[str, Any], issues: IssueLog) -> dict[str, list[Record]]:
    return {split: read_csv(source[split], source.get("root")) for split in SPLIT_KEYS if source.get(split)}


def _coco(source: Mapping[str, Any], issues: IssueLog) -> dict[str, list[Record]]:
    records = {}
    for split in SPLIT_KEYS:
        entry = source.get(split)
        if not entry:
            continue
        if isinstance(entry, str):
            entry = {"annotations": entry}
        records[split] = read_coco(entry["annotations"], entry.get("images"), split, issues)
    return records


def _openimages(source: Mapping[str, Any], issues: IssueLog) -> dict[str, list[Record]]:
    return read_subset(source["root"], issues)


READERS = {"voc": _voc, "csv": _csv, "coco": _coco, "openimages": _openimages}


def requested_names(classes: Sequence[str], class_map: Mapping[str, str]) -> set[str]:
    """Source class names the config uses: the class_map's keys and the classes nothing maps to."""
    return set(class_map) | (set(classes) - set(class_map.values()))


def read_records(name: str, source: Mapping[str, Any], classes: Sequence[str], class_map: Mapping[str, str],
                 issues: IssueLog) -> dict[str, list[Record]]:
    if name not in READERS:
        raise DataError(f"data={name!r} is not a file source; choose one of {list(READERS)}")
    if name != "openimages" and not source.get("train"):
        raise DataError(f"data.source.train is required for data={name}")
    records = READERS[name](source, issues)
    vocabulary = set(VOC_CLASSES) if name == "voc" else {n for r in records["train"] for n in r.names}
    if unknown := sorted(requested_names(classes, class_map) - vocabulary):
        raise DataError(
            f"data.classes / data.class_map name {unknown}, which the {name} train split has no box of; "
            f"its classes: {sorted(vocabulary)}"
        )
    return records
