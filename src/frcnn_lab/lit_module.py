"""LightningModule: the detector's weighted four-part loss, diagnostics, validation metrics, optimiser."""

from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger

from frcnn_lab.callbacks import NONFINITE_ACTIONS, NonFiniteLossError, describe_nonfinite, nonfinite_names
from frcnn_lab.data.datamodule import Batch
from frcnn_lab.metrics import DetectionRates, mean_average_precision, metric_target
from frcnn_lab.metrics.voc import VOC07AveragePrecision
from frcnn_lab.model.detector import build_detector
from frcnn_lab.model.losses import weighted_total
from frcnn_lab.visualize import ValImageRecorder

log = logging.getLogger(__name__)


class DetectionModule(L.LightningModule):
    """Trains and validates a FasterRCNN built from the config groups.

    Logged names: ``train/<part>`` for the four losses and ``train/loss`` (weighted total), ``train/lr``,
    ``train/epoch_time_s``, ``train/images_per_s``; ``diag/<stat>`` for the detector's diagnostics;
    ``val/map_50``, ``val/map``, ``val/ap_<class>`` (AP@[.5:.95]), ``val/fn_rate``,
    ``val/fp_image_rate``, ``val/detections_per_image`` (the rates at ``score_threshold``),
    ``val/ms_per_image`` (median over the val batches after the first of forward time / images); with
    ``voc07`` also ``val/voc07_map`` and ``val/voc07_ap_<class>`` (VOC07 11-point AP). Boxes marked
    "difficult" in the targets are ignored by every mAP, as the VOC protocol asks.
    Each evaluation draws the first ``val_images`` val images with predicted (score >= 0.5) and GT boxes
    into ``<default_root_dir>/val_images/epoch_<NNN>/`` (1-based epoch) and W&B's ``val/images``.

    ``on_nonfinite``: a batch with a NaN / infinite loss part or gradient stops the run with
    ``NonFiniteLossError`` naming the step, the parts and the image ids (``stop``), or is skipped without an
    optimiser step and counted in ``train/nonfinite_batches`` (``skip``). Non-finite weights always stop the run.
    """

    def __init__(
        self, backbone: dict[str, Any], rpn: dict[str, Any], roi_head: dict[str, Any], loss: dict[str, Any],
        optim: dict[str, Any], classes: list[str], mode: str = "full", score_threshold: float = 0.5,
        on_nonfinite: str = "stop", val_images: int = 4, voc07: bool = False,
    ) -> None:
        super().__init__()
        if on_nonfinite not in NONFINITE_ACTIONS:
            raise ValueError(f"on_nonfinite={on_nonfinite!r} is unknown; choose one of {list(NONFINITE_ACTIONS)}")
        self.save_hyperparameters()
        self.classes = list(classes)
        self.detector = build_detector(backbone, rpn, roi_head, loss, len(self.classes), mode)
        self.loss_weights = dict(loss["weights"])
        self.optim = optim
        self.val_map = mean_average_precision()
        self.val_rates = DetectionRates(score_threshold)
        self.val_voc07 = VOC07AveragePrecision(len(self.classes)) if voc07 else None
        self.best_map_50, self.best_epoch = float("-inf"), -1
        self.val_images = ValImageRecorder(self.classes, val_images, score_threshold=0.5)
        self._val_ms_per_image: list[float] = []
        self._epoch_start, self._epoch_images = 0.0, 0
        self.on_nonfinite, self.nonfinite_batches, self._batch_image_ids = on_nonfinite, 0, []

    def forward(self, images: list[torch.Tensor], original_sizes: list[tuple[int, int]] | None = None):
        return self.detector(images, original_sizes=original_sizes).detections

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        images, targets = batch
        output = self.detector(images, targets)
        self._batch_image_ids = [t.get("image_id") for t in targets]
        nonfinite = nonfinite_names(output.losses.items())
        if nonfinite:
            return self.skip_or_stop("loss", nonfinite)  # None: Lightning runs no backward and no optimiser step
        total = weighted_total(output.losses, self.loss_weights)
        size = len(images)
        self.log_dict({f"train/{k}": v for k, v in output.losses.items()}, on_step=True, on_epoch=True, batch_size=size)
        self.log("train/loss", total, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log_dict({f"diag/{k}": v for k, v in output.stats.items()}, on_step=True, on_epoch=True, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=size)
        self._epoch_images += size
        return total

    def skip_or_stop(self, what: str, names: list[str]) -> None:
        """Raise NonFiniteLossError (``stop``), or warn and count the batch as skipped (``skip``)."""
        message = describe_nonfinite(self.global_step, what, names, self._batch_image_ids)
        if self.on_nonfinite == "stop":
            raise NonFiniteLossError(message + " (set train.on_nonfinite=skip to skip such batches)")
        self.nonfinite_batches += 1
        log.warning("%s; batch skipped (%d so far)", message, self.nonfinite_batches)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # the AMP grad scaler skips steps with infinite gradients and lowers its scale
        nonfinite = nonfinite_names((name, p.grad) for name, p in self.named_parameters())
        if nonfinite:
            self.skip_or_stop("gradients", nonfinite)
            optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are left untouched by the step

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        nonfinite = nonfinite_names((name, p) for name, p in self.named_parameters() if p.requires_grad)
        if nonfinite:
            raise NonFiniteLossError(describe_nonfinite(self.global_step, "weights", nonfinite, self._batch_image_ids))

    def on_train_epoch_start(self) -> None:
        self._epoch_start, self._epoch_images = time.perf_counter(), 0

    def on_train_epoch_end(self) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        self.log("train/epoch_time_s", elapsed)
        self.log("train/images_per_s", self._epoch_images / max(elapsed, 1e-9))
        self.log("train/nonfinite_batches", float(self.nonfinite_batches))

    def validation_step(self, batch: Batch, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        images, targets = batch
        if images[0].is_cuda:
            torch.cuda.synchronize(images[0].device)  # time this batch's forward alone
        start = time.perf_counter()
        # Predictions move to the CPU as they come (waiting for the GPU): the metrics stay on the host.
        preds = [{k: v.detach().cpu() for k, v in d.items()} for d in self(images)]
        self._val_ms_per_image.append(1000 * (time.perf_counter() - start) / len(images))
        gts = [metric_target(t) for t in targets]
        self.val_map.update(preds, gts)
        self.val_rates.update(preds, gts)
        if self.val_voc07 is not None:
            self.val_voc07.update(preds, gts)
        self.val_images.add(images, preds, targets)
        return preds  # for callbacks (W&B predictions table)

    def on_validation_epoch_start(self) -> None:
        self.val_images.reset()
        self._val_ms_per_image = []

    def on_validation_epoch_end(self) -> None:
        results = self.val_map.compute()
        rates = self.val_rates.compute()
        self.val_map.reset()
        self.val_rates.reset()
        metrics = {"val/map": results["map"], **{f"val/{k}": v for k, v in rates.items()}}
        metrics.update(per_class_ap(results, self.classes))
        if self.val_voc07 is not None:
            voc = self.val_voc07.compute()
            self.val_voc07.reset()
            metrics["val/voc07_map"] = voc["map"]
            per_class = zip(self.classes, voc["ap"].reshape(-1), strict=True)
            metrics.update({f"val/voc07_ap_{name}": ap for name, ap in per_class})
        self.log_dict(metrics, prog_bar=False)
        self.log("val/map_50", results["map_50"], prog_bar=True)
        if self._val_ms_per_image:  # the first batch is the warm-up
            self.log("val/ms_per_image", statistics.median(self._val_ms_per_image[1:] or self._val_ms_per_image))
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            folder = Path(self.trainer.default_root_dir) / "val_images" / f"epoch_{self.current_epoch + 1:03d}"
            wandb_loggers = [lg for lg in self.loggers if isinstance(lg, WandbLogger)]
            self.val_images.write(folder, wandb_loggers, step=self.global_step)
        map_50 = float(results["map_50"])
        if not self.trainer.sanity_checking and map_50 > self.best_map_50:
            self.best_map_50, self.best_epoch = map_50, self.current_epoch

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = instantiate(self.optim["optimizer"], params=params)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        optim = self.optim
        schedule = warmup_then_decay(optim["warmup_steps"], total, optim["schedule"], optim["min_lr_ratio"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def per_class_ap(results: dict[str, torch.Tensor], classes: list[str]) -> dict[str, torch.Tensor]:
    """``val/ap_<class>`` (AP@[.5:.95]) for every class torchmetrics reports; absent classes are NaN."""
    classes_seen, values = results["classes"].reshape(-1), results["map_per_class"].reshape(-1)
    # With nothing to evaluate torchmetrics gives no classes and a single -1: then every class is NaN.
    ap = dict(zip(classes_seen.tolist(), values, strict=True)) if len(classes_seen) == len(values) else {}
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
