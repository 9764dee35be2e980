"""AP by object size: COCO's small / medium / large areas, and size bins of the data's own boxes.

Boxes are measured where they are evaluated: in the pixels of the evaluated images (the model's input size),
by area w * h as COCO measures them. COCO's areas (< 32², 32²-96², > 96² px²) come from torchmetrics
(``map_small`` ... ``mar_large``, AR at 100 detections); on data whose objects are all COCO-"small" they tell
little, so the lab also cuts the boxes into **size bins of the train boxes**: the tertiles of the side
sqrt(w * h) of the train split's boxes at the model's input (``DetectionDataModule.size_bin_edges``), one third
of the train boxes in each bin. Each bin is scored as COCOeval scores an area range (faster_coco_eval's
COCOeval with ``params.areaRng``, the backend torchmetrics uses): a ground-truth box outside the bin is
ignored, a detection matched to it is ignored, and an unmatched detection counts only when its own area
is in the bin. An area exactly on an edge belongs to both bins, as in COCO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from torch import Tensor

from frcnn_lab.metrics.coco_json import ground_truth, results
from frcnn_lab.metrics.gathered import GatheredDetections

COCO_AREAS = ("small", "medium", "large")
COCO_AREA_EDGES = (32.0, 96.0)  # box sides (sqrt of COCO's area limits), px


def bin_ranges(edges: Sequence[float]) -> list[tuple[float, float]]:
    """Side edges [e1, e2, ...] (px) -> the bins' side ranges [(0, e1), (e1, e2), ..., (e_last, inf)]."""
    bounds = [0.0, *(float(e) for e in edges), math.inf]
    if any(b >= a for a, b in zip(bounds[1:], bounds[:-1], strict=False)) or bounds[1] <= 0:
        raise ValueError(f"size bin edges {list(edges)} must be increasing and > 0")
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def size_bin_ap(preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]], num_classes: int,
                edges: Sequence[float]) -> dict[str, Any]:
    """preds: per image "boxes" (D, 4) xyxy, "scores", "labels" 1..K; targets: "boxes", "labels", optional
    "difficult" (ignored regions, as in the mAP). ``edges``: box sides (px) between the bins.

    -> {"edges_px": edges, "bins": [{"side_px": [lo, hi] (hi None for the last), "boxes": ground-truth boxes
    in the bin (difficult aside), "map": AP@[.5:.95], "map_50": AP@0.5, "mar": AR@100}]}; a bin without a box
    to score has None figures."""
    ranges = bin_ranges(edges)
    classes = [str(label) for label in range(1, num_classes + 1)]
    gt = COCO(ground_truth(targets, classes))
    detections = gt.loadRes(results(preds, range(1, num_classes + 1)))
    evaluation = COCOeval_faster(gt, detections, "bbox", print_function=lambda *_: None)
    evaluation.params.areaRng = [[lo * lo, hi * hi if math.isfinite(hi) else 1e10] for lo, hi in ranges]
    evaluation.params.areaRngLbl = [f"bin{i}" for i in range(len(ranges))]
    evaluation.evaluate()
    evaluation.accumulate()
    precision, recall = evaluation.eval["precision"], evaluation.eval["recall"]  # (T, R, K, A, M), (T, K, A, M)
    areas = np.array([a["area"] for a in gt.dataset["annotations"] if not a["iscrowd"]], dtype=np.float64)
    bins = []
    for index, (lo, hi) in enumerate(ranges):
        boxes = int(((areas >= lo * lo) & (areas <= hi * hi)).sum())
        bins.append({"side_px": [lo, hi if math.isfinite(hi) else None], "boxes": boxes,
                     "map": mean_valid(precision[:, :, :, index, -1]) if boxes else None,
                     "map_50": mean_valid(precision[0, :, :, index, -1]) if boxes else None,
                     "mar": mean_valid(recall[:, :, index, -1]) if boxes else None})
    return {"edges_px": [float(e) for e in edges], "bins": bins}


def mean_valid(values: np.ndarray) -> float | None:
    """COCOeval's summary: the mean over the entries it filled (-1: no ground truth there)."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


class SizeBinAP(GatheredDetections):
    """torchmetrics wrapper of ``size_bin_ap``: update(preds, targets) per batch, compute() -> its figures; with
    ``edges`` None it keeps nothing and computes None."""

    def __init__(self, num_classes: int, edges: Sequence[float] | None = None) -> None:
        super().__init__()
        self.num_classes, self.edges = num_classes, None if edges is None else [float(e) for e in edges]

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        if self.edges is not None:
            super().update(preds, targets)

    def compute(self) -> dict[str, Any] | None:
        if self.edges is None:
            return None
        preds, targets = self.images_seen()
        return size_bin_ap(preds, targets, self.num_classes, self.edges)


def side_range(lo: float, hi: float | None) -> str:
    """(12.0, 30.5) -> "12.0-30.5 px"; the first bin "< hi px", the last ">= lo px"."""
    if not lo:
        return "all" if hi is None else f"< {hi:.1f} px"
    return f">= {lo:.1f} px" if hi is None else f"{lo:.1f}-{hi:.1f} px"


def format_sizes(ap_by_area: dict[str, dict[str, float | None]], ap_by_size: dict[str, Any] | None) -> str:
    """COCO's areas and the train-box tertiles as one Markdown table: bin, range, boxes, AP, AP@0.5, AR@100."""

    def show(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    lines = ["AP by object size (boxes measured at the model's input)",
             "| bin | box side | GT boxes | AP@[.5:.95] | AP@0.5 | AR@100 |", "| --- | --- | --- | --- | --- | --- |"]
    ranges = dict(zip(COCO_AREAS, bin_ranges(COCO_AREA_EDGES), strict=True))
    for area, figures in ap_by_area.items():
        lo, hi = ranges[area]
        lines.append(f"| COCO {area} | {side_range(lo, hi if math.isfinite(hi) else None)} | | "
                     f"{show(figures['map'])} | | {show(figures['mar'])} |")
    if ap_by_size is not None:
        for index, found in enumerate(ap_by_size["bins"], start=1):
            lines.append(f"| train tertile {index} | {side_range(*found['side_px'])} | {found['boxes']} | "
                         f"{show(found['map'])} | {show(found['map_50'])} | {show(found['mar'])} |")
    return "\n".join(lines)
