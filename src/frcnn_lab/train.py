"""Train and validate a detector: ``python -m frcnn_lab.train [key=value ...]`` (Hydra overrides)."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from frcnn_lab.checks import typed
from frcnn_lab.cli import hydra_main
from frcnn_lab.config import refuse_local_ddp_in_multirun, validate
from frcnn_lab.data.config import DataConfig
from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.data.summary import train_anchor_report
from frcnn_lab.engine.callbacks.checkpoint_io import AtomicCheckpointIO
from frcnn_lab.engine.callbacks.nonfinite import NonFiniteGuard
from frcnn_lab.engine.callbacks.slurm import SaveLastOnExit
from frcnn_lab.engine.callbacks.step_limit import ValidateAtStepLimit
from frcnn_lab.engine.checkpoints import check_checkpoint
from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.runs.folders import claim_output_dir, reserve_output_dir
from frcnn_lab.runs.tracking import (
    finish_wandb_runs,
    flat_config,
    hydra_run_identity,
    name_wandb_run,
    record_wandb_run,
    wandb_run_to_resume,
    write_status,
)

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig) -> DetectionModule:
    groups = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("backbone", "rpn", "roi_head", "loss", "optim")}
    return DetectionModule(
        **groups, classes=list(cfg.data.classes), mode=cfg.model.mode,
        channels_last=cfg.model.channels_last, weights=cfg.model.weights, init_classes=cfg.model.init_classes,
        score_threshold=cfg.eval.score_threshold, val_losses=cfg.eval.losses,
        voc07=cfg.data.name == "voc", preprocess=typed(DataConfig, cfg.data, "data").preprocess(),
        slicing=OmegaConf.to_container(cfg.inference.slicing) if "inference" in cfg else None,
    )


def training_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The non-finite guard, the validation at the step limit and the save on a requeued SLURM job's exit, then the
    ``callbacks`` group's."""
    configured = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
    return [NonFiniteGuard(cfg.train.on_nonfinite), ValidateAtStepLimit(), SaveLastOnExit(), *configured]


def train(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Fit on the train split, validate every epoch, and return a summary of the run; ``extra_callbacks`` go
    after the configured ones (e.g. a measurement)."""
    validate(cfg)
    if cfg.ckpt_path:
        check_checkpoint(cfg.ckpt_path)  # before the data and W&B: a wrong path stops with nothing started
    claim_output_dir(cfg.paths.output_dir, cfg.ckpt_path)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # Lightning's notice goes to stderr, ours to the log
    log.info("seed %d (torch, numpy, python, data loader workers)", cfg.seed)
    datamodule = DetectionDataModule(cfg.data)
    anchors = train_anchor_report(datamodule, OmegaConf.to_container(cfg.rpn, resolve=True), cfg.backbone.name)
    with open_dict(cfg):
        # `auto` becomes the suggested values: the module (and its checkpoint) records what was used.
        for key in ("anchor_sizes", "aspect_ratios"):
            if anchors["auto"][key]:
                cfg.rpn[key] = anchors["used"][key]
    module = build_module(cfg)
    identity = hydra_run_identity()
    if cfg.get("logger") and "wandb" in cfg.logger:
        with open_dict(cfg):
            name_wandb_run(cfg.logger.wandb, identity)
    # A run resumed from a checkpoint continues that run's W&B run (same id; trainer/global_step carries on).
    resumed = {"id": run_id, "resume": "allow"} if (run_id := wandb_run_to_resume(cfg.ckpt_path)) else {}
    loggers = [instantiate(c, **(resumed if name == "wandb" else {})) for name, c in cfg.get("logger", {}).items()]
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=loggers or False, callbacks=[*training_callbacks(cfg), *extra_callbacks],
        plugins=[AtomicCheckpointIO()], default_root_dir=cfg.paths.output_dir,
    )
    if trainer.is_global_zero:
        datamodule.write_summary(cfg.paths.output_dir, anchors)  # printed, and data_summary.json in the run directory
    config = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        # W&B gets dotted keys (backbone.name, rpn.num_rois...) so its runs table groups by them.
        is_wandb = isinstance(lg, WandbLogger)
        lg.log_hyperparams({**flat_config(config), "experiment": identity.get("experiment")} if is_wandb else config)
    record_wandb_run(cfg.paths.output_dir, loggers)
    with finish_wandb_runs(loggers):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
        if module.best_epoch < 0 and not trainer.fast_dev_run:
            # check_val_every_n_epoch skipped every epoch that trained: validate what was trained.
            trainer.validate(module, datamodule=datamodule, verbose=False)
        summary = run_summary(trainer, module)
        summary["anchor_fit"] = anchor_fit_line(anchors)
    if trainer.is_global_zero:
        log.info(format_summary(summary))
    return summary


def run_summary(trainer: L.Trainer, module: DetectionModule) -> dict[str, Any]:
    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    csv = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
    wandb = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    return {
        "best_map_50": module.best_map_50 if module.best_epoch >= 0 else None,
        "best_epoch": module.best_epoch + 1 if module.best_epoch >= 0 else None,  # 1-based, as people count
        "train_time_s": timer.time_elapsed("train") if timer else None,
        "checkpoint": checkpoint.best_model_path if checkpoint else None,
        "metrics_csv": str(Path(csv.log_dir) / "metrics.csv") if csv else None,
        # The W&B run's own folder (what `wandb sync` uploads; its metrics are in the binary .wandb file there).
        "wandb_run_dir": str(Path(wandb.experiment.dir).parent) if wandb else None,
        "wandb_mode": wandb.experiment.settings.mode if wandb else None,
        "wandb_url": wandb.experiment.url if wandb else None,
    }


def anchor_fit_line(anchors: dict[str, Any]) -> str:
    """One line for the run summary: the share of train boxes whose best anchor has IoU >= 0.5, and the advice."""
    share = anchors["fit"]["share_best_iou_at_least"]["0.5"]
    advice = (f"; poor fit, try rpn.anchor_sizes={anchors['suggested']['anchor_sizes']} or rpn.anchor_sizes=auto"
              if anchors["fit"]["warn"] else "")
    return f"{share:.0%} of the train boxes have an anchor of IoU >= 0.5 ({anchors['used']['anchor_sizes']}){advice}"


def format_summary(summary: dict[str, Any]) -> str:
    lines = ["", "=== frcnn_lab run summary ==="]
    if summary["best_map_50"] is None:
        lines.append("no validation ran")
    else:
        lines.append(f"best val mAP@0.5: {summary['best_map_50']:.3f} (epoch {summary['best_epoch']})")
    if summary["train_time_s"] is not None:
        lines.append(f"training time:    {summary['train_time_s']:.0f} s (validations included, summed over resumes)")
    lines.append(f"anchor fit:       {summary['anchor_fit']}")
    lines.append(f"best checkpoint:  {summary['checkpoint'] or '-'}")
    lines.append(f"metrics CSV:      {summary['metrics_csv'] or '-'}")  # every logged figure, by step and epoch
    if summary["wandb_mode"] == "online" and summary["wandb_url"]:
        lines.append(f"W&B run (online): {summary['wandb_url']}")
    elif summary["wandb_mode"] == "offline" and summary["wandb_run_dir"]:
        lines.append(f"W&B run (offline): {summary['wandb_run_dir']}")
        lines.append(f"  upload later with: wandb sync {summary['wandb_run_dir']}")
    return "\n".join(lines)


@hydra_main("config")
def main(cfg: DictConfig) -> float | None:
    """One run, or one job of a sweep; ``<run dir>/status.json`` says running, completed or failed.

    A failing job of a multirun is recorded (status.json with the error, W&B run finished as failed) and
    logged, and the sweep goes on with the next job; a single run re-raises: a UserError (a bad config, a missing
    checkpoint, bad data) is one line and removes the run folder it was refused in (frcnn_lab.cli).
    """
    refuse_local_ddp_in_multirun(cfg)  # ends the whole sweep: every job would hit it
    output_dir, start = cfg.paths.output_dir, time.perf_counter()
    # Before status.json: a used directory is refused with nothing overwritten (unless resumed in place).
    reserve_output_dir(output_dir, cfg.ckpt_path)
    write_status(output_dir, "running")
    try:
        summary = train(cfg)
    except Exception as error:
        write_status(output_dir, "failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(),
                     duration_s=time.perf_counter() - start)
        if not hydra_run_identity().get("multirun"):
            raise
        log.exception("this job failed (%s); the sweep goes on with the next one", output_dir)
        return None
    write_status(output_dir, "completed", duration_s=time.perf_counter() - start, **summary)
    return summary["best_map_50"]


if __name__ == "__main__":
    main()
