"""The config tree: each part's typed config registered in Hydra's ConfigStore, and the checks across parts.

Every part owns a dataclass beside its code (``RPNConfig`` in ``model/rpn.py``, ``DataConfig`` in
``data/config.py``...) holding its defaults and checking its own values. Here they become config groups: the
default option of each group is the dataclass itself (``rpn/default``, ``backbone/mobilenet_v2``, ``data/synthetic``,
``optim/sgd``, ``trainer/default``...), and ``schema/<group>`` is what the YAML options in ``conf/<group>/`` start
from, so that they only set what differs. Hydra refuses a value of the wrong type or an unknown key while it composes,
naming the key; ``validate`` then runs each part's own checks and the few that involve two parts, and raises one
ConfigError listing every problem, before any data or model is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.plugins.environments import LSFEnvironment, SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig, ListConfig, OmegaConf

from frcnn_lab.checks import free_form_fields, typed
from frcnn_lab.data.config import DataConfig
from frcnn_lab.engine.callbacks.nonfinite import TrainConfig
from frcnn_lab.engine.module import EvalConfig
from frcnn_lab.engine.optim import OptimConfig
from frcnn_lab.engine.trainer import TrainerConfig
from frcnn_lab.errors import ConfigError
from frcnn_lab.inference.slicing import Slicing
from frcnn_lab.model.backbones import BackboneConfig, feature_levels, pool_size_problem
from frcnn_lab.model.detection_weights import TORCHVISION_DETECTORS as COCO_LAYOUTS
from frcnn_lab.model.detector import ModelConfig
from frcnn_lab.model.losses import LossConfig
from frcnn_lab.model.roi_head import RoIHeadConfig
from frcnn_lab.model.rpn import RPNConfig, anchor_sizes_per_level
from frcnn_lab.runs.tracking import WANDB_MODES

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

PARTS: dict[str, type] = {
    "backbone": BackboneConfig, "rpn": RPNConfig, "roi_head": RoIHeadConfig, "loss": LossConfig,
    "optim": OptimConfig, "data": DataConfig, "trainer": TrainerConfig, "model": ModelConfig, "train": TrainConfig,
    "eval": EvalConfig, "inference.slicing": Slicing,
}
"""Config key -> the typed config of the part it configures."""

DEFAULT_OPTIONS = {"backbone": "mobilenet_v2", "rpn": "default", "roi_head": "default", "loss": "default",
                   "optim": "sgd", "data": "synthetic", "trainer": "default", "inference/slicing": "default"}
"""Config group -> the name of its default option, which is the group's dataclass with its defaults."""



def register() -> None:
    """The default options and the ``schema/<name>`` nodes in Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    for group, name in DEFAULT_OPTIONS.items():
        store.store(group=group, name=name, node=PARTS[group.replace("/", ".")])
    for key, cls in PARTS.items():
        schema = OmegaConf.structured(cls)
        for name in free_form_fields(cls):  # each option sets these whole: nothing of the default's mapping stays
            schema[name] = None
        store.store(group="schema", name=key.replace(".", "_"), node=schema)


register()


def group_option(group: str, option: str | None = None) -> dict[str, Any]:
    """The keys of one option of a config group as the CLI composes them (None: the group's default option), for
    code that builds parts without composing a whole run."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", [f"{group}={option}"] if option else [])
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(OmegaConf.select(cfg, group.replace("/", ".")), resolve=True)


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError naming each bad key with its valid choices or range: each part's own checks, then the
    ones across parts."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError("required keys without a value: " + ", ".join(missing))
    problems: list[str] = []
    parts: dict[str, Any] = {}
    for key, cls in PARTS.items():
        node = OmegaConf.select(cfg, key)
        if node is None:
            continue
        try:
            # As a plain mapping: merged into the part's defaults, a key added with + is refused too.
            parts[key] = typed(cls, OmegaConf.to_container(node, resolve=True), key)
        except ConfigError as error:
            problems += error.problems
    if not problems:
        problems += cross_part_problems(parts)
    wandb_mode = OmegaConf.select(cfg, "logger.wandb.mode")
    if wandb_mode is not None and wandb_mode not in WANDB_MODES:  # the W&B logger's one setting of the lab's own
        problems.append(f"logger.wandb.mode={wandb_mode!r} is unknown; choose one of {sorted(WANDB_MODES)}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems), problems)


def cross_part_problems(parts: dict[str, Any]) -> list[str]:
    """The checks that involve two parts: the box head's RoI size, the anchor sizes per level of the backbone, weights
    files that must exist, COCO weights for a layout that has them."""
    problems = []
    backbone, rpn, roi_head = parts.get("backbone"), parts.get("rpn"), parts.get("roi_head")
    pool_problem = backbone and roi_head and pool_size_problem(backbone.name, backbone.box_head, roi_head.pool_size)
    if pool_problem:
        problems.append(pool_problem)
    if backbone is not None and rpn is not None and rpn.anchor_sizes != "auto":
        try:
            anchor_sizes_per_level(rpn.anchor_sizes, list(feature_levels(backbone.name)))
        except ValueError as error:
            problems.append(f"{error} (backbone={backbone.name})")
    if backbone is not None and backbone.weights not in ("imagenet", "none") and not Path(backbone.weights).is_file():
        problems.append(f"backbone.weights={backbone.weights!r} must be imagenet, none or the path of an existing file")
    model = parts.get("model")
    if model is not None and model.weights not in ("coco", "none") and not Path(model.weights).is_file():
        problems.append(f"model.weights={model.weights!r} must be coco, none or the path of an existing file")
    if model is not None and backbone is not None and model.weights == "coco" and backbone.name not in COCO_LAYOUTS:
        problems.append(f"model.weights=coco: torchvision has COCO weights for backbone={' | '.join(COCO_LAYOUTS)}, "
                        f"not {backbone.name}")
    return problems
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
