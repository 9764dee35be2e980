"""The thesis code's annotation format: ``path,x1,y1,x2,y2,class`` per box, no header.

``path`` is relative to the CSV's folder (or ``root``); x1, y1 (top left) and x2, y2 (bottom right) are
pixels of the image as displayed. An image with several boxes has several lines. Class ``bg`` marks a
hard-negative image: it has no box and its coordinates are ignored (they may be empty).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from frcnn_lab.data.records import DataError, Record, inside_root

BACKGROUND = "bg"
COLUMNS = ("x1", "y1", "x2", "y2")


def _coordinate(text: str, where: str, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: {column}={text!r} is not a number") from None


def read_csv(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Record]:
    """Records in the order images first appear; DataError naming file and line for malformed lines."""
    path = Path(path)
    root = Path(root) if root else path.parent
    if not path.is_file():
        raise DataError(f"{path}: annotation CSV not found")
    images: dict[str, dict] = {}
    with open(path, newline="", encoding="utf-8-sig") as lines:
        try:
            for number, row in enumerate(csv.reader(lines), start=1):
                where = f"{path}:{number}"
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != 6:
                    raise DataError(f"{where}: expected 6 fields path,x1,y1,x2,y2,class, got {len(row)}: {row}")
                name, cls = row[0].strip(), row[5].strip()
                if not cls:
                    raise DataError(f"{where}: empty class name")
                image = images.setdefault(name, {"path": inside_root(root, name, where), "where": where,
                                                  "boxes": [], "names": [], "lines": []})
                if cls == BACKGROUND:
                    continue
                box = [_coordinate(row[i].strip(), where, column) for i, column in enumerate(COLUMNS, start=1)]
                image["boxes"].append(box)
                image["names"].append(cls)
                image["lines"].append(where)
        except (csv.Error, UnicodeDecodeError) as error:
            raise DataError(f"{path}: not a readable CSV ({error})") from None
    if not images:
        raise DataError(f"{path}: no images in the annotation file")
    return [
        Record(image_id=name, path=image["path"], boxes=np.array(image["boxes"], np.float32).reshape(-1, 4),
               names=image["names"], difficult=np.zeros(len(image["names"]), bool), where=image["where"],
               box_where=image["lines"])
        for name, image in images.items()
    ]
