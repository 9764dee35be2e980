"""Checks of the composed config, before any heavy work: one error listing every problem."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.plugins.environments import LSFEnvironment, SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig, ListConfig, OmegaConf

from frcnn_lab.callbacks import NONFINITE_ACTIONS
from frcnn_lab.data.datamodule import SOURCES
from frcnn_lab.model.backbones import BUILDERS
from frcnn_lab.model.detector import MODES
from frcnn_lab.model.roi_pooling import POOLERS
from frcnn_lab.tracking import WANDB_MODES


class ConfigError(ValueError):
    """The config names an unknown choice, lacks a required key or holds an impossible value."""


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming each bad key with its valid choices or range."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError("required keys without a value: " + ", ".join(missing))
    problems = []

    def choice(key: str, allowed) -> None:
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            problems.append(f"{key}={value!r} is unknown; choose one of {sorted(allowed)}")

    def check(key: str, ok, expected: str) -> None:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
            problems.append(f"{key}={value!r} must be {expected}")

    choice("backbone.name", BUILDERS)
    choice("roi_head.pooler", POOLERS)
    choice("data.name", SOURCES)
    choice("model.mode", MODES)
    check("rpn.num_rois", lambda v: v >= 1, "an integer >= 1")
    check("rpn.batch_size_per_image", lambda v: v >= 1, "an integer >= 1")
    check("data.image_size", lambda v: v > 0, "> 0")
    check("data.max_size", lambda v: v >= cfg.data.image_size, f">= data.image_size ({cfg.data.image_size})")
    check("data.batch_size", lambda v: v >= 1, "an integer >= 1")
    for key in ("rpn.positive_fraction", "roi_head.positive_fraction", "rpn.fg_iou", "rpn.bg_iou",
                "roi_head.fg_iou", "roi_head.bg_iou_lo", "roi_head.bg_iou_hi", "rpn.nms_iou", "roi_head.nms_iou",
                "eval.score_threshold"):
        check(key, lambda v: 0 <= v <= 1, "in [0, 1]")
    if cfg.rpn.bg_iou > cfg.rpn.fg_iou:
        problems.append(f"rpn.bg_iou={cfg.rpn.bg_iou} must be <= rpn.fg_iou={cfg.rpn.fg_iou}")
    if not cfg.roi_head.bg_iou_lo < cfg.roi_head.bg_iou_hi <= cfg.roi_head.fg_iou:
        problems.append(
            "the background band needs roi_head.bg_iou_lo < roi_head.bg_iou_hi <= roi_head.fg_iou, got "
            f"{cfg.roi_head.bg_iou_lo}, {cfg.roi_head.bg_iou_hi}, {cfg.roi_head.fg_iou}"
        )
    if cfg.backbone.name == "vgg16" and cfg.roi_head.pool_size not in (None, 7):
        problems.append(f"roi_head.pool_size={cfg.roi_head.pool_size} must be 7 (or null) for vgg16: fc6 expects 7x7")
    choice("train.on_nonfinite", NONFINITE_ACTIONS)
    if OmegaConf.select(cfg, "logger.wandb") is not None:
        choice("logger.wandb.mode", WANDB_MODES)
    for key in ("rpn.pre_nms_top_n_train", "rpn.post_nms_top_n_train", "rpn.pre_nms_top_n_test",
                "rpn.post_nms_top_n_test", "roi_head.detections_per_image"):
        check(key, lambda v: v >= 1, "an integer >= 1")
    for key in [f"loss.weights.{part}" for part in cfg.loss.weights] + ["loss.rpn_smooth_l1_beta",
                                                                         "loss.roi_smooth_l1_beta"]:
        check(key, lambda v: 0 <= v < float("inf"), "finite and >= 0")
    check("optim.optimizer.lr", lambda v: 0 < v < float("inf"), "finite and > 0")
    for key in ("rpn.anchor_sizes", "rpn.aspect_ratios"):
        values = OmegaConf.select(cfg, key)
        if not values or not all(isinstance(v, (int, float)) and v > 0 for v in values):
            problems.append(f"{key}={values} must be a non-empty list of numbers > 0")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


# Strategies whose ranks Lightning starts by re-running the command line (``sys.argv``, ``-m`` included).
_SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def processes_per_node(devices) -> int | None:
    """``trainer.devices`` as a count; None for "all" (``-1`` / ``"auto"``)."""
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.isdigit() else None


def refuse_local_ddp_in_multirun(cfg: DictConfig) -> None:
    """Raise ConfigError in a Hydra multirun whose jobs would start DDP ranks by re-running the command.

    Lightning's subprocess launcher starts rank k > 0 by re-running ``sys.argv``; inside ``-m`` that re-runs
    the whole sweep in every rank. Under SLURM (hydra/launcher=submitit_slurm), torchrun or LSF the cluster
    starts the ranks and Lightning launches nothing, so those are allowed.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    trainer = cfg.get("trainer", {})
    strategy = str(trainer.get("strategy", "auto"))
    processes = processes_per_node(trainer.get("devices", 1))
    multi_process = processes != 1 or int(trainer.get("num_nodes", 1)) > 1
    relaunches = strategy == "auto" or (
        strategy.startswith(("ddp", "fsdp", "deepspeed")) and strategy not in _SPAWNING_STRATEGIES
    )
    cluster = SLURMEnvironment.detect() or TorchElasticEnvironment.detect() or LSFEnvironment.detect()
    if multi_process and relaunches and not cluster:
        raise ConfigError(
            f"trainer.strategy={strategy} with trainer.devices={trainer.get('devices')} cannot run inside a Hydra "
            "multirun (-m) on this machine: Lightning starts each extra rank by re-running the command, which would "
            "re-run the whole sweep in every rank. Run the jobs one at a time without -m, sweep with "
            "trainer.devices=1, or sweep on a cluster with hydra/launcher=submitit_slurm (docs/scaling.md)."
        )
