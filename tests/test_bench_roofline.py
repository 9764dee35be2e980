"""The roofline benchmark's FLOP count: torch's counter where it is right, the corrected backward of grouped
convolutions where it is not."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from support import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "experiments" / "bench"))
from roofline import flop_counter  # noqa: E402


def counted(counter: FlopCounterMode, conv: torch.nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    """FLOPs of the forward, and of forward + backward."""
    with counter:
        y = conv(x)
        forward = counter.get_total_flops()
        y.sum().backward()
    return forward, counter.get_total_flops()


@pytest.mark.parametrize("groups", [4, 16])
def test_grouped_convolution_backward_counts_the_forward_twice(groups):
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=groups)
    x = torch.randn(2, 16, 10, 12, requires_grad=True)
    forward, total = counted(flop_counter(), conv, x)
    by_hand = 2 * 2 * 16 * (16 // groups) * 9 * 10 * 12  # 2 FLOPs per multiply-add, per output element
    assert forward == by_hand
    assert total == 3 * by_hand  # input and weight gradients each cost the forward


def test_ordinary_convolution_and_weights_only_gradient_match_torch():
    conv = torch.nn.Conv2d(8, 6, 3, stride=2, padding=1)
    x = torch.randn(2, 8, 9, 11, requires_grad=True)
    assert counted(flop_counter(), conv, x) == counted(FlopCounterMode(display=False), conv, x)
    frozen_input = x.detach()  # no input gradient: the backward is the weight gradient alone
    forward, total = counted(flop_counter(), conv, frozen_input)
    assert total == 2 * forward
