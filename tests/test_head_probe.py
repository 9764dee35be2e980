"""experiments/findings/head_probe.py: the figures that tell a box head that collapsed to background from one that
learned."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

PROBE = Path(__file__).resolve().parents[1] / "experiments" / "findings" / "head_probe.py"
spec = importlib.util.spec_from_file_location("head_probe", PROBE)
head_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(head_probe)


def test_a_silent_head_gives_no_gap_and_background_everywhere():
    """Every unit 0 on every RoI: all silent, no fg-bg gap, the classifier's bias alone decides (background)."""
    labels = torch.tensor([0, 0, 1, 2])
    logits = torch.tensor([[2.0, 0.0, 0.0]]).expand(4, 3)
    row = head_probe.head_activity(torch.zeros(4, 8), logits, labels)
    assert row["silent units"] == 1.0 and row["fg-bg gap"] == 0.0
    assert row["fg accuracy"] == 0.0
    assert row["p(bg) on fg"] == pytest.approx(torch.tensor([2.0, 0.0, 0.0]).softmax(0)[0].item())
    assert (row["RoIs"], row["fg RoIs"]) == (4, 2)


def test_units_that_fire_on_some_roi_are_not_silent_and_the_gap_is_the_mean_difference():
    representation = torch.tensor([[0.0, 1.0, 0.0, 0.0],   # background
                                   [0.0, 3.0, 0.0, 0.0],   # background
                                   [0.0, 0.0, 4.0, 0.0],   # foreground
                                   [0.0, 0.0, 0.0, -1.0]])  # foreground; a negative output is silent too
    labels = torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    row = head_probe.head_activity(representation, logits, labels)
    assert row["silent units"] == 0.5  # units 0 and 3
    assert row["fg-bg gap"] == pytest.approx(torch.tensor([0.0, -2.0, 2.0, -0.5]).norm().item())
    assert row["fg accuracy"] == 0.5


def test_rois_of_one_kind_cannot_be_compared():
    with pytest.raises(ValueError, match="both foreground and background"):
        head_probe.head_activity(torch.ones(2, 3), torch.zeros(2, 2), torch.tensor([1, 1]))
