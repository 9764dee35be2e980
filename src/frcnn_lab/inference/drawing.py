"""Pictures of detections: boxes drawn on images (PNG), and the same boxes in W&B's ``wandb.Image`` format."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

GT_COLOR = "lime"
CLASS_COLORS = ("red", "dodgerblue", "orange", "magenta", "yellow", "cyan", "white", "purple")


def class_name(label: int, classes: Sequence[str]) -> str:
    """Label 1..K -> its class name (label 0 is background)."""
    return classes[label - 1] if 1 <= label <= len(classes) else f"class_{label}"


def draw_detections(
    image: Tensor, classes: Sequence[str], boxes: Tensor, labels: Tensor, scores: Tensor,
    gt_boxes: Tensor | None = None, gt_labels: Tensor | None = None, score_threshold: float = 0.0,
) -> Tensor:
    """Image (3, H, W) float in [0, 1] or uint8 -> uint8 (3, H, W) with the boxes drawn.

    Predictions (``boxes`` (N, 4) xyxy pixels, ``labels`` (N,), ``scores`` (N,)) with a score at or above
    ``score_threshold`` are drawn in their class's colour with "name score"; ground truth, when given,
    in green with "GT name".
    """
    canvas = image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).round().to(torch.uint8)
    canvas = canvas.cpu()
    width = max(1, round(max(canvas.shape[-2:]) / 200))
    if gt_boxes is not None and len(gt_boxes):
        names = [f"GT {class_name(int(c), classes)}" for c in gt_labels]
        canvas = draw_bounding_boxes(canvas, gt_boxes.cpu().float(), names, colors=GT_COLOR, width=width)
    keep = scores >= score_threshold
    if keep.any():
        kept_labels = labels[keep].tolist()
        names = [f"{class_name(c, classes)} {s:.2f}" for c, s in zip(kept_labels, scores[keep].tolist(), strict=True)]
        colors = [CLASS_COLORS[(c - 1) % len(CLASS_COLORS)] for c in kept_labels]
        canvas = draw_bounding_boxes(canvas, boxes[keep].cpu().float(), names, colors=colors, width=width)
    return canvas


def save_png(canvas: Tensor, path: Path) -> Path:
    """uint8 (3, H, W) -> a PNG at ``path`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(path)
    return path


def wandb_boxes(
    classes: Sequence[str], boxes: Tensor, labels: Tensor, scores: Tensor | None = None,
) -> dict:
    """Boxes (N, 4) xyxy pixels -> one entry of ``wandb.Image(..., boxes={key: entry})``."""
    class_labels = {i + 1: name for i, name in enumerate(classes)}
    box_data = []
    for i, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist(), strict=True)):
        entry = {
            "position": {"minX": box[0], "minY": box[1], "maxX": box[2], "maxY": box[3]},
            "domain": "pixel", "class_id": int(label), "box_caption": class_name(int(label), classes),
        }
        if scores is not None:
            entry["scores"] = {"score": float(scores[i])}
            entry["box_caption"] += f" {float(scores[i]):.2f}"
        box_data.append(entry)
    return {"box_data": box_data, "class_labels": class_labels}


def pad_to_common_size(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """HWC images of different sizes -> the same images zero-padded at the right and bottom to the largest size."""
    height, width = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    return [np.pad(i, ((0, height - i.shape[0]), (0, width - i.shape[1]), (0, 0))) for i in images]


def fresh_folder(folder: Path) -> Path:
    """``folder`` if it does not exist yet, else ``folder-2``, ``folder-3``... (nothing is overwritten)."""
    candidate, number = folder, 1
    while candidate.exists():
        number += 1
        candidate = folder.with_name(f"{folder.name}-{number}")
    candidate.mkdir(parents=True)
    return candidate
