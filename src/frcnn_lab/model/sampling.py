"""Balanced sampling of anchors / RoIs for the losses, without host-device synchronisation.

``BalancedSampler`` draws what torchvision's ``BalancedPositiveNegativeSampler`` draws (per image at most
``batch_size_per_image * positive_fraction`` positives, uniformly at random, then negatives up to
``batch_size_per_image``), but with masks and ranks on the device: torchvision's version asks the host for the
number of candidates (``torch.where``, ``randperm(n)``) twice per image, which waits for the GPU each time.
"""

from __future__ import annotations

import torch
from torch import Tensor


class BalancedSampler:
    """labels per image [(N_i,)]: >= 1 positive, 0 negative, -1 ignored -> (positive [(N_i,)], negative [(N_i,)])
    boolean masks of the sampled entries, as ``BalancedPositiveNegativeSampler`` returns them."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        max_positive = int(self.batch_size_per_image * self.positive_fraction)
        positives, negatives = [], []
        for image_labels in labels:
            positive = random_subset(image_labels >= 1, max_positive, max_positive)
            num_negative = self.batch_size_per_image - positive.sum()
            positives.append(positive)
            negatives.append(random_subset(image_labels == 0, num_negative, self.batch_size_per_image))
        return positives, negatives


def random_subset(candidates: Tensor, count: int | Tensor, max_count: int) -> Tensor:
    """A uniformly random subset of ``count`` of the True entries of ``candidates`` (N,), all when fewer.

    Every entry gets a random key, candidates before the others; the ``max_count`` (an int bound on ``count``, a
    number or a 0-d tensor on the device) smallest keys are ranked, and an entry is kept when it is a candidate
    and its rank is below ``count``. Ranking only those (``topk``) instead of all N is what keeps it cheap.
    """
    keys = torch.rand(candidates.shape, device=candidates.device).masked_fill(~candidates, 2.0)
    smallest = keys.topk(min(max_count, keys.shape[0]), largest=False).indices  # ascending keys
    ranked_in = torch.zeros_like(candidates)
    ranked_in[smallest] = torch.arange(smallest.shape[0], device=keys.device) < count
    return candidates & ranked_in
