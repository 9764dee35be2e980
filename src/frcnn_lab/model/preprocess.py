"""The detector's input, owned by the detector as torchvision's ``GeneralizedRCNNTransform`` owns its detectors':
the resize policy, the normalisation with the backbone's mean / std, the zero padding to the trunk's stride and the
detections mapped back to the photo's pixels.

The detector holds a ``Preprocess`` and its checkpoint records its ``PreprocessConfig`` (hyperparameter
``preprocess``), so that validation, ``evaluate``, ``predict``, ``serve``, ``export`` and sliced inference feed the
detector what training fed it. The resize runs on the decoded photo before augmentation (the resize step of
``frcnn_lab.data.transforms``, for training and inference alike), because tiles and scale jitter are defined at
the input's scale; how much it resizes is decided here, once (``PreprocessConfig.factor``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from frcnn_lab.checks import Checks, is_int
from frcnn_lab.errors import ConfigError

RESIZE_POLICIES = ("shortest_side", "fixed_scale")
RESIZE_KEYS = ("resize", "image_size", "max_size", "scale")  # the data.* keys; an exported model's metadata
UNKNOWN_SIZE = ("the checkpoint records no input size and is not inside its training run: set image_size and "
                "max_size")


@dataclass
class PreprocessConfig:
    """How a photo becomes the detector's input. The keys a user sets are ``data.resize``, ``data.image_size``,
    ``data.max_size`` and ``data.scale`` (studies sweep ``data.image_size``); the normalisation is the backbone's.

    ``shortest_side``: the shortest side to ``image_size`` unless the long side would pass ``max_size`` (up or
    down): photos of any size fill the same input, so an object's size in the input varies with the photo's pixel
    size. ``fixed_scale``: every photo times ``scale`` (1.0 keeps the photos' own scale): an object keeps its size
    from photo to photo whatever their pixel sizes, as orthophoto tiles, drone surveys or microscopy at one ground
    resolution need; ``image_size`` / ``max_size`` play no part. Sizes None: unknown (a checkpoint of an early
    layout outside its run folder); ``at`` then asks for them.
    """

    resize: str = "shortest_side"  # shortest_side | fixed_scale (docs/small_objects.md)
    image_size: int | None = 320  # shortest_side: the shortest side after resizing (thesis: 300 and 600)
    max_size: int | None = 320  # shortest_side: cap on the longest side
    scale: float = 1.0  # fixed_scale: the factor (1.0 keeps the images' own scale)
    image_mean: list[float] | None = None  # RGB in [0, 1]; None: the backbone's, filled in when the detector is built
    image_std: list[float] | None = None

    def __post_init__(self) -> None:
        check = Checks("data")
        check.choice("resize", self.resize, RESIZE_POLICIES)
        check.positive("scale", self.scale)
        sizes_known = self.image_size is not None or self.max_size is not None
        if sizes_known and check.integer("image_size", self.image_size, 1):
            max_ok = is_int(self.max_size) and self.max_size >= self.image_size
            check.require("max_size", self.max_size, max_ok, f"an integer >= data.image_size ({self.image_size})")
        check.done()

    def factor(self, height: int, width: int) -> float:
        """The factor a (height, width) photo is resized by."""
        if self.resize == "fixed_scale":
            return self.scale
        if self.image_size is None:
            raise ConfigError(UNKNOWN_SIZE)
        return min(self.image_size / min(height, width), self.max_size / max(height, width))

    def at(self, image_size: int | None = None, max_size: int | None = None) -> PreprocessConfig:
        """This preprocessing fed at ``image_size`` / ``max_size`` (``evaluate``, ``predict``, ``serve`` and
        ``export`` take them): the given ones, else these; an ``image_size`` given without ``max_size`` keeps the
        ratio of the two (never below ``image_size``)."""
        if image_size is not None and max_size is not None:
            return replace(self, image_size=int(image_size), max_size=int(max_size))
        if self.image_size is None:
            raise ConfigError(UNKNOWN_SIZE)
        if image_size is None:
            return replace(self, max_size=int(max_size if max_size is not None else self.max_size))
        return replace(self, image_size=int(image_size),
                       max_size=max(int(image_size), round(self.max_size * image_size / self.image_size)))


class Preprocess(nn.Module):
    """images [(3, H_i, W_i)] RGB in [0, 1], resized by ``config``'s policy -> ImageList: normalised with
    ``config.image_mean`` / ``image_std`` and zero-padded into one batch whose sides are multiples of
    ``size_divisible``; ``postprocess`` maps detections back to the photos' pixels."""

    def __init__(self, config: PreprocessConfig, size_divisible: int = 32) -> None:
        super().__init__()
        if config.image_mean is None or config.image_std is None:
            raise ValueError("Preprocess needs the normalisation: PreprocessConfig.image_mean and image_std")
        self.config, self.size_divisible = config, size_divisible
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(3, 1, 1), persistent=False)

    def forward(self, images: list[Tensor]) -> ImageList:
        """Traceable for one image with its size dynamic (sizes are tensors while tracing): the rounding up is
        written without a negative floor division, which ONNX's truncating Div would get wrong."""
        sizes = [tuple(image.shape[-2:]) for image in images]
        height, width = (max(s[i] for s in sizes) for i in (0, 1))
        d = self.size_divisible
        height, width = (height + d - 1) // d * d, (width + d - 1) // d * d
        padded = [
            F.pad((image - self.image_mean) / self.image_std, (0, width - image.shape[-1], 0, height - image.shape[-2]))
            for image in images
        ]
        return ImageList(torch.stack(padded), sizes)

    @staticmethod
    def postprocess(detections: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]],
                    original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections in the input images' coordinates -> the same in ``original_sizes`` (the photos before the
        resize), in place."""
        for detection, size, original in zip(detections, image_sizes, original_sizes, strict=True):
            detection["boxes"] = rescale_boxes(detection["boxes"], size, original)
        return detections


def rescale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Boxes (N, 4) xyxy in an image of ``from_size`` (h, w) -> the same boxes in ``to_size``."""
    ratio_h, ratio_w = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return boxes * boxes.new_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
