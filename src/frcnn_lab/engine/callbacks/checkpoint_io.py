"""Checkpoints written atomically, with the signals that end or checkpoint a run deferred to the end of the
write, and loaded as tensors only."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

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
