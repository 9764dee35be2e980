"""The learning-rate schedule (``frcnn_lab.engine.optim``): warm-up, cosine or constant, and its length."""

from __future__ import annotations

import math

import pytest

from frcnn_lab.engine.optim import OptimConfig, warmup_then_decay
from frcnn_lab.errors import ConfigError


def test_warm_up_then_cosine_down_to_the_floor_at_the_runs_last_step():
    factor = warmup_then_decay(OptimConfig(warmup_steps=10, min_lr_ratio=0.05), run_steps=110)
    assert factor(0) == pytest.approx(0.001) and factor(5) == pytest.approx(0.001 + 0.999 * 0.5)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.05 + 0.95 * 0.5)  # half way through the decay
    assert factor(110) == pytest.approx(0.05) and factor(500) == pytest.approx(0.05)
    constant = warmup_then_decay(OptimConfig(warmup_steps=10, schedule="constant"), run_steps=110)
    assert constant(60) == constant(110) == 1.0


def test_schedule_steps_sets_the_length_whatever_the_run():
    """A run cut at 40 of 110 steps follows the 110-step schedule: the same factors step for step."""
    long_run = warmup_then_decay(OptimConfig(warmup_steps=10), run_steps=110)
    cut = warmup_then_decay(OptimConfig(warmup_steps=10, schedule_steps=110), run_steps=40)
    assert [cut(step) for step in range(40)] == [long_run(step) for step in range(40)]
    assert cut(39) > warmup_then_decay(OptimConfig(warmup_steps=10), run_steps=40)(39)
    stretched = warmup_then_decay(OptimConfig(warmup_steps=0, schedule_steps=400), run_steps=100)
    assert stretched(100) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize("value", [0, -5, 1.5])
def test_a_schedule_length_below_one_step_is_refused(value):
    with pytest.raises(ConfigError, match=r"optim.schedule_steps=.* must be an integer >= 1"):
        OptimConfig(schedule_steps=value)
