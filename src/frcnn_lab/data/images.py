"""Reading image files the same way everywhere: EXIF orientation applied, any mode converted to 8-bit RGB.

``probe(path)`` -> ``Probe(height, width, orientation)``: the size as displayed (after EXIF rotation) and
the EXIF orientation, reading only the header unless ``decode=True``; ``load(path, min_side, max_side)`` ->
uint8 (H, W, 3) RGB. Both raise ``ImageError`` naming the file and what is wrong with it.
``exif_transpose_boxes`` turns boxes drawn on a file's raw pixels the way ``load`` turns the pixels.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from frcnn_lab.errors import UserError

# EXIF orientations 5..8 turn the picture by 90 degrees: width and height swap.
SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageError(UserError, ValueError):
    """An image file that is missing, empty, unreadable, corrupt, truncated or too large."""


class Probe(NamedTuple):
    """What the header says: size as displayed (EXIF orientation applied) and the orientation (1: none)."""

    height: int
    width: int
    orientation: int

    @property
    def raw_size(self) -> tuple[int, int]:
        """(height, width) of the stored pixels, before the EXIF orientation is applied."""
        swapped = self.orientation in SWAPPING_ORIENTATIONS
        return (self.width, self.height) if swapped else (self.height, self.width)


def _open(path: Path) -> Image.Image:
    """PIL image (lazy: header only) or ImageError naming the problem.

    PIL's decompression-bomb limit stays in force: images of more than 2 x ``Image.MAX_IMAGE_PIXELS``
    (about 179 M pixels) are refused; those between 89 M and 179 M load without PIL's warning.
    """
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: missing file") from None
    except OSError as error:
        raise ImageError(f"{path}: cannot be read ({error})") from None
    if size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as error:
        raise ImageError(f"{path}: too many pixels ({error})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except OSError as error:
        raise ImageError(f"{path}: cannot be read ({error})") from None


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a broken EXIF block is no reason to lose the picture: PIL then ignores it too
        return 1


def probe(path: str | os.PathLike, decode: bool = False) -> Probe:
    """Size of the image as displayed and its EXIF orientation; ``decode=True`` also decodes every pixel
    (finds truncation)."""
    path = Path(path)
    with _open(path) as image:
        width, height = image.size
        orientation = _orientation(image)
        if orientation in SWAPPING_ORIENTATIONS:
            width, height = height, width
        if decode:
            try:
                image.load()
            except (OSError, SyntaxError, ValueError) as error:
                raise ImageError(f"{path}: corrupt or truncated image ({error})") from None
    return Probe(height, width, orientation if 1 <= orientation <= 8 else 1)


def exif_transpose_boxes(boxes: np.ndarray, orientation: int, height: int, width: int) -> np.ndarray:
    """Boxes (N, 4) xyxy on the raw pixels of a (height, width) file -> the same boxes on the image as
    ``ImageOps.exif_transpose`` turns it for EXIF ``orientation`` (1..8)."""
    x1, y1, x2, y2 = boxes.T
    w, h = width, height
    turned = {
        1: (x1, y1, x2, y2),
        2: (w - x2, y1, w - x1, y2),          # mirrored left-right
        3: (w - x2, h - y2, w - x1, h - y1),  # turned 180 degrees
        4: (x1, h - y2, x2, h - y1),          # mirrored top-bottom
        5: (y1, x1, y2, x2),                  # transposed
        6: (h - y2, x1, h - y1, x2),          # turned 90 degrees clockwise
        7: (h - y2, w - x2, h - y1, w - x1),  # transversed
        8: (y1, w - x2, y2, w - x1),          # turned 90 degrees counter-clockwise
    }[orientation]
    return np.stack(turned, axis=1).astype(np.float32).reshape(-1, 4)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; 16-bit greys are scaled (65535 -> 255) rather than clipped."""
    if image.mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((np.clip(pixels, 0, 65535) // 257).astype(np.uint8), "L")
    elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels over white, as image viewers show them, not over whatever colour they hide.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return image.convert("RGB")


def load(path: str | os.PathLike, min_side: int | None = None, max_side: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) RGB, EXIF orientation applied.

    With ``min_side`` / ``max_side`` (the size the image will be resized to), JPEGs are decoded at a
    reduced scale (1/2, 1/4 or 1/8) when that still leaves at least the needed pixels: a 4000 px photo
    for a 600 px input is decoded at a quarter of its side. The caller rescales boxes by the returned shape.
    """
    path = Path(path)
    with _open(path) as image:
        if min_side and image.format == "JPEG":
            width, height = image.size
            scale = min(min_side / min(width, height), (max_side or float("inf")) / max(width, height))
            if scale < 0.5:
                image.draft("RGB", (max(1, int(width * scale + 1)), max(1, int(height * scale + 1))))
        try:
            image = ImageOps.exif_transpose(image)
            return np.array(_to_rgb(image))  # writable, as torch.from_numpy wants
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageError(f"{path}: corrupt or truncated image ({error})") from None
