"""Batches of images with the same orientation, so padding to a common size wastes little; repeat-factor
sampling of the images that hold rare classes.

Landscape (width >= height) and portrait images go to separate groups; a batch is emitted as soon as
its group holds ``batch_size`` indices, and what is left of each group at the end of the epoch
follows as smaller batches. The index order comes from ``sampler`` (shuffled for training), which
Lightning may replace by a distributed sampler: the batches then group each process's share.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DistributedSampler, Sampler


def orientation_groups(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """0 for landscape or square (w >= h), 1 for portrait, per (height, width)."""
    return [int(height > width) for height, width in sizes]


class GroupedBatchSampler(BatchSampler):
    """Yields lists of dataset indices whose ``group_ids`` agree; every index once per epoch.

    A ``BatchSampler`` subclass, so Lightning can rebuild it around a distributed sampler under DDP.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int,
                 drop_last: bool = False) -> None:
        super().__init__(sampler, batch_size, drop_last)  # validates batch_size and drop_last
        self.group_ids = list(group_ids)

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = {}
        for index in self.sampler:
            buffer = buffers.setdefault(self.group_ids[index], [])
            buffer.append(index)
            if len(buffer) == self.batch_size:
                yield buffer[:]
                buffer.clear()
        if not self.drop_last:
            for buffer in buffers.values():
                if buffer:
                    yield buffer

    def __len__(self) -> int:
        counts: dict[int, int] = {}
        for index in self.sampler:
            counts[self.group_ids[index]] = counts.get(self.group_ids[index], 0) + 1
        if self.drop_last:
            return sum(n // self.batch_size for n in counts.values())
        return sum(-(-n // self.batch_size) for n in counts.values())


def processes() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def repeat_factors(labels: Sequence[Sequence[int]], threshold: float) -> tuple[np.ndarray, dict[int, float]]:
    """LVIS's repeat factors (Gupta et al., 2019; Detectron2's ``RepeatFactorTrainingSampler``) of the images
    whose box labels are ``labels``: with f_c the share of the images that hold class c, r_c = max(1,
    sqrt(threshold / f_c)), and an image's factor is the largest r_c of its classes (1 without boxes).
    -> (factor per image, r_c per class seen)."""
    images = len(labels)
    holding: dict[int, int] = {}
    for image_labels in labels:
        for label in {int(v) for v in image_labels}:
            holding[label] = holding.get(label, 0) + 1
    per_class = {c: max(1.0, math.sqrt(threshold / (n / images))) for c, n in sorted(holding.items())}
    factors = np.array([max((per_class[int(v)] for v in image_labels), default=1.0) for image_labels in labels])
    return factors, per_class


class RepeatFactorSampler(DistributedSampler):
    """Each epoch, image i ``floor(r_i)`` times plus once more with probability ``r_i - floor(r_i)`` (stochastic
    rounding, as Detectron2), shuffled, from a generator seeded with ``seed + epoch``: every process draws the
    same list. Lightning fixes an epoch's length from ``len()`` when the fit starts, so each epoch holds
    round(sum r_i) images (the expected count; the drawn list cut, or extended by its own first entries), rounded
    up to a multiple of ``num_replicas``; process ``rank`` takes every ``num_replicas``-th from ``rank`` on.

    A ``DistributedSampler``, so that Lightning neither replaces it under DDP nor leaves out ``set_epoch``: it
    shards itself (``num_replicas`` / ``rank`` default to torch.distributed's). Used as the DataLoader's
    sampler; inside a batch sampler (``GroupedBatchSampler``) Lightning would replace it under DDP, which the
    data module refuses. Grouped by orientation, an epoch's batch count can differ by one or two from the first
    epoch's (the groups' leftovers change with the draws): Lightning stops an epoch at the first one's count.
    """

    def __init__(self, factors: Sequence[float], seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        own_rank, world = processes()
        super().__init__(range(len(factors)), num_replicas=world if num_replicas is None else num_replicas,
                         rank=own_rank if rank is None else rank, shuffle=True, seed=seed)
        factors = torch.as_tensor(np.asarray(factors, dtype=np.float64))
        if not len(factors) or bool((factors < 1).any()):
            raise ValueError("repeat factors must be >= 1, one per image")
        self.whole, self.fraction = factors.floor(), factors - factors.floor()
        self.num_samples = math.ceil(round(float(factors.sum())) / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def drawn(self) -> Tensor:
        """This epoch's images in order, before the cut to ``total_size``: the stochastic rounding, shuffled."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        copies = self.whole + (torch.rand(len(self.fraction), generator=generator, dtype=torch.float64)
                               < self.fraction)
        indices = torch.repeat_interleave(torch.arange(len(copies)), copies.long())
        return indices[torch.randperm(len(indices), generator=generator)]

    def __iter__(self) -> Iterator[int]:
        drawn = self.drawn()
        epoch = drawn.repeat(math.ceil(self.total_size / len(drawn)))[:self.total_size]
        return iter(epoch[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
