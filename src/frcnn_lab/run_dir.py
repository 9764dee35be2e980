"""Each run owns its output directory: a second run pointed at a used directory stops before writing anything."""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

CLAIM_FILE = ".frcnn_lab_run"
"""Created exclusively (O_EXCL) by the run that owns the directory; holds its pid, host and start time."""


class OutputDirInUseError(RuntimeError):
    """The output directory already belongs to another run (earlier, or started in the same instant)."""


_reserved: set[Path] = set()
"""Directories this process claimed ahead of the run that will use them (see reserve_output_dir)."""


def claim_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` if needed and claim it for this run; raise OutputDirInUseError if already claimed.

    The claim is one atomic file creation, so of two runs racing for the same directory exactly one wins.
    A directory that this process reserved for this run (reserve_output_dir) is handed over, once.
    Only the global rank 0 process claims: the other ranks of a multi-device run share rank 0's directory.
    """
    directory = Path(output_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank != 0:
        return directory
    if directory in _reserved:
        _reserved.discard(directory)
        return directory
    return _create_claim(directory)


def reserve_output_dir(output_dir: str | os.PathLike) -> Path:
    """Claim ``output_dir`` now, before an entry point writes its own files there, for the run it starts next.

    Reserving a directory this process already reserved is a no-op.
    """
    directory = Path(output_dir).resolve()
    if directory not in _reserved:
        claim_output_dir(directory)
        if rank_zero_only.rank == 0:
            _reserved.add(directory)
    return directory


def _create_claim(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    claim = directory / CLAIM_FILE
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        owner = claim.read_text().strip() or "unknown"
        raise OutputDirInUseError(
            f"{directory} already holds the outputs of another run ({owner}); a run never writes into another "
            "run's directory. Start a new run (it gets a new directory), or point hydra.run.dir / hydra.sweep.dir "
            "at an unused directory; to continue training, pass ckpt_path=<its checkpoint> to a new run."
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {datetime.now().isoformat()}\n")
    return directory


class OutputDirGuard(Callback):
    """Hydra callback: claims a run's directory, or a sweep's, before Hydra writes ``.hydra/`` and logs there.

    Hydra saves the composed config into the output directory before the task starts; without this guard a
    run or sweep pointed at a used directory would overwrite the earlier one's ``.hydra/`` files first.
    A refusal exits the process (SystemExit with the message): Hydra turns callback exceptions into warnings.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            reserve_output_dir(config.hydra.run.dir)
        except OutputDirInUseError as error:
            raise SystemExit(f"error: {error}") from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            _create_claim(Path(config.hydra.sweep.dir).resolve())  # each job then claims its own subdirectory
        except OutputDirInUseError as error:
            raise SystemExit(f"error: {error}") from None
