"""Look at a dataset before training: ``python -m frcnn_lab.browse data=... split=train n=16 [augmented=true]``.

Draws the ground-truth boxes with their class names (one colour per class; ``difficult`` boxes say so)
on ``n`` images of ``split``, a seeded choice, into ``<run dir>/images/<index>_<image id>.png`` and one
``contact_sheet.png``. ``augmented=false`` shows the images as stored (upright, EXIF orientation
applied, at the file's size); ``augmented=true`` shows what the model gets: the split's transforms (for
train: the resize and the augmentation). The dataset summary goes to ``data_summary.json`` with its
plots beside it in ``data_summary.png``: boxes per class, box side histogram per class (input pixels,
after the resize, the anchor sizes of ``rpn`` / ``backbone`` marked) and boxes per image, one row per
split. The summary holds the anchor fit of the train boxes (``rpn.anchor_sizes=auto``: of the suggestion).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw
from torchvision.utils import draw_bounding_boxes

from frcnn_lab.cli import hydra_main
from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.data.records import DataError
from frcnn_lab.data.summary import train_anchor_report
from frcnn_lab.errors import ConfigError
from frcnn_lab.inference.drawing import CLASS_COLORS, class_name, save_png
from frcnn_lab.runs.folders import claim_output_dir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

THUMBNAIL = 256
CAPTION = 14
log = logging.getLogger(__name__)


def class_color(label: int) -> str:
    """The colour boxes of label 1..K are drawn in."""
    return CLASS_COLORS[(label - 1) % len(CLASS_COLORS)]


def draw_ground_truth(image: np.ndarray | torch.Tensor, boxes: np.ndarray | torch.Tensor,
                      labels: Sequence[int], difficult: Sequence[bool], classes: Sequence[str]) -> torch.Tensor:
    """Image uint8 (H, W, 3) or float (3, H, W) in [0, 1], boxes (N, 4) xyxy pixels -> uint8 (3, H, W) with
    each box's outline drawn on its edge pixels (and inwards from them) in its class colour, named."""
    if isinstance(image, np.ndarray):
        canvas = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    else:
        canvas = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    boxes = torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, 4)
    if not len(boxes):
        return canvas
    labels = [int(label) for label in labels]
    names = [class_name(label, classes) + (" (difficult)" if hard else "")
             for label, hard in zip(labels, difficult, strict=True)]
    # Boxes end at exclusive edges; PIL draws both rectangle edges inclusive: the outline's right and bottom
    # lines go on the box's last pixel column and row, not one pixel beyond.
    outline = boxes.round()
    outline[:, 2:] = torch.maximum(outline[:, 2:] - 1, outline[:, :2])
    width = max(1, round(max(canvas.shape[-2:]) / 300))
    return draw_bounding_boxes(canvas, outline, names, colors=[class_color(label) for label in labels], width=width)


def contact_sheet(pictures: Sequence[Path], path: Path) -> Path:
    """The pictures as thumbnails (at most THUMBNAIL px a side) in a near-square grid, each named below."""
    columns = math.ceil(math.sqrt(len(pictures)))
    rows = math.ceil(len(pictures) / columns)
    sheet = Image.new("RGB", (columns * THUMBNAIL, rows * (THUMBNAIL + CAPTION)), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for index, picture in enumerate(pictures):
        with Image.open(picture) as image:
            thumbnail = image.convert("RGB")
        thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
        left, top = (index % columns) * THUMBNAIL, (index // columns) * (THUMBNAIL + CAPTION)
        sheet.paste(thumbnail, (left + (THUMBNAIL - thumbnail.width) // 2, top + (THUMBNAIL - thumbnail.height) // 2))
        draw.text((left + 2, top + THUMBNAIL), picture.stem[:40], fill=(230, 230, 230))
    sheet.save(path)
    return path


def plot_summary(datamodule: DetectionDataModule, path: Path, anchor_sizes: Sequence[float] = ()) -> Path:
    """One row per split with images: boxes per class, box side histogram per class (input pixels, with
    ``anchor_sizes`` marked as dashed lines), boxes per image."""
    splits = [split for split, dataset in datamodule.datasets.items() if len(dataset)]
    classes = datamodule.classes
    figure, axes = plt.subplots(len(splits), 3, figsize=(15, 3.6 * len(splits)), squeeze=False)
    for row, split in zip(axes, splits, strict=True):
        annotations = datamodule.input_annotations(split)
        labels = np.concatenate([box_labels for _, _, box_labels, _ in annotations])
        boxes = np.concatenate([boxes for _, boxes, _, _ in annotations])
        sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        per_image = [len(boxes) for _, boxes, _, _ in annotations]
        counts = [int(np.sum(labels == k)) for k in range(1, len(classes) + 1)]
        row[0].bar(range(len(classes)), counts, color=[class_color(k) for k in range(1, len(classes) + 1)])
        row[0].set_xticks(range(len(classes)), classes, rotation=30, ha="right")
        row[0].set_title(f"{split}: boxes per class ({len(labels)} boxes)")
        bins = np.linspace(0, max(float(sides.max()) if len(sides) else 1.0, 1.0), 21)
        for k, name in enumerate(classes, start=1):
            if np.any(labels == k):
                row[1].hist(sides[labels == k], bins=bins, histtype="step", linewidth=1.5, color=class_color(k),
                            label=name)
        for number, size in enumerate(anchor_sizes):
            row[1].axvline(size, color="black", linestyle="--", linewidth=1,
                           label="anchor sizes" if number == 0 else None)
        if len(sides) or len(anchor_sizes):
            row[1].legend(fontsize="small")
        row[1].set_title(f"{split}: box side sqrt(w*h), input px (image_size {datamodule.preprocess.image_size})")
        images_with = np.bincount(per_image)
        row[2].bar(range(len(images_with)), images_with, color="grey")
        row[2].set_xticks(range(len(images_with)))
        row[2].set_xlabel("boxes")
        row[2].set_title(f"{split}: boxes per image ({len(per_image)} images)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _file_name(index: int, image_id: str) -> str:
    return f"{index:03d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', image_id)[:80]}.png"


def browse(cfg: DictConfig) -> dict[str, Any]:
    """Write the pictures, the contact sheet, the summary and its plots; -> what was written."""
    output = claim_output_dir(cfg.paths.output_dir)
    datamodule = DetectionDataModule(cfg.data)
    datamodule.setup()
    if cfg.split not in datamodule.datasets:
        raise ConfigError(f"split={cfg.split!r} is unknown; choose one of {list(datamodule.datasets)}")
    if cfg.n < 1:
        raise ConfigError(f"n={cfg.n} must be >= 1")
    anchors = train_anchor_report(datamodule, OmegaConf.to_container(cfg.rpn, resolve=True), cfg.backbone.name)
    summary_path = datamodule.write_summary(output, anchors)
    used = anchors["used"]["anchor_sizes"]  # flat, or one list per level: each size drawn once
    sizes = sorted({size for level in used for size in (level if isinstance(level, list) else [level])})
    plots = plot_summary(datamodule, summary_path.with_suffix(".png"), sizes)
    dataset = datamodule.datasets[cfg.split]
    if not len(dataset):
        raise DataError(f"split={cfg.split!r} has no images; see {summary_path}")
    torch.manual_seed(cfg.seed)  # the augmentation drawn (DetectionDataset seeds albumentations from torch)
    chosen = sorted(np.random.default_rng(cfg.seed).permutation(len(dataset))[:cfg.n].tolist())
    folder = output / "images"
    pictures = []
    for position, index in enumerate(chosen):
        if cfg.augmented:
            image, target = dataset[index]
            boxes, labels, difficult = target["boxes"], target["labels"].tolist(), target["difficult"].tolist()
        else:
            target = dataset.source[index]
            image, boxes = target["image"], target["boxes"]
            labels, difficult = np.asarray(target["labels"]).tolist(), np.asarray(target["difficult"]).tolist()
        canvas = draw_ground_truth(image, boxes, labels, difficult, datamodule.classes)
        pictures.append(save_png(canvas, folder / _file_name(position, str(target["image_id"]))))
    sheet = contact_sheet(pictures, output / "contact_sheet.png")
    log.info("%d %s images (%s) -> %s; contact sheet %s; summary %s and %s", len(pictures), cfg.split,
             "after the transforms" if cfg.augmented else "as stored", folder, sheet, summary_path, plots)
    return {"pictures": pictures, "contact_sheet": sheet, "summary": summary_path, "plots": plots}


@hydra_main("browse")
def main(cfg: DictConfig) -> None:
    written = browse(cfg)
    print(f"{len(written['pictures'])} pictures in {written['pictures'][0].parent}; contact sheet "
          f"{written['contact_sheet']}; summary {written['summary']} (plots {written['plots']})")


if __name__ == "__main__":
    main()
