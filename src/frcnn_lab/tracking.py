"""Experiment tracking: W&B online when credentials exist, otherwise offline, never a prompt; every
W&B run is finished, and marked failed when training raised. Callbacks: a compact console line per
validation, and W&B's per-epoch predictions table and best-checkpoint artifact."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import netrc
import os
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from frcnn_lab.metrics.matching import match_counts
from frcnn_lab.visualize import wandb_boxes

WANDB_MODES = ("auto", "online", "offline", "disabled")
PREDICTION_COLUMNS = ["epoch", "image_id", "image", "gt_boxes", "detections", "tp", "fp", "fn"]
log = logging.getLogger(__name__)


def has_wandb_credentials() -> bool:
    """An API key in the environment or a netrc entry for the W&B host (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` -> WANDB_MODE if the user set one, else online with credentials, else offline."""
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode={mode!r} is unknown; choose one of {list(WANDB_MODES)}")
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if has_wandb_credentials() else "offline")


def wandb_logger(save_dir: str, project: str, mode: str = "auto", group: str | None = None,
                 tags: Sequence[str] = (), **kwargs) -> WandbLogger:
    """A WandbLogger that never asks for a login: offline unless credentials exist (``mode=auto``)."""
    os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(
        save_dir=save_dir, project=project, group=group, tags=list(tags), mode=resolve_wandb_mode(mode), **kwargs
    )


WANDB_RUN_FILE = "wandb_run_id"
"""In a run folder: the id of its W&B run, which a run resumed from one of its checkpoints continues."""


def wandb_run_to_resume(ckpt_path: str | os.PathLike | None) -> str | None:
    """The W&B run id recorded by the run that wrote ``ckpt_path`` (``<run>/checkpoints/x.ckpt`` ->
    ``<run>/wandb_run_id``), or None (no checkpoint, not in a run folder, or that run had no W&B run)."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path).resolve()
    record = path.parent.parent / WANDB_RUN_FILE
    return record.read_text().strip() or None if path.parent.name == "checkpoints" and record.is_file() else None


@rank_zero_only
def record_wandb_run(output_dir: str | os.PathLike, loggers: Sequence[Logger]) -> None:
    """Write the id of the W&B run of ``loggers`` (if any) to ``<output_dir>/wandb_run_id``."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            (Path(output_dir) / WANDB_RUN_FILE).write_text(logger.experiment.id + "\n")


@contextlib.contextmanager
def finish_wandb_runs(loggers: Sequence[Logger]) -> Iterator[None]:
    """Finish the W&B runs of ``loggers`` on exit: exit code 0 on success, 1 when the body raised.

    In a sweep this keeps one job's failure from leaving a hanging run that the next job would reuse.
    """
    runs = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    try:
        yield
    except BaseException:
        for lg in runs:
            lg.experiment.finish(exit_code=1)
        raise
    for lg in runs:
        lg.experiment.finish(exit_code=0)


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> one level with dotted keys (``{"backbone": {"name": ...}}`` -> ``{"backbone.name": ...}``),
    so that W&B's runs table can group and filter by ``backbone.name``, ``rpn.num_rois``, ``data.image_size``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def hydra_run_identity() -> dict[str, Any]:
    """What Hydra knows about this job: ``experiment`` (the preset, or None), ``multirun`` (bool) and
    ``sweep_name`` (the sweep folder's name in a multirun). Empty outside a Hydra app (e.g. in tests)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    return {
        "experiment": hydra_cfg.runtime.choices.get("experiment"),
        "multirun": multirun,
        "sweep_name": Path(hydra_cfg.sweep.dir).name if multirun else None,
    }


def name_wandb_run(wandb_cfg: MutableMapping[str, Any], identity: Mapping[str, Any]) -> None:
    """Fill the W&B logger's config in place: a sweep's jobs share the group ``<sweep folder name>`` unless
    ``group`` is set, and the preset's name (``experiment=thesis/model4`` -> ``thesis/model4``) joins the tags."""
    if identity.get("multirun") and not wandb_cfg.get("group"):
        wandb_cfg["group"] = identity["sweep_name"]
    preset = identity.get("experiment")
    if preset and preset not in wandb_cfg.get("tags", []):
        wandb_cfg["tags"] = [*wandb_cfg.get("tags", []), preset]


def write_status(output_dir: str | os.PathLike, status: str, **fields: Any) -> Path:
    """``<output_dir>/status.json``: {"status": running | completed | failed, "time": ISO time, **fields}.

    A run that stays "running" after its process ended was interrupted; the report reads this file.
    """
    path = Path(output_dir) / "status.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"status": status, "time": datetime.datetime.now().isoformat(timespec="seconds"), **fields}
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=2, default=str))
    temporary.replace(path)  # readers never see a half-written file
    return path


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


class WandbPredictions(L.Callback):
    """For every W&B logger: after each validation the table ``val/predictions`` (columns ``PREDICTION_COLUMNS``)
    of the first ``images`` val images, with their predicted and GT boxes and per-image TP / FP / FN at
    ``iou_threshold`` and ``score_threshold``; with ``log_model`` the best checkpoint, at the end of training, as
    the model artifact ``model-<run id>`` (alias ``best``). Reads the predictions ``validation_step`` returns."""

    def __init__(self, images: int = 4, score_threshold: float = 0.5, iou_threshold: float = 0.5,
                 log_model: bool = False) -> None:
        self.images, self.score_threshold, self.iou_threshold = images, score_threshold, iou_threshold
        self.log_model = log_model
        self.rows: list[list[Any]] = []

    @staticmethod
    def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)] if trainer.is_global_zero else []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not outputs or not self.wandb_loggers(trainer):
            return
        import wandb

        classes = pl_module.hparams["classes"]
        for image, target, pred in zip(*batch, outputs, strict=True):
            if len(self.rows) >= self.images:
                return
            pred = {k: v.detach().cpu() for k, v in pred.items()}
            target = {k: v.cpu() if torch.is_tensor(v) else v for k, v in target.items()}
            tp, fp, fn = match_counts(pred, target, self.score_threshold, self.iou_threshold)
            pixels = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            boxes = {"predictions": wandb_boxes(classes, pred["boxes"], pred["labels"], pred["scores"]),
                     "ground_truth": wandb_boxes(classes, target["boxes"], target["labels"])}
            self.rows.append([trainer.current_epoch + 1, str(target.get("image_id", len(self.rows))),
                              wandb.Image(pixels, boxes=boxes), len(target["boxes"]), tp + fp, tp, fp, fn])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.rows:
            for logger in self.wandb_loggers(trainer):
                logger.log_table("val/predictions", columns=PREDICTION_COLUMNS, data=self.rows,
                                 step=trainer.global_step)
        self.rows = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if not self.log_model or checkpoint is None or not Path(checkpoint.best_model_path or "").is_file():
            return
        import wandb

        for logger in self.wandb_loggers(trainer):
            score = checkpoint.best_model_score
            artifact = wandb.Artifact(f"model-{logger.experiment.id}", type="model", metadata={
                "monitor": checkpoint.monitor, "score": None if score is None else float(score)})
            artifact.add_file(checkpoint.best_model_path, name="best.ckpt")
            logger.experiment.log_artifact(artifact, aliases=["best"])
