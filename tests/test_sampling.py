"""The sync-free balanced sampler against torchvision's BalancedPositiveNegativeSampler, and the masked losses
against the boolean-indexing formulas they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from frcnn_lab.model.losses import roi_losses, rpn_losses
from frcnn_lab.model.sampling import BalancedSampler


@pytest.mark.parametrize(("num_pos", "num_neg"), [(3, 500), (300, 500), (200, 20), (0, 40), (0, 0), (10, 0)])
def test_counts_equal_torchvisions(num_pos, num_neg):
    generator = torch.Generator().manual_seed(num_pos * 1000 + num_neg)
    labels = torch.cat([torch.ones(num_pos), torch.zeros(num_neg), -torch.ones(50)])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    ours_pos, ours_neg = BalancedSampler(256, 0.5)([labels, labels.clone()])
    theirs_pos, theirs_neg = BalancedPositiveNegativeSampler(256, 0.5)([labels, labels.clone()])
    for ours_p, ours_n, theirs_p, theirs_n in zip(ours_pos, ours_neg, theirs_pos, theirs_neg, strict=True):
        assert ours_p.sum() == theirs_p.sum() and ours_n.sum() == theirs_n.sum()
        assert bool((labels[ours_p] == 1).all()) and bool((labels[ours_n] == 0).all())
        assert not bool((ours_p & ours_n).any())


def test_class_labels_count_as_positives():
    labels = torch.tensor([0, 2, 1, -1, 0, 3])
    positive, negative = BalancedSampler(4, 0.5)([labels])
    assert positive[0].sum() == 2 and bool((labels[positive[0]] >= 1).all())
    assert negative[0].sum() == 2 and bool((labels[negative[0]] == 0).all())


def test_every_candidate_is_drawn_equally_often():
    torch.manual_seed(0)
    labels = torch.cat([torch.ones(20), torch.zeros(40)])
    draws = 4000
    counts = torch.zeros(60)
    for _ in range(draws):
        positive, negative = BalancedSampler(10, 0.5)([labels])
        counts += positive[0].float() + negative[0].float()
    # each positive is kept with probability 5/20, each negative with 5/40; 4 standard deviations of a binomial
    for share, rows in ((5 / 20, slice(0, 20)), (5 / 40, slice(20, 60))):
        sd = (draws * share * (1 - share)) ** 0.5
        assert (counts[rows] - draws * share).abs().max() < 4 * sd


def test_masked_losses_equal_the_indexing_formulas():
    torch.manual_seed(0)
    objectness, deltas, targets = torch.randn(200), torch.randn(200, 4), torch.randn(200, 4)
    labels = torch.randint(-1, 2, (200,)).float()
    sampled = (labels >= 0) & (torch.rand(200) < 0.5)
    positive = sampled & (labels == 1)
    ours = rpn_losses(objectness, deltas, labels, targets, sampled, beta=1 / 9)
    cls = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
    reg = F.smooth_l1_loss(deltas[positive], targets[positive], beta=1 / 9, reduction="sum") / sampled.sum()
    torch.testing.assert_close(ours["rpn_cls"], cls)
    torch.testing.assert_close(ours["rpn_reg"], reg)

    logits, box_deltas = torch.randn(64, 3), torch.randn(64, 12, requires_grad=True)
    roi_labels, roi_targets = torch.randint(0, 3, (64,)), torch.randn(64, 4)
    roi_targets[roi_labels == 0] = float("inf")  # background targets must not matter
    ours = roi_losses(logits, box_deltas, roi_labels, roi_targets, beta=1.0)
    fg = torch.where(roi_labels > 0)[0]
    chosen = box_deltas.reshape(64, -1, 4)[fg, roi_labels[fg]]
    torch.testing.assert_close(ours["roi_reg"], F.smooth_l1_loss(chosen, roi_targets[fg], reduction="sum") / 64)
    ours["roi_reg"].backward()
    assert torch.isfinite(box_deltas.grad).all() and box_deltas.grad.reshape(64, -1, 4)[roi_labels == 0].eq(0).all()
