"""Training safeguards: checkpoints written atomically and loaded safely, and the non-finite loss guard's pieces."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

NONFINITE_ACTIONS = ("stop", "skip")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints are written to ``<name>.partial`` in the target's directory, flushed to disk, then
    renamed over the target; loading always uses ``torch.load(..., weights_only=True)``.

    A kill at any moment leaves either the previous complete file or the new complete file at the target path,
    never a truncated one that a resume would pick. (Lightning's own writer stages the file in the system temp
    directory and moves it, which is a non-atomic copy when that directory is on another file system.)
    Remote paths (``s3://`` and the like) keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
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
