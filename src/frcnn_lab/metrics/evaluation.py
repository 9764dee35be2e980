"""The one set of evaluation figures, shared by validation and ``frcnn_lab.evaluate``.

``DetectionEvaluation`` holds torchmetrics states for COCO mAP@[.5:.95] (per class too), per-class AP@0.5,
the detection rates, the inference time per image, the TIDE error breakdown (``error_analysis``,
``frcnn_lab.metrics.tide``), AP by object size (``ap_by_area``: COCO's areas; ``ap_by_size``: bins of the train
boxes' sides when ``size_edges`` is given; ``frcnn_lab.metrics.sizes``), the confusion matrix at IoU 0.5 and
the score threshold (``confusion``, ``frcnn_lab.metrics.confusion``) and, for VOC, the VOC07 11-point AP.
Its states stay on the device of the inputs (the module's): under DDP, torchmetrics gathers every state with
``torch.distributed.all_gather``, and the NCCL backend gathers CUDA tensors only.

``compute()`` -> figures with one rule for missing values: a class absent from the evaluated images, and
torchmetrics' -1 ("nothing to evaluate"), are None (JSON null; logged as NaN).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from frcnn_lab.metrics.confusion import ConfusionMatrix
from frcnn_lab.metrics.rates import DetectionRates, mean_average_precision, metric_target
from frcnn_lab.metrics.sizes import COCO_AREAS, SizeBinAP
from frcnn_lab.metrics.tide import TideErrors
from frcnn_lab.metrics.voc import VOC07AveragePrecision


def finite(value: float | Tensor | None) -> float | None:
    """NaN and torchmetrics' -1 ("no such object") become None, which JSON writes as null."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or value < 0 else value


def per_class(results: dict[str, Tensor], classes: Sequence[str]) -> dict[str, float | None]:
    """torchmetrics' ``map_per_class`` -> {class name: AP} for labels 1..K; an absent class is None."""
    seen, values = results["classes"].reshape(-1).tolist(), results["map_per_class"].reshape(-1).tolist()
    # With nothing to evaluate torchmetrics gives no classes and a single -1: then every class is None.
    ap = dict(zip(seen, values, strict=True)) if len(seen) == len(values) else {}
    return {name: finite(ap.get(i + 1)) for i, name in enumerate(classes)}


def timed_forward(predict: Callable[[list[Tensor]], list[dict[str, Tensor]]], images: list[Tensor],
                  ) -> tuple[list[dict[str, Tensor]], float]:
    """``predict(images)`` -> (its detections, milliseconds per image); CUDA work is waited for on both ends,
    so the time is this batch's forward alone."""
    device = images[0].device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    detections = predict(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return detections, 1000 * (time.perf_counter() - start) / len(images)


class InferenceTime(Metric):
    """Median milliseconds per image over the timed batches, each process's first batch (warm-up) left out
    unless it is the only one."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("ms_per_image", default=[], dist_reduce_fx="cat")
        self.add_state("warm", default=[], dist_reduce_fx="cat")
        self._batches = 0  # this process's updates since reset: the first is the warm-up

    def update(self, ms_per_image: float) -> None:
        self.ms_per_image.append(torch.tensor([ms_per_image], device=self.device))
        self.warm.append(torch.tensor([float(self._batches > 0)], device=self.device))
        self._batches += 1

    def compute(self) -> Tensor:
        # Lists before a sync, concatenated tensors after one.
        if isinstance(self.ms_per_image, list) and not self.ms_per_image:
            return torch.tensor(float("nan"))
        times, warm = dim_zero_cat(self.ms_per_image), dim_zero_cat(self.warm) > 0
        if not len(times):
            return torch.tensor(float("nan"))
        return torch.quantile(times[warm] if warm.any() else times, 0.5)  # the mean of the middle two when even

    def reset(self) -> None:
        super().reset()
        self._batches = 0


class DetectionEvaluation(nn.Module):
    """update(preds, targets, ms_per_image) per batch; compute() -> figures (module docstring); reset().

    preds: per image "boxes" (D, 4) xyxy, "scores" (D,), "labels" (D,) in 1..K; targets: "boxes" (G, 4),
    "labels" (G,) and optional "difficult" (G,), ignored by every AP (torchmetrics' "iscrowd"), as VOC asks.
    ``size_edges``: box sides (px at the model's input) between the size bins of ``ap_by_size`` (None: no bins).
    """

    def __init__(self, classes: Sequence[str], score_threshold: float, voc07: bool = False,
                 size_edges: Sequence[float] | None = None) -> None:
        super().__init__()
        self.classes = list(classes)
        self.coco = mean_average_precision()
        # Per-class AP@0.5: torchmetrics' per-class figures average over its IoU thresholds.
        self.at_50 = mean_average_precision(iou_thresholds=[0.5])
        self.rates = DetectionRates(score_threshold)
        self.time = InferenceTime()
        self.voc07 = VOC07AveragePrecision(len(self.classes)) if voc07 else None
        self.tide = TideErrors(len(self.classes))
        self.sizes = SizeBinAP(len(self.classes), size_edges)
        self.confusion = ConfusionMatrix(self.classes, score_threshold)

    def set_size_edges(self, edges: Sequence[float] | None) -> None:
        """The size bins' edges (px), before the first update; None: no bins."""
        self.sizes.edges = None if edges is None else [float(e) for e in edges]

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Any]], ms_per_image: float) -> None:
        targets = [metric_target(t) for t in targets]
        metrics = (self.coco, self.at_50, self.rates, self.tide, self.sizes, self.confusion) + \
            ((self.voc07,) if self.voc07 is not None else ())
        for metric in metrics:
            metric.update(preds, targets)
        self.time.update(ms_per_image)

    def compute(self) -> dict[str, Any]:
        coco, at_50, rates = self.coco.compute(), self.at_50.compute(), dict(self.rates.compute())
        voc07 = None
        if self.voc07 is not None:
            voc = self.voc07.compute()
            voc07 = {"map": finite(voc["map"]), "ap_per_class": {
                name: finite(ap) for name, ap in zip(self.classes, voc["ap"].reshape(-1), strict=True)}}
        images = int(rates.pop("images"))
        return {
            "images": images,
            "map_50": finite(coco["map_50"]),
            "map": finite(coco["map"]),
            "ap_50_per_class": per_class(at_50, self.classes),
            "ap_per_class": per_class(coco, self.classes),
            "voc07": voc07,
            **{name: finite(value) for name, value in rates.items()},
            "ms_per_image_median": finite(self.time.compute()),
            "error_analysis": self.tide.compute(),
            "ap_by_area": {area: {"map": finite(coco[f"map_{area}"]), "mar": finite(coco[f"mar_{area}"])}
                           for area in COCO_AREAS},
            "ap_by_size": self.sizes.compute(),
            "confusion": self.confusion.compute(),
        }

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()
