"""From annotation records (as a file format states them) to checked samples of the selected classes.

A ``Record`` is one image as its annotation file describes it: a path, boxes in pixels of the image as
displayed (or normalised to [0, 1] when ``normalized``), the source's class names, a ``difficult`` flag
per box, ``where`` (file and line) for messages and, where the format states it, the image size the
boxes were drawn on. ``prepare`` checks the image file and every box, maps class names to labels 1..K
and returns ``Sample``s; whatever it drops or changes goes to an ``IssueLog`` with the reason, so the
dataset summary can count it.

EXIF orientation: images are used upright (``images.load`` applies the orientation tag). When the
annotation states a size that matches the stored, un-rotated pixels and not the upright view, its boxes
were drawn on the stored pixels; they are turned with the image (``exif_transpose_boxes``) and counted.
When the stated size fits both views (a 180-degree turn, a mirror, a square image) the boxes are taken
as drawn on the upright image, as viewers and most annotation tools show it, and counted too.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from frcnn_lab.data.images import ImageError, Probe, exif_transpose_boxes, probe
from frcnn_lab.errors import UserError


class DataError(UserError, ValueError):
    """Malformed annotations or a data config that cannot be satisfied; the message names file and entry."""


@dataclass
class Record:
    """One annotated image as the source states it; boxes (N, 4) xyxy, names and difficult have N entries."""

    image_id: str
    path: Path
    boxes: np.ndarray
    names: list[str]
    difficult: np.ndarray
    where: str
    normalized: bool = False
    box_where: list[str] = field(default_factory=list)  # per box, where formats give each box its own line
    size: tuple[int, int] | None = None  # (height, width) the annotation says its boxes were drawn on

    def locate(self, box: int) -> str:
        return self.box_where[box] if self.box_where else f"{self.where} (box {box + 1})"

    @classmethod
    def empty(cls, image_id: str, path: Path, where: str) -> Record:
        return cls(image_id, path, np.zeros((0, 4), np.float32), [], np.zeros(0, bool), where)


@dataclass
class Sample:
    """A checked image: boxes (N, 4) float32 xyxy pixels of the displayed image, labels (N,) int64 in 1..K."""

    image_id: str
    path: Path
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


@dataclass
class IssueLog:
    """Everything left out or changed while reading a source: (split, where, reason) per event."""

    entries: list[dict[str, str]] = field(default_factory=list)

    def add(self, split: str, where: str, reason: str) -> None:
        self.entries.append({"split": split, "where": where, "reason": reason})

    def counts(self) -> dict[str, int]:
        """Reason -> number of events, most frequent first."""
        return dict(Counter(e["reason"] for e in self.entries).most_common())


def inside_root(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refusing anything that resolves outside ``root`` (``..``, absolute paths, links)."""
    if not relative or "\x00" in relative:
        raise DataError(f"{where}: empty or invalid path {relative!r}")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DataError(f"{where}: path {relative!r} points outside the data root {root}")
    return resolved


def safe_image_id(image_id: str, where: str) -> str:
    """An image id usable as a file name: no separators, no ``..``, not empty."""
    if not image_id or image_id in (".", "..") or any(c in image_id for c in "/\\\x00"):
        raise DataError(f"{where}: image id {image_id!r} is not a plain file name")
    return image_id


def read_id_list(path: str | os.PathLike) -> set[str]:
    """Image ids of a curation file: one per line; ``#`` starts a comment; blank lines are ignored."""
    ids = set()
    try:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                entry = line.split("#", 1)[0].strip()
                if entry:
                    ids.add(entry.split()[0])
    except FileNotFoundError:
        raise DataError(f"curation list {path} does not exist") from None
    return ids


def class_lookup(classes: Sequence[str], class_map: Mapping[str, str] | None) -> dict[str, int]:
    """Source class name -> label 1..K: each class maps to itself, ``class_map`` adds source names for it."""
    lookup = {name: i + 1 for i, name in enumerate(classes)}
    for source_name, target in (class_map or {}).items():
        if target not in lookup:
            raise DataError(f"data.class_map: {source_name!r} maps to {target!r}, which is not in data.classes "
                            f"{list(classes)}")
        lookup[source_name] = lookup[target]
    return lookup


def _probe_all(records: Sequence[Record], decode: bool, workers: int) -> list[Probe | ImageError]:
    """Probe or ImageError of each record's file; decoding runs in threads (PIL frees the GIL)."""
    def one(record: Record) -> Probe | ImageError:
        try:
            return probe(record.path, decode=decode)
        except ImageError as error:
            return error

    if workers <= 1 or len(records) < 8:
        return [one(r) for r in records]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, records))


def _orient_boxes(record: Record, probed: Probe, split: str, issues: IssueLog) -> None:
    """Bring boxes drawn on a file's stored pixels onto the upright image (see the module docstring)."""
    if record.size is None or record.normalized:
        return
    upright, stored = (probed.height, probed.width), probed.raw_size
    stated = tuple(record.size)
    if stated == upright and (probed.orientation == 1 or stated != stored):
        return
    if stated == stored and stated != upright:
        record.boxes = exif_transpose_boxes(record.boxes, probed.orientation, *stored)
        issues.add(split, record.where, "image: EXIF-rotated, boxes drawn on the stored pixels turned with it")
    elif stated == upright:
        issues.add(split, f"{record.where} (EXIF orientation {probed.orientation})",
                   "image: EXIF-rotated, annotated size fits both views, boxes taken as drawn on the upright image")
    else:
        sizes = f" (annotated {stated[1]}x{stated[0]}, file {upright[1]}x{upright[0]})"
        issues.add(split, record.where + sizes, "image: annotated size differs from the file's, boxes used as they are")


def _check_boxes(record: Record, height: int, width: int, split: str, issues: IssueLog) -> np.ndarray:
    """Mask of usable boxes; boxes reaching past the image are clipped in place (and logged)."""
    keep = np.ones(len(record.boxes), bool)
    if record.normalized:
        record.boxes = record.boxes * np.array([width, height, width, height], np.float32)
        record.normalized = False
    for i, box in enumerate(record.boxes):
        where = record.locate(i)
        if not np.all(np.isfinite(box)):
            issues.add(split, where, "box: NaN or infinite coordinate")
            keep[i] = False
            continue
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            issues.add(split, where, "box: zero or negative size")
            keep[i] = False
            continue
        clipped = np.clip(box, 0, [width, height, width, height])
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            issues.add(split, where, "box: entirely outside the image")
            keep[i] = False
        elif not np.array_equal(clipped, box):
            issues.add(split, where, "box: clipped to the image (kept)")
            record.boxes[i] = clipped
    return keep


def prepare(
    records: Sequence[Record], split: str, lookup: Mapping[str, int], issues: IssueLog, *,
    use_difficult: bool = False, verify_images: bool = True, workers: int = 1,
) -> tuple[list[Sample], list[Sample]]:
    """Check files and boxes, select classes; -> (samples, unselected).

    ``unselected`` holds images whose boxes all belong to other classes: dropped from ``train`` / ``val``
    / ``test`` (logged) and the candidates of the ``negatives`` split. An image that had boxes but keeps
    none of them for another reason is dropped (logged): it would teach the detector that its objects
    are background. Difficult boxes stay in evaluation splits with ``difficult`` set; in training they
    are used only with ``use_difficult``.
    """
    train, negatives = split == "train", split == "negatives"
    samples, unselected = [], []
    for record, probed in zip(records, _probe_all(records, verify_images, workers), strict=True):
        if isinstance(probed, ImageError):
            issues.add(split, record.where, f"image: {str(probed).rsplit(': ', 1)[-1]}")
            continue
        height, width = probed.height, probed.width
        _orient_boxes(record, probed, split, issues)
        keep = _check_boxes(record, height, width, split, issues)
        labels = np.zeros(len(record.names), np.int64)
        for i, name in enumerate(record.names):
            labels[i] = lookup.get(name, 0)
            if keep[i] and labels[i] == 0:
                keep[i] = False
                if not negatives:
                    issues.add(split, record.locate(i), f"box: class {name!r} not in data.classes / data.class_map")
        difficult = record.difficult.astype(bool)
        if train and not use_difficult:
            for i in np.flatnonzero(keep & difficult):
                issues.add(split, record.locate(i), "box: difficult, left out of training")
            keep &= ~difficult
        sample = Sample(record.image_id, record.path, height, width, record.boxes[keep].astype(np.float32),
                        labels[keep], difficult[keep])
        if len(record.names) and not keep.any():
            valid_but_other = all(lookup.get(n, 0) == 0 for n in record.names)
            if valid_but_other:
                unselected.append(sample)
                if not negatives:
                    issues.add(split, record.where, "image: no box of data.classes")
            else:
                issues.add(split, record.where, "image: no usable box left")
            continue
        samples.append(sample)
    return samples, unselected


def curate(records: Iterable[Record], include: set[str] | None, exclude: set[str], split: str,
           issues: IssueLog) -> list[Record]:
    """Records whose id is in ``include`` (when given) and not in ``exclude``; each drop is logged."""
    kept = []
    for record in records:
        if record.image_id in exclude:
            issues.add(split, record.where, "image: in the exclude list")
        elif include is not None and record.image_id not in include:
            issues.add(split, record.where, "image: not in the include list")
        else:
            kept.append(record)
    return kept


def seeded_order(ids: Sequence[str], seed: int) -> list[int]:
    """Indices of ``ids`` in a seeded random order that does not depend on the order the source lists them."""
    by_id = sorted(range(len(ids)), key=lambda i: ids[i])
    permutation = np.random.default_rng(seed).permutation(len(by_id))
    return [by_id[i] for i in permutation]


def random_split(items: Sequence, ids: Sequence[str], fractions: Sequence[float], seed: int) -> list[list]:
    """Split into len(fractions) disjoint parts of round(fraction * n) items (the last takes the rest)."""
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DataError(f"data.split_fractions={list(fractions)} must be non-negative and sum to 1")
    order = seeded_order(ids, seed)
    parts, start = [], 0
    for i, fraction in enumerate(fractions):
        end = len(order) if i == len(fractions) - 1 else min(len(order), start + round(fraction * len(order)))
        parts.append([items[j] for j in order[start:end]])
        start = end
    return parts
