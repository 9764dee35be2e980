"""The dataset summary printed at the start of a run and written to ``<run dir>/data_summary.json``.

Per split: images, images without boxes, boxes per class, difficult boxes, landscape / portrait
images, and the distribution of box sides sqrt(w * h) and shapes h / w in *input* pixels (after the
resize to ``data.image_size``, the scale the anchors live at). Then everything left out or changed
while reading the source, counted by reason, with the first examples of each reason.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_lab.data.transforms import resized_scale

log = logging.getLogger(__name__)
EXAMPLES_PER_REASON = 5


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    points = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {k: round(float(v), 2) for k, v in zip(("min", "p10", "median", "p90", "max"), points, strict=True)}


def split_statistics(dataset, classes: list[str], image_size: int, max_size: int) -> dict[str, Any]:
    """Counts and box distributions of one split (``dataset.source.annotation(i)`` for every image)."""
    per_class = np.zeros(len(classes) + 1, np.int64)
    sides, shapes, empty, difficult, portrait = [], [], 0, 0, 0
    for index in range(len(dataset.source)):
        (height, width), boxes, labels, hard = dataset.source.annotation(index)
        scale = resized_scale(height, width, image_size, max_size)
        empty += int(len(boxes) == 0)
        portrait += int(height > width)
        difficult += int(np.sum(hard))
        np.add.at(per_class, labels, 1)
        w, h = (boxes[:, 2] - boxes[:, 0]) * scale, (boxes[:, 3] - boxes[:, 1]) * scale
        sides.append(np.sqrt(w * h))
        shapes.append(h / np.maximum(w, 1e-6))
    images = len(dataset.source)
    return {
        "images": images,
        "images_without_boxes": empty,
        "landscape_images": images - portrait,
        "portrait_images": portrait,
        "boxes": int(per_class.sum()),
        "boxes_per_class": {name: int(per_class[i + 1]) for i, name in enumerate(classes)},
        "difficult_boxes": difficult,
        "box_side_input_px": _quantiles(np.concatenate(sides) if sides else np.zeros(0)),
        "box_height_over_width": _quantiles(np.concatenate(shapes) if shapes else np.zeros(0)),
    }


def summarize(datamodule) -> dict[str, Any]:
    """The summary of a set-up DetectionDataModule as a JSON-ready dict."""
    issues = datamodule.issues
    examples: dict[str, list[str]] = {}
    for entry in issues.entries:
        shown = examples.setdefault(entry["reason"], [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"[{entry['split']}] {entry['where']}")
    return {
        "source": datamodule.name,
        "classes": datamodule.classes,
        "class_map": datamodule.class_map,
        "image_size": datamodule.image_size,
        "max_size": datamodule.max_size,
        "splits": {split: split_statistics(dataset, datamodule.classes, datamodule.image_size, datamodule.max_size)
                   for split, dataset in datamodule.datasets.items()},
        "skipped_or_changed": issues.counts(),
        "examples": examples,
        "notes": datamodule.notes,
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"=== data: {summary['source']}, classes {summary['classes']} ==="]
    for split, stats in summary["splits"].items():
        per_class = ", ".join(f"{k} {v}" for k, v in stats["boxes_per_class"].items())
        side = stats["box_side_input_px"]
        spread = f"box side px median {side['median']} (p10 {side['p10']}, p90 {side['p90']})" if side else "no boxes"
        lines.append(f"{split:>9}: {stats['images']} images ({stats['images_without_boxes']} without boxes), "
                     f"boxes: {per_class}; {spread}")
    if summary["skipped_or_changed"]:
        lines.append("skipped or changed while reading (reason: count):")
        lines += [f"  {reason}: {count}   e.g. {summary['examples'][reason][0]}"
                  for reason, count in summary["skipped_or_changed"].items()]
    lines += [f"note: {note}" for note in summary["notes"]]
    return "\n".join(lines)


def write_summary(datamodule, output_dir: Path) -> Path:
    """Log the summary and write it as JSON (a new file name if one exists already); returns the path."""
    summary = summarize(datamodule)
    log.info("\n%s", format_summary(summary))
    output_dir.mkdir(parents=True, exist_ok=True)
    path, number = output_dir / "data_summary.json", 1
    while path.exists():
        path, number = output_dir / f"data_summary-{number}.json", number + 1
    path.write_text(json.dumps(summary, indent=1))
    return path
