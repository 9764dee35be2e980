"""Training callbacks: checkpoints written atomically and loaded safely, the non-finite guard, the validation
pictures (run folder and W&B) and the console line per validation."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from frcnn_lab.checks import Checks
from frcnn_lab.inference.drawing import draw_detections, fresh_folder, pad_to_common_size, save_png, wandb_boxes
from frcnn_lab.metrics.matching import match_counts

log = logging.getLogger(__name__)

NONFINITE_ACTIONS = ("stop", "skip")
PREDICTION_COLUMNS = ["epoch", "image_id", "image", "gt_boxes", "detections", "tp", "fp", "fn"]


# Signals whose Python handlers end or checkpoint a run: Ctrl-C, and SLURM's preemption and time-limit signals
# (submitit's SIGUSR2 handler requeues the job and raises SystemExit; Lightning's SIGUSR1 / SIGTERM handlers).
DEFERRED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
                         if hasattr(signal, name))


@contextmanager
def signals_deferred(signums: Sequence[int] = DEFERRED_SIGNALS) -> Iterator[None]:
    """Signals with a Python handler that arrive inside the block are handed to that handler when it ends.

    A handler that raises (SystemExit, KeyboardInterrupt) inside ``torch.save`` breaks the file being written
    and the zip writer's own error then replaces the exit, so the run neither exits as asked nor keeps the
    file. Default and ignored dispositions act as before (a kill is a kill); outside the main thread, where
    handlers cannot be set, the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, Any]] = []
    handlers = {signum: handler for signum in signums if callable(handler := signal.getsignal(signum))}
    for signum in handlers:
        signal.signal(signum, lambda number, frame: received.append((number, frame)))
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum, frame in received:
            handlers[signum](signum, frame)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints are written to ``<name>.partial`` in the target's directory, flushed to disk, then
    renamed over the target; loading always uses ``torch.load(..., weights_only=True)``.

    A kill at any moment leaves either the previous complete file or the new complete file at the target path,
    never a truncated one that a resume would pick. (Lightning's own writer stages the file in the system temp
    directory and moves it, which is a non-atomic copy when that directory is on another file system.) A
    signal with a Python handler (Ctrl-C, SLURM's preemption through submitit) waits for the write to end.
    Remote paths (``s3://`` and the like) keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with signals_deferred():
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, target)
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)  # make the rename itself durable
            finally:
                os.close(directory)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Tensors and plain containers only, whatever the caller asked: a checkpoint cannot run code on load."""
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


@dataclass
class TrainConfig:
    """``train.*``: what a training run does with a NaN / infinite loss or gradient."""

    on_nonfinite: str = "stop"  # stop (naming step, loss parts and image ids) | skip (the batch, counted)

    def __post_init__(self) -> None:
        check = Checks("train")
        check.choice("on_nonfinite", self.on_nonfinite, NONFINITE_ACTIONS)
        check.done()


class NonFiniteLossError(RuntimeError):
    """A loss part, a gradient or a weight became NaN or infinite during training."""


def nonfinite_names(named_tensors: Iterable[tuple[str, torch.Tensor | None]]) -> list[str]:
    """Names of the tensors holding any NaN or infinity (``None`` entries, e.g. absent gradients, are skipped)."""
    named = [(name, value) for name, value in named_tensors if value is not None]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(value).all() for _, value in named])
    if bool(finite.all()):  # one device sync in the common case
        return []
    return [name for (name, _), ok in zip(named, finite.tolist(), strict=True) if not ok]


def describe_nonfinite(step: int, what: str, names: Sequence[str], image_ids: Sequence[Any]) -> str:
    """One line naming the global step, the non-finite parts and the batch's image ids."""
    return f"non-finite {what} at global step {step}: {', '.join(names)}; batch image ids: {list(image_ids)}"


class NonFiniteGuard(L.Callback):
    """Stops or skips training batches that turn a loss part, a gradient or a weight NaN or infinite.

    ``action="stop"``: such a batch stops the run with ``NonFiniteLossError`` naming the global step, the
    parts and the batch's image ids. ``action="skip"``: the batch makes no optimiser step, a warning says why,
    and ``train/nonfinite_batches`` counts it. Non-finite weights always stop the run.
    The module leaves a batch's non-finite loss parts in ``nonfinite_losses`` and back-propagates nothing
    then. Before each optimiser step one check (one wait for the GPU) covers the gradients (unless an AMP grad
    scaler, which skips steps with infinite gradients itself, is active) and the weights, which the previous
    step made; the weights are checked again after a batch with a non-finite loss and at the end of each epoch.
    """

    def __init__(self, action: str = "stop") -> None:
        if action not in NONFINITE_ACTIONS:
            raise ValueError(f"train.on_nonfinite={action!r} is unknown; choose one of {list(NONFINITE_ACTIONS)}")
        self.action, self.skipped = action, 0
        self._step, self._image_ids = 0, []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step, self._image_ids = trainer.global_step, [t.get("image_id") for t in batch[1]]

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        trainable = [(name, p) for name, p in pl_module.named_parameters() if p.requires_grad]
        check_gradients = getattr(trainer.precision_plugin, "scaler", None) is None
        gradients = [(f"gradient {name}", p.grad) for name, p in trainable] if check_gradients else []
        nonfinite = nonfinite_names([*gradients, *((f"weight {name}", p) for name, p in trainable)])
        if not nonfinite:
            return
        self.stop_if_nonfinite_weights(trainable)
        self.stop_or_skip("gradients", [name.removeprefix("gradient ") for name in nonfinite])
        optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are left untouched by the step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.nonfinite_losses:
            self.stop_if_nonfinite_weights(pl_module.named_parameters())
            self.stop_or_skip("loss", pl_module.nonfinite_losses)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop_if_nonfinite_weights(pl_module.named_parameters())
        pl_module.log("train/nonfinite_batches", float(self.skipped))

    def stop_if_nonfinite_weights(self, named_parameters: Iterable[tuple[str, Tensor]]) -> None:
        nonfinite = nonfinite_names((name, p) for name, p in named_parameters if p.requires_grad)
        if nonfinite:
            raise NonFiniteLossError(describe_nonfinite(self._step, "weights", nonfinite, self._image_ids))

    def stop_or_skip(self, what: str, names: list[str]) -> None:
        message = describe_nonfinite(self._step, what, names, self._image_ids)
        if self.action == "stop":
            raise NonFiniteLossError(message + " (set train.on_nonfinite=skip to skip such batches)")
        self.skipped += 1
        log.warning("%s; batch skipped (%d so far)", message, self.skipped)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict["skipped"]


class ValidateAtStepLimit(L.Callback):
    """``trainer.max_steps`` can end fitting inside an epoch: the batch that reaches it asks Lightning to stop, which
    validates there and then (as for early stopping), so the checkpoint callbacks keep ``best.ckpt`` from what was
    trained. That last validation runs even in an epoch that ``check_val_every_n_epoch`` would skip."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if 0 <= trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
            trainer.check_val_every_n_epoch = None  # Lightning then validates whenever fitting is asked to stop


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
