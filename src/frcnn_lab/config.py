"""The config's checks, before any model or data is built.

Keys and types are the schemas' (``frcnn_lab.schema``): Hydra refuses a wrong type or an unknown key while it
composes. ``validate`` checks what a type cannot say (ranges, choices, list shapes, rules across keys) and raises
one ConfigError listing every problem, each naming the key, its value and the valid choices or range.
Constructors keep only the checks that protect direct Python use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.plugins.environments import LSFEnvironment, SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig, ListConfig, OmegaConf

from frcnn_lab.data.datamodule import SOURCES, SPLIT_MODES
from frcnn_lab.data.transforms import RESIZE_POLICIES
from frcnn_lab.engine.callbacks import NONFINITE_ACTIONS
from frcnn_lab.engine.module import SCHEDULES
from frcnn_lab.inference.slicing import Slicing
from frcnn_lab.model.backbones import BOX_HEADS
from frcnn_lab.model.detector import MODES
from frcnn_lab.model.roi_pooling import POOLERS
from frcnn_lab.runs.tracking import WANDB_MODES
from frcnn_lab.schema import register as register_schemas

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")
register_schemas()


class ConfigError(ValueError):
    """The config names an unknown choice, lacks a required key or holds an impossible value."""


def group_option(group: str, name: str = "default") -> dict[str, Any]:
    """The keys of ``conf/<group>/<name>.yaml`` as written, resolved, without its ``defaults`` list (the schema it
    starts from): a group's settings for code that builds parts without composing the whole config."""
    option = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / group / f"{name}.yaml"), resolve=True)
    option.pop("defaults", None)
    return option


def backbone_choices() -> list[str]:
    """The ``name`` of every ``conf/backbone/*.yaml``: the backbones the config groups offer."""
    files = sorted((Path(CONFIG_DIR) / "backbone").glob("*.yaml"))
    return sorted(str(OmegaConf.load(f).get("name", f.stem)) for f in files)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_numbers(values) -> bool:
    """A non-empty list of numbers > 0, or a non-empty list of such lists (one per feature level)."""
    if not isinstance(values, (list, tuple, ListConfig)) or not values:
        return False
    if all(isinstance(v, (list, tuple, ListConfig)) for v in values):
        return all(positive_numbers(v) for v in values)
    return all(is_number(v) and v > 0 for v in values)


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

    def check(key: str, ok, expected: str, kind=is_number) -> bool:
        value = OmegaConf.select(cfg, key)
        good = kind(value) and ok(value)
        if not good:
            problems.append(f"{key}={value!r} must be {expected}")
        return good

    def integer(key: str, minimum: int) -> bool:
        return check(key, lambda v: v >= minimum, f"an integer >= {minimum}", kind=is_int)

    def present(key: str) -> bool:
        return OmegaConf.select(cfg, key, default=None) is not None

    choice("backbone.name", backbone_choices())
    weights = cfg.backbone.weights
    if weights not in ("imagenet", "none") and not (isinstance(weights, str) and Path(weights).is_file()):
        problems.append(f"backbone.weights={weights!r} must be imagenet, none or the path of an existing file")
    integer("backbone.freeze_stages", 0)
    choice("roi_head.pooler", POOLERS)
    choice("backbone.box_head", BOX_HEADS)
    choice("data.name", SOURCES)
    if present("data.split"):
        choice("data.split", SPLIT_MODES)
    if present("data.resize"):
        choice("data.resize", RESIZE_POLICIES)
        check("data.scale", lambda v: 0 < v < float("inf"), "finite and > 0")
    choice("model.mode", MODES)
    choice("model.channels_last", (False, True))
    choice("optim.schedule", SCHEDULES)
    choice("train.on_nonfinite", NONFINITE_ACTIONS)
    if OmegaConf.select(cfg, "logger.wandb") is not None:
        choice("logger.wandb.mode", WANDB_MODES)
    for key in ("rpn.num_rois", "rpn.batch_size_per_image", "data.batch_size", "rpn.pre_nms_top_n_train",
                "rpn.post_nms_top_n_train", "rpn.pre_nms_top_n_test", "rpn.post_nms_top_n_test",
                "roi_head.detections_per_image"):
        integer(key, 1)
    for key in ("data.num_workers", "optim.warmup_steps", "eval.val_images"):
        integer(key, 0)
    if integer("data.image_size", 1):
        image_size = cfg.data.image_size
        check("data.max_size", lambda v: v >= image_size, f"an integer >= data.image_size ({image_size})", kind=is_int)
    else:
        integer("data.max_size", 1)
    if present("roi_head.pool_size"):
        integer("roi_head.pool_size", 1)
    vgg16_classifier = cfg.backbone.name == "vgg16" and cfg.backbone.box_head == "classifier"
    if vgg16_classifier and cfg.roi_head.pool_size not in (None, 7):
        problems.append(
            f"roi_head.pool_size={cfg.roi_head.pool_size} must be 7 (or null) for vgg16's classifier: "
            "fc6 expects 7x7"
        )
    if cfg.backbone.name.endswith("_fpn") and cfg.backbone.box_head != "mlp":
        problems.append(f"backbone.box_head={cfg.backbone.box_head!r}: an FPN backbone's box head is mlp")
    fractions = ("rpn.positive_fraction", "roi_head.positive_fraction", "rpn.fg_iou", "rpn.bg_iou", "roi_head.fg_iou",
                 "roi_head.bg_iou_lo", "roi_head.bg_iou_hi", "rpn.nms_iou", "roi_head.nms_iou", "eval.score_threshold",
                 "optim.min_lr_ratio")
    valid = {key: check(key, lambda v: 0 <= v <= 1, "in [0, 1]") for key in fractions}
    if valid["rpn.bg_iou"] and valid["rpn.fg_iou"] and cfg.rpn.bg_iou > cfg.rpn.fg_iou:
        problems.append(f"rpn.bg_iou={cfg.rpn.bg_iou} must be <= rpn.fg_iou={cfg.rpn.fg_iou}")
    band = ("roi_head.bg_iou_lo", "roi_head.bg_iou_hi", "roi_head.fg_iou")
    if all(valid[key] for key in band) and not cfg.roi_head.bg_iou_lo < cfg.roi_head.bg_iou_hi <= cfg.roi_head.fg_iou:
        problems.append(
            "the background band needs roi_head.bg_iou_lo < roi_head.bg_iou_hi <= roi_head.fg_iou, got "
            f"{cfg.roi_head.bg_iou_lo}, {cfg.roi_head.bg_iou_hi}, {cfg.roi_head.fg_iou}"
        )
    for key in ("rpn.min_size", "rpn.score_thresh", "roi_head.min_size", "roi_head.score_thresh"):
        check(key, lambda v: 0 <= v < float("inf"), "finite and >= 0")
    for key in [f"loss.weights.{part}" for part in cfg.loss.weights] + ["loss.rpn_smooth_l1_beta",
                                                                         "loss.roi_smooth_l1_beta"]:
        check(key, lambda v: 0 <= v < float("inf"), "finite and >= 0")
    check("optim.optimizer.lr", lambda v: 0 < v < float("inf"), "finite and > 0")
    for key in ("rpn.anchor_sizes", "rpn.aspect_ratios"):
        values = OmegaConf.select(cfg, key)
        if values != "auto" and not positive_numbers(values):
            shown = OmegaConf.to_container(values) if isinstance(values, ListConfig) else values
            problems.append(f"{key}={shown} must be a non-empty list of numbers > 0 (or of such lists, one per "
                            "level), or auto")
    for key in ("rpn.box_weights", "roi_head.box_weights"):
        values = OmegaConf.select(cfg, key)
        if not (positive_numbers(values) and len(values) == 4 and all(is_number(v) for v in values)):
            shown = OmegaConf.to_container(values) if isinstance(values, ListConfig) else values
            problems.append(f"{key}={shown} must be 4 numbers > 0 (dx, dy, dw, dh)")
    if OmegaConf.select(cfg, "inference.slicing") is not None:
        try:
            Slicing.from_config(cfg.inference.slicing)
        except ValueError as error:
            problems.append(str(error))
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
