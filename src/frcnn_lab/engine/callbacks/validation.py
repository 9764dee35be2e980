"""What each validation shows beside its metrics: pictures of the first val images with their predictions (run
folder and W&B), the confusion matrix (run folder and W&B) and one console line."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from frcnn_lab.inference.drawing import draw_detections, fresh_folder, pad_to_common_size, save_png, wandb_boxes
from frcnn_lab.metrics.confusion import confusion_png
from frcnn_lab.metrics.matching import match_counts

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["epoch", "image_id", "image", "gt_boxes", "detections", "tp", "fp", "fn"]


class ValImageRecorder(L.Callback):
    """The first ``count`` validation images of each evaluation, with predictions and ground truth.

    Draws them into ``<dirpath>/epoch_<NNN>/<index>_<image_id>.png`` (1-based epoch; predictions with score
    >= ``draw_threshold``; an existing folder gets a numbered sibling) and gives every W&B logger the pictures
    ``val/images`` (boxes attached) and the table ``val/predictions`` (columns ``PREDICTION_COLUMNS``: GT count,
    detections, and TP / FP / FN at ``iou_threshold`` for detections with score >= ``score_threshold``).
    ``dirpath=None`` writes no files. The val loader is not shuffled, so they are the same images every
    evaluation. Rank 0 records its own first images; sanity checks record nothing. The module's
    ``validation_step`` returns the batch's predictions.
    """

    def __init__(self, classes: Sequence[str], dirpath: str | Path | None, count: int = 4,
                 score_threshold: float = 0.5, iou_threshold: float = 0.5, draw_threshold: float = 0.5) -> None:
        self.classes, self.count = list(classes), count
        self.score_threshold, self.iou_threshold, self.draw_threshold = score_threshold, iou_threshold, draw_threshold
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.samples: list[tuple[Tensor, dict[str, Tensor], dict]] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.samples = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        for image, pred, target in zip(batch[0], outputs, batch[1], strict=True):
            if len(self.samples) >= self.count:
                return
            self.samples.append((image.detach().cpu(), {k: v.detach().cpu() for k, v in pred.items()},
                                 {k: v.cpu() if torch.is_tensor(v) else v for k, v in target.items()}))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        folder = self.dirpath / f"epoch_{trainer.current_epoch + 1:03d}" if self.dirpath is not None else None
        self.write(folder, wandb_loggers, epoch=trainer.current_epoch + 1, step=trainer.global_step)

    def write(self, folder: Path | None, wandb_loggers: Sequence = (), epoch: int = 0,
              step: int | None = None) -> list[Path]:
        """PNGs into ``folder`` (when given), the pictures and the table to ``wandb_loggers`` -> the PNGs' paths."""
        if not self.samples:
            return []
        folder = fresh_folder(folder) if folder is not None else None
        paths, raw, boxes, captions, rows = [], [], [], [], []
        for index, (image, pred, target) in enumerate(self.samples):
            gt_boxes, gt_labels = target["boxes"], target["labels"]
            image_id = str(target.get("image_id", index))
            name = f"{index:02d}_{image_id.replace('/', '_')}"
            if folder is not None:
                canvas = draw_detections(image, self.classes, pred["boxes"], pred["labels"], pred["scores"],
                                         gt_boxes, gt_labels, self.draw_threshold)
                paths.append(save_png(canvas, folder / f"{name}.png"))
            raw.append((image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
            boxes.append({
                "predictions": wandb_boxes(self.classes, pred["boxes"], pred["labels"], pred["scores"]),
                "ground_truth": wandb_boxes(self.classes, gt_boxes, gt_labels),
            })
            captions.append(name)
            tp, fp, fn = match_counts(pred, target, self.score_threshold, self.iou_threshold)
            rows.append([epoch, image_id, len(gt_boxes), len(pred["boxes"]), tp, fp, fn])
        if wandb_loggers:
            log_to_wandb(wandb_loggers, raw, boxes, captions, rows, step)
        return paths


def log_to_wandb(wandb_loggers: Sequence[WandbLogger], pixels: list[np.ndarray], boxes: list[dict],
                 captions: list[str], counts: list[list[Any]], step: int | None) -> None:
    """The pictures as ``val/images`` and, one row per picture, ``counts`` (epoch, image id, GT boxes,
    detections, TP, FP, FN) with the picture itself as the table ``val/predictions``."""
    import wandb

    table = [[*row[:2], wandb.Image(image, boxes=image_boxes), *row[2:]]
             for row, image, image_boxes in zip(counts, pixels, boxes, strict=True)]
    panel = pad_to_common_size(pixels)  # one W&B panel needs one size; boxes stay in place (top-left origin)
    for logger in wandb_loggers:
        logger.log_image(key="val/images", images=panel, step=step, boxes=boxes, caption=captions)
        logger.log_table("val/predictions", columns=PREDICTION_COLUMNS, data=table, step=step)


class ConfusionMatrixRecorder(L.Callback):
    """The confusion matrix of each validation (the module's ``val_figures["confusion"]``, rows ground truth,
    columns prediction: ``frcnn_lab.metrics.confusion``) as ``<dirpath>/epoch_<NNN>/confusion.json`` and
    ``confusion.png`` (1-based epoch; an existing folder gets a numbered sibling; ``dirpath=None``: no files), and
    for every W&B logger the table ``val/confusion`` (a row per ground-truth label: its counts per predicted
    label) and the picture ``val/confusion_matrix``. Rank 0 only (the counts cover every process); sanity checks
    record nothing."""

    def __init__(self, dirpath: str | Path | None) -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        confusion = getattr(pl_module, "val_figures", {}).get("confusion")
        if trainer.sanity_checking or not trainer.is_global_zero or confusion is None:
            return
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if self.dirpath is None and not wandb_loggers:
            return
        figure = confusion_png(confusion)
        if self.dirpath is not None:
            folder = fresh_folder(self.dirpath / f"epoch_{trainer.current_epoch + 1:03d}")
            (folder / "confusion.json").write_text(json.dumps(confusion, indent=1))
            figure.savefig(folder / "confusion.png", dpi=80)
        if wandb_loggers:
            figure.canvas.draw()
            pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
            rows = [[label, *counts] for label, counts in zip(confusion["labels"], confusion["counts"], strict=True)]
            for logger in wandb_loggers:
                logger.log_table("val/confusion", columns=["ground truth \\ predicted", *confusion["labels"]],
                                 data=rows, step=trainer.global_step)
                logger.log_image(key="val/confusion_matrix", images=[pixels], step=trainer.global_step)
        import matplotlib.pyplot as plt

        plt.close(figure)


class ValidationSummary(L.Callback):
    """After each validation (not the sanity check), one INFO line: epoch, mAP@0.5, mAP, and the FN / FP shares
    at the module's ``score_threshold`` (val/fn_rate: images with objects and nothing detected; val/fp_image_rate:
    images without objects and something detected)."""

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if "val/map_50" not in metrics:
            return
        log.info(compact_line(trainer.current_epoch + 1, metrics, pl_module.hparams.get("score_threshold")))


def compact_line(epoch: int, metrics: Mapping[str, float], score_threshold: float | None) -> str:
    """``epoch 3: val mAP@0.5 0.512  mAP 0.301  FN share 0.12  FP share 0.05 (score >= 0.9)``."""
    def show(key: str, digits: int) -> str:
        value = metrics.get(key)
        return "-" if value is None or value != value else f"{value:.{digits}f}"

    return (f"epoch {epoch}: val mAP@0.5 {show('val/map_50', 3)}  mAP {show('val/map', 3)}  "
            f"FN share {show('val/fn_rate', 2)}  FP share {show('val/fp_image_rate', 2)} "
            f"(score >= {score_threshold})")
