"""``trainer.*``: the typed arguments of Lightning's Trainer that the lab sets or lets users set.

Hydra checks their types while it composes (``trainer.max_epochs=1.5`` is refused there, naming the key);
``TrainerConfig`` checks their ranges. ``trainer=gpu`` and ``trainer=ddp`` override deltas. A Trainer argument
that is not here is refused by name: add it here (with its type) to support it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from frcnn_lab.checks import Checks, is_number

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


@dataclass
class TrainerConfig:
    """Lightning Trainer arguments (``lightning.pytorch.Trainer``); the defaults are the CLI's."""

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"  # auto | cpu | gpu | ...
    devices: Any = 1  # processes per node: a count, -1 / "auto" (all) or a list of device ids
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ... (trainer=ddp; docs/scaling.md)
    sync_batchnorm: bool = False  # BatchNorm statistics over every rank (only layers that train)
    use_distributed_sampler: bool = True  # Lightning shards train and val across ranks
    max_epochs: int = 3  # the quickstart's budget (README)
    max_steps: int = -1  # stop after this many optimiser steps (-1: no limit)
    precision: Any = "32-true"  # 32-true | bf16-mixed | 16-mixed
    check_val_every_n_epoch: int | None = 1  # None: validate every val_check_interval steps instead
    val_check_interval: Any = None  # validate every N training steps (across epochs with check_val_every_n_epoch=null)
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = 10.0
    deterministic: Any = False  # true | false | warn
    benchmark: bool | None = None  # cudnn autotuning (trainer=gpu)
    fast_dev_run: Any = False  # true or N: N training and validation batches, no checkpoints (debug=fast_dev_run)
    overfit_batches: Any = 0.0  # train and validate on this many batches (debug=overfit_batch)
    limit_train_batches: Any = None  # a share (float) or a count (int) of the batches per epoch
    limit_val_batches: Any = None
    accumulate_grad_batches: int = 1

    def __post_init__(self) -> None:
        check = Checks("trainer")
        check.integer("max_epochs", self.max_epochs, -1)
        check.integer("max_steps", self.max_steps, -1)
        check.integer("num_nodes", self.num_nodes, 1)
        check.integer("num_sanity_val_steps", self.num_sanity_val_steps, -1)
        check.integer("log_every_n_steps", self.log_every_n_steps, 1)
        check.integer("accumulate_grad_batches", self.accumulate_grad_batches, 1)
        if self.check_val_every_n_epoch is not None:
            check.integer("check_val_every_n_epoch", self.check_val_every_n_epoch, 1)
        check.choice("precision", str(self.precision), PRECISIONS)
        if self.gradient_clip_val is not None:
            check.non_negative("gradient_clip_val", self.gradient_clip_val)
        if self.val_check_interval is not None:
            check.require("val_check_interval", self.val_check_interval, is_number(self.val_check_interval)
                          and self.val_check_interval > 0, "a number of steps >= 1 or a share (0, 1] of an epoch")
        check.done()
