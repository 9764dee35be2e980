"""RoI pooling: a fixed-size feature map for every box, from a feature map of any size.

Three ops, selected by ``roi_head.pooler``:

- ``roi_pool``: Fast R-CNN's max pooling. Box corners are rounded to the feature grid and the box is
  split into integer bins, so features shift by up to half a cell (the quantisation error).
- ``roi_align``: Mask R-CNN's RoI Align: bilinear samples at exact positions (``sampling_ratio`` per bin
  side, averaged); ``aligned=True`` shifts by half a pixel so a box maps to the cells it covers.
- ``crop_resize``: Luminoth's / TensorFlow's crop-and-resize: a bilinear crop to twice the output size
  whose samples run from box edge to box edge, then 2x2 max pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

POOLERS = ("roi_pool", "roi_align", "crop_resize")


class RoIPooler(nn.Module):
    """features (B, C, h, w) and boxes [(R_i, 4)] in image pixels -> (sum R_i, C, P, P).

    ``spatial_scale`` maps image pixels to feature cells (1/16 for a stride-16 trunk).
    """

    def __init__(
        self, op: str = "roi_align", output_size: int = 7, spatial_scale: float = 1 / 16,
        sampling_ratio: int = 2, aligned: bool = False,
    ) -> None:
        super().__init__()
        if op not in POOLERS:
            raise ValueError(f"roi_head.pooler={op!r} is unknown; choose one of {list(POOLERS)}")
        self.op, self.output_size, self.spatial_scale = op, output_size, spatial_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, features: Tensor, boxes: list[Tensor]) -> Tensor:
        if torch.is_autocast_enabled(features.device.type):
            # Pool in fp32 as torchvision's autocast kernels do (roi_pool has none on CPU): boxes keep fp32 precision.
            features = features.float()
        boxes = [b.to(features.dtype) for b in boxes]
        if self.op == "roi_pool":
            return roi_pool(features, boxes, self.output_size, self.spatial_scale)
        if self.op == "roi_align":
            return roi_align(
                features, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
            )
        return crop_and_resize(features, boxes, self.output_size, self.spatial_scale)


def crop_and_resize(features: Tensor, boxes: list[Tensor], output_size: int, spatial_scale: float) -> Tensor:
    """Bilinear crop of each box to (2P, 2P), then 2x2 max pooling to (P, P).

    As ``tf.image.crop_and_resize`` with boxes normalised by the padded image size: the first and last
    samples sit on the box's edges, a point ``u`` in [0, 1] of the image maps to ``u * (h - 1)`` cells,
    and samples outside the feature map read 0.
    """
    crop = 2 * output_size
    height, width = features.shape[-2:]
    image_height, image_width = height / spatial_scale, width / spatial_scale
    steps = torch.linspace(0, 1, crop, device=features.device, dtype=features.dtype)
    crops = []
    for image_features, image_boxes in zip(features, boxes, strict=True):
        if len(image_boxes) == 0:
            continue
        x1, y1, x2, y2 = image_boxes.unbind(dim=1)
        # grid_sample with align_corners=True maps -1 / +1 to the first / last cell centre
        xs = 2 * (x1[:, None] + (x2 - x1)[:, None] * steps) / image_width - 1  # (R, 2P)
        ys = 2 * (y1[:, None] + (y2 - y1)[:, None] * steps) / image_height - 1
        grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)  # (R, 2P, 2P, 2)
        sampled = F.grid_sample(
            image_features[None], grid.reshape(1, -1, crop, 2), mode="bilinear", padding_mode="zeros",
            align_corners=True,
        )  # (1, C, R*2P, 2P): one call per image, not per box
        crops.append(sampled.reshape(features.shape[1], -1, crop, crop).transpose(0, 1))
    if not crops:
        return features.new_zeros((0, features.shape[1], output_size, output_size))
    return F.max_pool2d(torch.cat(crops), kernel_size=2, stride=2)
