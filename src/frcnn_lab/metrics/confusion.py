"""A confusion matrix over the classes plus background, at an IoU and a score threshold.

Rows are the ground-truth class, columns the predicted class; the last row and the last column are
*background*. Per image, the detections scoring >= ``score_threshold`` are taken in descending score order
(greedy, as COCO and VOC match), and each one matches the unmatched ground-truth box **of any class** with
the highest IoU, if that IoU is >= ``iou_threshold``:

- matched: one count at (its box's class, its class): the diagonal when the classes agree, a class confusion
  otherwise;
- unmatched: one count at (background, its class): a false alarm;
- every ground-truth box left unmatched: one count at (its class, background): a miss.

The match looks at geometry only, so a detection of the wrong class on an object is a confusion, not a false
alarm plus a miss. A difficult / crowd box (the ignored regions of the mAP) is never counted: a detection whose
best box is one is left out, and it is no miss. The (background, background) cell stays 0. Row-normalised:
each row over its sum (None for an empty row), so the diagonal of a class row is the share of its boxes found
with the right class, and the background row shows which classes the false alarms claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from frcnn_lab.metrics.gathered import GatheredDetections

BACKGROUND = "background"


def image_confusion(pred: dict[str, Tensor], target: dict[str, Tensor], num_classes: int, score_threshold: float,
                    iou_threshold: float = 0.5) -> Tensor:
    """One image's counts (K + 1, K + 1) int64 by the rule of the module docstring: index label - 1 for class
    label (1..K), index K for background. pred: "boxes" (D, 4) xyxy, "scores" (D,), "labels" (D,); target:
    "boxes" (G, 4), "labels" (G,), optional "difficult" (G,) bool."""
    counts = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.int64)
    kept = pred["scores"].detach().cpu() >= score_threshold
    scores, labels = pred["scores"].detach().cpu()[kept], pred["labels"].detach().cpu()[kept].long() - 1
    gt_labels = target["labels"].detach().cpu().long() - 1
    difficult = target.get("difficult", torch.zeros_like(gt_labels, dtype=torch.bool)).detach().cpu().bool()
    iou = box_iou(pred["boxes"].detach().cpu().float()[kept], target["boxes"].detach().cpu().float().reshape(-1, 4))
    taken = torch.zeros(len(gt_labels), dtype=torch.bool)
    for index in scores.argsort(descending=True, stable=True).tolist():
        candidates = iou[index].masked_fill(taken, -1.0)
        best = int(candidates.argmax()) if len(candidates) else -1
        if best >= 0 and candidates[best] >= iou_threshold:
            if difficult[best]:
                continue
            taken[best] = True
            counts[gt_labels[best], labels[index]] += 1
        else:
            counts[num_classes, labels[index]] += 1
    missed = ~taken & ~difficult
    counts[:, num_classes] += torch.bincount(gt_labels[missed], minlength=num_classes + 1)
    return counts


def confusion_figures(counts: Tensor, classes: Sequence[str], score_threshold: float,
                      iou_threshold: float) -> dict[str, Any]:
    """Counts (K + 1, K + 1) -> the JSON-ready matrix: {"labels", "rows", "columns", "score_threshold",
    "iou_threshold", "counts", "row_normalised"}."""
    counts = counts.cpu().long()
    totals = counts.sum(dim=1).tolist()
    normalised = [[value / total if total else None for value in row] for row, total in zip(counts.tolist(), totals,
                                                                                         strict=True)]
    return {"labels": [*classes, BACKGROUND], "rows": "ground truth", "columns": "prediction",
            "score_threshold": score_threshold, "iou_threshold": iou_threshold,
            "counts": counts.tolist(), "row_normalised": normalised}


class ConfusionMatrix(GatheredDetections):
    """update(preds, targets) per batch; compute() -> ``confusion_figures`` of every image seen (gathered from all
    processes under DDP). The matching runs at compute time on the CPU: updates stay on the inputs' device
    without waiting for it."""

    def __init__(self, classes: Sequence[str], score_threshold: float, iou_threshold: float = 0.5) -> None:
        super().__init__()
        self.classes, self.score_threshold, self.iou_threshold = list(classes), score_threshold, iou_threshold

    def compute(self) -> dict[str, Any]:
        counts = torch.zeros(len(self.classes) + 1, len(self.classes) + 1, dtype=torch.int64)
        for pred, target in zip(*self.images_seen(), strict=True):
            counts += image_confusion(pred, target, len(self.classes), self.score_threshold, self.iou_threshold)
        return confusion_figures(counts, self.classes, self.score_threshold, self.iou_threshold)


def format_confusion(confusion: dict[str, Any]) -> str:
    """The matrix as a Markdown table: counts, with the row-normalised share in brackets."""
    labels = confusion["labels"]
    lines = [f"Confusion matrix (rows: ground truth, columns: prediction; IoU >= {confusion['iou_threshold']}, "
             f"score >= {confusion['score_threshold']})",
             "| GT \\ predicted | " + " | ".join(labels) + " |", "| --- " * (len(labels) + 1) + "|"]
    for label, counts, shares in zip(labels, confusion["counts"], confusion["row_normalised"], strict=True):
        cells = [f"{n}" if share is None else f"{n} ({share:.2f})" for n, share in zip(counts, shares, strict=True)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusion_png(confusion: dict[str, Any], path: str | Path | None = None):
    """The row-normalised matrix as a heat map with the counts written in -> the matplotlib figure, saved as a
    PNG at ``path`` (and closed) when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = confusion["labels"]
    shares = [[0.0 if v is None else v for v in row] for row in confusion["row_normalised"]]
    size = 2.0 + 0.8 * len(labels)
    figure, axis = plt.subplots(figsize=(size + 1.5, size))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for row, (counts, values) in enumerate(zip(confusion["counts"], shares, strict=True)):
        for column, (count, share) in enumerate(zip(counts, values, strict=True)):
            axis.text(column, row, f"{count}\n{share:.2f}", ha="center", va="center", fontsize=8,
                      color="white" if share > 0.6 else "black")
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("ground truth")
    axis.set_title(f"IoU >= {confusion['iou_threshold']}, score >= {confusion['score_threshold']}", fontsize=9)
    figure.colorbar(image, ax=axis, label="share of the row")
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=80)
        plt.close(figure)
    return figure
