"""RoI pooling: a fixed-size feature map for every box, from named feature levels of any size.

Three ops, selected by ``roi_head.pooler`` (``POOLERS``):

- ``roi_pool``: Fast R-CNN's max pooling. Box corners are rounded to the feature grid and the box is
  split into integer bins, so features shift by up to half a cell (the quantisation error).
- ``roi_align``: Mask R-CNN's RoI Align: bilinear samples at exact positions (``sampling_ratio`` per bin
  side, averaged); ``aligned=True`` shifts by half a pixel so a box maps to the cells it covers. On CPU it
  is computed as a weighted ``embedding_bag`` over the feature cells (``roi_align_cpu``): the same samples
  and weights as torchvision's kernel, whose CPU backward runs one scalar at a time (the speed of both:
  experiments/bench/README.md). Elsewhere, and while tracing for ONNX export (the
  ``RoiAlign`` node), torchvision's ``roi_align`` runs.
- ``crop_resize``: Luminoth's / TensorFlow's crop-and-resize: a bilinear crop to twice the output size
  whose samples run from box edge to box edge, then 2x2 max pooling.

With several levels (FPN) each box is pooled from one level, chosen as in the FPN paper (Eqn. 1) with
torchvision's ``LevelMapper`` — the mapping of ``MultiScaleRoIAlign``: a box of side ``sqrt(w h) = 224``
goes to the stride-16 level, each halving of the side one level finer, clamped to the levels there are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool
from torchvision.ops.poolers import LevelMapper


def pool_max(
    features: Tensor, boxes: list[Tensor], output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    return roi_pool(features, boxes, output_size, spatial_scale)


def pool_align(
    features: Tensor, boxes: list[Tensor], output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    if features.device.type == "cpu" and not torch.jit.is_tracing():
        return roi_align_cpu(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    return roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)


def bilinear_taps(
    start: Tensor, length: Tensor, output_size: int, grid: Tensor, size: int
) -> tuple[Tensor, Tensor]:
    """RoI Align's samples along one axis and the two cells each interpolates between.

    ``start``, ``length``: (R,) the RoIs' extent in cells; ``grid``: (R,) samples per bin; ``size``: the
    feature map's cells on this axis. Returns cells (R, P, G, 2) and weights (R, P, G, 2) for the lower and
    upper cell, G = the largest grid; the samples past a RoI's own grid, or more than a cell outside the
    map, weigh 0. Positions in [-1, 0] read cell 0 and positions past the last cell read the last cell, as
    in torchvision's kernel.
    """
    samples = max(int(grid.max()), 1) if grid.numel() else 1
    bins = torch.arange(output_size, dtype=start.dtype, device=start.device)
    offsets = torch.arange(samples, dtype=start.dtype, device=start.device)
    grid = grid.to(start.dtype)[:, None, None]
    position = start[:, None, None] + length[:, None, None] / output_size * (
        bins[None, :, None] + (offsets[None, None, :] + 0.5) / grid.clamp(min=1)
    )  # (R, P, G); an empty RoI (aligned, zero side) has a grid of 0: no samples
    used = ((offsets[None, None, :] < grid) & (position >= -1) & (position <= size)).to(start.dtype)
    position = position.clamp(0, size - 1)
    low = position.floor()
    upper = position - low
    cells = torch.stack([low, (low + 1).clamp(max=size - 1)], dim=-1).long()
    return cells, torch.stack([1 - upper, upper], dim=-1) * used[..., None]


def roi_align_cpu(
    features: Tensor, boxes: list[Tensor], output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    """torchvision's ``roi_align`` as one weighted sum of feature cells per output bin.

    Every bin of every RoI reads (samples per bin) x 4 cells of the (B * h * w, C) table of feature
    vectors; ``F.embedding_bag`` sums them with the bilinear weights, vectorised over the channels, and
    its backward adds the gradients into the table in parallel. ``sampling_ratio`` <= 0 takes
    ceil(RoI side / P) samples per bin side, as torchvision does. (B, C, h, w) -> (sum R_i, C, P, P).
    """
    batch, channels, height, width = features.shape
    image = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)])
    x1, y1, x2, y2 = (torch.cat(boxes) * spatial_scale - (0.5 if aligned else 0.0)).unbind(dim=1)
    roi_width, roi_height = x2 - x1, y2 - y1
    if not aligned:  # the original RoI Align makes every RoI at least a cell wide
        roi_width, roi_height = roi_width.clamp(min=1), roi_height.clamp(min=1)
    if sampling_ratio > 0:
        grid_y = grid_x = torch.full_like(x1, sampling_ratio)
    else:
        grid_y, grid_x = torch.ceil(roi_height / output_size), torch.ceil(roi_width / output_size)
    rows, row_weights = bilinear_taps(y1, roi_height, output_size, grid_y, height)  # (R, P, G, 2)
    cols, col_weights = bilinear_taps(x1, roi_width, output_size, grid_x, width)
    # (R, bin row, bin col, sample row, sample col, row cell, col cell) -> (R * P * P, taps per bin)
    cells = (image * height * width)[:, None, None, None, None, None, None] + (
        rows[:, :, None, :, None, :, None] * width + cols[:, None, :, None, :, None, :]
    )
    count = (grid_y * grid_x).clamp(min=1)[:, None, None, None, None, None, None]
    weights = row_weights[:, :, None, :, None, :, None] * col_weights[:, None, :, None, :, None, :] / count
    bins, taps = math.prod(cells.shape[:3]), math.prod(cells.shape[3:])
    table = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)  # a view when channels_last
    pooled = F.embedding_bag(
        cells.reshape(bins, taps), table, per_sample_weights=weights.reshape(bins, taps).to(table.dtype), mode="sum"
    )
    return pooled.reshape(-1, output_size, output_size, channels).permute(0, 3, 1, 2)


def crop_and_resize(
    features: Tensor, boxes: list[Tensor], output_size: int, spatial_scale: float, sampling_ratio: int = 0,
    aligned: bool = False,
) -> Tensor:
    """Bilinear crop of each box to (2P, 2P), then 2x2 max pooling to (P, P).

    As ``tf.image.crop_and_resize`` with boxes normalised by the padded image size: the first and last
    samples sit on the box's edges, a point ``u`` in [0, 1] of the image maps to ``u * (h - 1)`` cells,
    and samples outside the feature map read 0. ``sampling_ratio`` and ``aligned`` do not apply.
    """
    crop = 2 * output_size
    height, width = features.shape[-2:]
    image_height, image_width = height / spatial_scale, width / spatial_scale
    steps = torch.linspace(0, 1, crop, device=features.device, dtype=features.dtype)
    crops = []
    for image_features, image_boxes in zip(features, boxes, strict=True):
        x1, y1, x2, y2 = image_boxes.unbind(dim=1)
        # grid_sample with align_corners=True maps -1 / +1 to the first / last cell centre
        xs = 2 * (x1[:, None] + (x2 - x1)[:, None] * steps) / image_width - 1  # (R, 2P)
        ys = 2 * (y1[:, None] + (y2 - y1)[:, None] * steps) / image_height - 1
        grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)  # (R, 2P, 2P, 2)
        sampled = F.grid_sample(
            image_features[None], grid.reshape(1, -1, crop, 2), mode="bilinear", padding_mode="zeros",
            align_corners=True,
        )  # (1, C, R*2P, 2P): one call per image, not per box
        crops.append(sampled.reshape(features.shape[1], image_boxes.shape[0], crop, crop).transpose(0, 1))
    return F.max_pool2d(torch.cat(crops), kernel_size=2, stride=2)


POOLERS = {"roi_pool": pool_max, "roi_align": pool_align, "crop_resize": crop_and_resize}
"""``roi_head.pooler`` -> op(features (B, C, h, w), boxes [(R_i, 4)] in image pixels, output_size P,
spatial_scale, sampling_ratio, aligned) -> (sum R_i, C, P, P)."""


class RoIPooler(nn.Module):
    """Named levels ``{level: (B, C, h_l, w_l)}`` and boxes [(R_i, 4)] in image pixels -> (sum R_i, C, P, P).

    ``strides``: the levels to pool from -> their stride (16 for a C4 trunk: a box's pixels map to
    cells at 1/16); other levels in the input are ignored. With several levels the strides must be
    powers of two, and each box is pooled from the level ``LevelMapper`` assigns it.
    """

    def __init__(
        self, op: str, output_size: int, strides: Mapping[str, int], sampling_ratio: int = 2, aligned: bool = False,
        canonical_size: int = 224, canonical_level: int = 4,
    ) -> None:
        super().__init__()
        if op not in POOLERS:
            raise ValueError(f"roi_head.pooler={op!r} is unknown; choose one of {sorted(POOLERS)}")
        if not strides:
            raise ValueError("RoIPooler needs at least one level to pool from")
        self.op, self.output_size, self.strides = op, output_size, dict(strides)
        self.sampling_ratio, self.aligned = sampling_ratio, aligned
        self.level_mapper = None
        if len(self.strides) > 1:
            exponents = [math.log2(s) for s in self.strides.values()]
            if any(e != round(e) for e in exponents) or exponents != sorted(set(exponents)):
                raise ValueError(f"level strides {self.strides} must be increasing powers of two")
            self.level_mapper = LevelMapper(round(exponents[0]), round(exponents[-1]), canonical_size, canonical_level)

    def forward(self, features: Mapping[str, Tensor], boxes: list[Tensor]) -> Tensor:
        missing = [name for name in self.strides if name not in features]
        if missing:
            raise KeyError(f"RoIPooler reads levels {list(self.strides)}; the features lack {missing}")
        levels = [features[name] for name in self.strides]
        if torch.is_autocast_enabled(levels[0].device.type):
            # Pool in fp32 as torchvision's autocast kernels do (roi_pool has none on CPU): boxes keep fp32 precision.
            levels = [level.float() for level in levels]
        dtype = levels[0].dtype
        boxes = [b.to(dtype) for b in boxes]
        op = POOLERS[self.op]
        strides, settings = list(self.strides.values()), (self.sampling_ratio, self.aligned)
        if self.level_mapper is None:
            return op(levels[0], boxes, self.output_size, 1 / strides[0], *settings)
        # sizes from ``shape`` (not ``len``), so that a trace keeps them dynamic
        assigned = self.level_mapper(boxes)
        image_index = torch.cat([torch.full_like(b[:, 0], i, dtype=torch.long) for i, b in enumerate(boxes)])
        all_boxes = torch.cat(boxes)
        pooled = levels[0].new_zeros((all_boxes.shape[0], levels[0].shape[1], self.output_size, self.output_size))
        for index, (level, stride) in enumerate(zip(levels, strides, strict=True)):
            chosen = torch.where(assigned == index)[0]
            per_image = [all_boxes[chosen[image_index[chosen] == i]] for i in range(len(boxes))]
            # chosen is sorted, so concatenating per image keeps the order of ``chosen``
            level_pooled = op(level, per_image, self.output_size, 1 / stride, *settings).to(dtype)
            # scatter rather than index assignment: ONNX's export of the latter fails on a level without boxes
            pooled = pooled.scatter(0, chosen.view(-1, 1, 1, 1).expand_as(level_pooled), level_pooled)
        return pooled
