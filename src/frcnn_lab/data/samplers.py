"""Batches of images with the same orientation, so padding to a common size wastes little.

Landscape (width >= height) and portrait images go to separate groups; a batch is emitted as soon as
its group holds ``batch_size`` indices, and what is left of each group at the end of the epoch
follows as smaller batches. The index order comes from ``sampler`` (shuffled for training), which
Lightning may replace by a distributed sampler: the batches then group each process's share.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import BatchSampler, Sampler


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
