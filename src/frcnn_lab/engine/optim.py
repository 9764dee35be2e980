"""``optim.*``: the optimiser and its learning-rate schedule (linear warm-up, then constant or cosine decay)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from frcnn_lab.checks import Checks, is_number

SCHEDULES = ("cosine", "constant")


def sgd() -> dict[str, Any]:
    return {"_target_": "torch.optim.SGD", "lr": 0.02, "momentum": 0.9, "weight_decay": 0.0001}


@dataclass
class OptimConfig:
    """``optim.*``. ``optimizer`` is instantiated with Hydra (``_target_`` and that class's own arguments); an
    option of the ``optim`` group (``optim=adam``) replaces it whole. The lr is for a batch of 4: scale it with the
    batch (docs/scaling.md)."""

    optimizer: Any = field(default_factory=sgd)
    warmup_steps: int = 50  # linear warm-up from lr / 1000
    schedule: str = "cosine"  # cosine (down to min_lr_ratio * lr at the last step) | constant
    min_lr_ratio: float = 0.05
    # the schedule's length in optimiser steps (None: the run's); a run stopped early by trainer.max_epochs /
    # max_steps then follows the schedule of the longer run it is cut from (short diagnostic runs), or a longer one
    schedule_steps: int | None = None

    def __post_init__(self) -> None:
        check = Checks("optim")
        check.require("optimizer", self.optimizer, isinstance(self.optimizer, dict) and "_target_" in self.optimizer,
                      "a mapping with _target_ (an optimiser class) and its arguments")
        lr = self.optimizer.get("lr") if isinstance(self.optimizer, dict) else None
        check.require("optimizer.lr", lr, is_number(lr) and 0 < lr < math.inf, "finite and > 0")
        check.integer("warmup_steps", self.warmup_steps, 0)
        check.choice("schedule", self.schedule, SCHEDULES)
        check.fraction("min_lr_ratio", self.min_lr_ratio)
        if self.schedule_steps is not None:
            check.integer("schedule_steps", self.schedule_steps, 1)
        check.done()


def warmup_then_decay(config: OptimConfig, run_steps: int) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up from 0.001, then constant or cosine down to ``min_lr_ratio`` at the
    schedule's last step (``config.schedule_steps``, else ``run_steps``: the run's optimiser steps)."""
    warmup_steps, min_ratio = config.warmup_steps, config.min_lr_ratio
    total_steps = config.schedule_steps if config.schedule_steps is not None else run_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.001 + (1 - 0.001) * step / warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
