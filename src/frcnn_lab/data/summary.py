"""The dataset summary printed at the start of a run and written to ``<run dir>/data_summary.json``.

Per split: images, images without boxes, boxes per class, difficult boxes, landscape / portrait
images, and the distribution of box sides sqrt(w * h) and shapes h / w in *input* pixels (after the
resize to ``data.image_size``, the scale the anchors live at). Then everything left out or changed
while reading the source, counted by reason, with the first examples of each reason. Training runs and
``browse`` add ``anchors``: how well the RPN's anchors fit the train boxes, and anchors suggested from
them (``frcnn_lab.model.anchor_fit``). ``object_size_mismatch`` compares the median box side of train
and val after the resize: a ratio above ``SIZE_MISMATCH_RATIO`` warns, as the model would be asked for
objects at a size it rarely saw in training (``data.resize=fixed_scale`` keeps photos of one ground
resolution at one object size). ``images_per_class`` counts the images holding each class; ``class_imbalance``
warns when the rarest class is in fewer than ``IMBALANCE_RATIO`` times the train images of the most frequent
(``data.sampler=repeat_factor`` is the usual answer; ``repeat_factors`` gives its factors per class when it
is on). ``size_bins_px``: the side ranges of the evaluation's size bins, the tertiles of the train boxes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_lab.data.datamodule import source_label
from frcnn_lab.data.samplers import repeat_factors
from frcnn_lab.model.anchor_fit import WARN_SHARE, fit_report
from frcnn_lab.model.backbones import feature_levels

log = logging.getLogger(__name__)
EXAMPLES_PER_REASON = 5
SIZE_MISMATCH_RATIO = 1.5  # train / val median box side (either way round) above which the run warns
IMBALANCE_RATIO = 0.1  # rarest / most frequent class's train images under which the run warns


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    points = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {k: round(float(v), 2) for k, v in zip(("min", "p10", "median", "p90", "max"), points, strict=True)}


def split_statistics(annotations, classes: list[str]) -> dict[str, Any]:
    """Counts and box distributions of one split (``DetectionDataModule.input_annotations``)."""
    per_class, images_with = np.zeros(len(classes) + 1, np.int64), np.zeros(len(classes) + 1, np.int64)
    sides, shapes, empty, difficult, portrait = [], [], 0, 0, 0
    for (height, width), boxes, labels, hard in annotations:
        empty += int(len(boxes) == 0)
        portrait += int(height > width)
        difficult += int(np.sum(hard))
        np.add.at(per_class, labels, 1)
        images_with[np.unique(labels)] += 1
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        sides.append(np.sqrt(w * h))
        shapes.append(h / np.maximum(w, 1e-6))
    images = len(annotations)
    return {
        "images": images,
        "images_without_boxes": empty,
        "landscape_images": images - portrait,
        "portrait_images": portrait,
        "boxes": int(per_class.sum()),
        "boxes_per_class": {name: int(per_class[i + 1]) for i, name in enumerate(classes)},
        "images_per_class": {name: int(images_with[i + 1]) for i, name in enumerate(classes)},
        "difficult_boxes": difficult,
        "box_side_input_px": _quantiles(np.concatenate(sides) if sides else np.zeros(0)),
        "box_height_over_width": _quantiles(np.concatenate(shapes) if shapes else np.zeros(0)),
    }


def size_mismatch(splits: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Median box sides of train and val in input pixels, their ratio (>= 1) and whether it passes
    ``SIZE_MISMATCH_RATIO``; None when either split has no boxes."""
    train, val = (splits.get(split, {}).get("box_side_input_px") for split in ("train", "val"))
    if not train or not val:
        return None
    ratio = max(train["median"], val["median"]) / max(min(train["median"], val["median"]), 1e-6)
    return {"train_median_px": train["median"], "val_median_px": val["median"], "ratio": round(ratio, 2),
            "warn": ratio > SIZE_MISMATCH_RATIO}


def mismatch_warning(mismatch: dict[str, Any] | None) -> str | None:
    if not mismatch or not mismatch["warn"]:
        return None
    return (f"train and val objects differ in size after the resize: median box side {mismatch['train_median_px']} "
            f"px in train, {mismatch['val_median_px']} px in val (ratio {mismatch['ratio']}, more than "
            f"{SIZE_MISMATCH_RATIO}); if the photos share one ground resolution, data.resize=fixed_scale keeps "
            "their objects at one size")


def class_imbalance(train: dict[str, Any]) -> dict[str, Any] | None:
    """The rarest and the most frequent class by train images, their ratio and whether it is under
    ``IMBALANCE_RATIO``; None with fewer than two classes or no boxes."""
    counts = train.get("images_per_class", {})
    if len(counts) < 2 or not max(counts.values()):
        return None
    rarest, most = min(counts, key=counts.get), max(counts, key=counts.get)
    ratio = counts[rarest] / counts[most]
    return {"rarest": rarest, "rarest_images": counts[rarest], "most_frequent": most,
            "most_frequent_images": counts[most], "ratio": round(ratio, 3), "warn": ratio < IMBALANCE_RATIO,
            "rarest_share": round(counts[rarest] / max(train["images"], 1), 4)}


def imbalance_warning(imbalance: dict[str, Any] | None, sampler: str) -> str | None:
    if not imbalance or not imbalance["warn"]:
        return None
    share = imbalance["rarest_share"]
    advice = "" if sampler == "repeat_factor" else "; data.sampler=repeat_factor repeats the images of rare classes"
    return (f"class {imbalance['rarest']} is in {imbalance['rarest_images']} train images, under "
            f"{IMBALANCE_RATIO:g} times the {imbalance['most_frequent_images']} of {imbalance['most_frequent']}"
            f"{advice} (a class is repeated when data.repeat_threshold is above the share of images holding it, "
            f"{share:g} for {imbalance['rarest']}: LVIS's 0.001 suits a thousand classes, not a few)")


def repeat_summary(datamodule) -> dict[str, Any] | None:
    """With ``data.sampler=repeat_factor``: the threshold, r_c per class and the train images an epoch draws."""
    if datamodule.sampler != "repeat_factor":
        return None
    labels = [labels for _, _, labels, _ in datamodule.input_annotations("train")]
    factors, per_class = repeat_factors(labels, datamodule.repeat_threshold)
    return {"threshold": datamodule.repeat_threshold,
            "per_class": {datamodule.classes[c - 1]: round(r, 3) for c, r in per_class.items()},
            "images": len(labels), "images_per_epoch": int(round(float(factors.sum())))}


def summarize(datamodule, anchors: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a set-up DetectionDataModule as a JSON-ready dict (with the anchor-fit report)."""
    issues = datamodule.issues
    splits = {split: split_statistics(datamodule.input_annotations(split), datamodule.classes)
              for split in datamodule.datasets}
    examples: dict[str, list[str]] = {}
    for entry in issues.entries:
        shown = examples.setdefault(entry["reason"], [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"[{entry['split']}] {entry['where']}")
    return {
        "source": source_label(datamodule.name, datamodule.source_args),
        "classes": datamodule.classes,
        "class_map": datamodule.class_map,
        "image_size": datamodule.preprocess.image_size,
        "max_size": datamodule.preprocess.max_size,
        "resize": datamodule.preprocess.resize,
        "scale": datamodule.preprocess.scale,
        "splits": splits,
        "object_size_mismatch": size_mismatch(splits),
        "class_imbalance": class_imbalance(splits.get("train", {})),
        "repeat_factors": repeat_summary(datamodule),
        "size_bins_px": size_bins(datamodule.size_bin_edges()),
        "tiling": datamodule.tiling(),
        "anchors": anchors,
        "skipped_or_changed": issues.counts(),
        "examples": examples,
        "notes": datamodule.notes,
    }


def size_bins(edges: list[float] | None) -> list[list[float | None]] | None:
    """Tertile edges [e1, e2] -> the bins' side ranges [[0, e1], [e1, e2], [e2, None]]."""
    return None if edges is None else [[0.0, edges[0]], [edges[0], edges[1]], [edges[1], None]]


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"=== data: {summary['source']}, classes {summary['classes']} ==="]
    for split, stats in summary["splits"].items():
        per_class = ", ".join(f"{k} {v}" for k, v in stats["boxes_per_class"].items())
        images = ", ".join(f"{k} {v}" for k, v in stats["images_per_class"].items())
        side = stats["box_side_input_px"]
        spread = f"box side px median {side['median']} (p10 {side['p10']}, p90 {side['p90']})" if side else "no boxes"
        lines.append(f"{split:>9}: {stats['images']} images ({stats['images_without_boxes']} without boxes), "
                     f"boxes: {per_class}; images with: {images}; {spread}")
    if bins := summary["size_bins_px"]:
        lines.append("size bins of the evaluation (train box side tertiles, input px): "
                     + ", ".join(f"{lo:g}-{hi:g}" if hi is not None else f">= {lo:g}" for lo, hi in bins))
    if repeat := summary["repeat_factors"]:
        lines.append(f"repeat-factor sampling (t = {repeat['threshold']:g}): r per class "
                     + ", ".join(f"{k} {v:g}" for k, v in repeat["per_class"].items())
                     + f"; {repeat['images_per_epoch']} draws per epoch from {repeat['images']} train images")
    if tiling := summary["tiling"]:
        lines.append(f"    tiles: train is {tiling['tiles']} tiles of {tiling['photos']} photos "
                     f"({tiling['tiles_with_boxes']} with boxes, {tiling['empty_tiles_kept']} without kept, "
                     f"{tiling['empty_tiles_left_out']} left out); boxes cut by a tile edge: "
                     f"{tiling['boxes_clipped']} clipped, {tiling['boxes_dropped']} dropped")
    if summary["skipped_or_changed"]:
        lines.append("skipped or changed while reading (reason: count):")
        lines += [f"  {reason}: {count}   e.g. {summary['examples'][reason][0]}"
                  for reason, count in summary["skipped_or_changed"].items()]
    lines += [f"note: {note}" for note in summary["notes"]]
    if summary["anchors"]:
        lines += format_anchor_fit(summary["anchors"])
    return "\n".join(lines)


def format_anchor_fit(report: dict[str, Any]) -> list[str]:
    """The anchor-fit lines of the summary: shares of train boxes whose best anchor (shape match) reaches
    each IoU, boxes outside the anchors' sizes, and the boxes each level's anchors fit best."""
    fit = report["fit"]
    shares = ", ".join(f">= {t}: {share:.0%}" for t, share in fit["share_best_iou_at_least"].items())
    lines = [f"anchors {report['used']['anchor_sizes']} x ratios {report['used']['aspect_ratios']}"
             f"{' (auto)' if any(report['auto'].values()) else ''}: train boxes whose best anchor has IoU {shares}; "
             f"{fit['share_smaller_than_smallest_anchor']:.0%} smaller than the smallest anchor, "
             f"{fit['share_larger_than_largest_anchor']:.0%} larger than the largest"]
    lines += [f"  level {name} {level['anchor_sizes']}: best anchor of {level['boxes_best_here']} boxes"
              for name, level in fit["levels"].items()]
    return lines


def anchor_warning(report: dict[str, Any]) -> str | None:
    """The warning and suggestion when too few train boxes fit an anchor (see ``anchor_fit.WARN_SHARE``)."""
    fit, suggested = report["fit"], report["suggested"]
    if not fit["warn"]:
        return None
    return (f"only {fit['share_best_iou_at_least']['0.5']:.0%} of the train boxes have an anchor of IoU >= 0.5 "
            f"(wanted {WARN_SHARE:.0%}); try rpn.anchor_sizes={suggested['anchor_sizes']} "
            f"rpn.aspect_ratios={suggested['aspect_ratios']} (IoU >= 0.5 for "
            f"{suggested['share_best_iou_at_least_0.5']:.0%}), or rpn.anchor_sizes=auto")


def train_anchor_report(datamodule, rpn: dict[str, Any], backbone: str) -> dict[str, Any]:
    """``anchor_fit.fit_report`` of the train boxes in input pixels for the ``rpn`` config group (its
    ``anchor_sizes`` / ``aspect_ratios`` may be ``auto``) on the levels of ``backbone``."""
    boxes = [b for _, b, _, _ in datamodule.input_annotations("train")]
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    return fit_report(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1], rpn["anchor_sizes"],
                      rpn["aspect_ratios"], rpn["fg_iou"], list(feature_levels(backbone)))


def write_summary(datamodule, output_dir: Path, anchors: dict[str, Any] | None = None) -> Path:
    """Log the summary and write it as JSON (a new file name if one exists already); returns the path."""
    summary = summarize(datamodule, anchors)
    log.info("\n%s", format_summary(summary))
    for warning in (mismatch_warning(summary["object_size_mismatch"]), anchors and anchor_warning(anchors),
                    imbalance_warning(summary["class_imbalance"], datamodule.sampler)):
        if warning:
            log.warning(warning)
    output_dir.mkdir(parents=True, exist_ok=True)
    path, number = output_dir / "data_summary.json", 1
    while path.exists():
        path, number = output_dir / f"data_summary-{number}.json", number + 1
    path.write_text(json.dumps(summary, indent=1))
    return path
