"""Experiment tracking: W&B online when credentials exist, otherwise offline, never a prompt; every
W&B run is finished, and marked failed when training raised."""

from __future__ import annotations

import contextlib
import netrc
import os
from collections.abc import Iterator, Sequence
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger, WandbLogger

WANDB_MODES = ("auto", "online", "offline", "disabled")


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
