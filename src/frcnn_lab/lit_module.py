"""LightningModule: the detector's weighted four-part loss, diagnostics, validation metrics, optimiser."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate

from frcnn_lab.data.datamodule import Batch
from frcnn_lab.metrics import DetectionRates, mean_average_precision
from frcnn_lab.model.detector import build_detector
from frcnn_lab.model.losses import weighted_total


class DetectionModule(L.LightningModule):
    """Trains and validates a FasterRCNN built from the config groups.

    Logged names: ``train/<part>`` for the four losses and ``train/loss`` (weighted total), ``train/lr``,
    ``train/epoch_time_s``, ``train/images_per_s``; ``diag/<stat>`` for the detector's diagnostics;
    ``val/map_50``, ``val/map``, ``val/ap_<class>`` (AP@[.5:.95]), ``val/fn_rate``,
    ``val/fp_image_rate``, ``val/detections_per_image`` (the rates at ``score_threshold``).
    """

    def __init__(
        self, backbone: dict[str, Any], rpn: dict[str, Any], roi_head: dict[str, Any], loss: dict[str, Any],
        optim: dict[str, Any], classes: list[str], mode: str = "full", score_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.classes = list(classes)
        self.detector = build_detector(backbone, rpn, roi_head, loss, len(self.classes), mode)
        self.loss_weights = dict(loss["weights"])
        self.optim = optim
        self.val_map = mean_average_precision()
        self.val_rates = DetectionRates(score_threshold)
        self.best_map_50, self.best_epoch = float("-inf"), -1
        self._epoch_start, self._epoch_images = 0.0, 0

    def forward(self, images: list[torch.Tensor], original_sizes: list[tuple[int, int]] | None = None):
        return self.detector(images, original_sizes=original_sizes).detections

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        output = self.detector(images, targets)
        total = weighted_total(output.losses, self.loss_weights)
        size = len(images)
        self.log_dict({f"train/{k}": v for k, v in output.losses.items()}, on_step=True, on_epoch=True, batch_size=size)
        self.log("train/loss", total, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log_dict({f"diag/{k}": v for k, v in output.stats.items()}, on_step=True, on_epoch=True, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=size)
        self._epoch_images += size
        return total

    def on_train_epoch_start(self) -> None:
        self._epoch_start, self._epoch_images = time.perf_counter(), 0

    def on_train_epoch_end(self) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        self.log("train/epoch_time_s", elapsed)
        self.log("train/images_per_s", self._epoch_images / max(elapsed, 1e-9))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        # Move predictions to the CPU as they come: the metrics' memory stays on the host.
        preds = [{k: v.detach().cpu() for k, v in d.items()} for d in self(images)]
        gts = [{"boxes": t["boxes"].cpu(), "labels": t["labels"].cpu()} for t in targets]
        self.val_map.update(preds, gts)
        self.val_rates.update(preds, gts)

    def on_validation_epoch_end(self) -> None:
        results = self.val_map.compute()
        rates = self.val_rates.compute()
        self.val_map.reset()
        self.val_rates.reset()
        metrics = {"val/map": results["map"], **{f"val/{k}": v for k, v in rates.items()}}
        metrics.update(per_class_ap(results, self.classes))
        self.log_dict(metrics, prog_bar=False)
        self.log("val/map_50", results["map_50"], prog_bar=True)
        map_50 = float(results["map_50"])
        if not self.trainer.sanity_checking and map_50 > self.best_map_50:
            self.best_map_50, self.best_epoch = map_50, self.current_epoch

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = instantiate(self.optim["optimizer"], params=params)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = warmup_then_decay(self.optim["warmup_steps"], total, self.optim["schedule"], self.optim["min_lr_ratio"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def per_class_ap(results: dict[str, torch.Tensor], classes: list[str]) -> dict[str, torch.Tensor]:
    """``val/ap_<class>`` (AP@[.5:.95]) for every class torchmetrics reports; absent classes are NaN."""
    ap = {int(c): v for c, v in zip(results["classes"].reshape(-1), results["map_per_class"].reshape(-1))}
    return {f"val/ap_{name}": ap.get(i + 1, torch.tensor(float("nan"))) for i, name in enumerate(classes)}


def warmup_then_decay(warmup_steps: int, total_steps: int, schedule: str, min_ratio: float):
    """LR multiplier per step: linear warm-up from 0.001, then constant or cosine down to ``min_ratio``."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"optim.schedule={schedule!r} is unknown; choose cosine or constant")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.001 + (1 - 0.001) * step / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
