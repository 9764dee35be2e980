"""RoI pooling: a fixed-size feature map for every box, from named feature levels of any size.

Three ops, selected by ``roi_head.pooler`` (``POOLERS``):

- ``roi_pool``: Fast R-CNN's max pooling. Box corners are rounded to the feature grid and the box is
  split into integer bins, so features shift by up to half a cell (the quantisation error).
- ``roi_align``: Mask R-CNN's RoI Align: bilinear samples at exact positions (``sampling_ratio`` per bin
  side, averaged); ``aligned=True`` shifts by half a pixel so a box maps to the cells it covers.
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
    return roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)


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
