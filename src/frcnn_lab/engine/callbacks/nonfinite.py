"""The non-finite guard: a NaN or infinite loss, gradient or weight stops the run, or its batch is skipped and
counted (``train.on_nonfinite``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor

from frcnn_lab.checks import Checks

log = logging.getLogger(__name__)

NONFINITE_ACTIONS = ("stop", "skip")


@dataclass
class TrainConfig:
    """``train.*``: what a training run does with a NaN / infinite loss or gradient."""

    on_nonfinite: str = "stop"  # stop (naming step, loss parts and image ids) | skip (the batch, counted)

    def __post_init__(self) -> None:
        check = Checks("train")
        check.choice("on_nonfinite", self.on_nonfinite, NONFINITE_ACTIONS)
        check.done()


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


class NonFiniteGuard(L.Callback):
    """Stops or skips training batches that turn a loss part, a gradient or a weight NaN or infinite.

    ``action="stop"``: such a batch stops the run with ``NonFiniteLossError`` naming the global step, the
    parts and the batch's image ids. ``action="skip"``: the batch makes no optimiser step, a warning says why,
    and ``train/nonfinite_batches`` counts it. Non-finite weights always stop the run.
    The module leaves a batch's non-finite loss parts in ``nonfinite_losses`` and back-propagates nothing
    then. Before each optimiser step one check (one wait for the GPU) covers the gradients (unless an AMP grad
    scaler, which skips steps with infinite gradients itself, is active) and the weights, which the previous
    step made; the weights are checked again after a batch with a non-finite loss and at the end of each epoch.
    """

    def __init__(self, action: str = "stop") -> None:
        if action not in NONFINITE_ACTIONS:
            raise ValueError(f"train.on_nonfinite={action!r} is unknown; choose one of {list(NONFINITE_ACTIONS)}")
        self.action, self.skipped = action, 0
        self._step, self._image_ids = 0, []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step, self._image_ids = trainer.global_step, [t.get("image_id") for t in batch[1]]

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        trainable = [(name, p) for name, p in pl_module.named_parameters() if p.requires_grad]
        check_gradients = getattr(trainer.precision_plugin, "scaler", None) is None
        gradients = [(f"gradient {name}", p.grad) for name, p in trainable] if check_gradients else []
        nonfinite = nonfinite_names([*gradients, *((f"weight {name}", p) for name, p in trainable)])
        if not nonfinite:
            return
        self.stop_if_nonfinite_weights(trainable)
        self.stop_or_skip("gradients", [name.removeprefix("gradient ") for name in nonfinite])
        optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are left untouched by the step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.nonfinite_losses:
            self.stop_if_nonfinite_weights(pl_module.named_parameters())
            self.stop_or_skip("loss", pl_module.nonfinite_losses)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop_if_nonfinite_weights(pl_module.named_parameters())
        pl_module.log("train/nonfinite_batches", float(self.skipped))

    def stop_if_nonfinite_weights(self, named_parameters: Iterable[tuple[str, Tensor]]) -> None:
        nonfinite = nonfinite_names((name, p) for name, p in named_parameters if p.requires_grad)
        if nonfinite:
            raise NonFiniteLossError(describe_nonfinite(self._step, "weights", nonfinite, self._image_ids))

    def stop_or_skip(self, what: str, names: list[str]) -> None:
        message = describe_nonfinite(self._step, what, names, self._image_ids)
        if self.action == "stop":
            raise NonFiniteLossError(message + " (set train.on_nonfinite=skip to skip such batches)")
        self.skipped += 1
        log.warning("%s; batch skipped (%d so far)", message, self.skipped)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict["skipped"]
