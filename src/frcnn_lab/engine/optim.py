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

    def __post_init__(self) -> None:
        check = Checks("optim")
        check.require("optimizer", self.optimizer, isinstance(self.optimizer, dict) and "_target_" in self.optimizer,
                      "a mapping with _target_ (an optimiser class) and its arguments")
        lr = self.optimizer.get("lr") if isinstance(self.optimizer, dict) else None
        check.require("optimizer.lr", lr, is_number(lr) and 0 < lr < math.inf, "finite and > 0")
        check.integer("warmup_steps", self.warmup_steps, 0)
        check.choice("schedule", self.schedule, SCHEDULES)
        check.fraction("min_lr_ratio", self.min_lr_ratio)
        check.done()


def warmup_then_decay(config: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up from 0.001, then constant or cosine down to ``min_lr_ratio``."""
    warmup_steps, min_ratio = config.warmup_steps, config.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.001 + (1 - 0.001) * step / warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
