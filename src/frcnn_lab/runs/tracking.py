"""Experiment tracking: W&B online when credentials exist, otherwise offline, never a prompt; every
W&B run is finished, and marked failed when training raised; the run's identity and ``status.json``; the best
checkpoint as a W&B artifact."""

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

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

WANDB_MODES = ("auto", "online", "offline", "disabled")
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
    Only the global rank 0 process writes it: the ranks of a multi-device run share one run directory.
    """
    path = Path(output_dir) / "status.json"
    if rank_zero_only.rank != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"status": status, "time": datetime.datetime.now().isoformat(timespec="seconds"), **fields}
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=2, default=str))
    temporary.replace(path)  # readers never see a half-written file
    return path
