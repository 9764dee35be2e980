"""The hard embedded benchmark: small cameras and phones in dense look-alike clutter on photographs.

The objects are those of :mod:`frcnn_lab.data.synthetic`, but everything that makes real photos hard
is turned up, so that design choices (input size, RoIs per image, RoI op) show in the mAP:

- **small objects and a wide scale range**: an object's longest side is drawn log-uniformly from
  ``small_size`` (10-40 px) with probability ``small_fraction``, else from ``large_size`` (40-150 px),
  on 600-720 px canvases; at ``data.image_size=300`` the small ones shrink to 5-20 px;
- **dense clutter**: 8-24 look-alike distractors (cups, mugs, books, sunglasses, plates, clocks) of
  the same sizes, and up to ``max_objects`` targets;
- **partial occlusion**: distractors may lie on top of targets, covering up to ``max_occlusion`` of
  a target's box in all; targets overlap each other by at most IoU 0.3;
- **textured backgrounds**: a random crop of a photograph shipped with scikit-image (brick, grass,
  gravel, coffee, a cat, an astronaut, a motorcycle, a rocket...), rescaled, flipped and tinted, blended
  with a procedural surface;
- **capture artefacts**: exposure gain and gamma, a colour cast, vignetting, Gaussian blur, sensor
  noise and JPEG compression at quality 20-80.

Boxes are the whole object (amodal, like COCO's), pixel ``xyxy`` with exclusive right and bottom
edges; labels 1 = camera, 2 = phone. Item ``i`` depends only on ``(seed, i, stream)`` and the
constructor arguments, as in :class:`~frcnn_lab.data.synthetic.SyntheticScenes`.
"""

from __future__ import annotations

import functools
import io
import operator
from importlib import resources

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from frcnn_lab.data.synthetic import (
    DISTRACTOR_SHAPES,
    TARGET_SHAPES,
    Box,
    _draw_background,
    _iou,
    class_odds,
    draw_label,
    item_position,
)

# Photographs and textures that scikit-image ships inside its wheel (skimage/data/), so no download.
PHOTOS = ("brick.png", "grass.png", "gravel.png", "coffee.png", "chelsea.png", "astronaut.png",
          "motorcycle_left.png", "rocket.jpg", "camera.png", "page.png", "text.png", "moon.png")
MAX_TARGET_IOU = 0.3
PLACEMENT_ATTEMPTS = 12


@functools.cache
def _photo(name: str) -> np.ndarray:
    """A scikit-image sample picture as (H, W, 3) uint8 RGB, read once per process."""
    try:
        path = resources.files("skimage") / "data" / name
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "data.source.difficulty=hard draws its backgrounds from scikit-image's sample pictures: "
            "pip install scikit-image") from error
    with resources.as_file(path) as file, Image.open(file) as image:
        return np.asarray(image.convert("RGB"))


def _photo_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random, rescaled, flipped and tinted crop of a sample photograph, (height, width, 3) float32."""
    photo = Image.fromarray(_photo(PHOTOS[int(rng.integers(len(PHOTOS)))]))
    scale = float(np.exp(rng.uniform(np.log(0.6), np.log(2.0))))
    # Never smaller than the canvas: upscale as much as the crop needs.
    scale = max(scale, height / photo.height, width / photo.width)
    crop_w, crop_h = width / scale, height / scale
    left, top = rng.uniform(0, photo.width - crop_w), rng.uniform(0, photo.height - crop_h)
    crop = np.asarray(photo.resize((width, height), Image.BILINEAR, box=(left, top, left + crop_w, top + crop_h)),
                      dtype=np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    return crop * rng.uniform(0.75, 1.2, 3).astype(np.float32)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _covered_fraction(target: Box, covers: list[Box]) -> float:
    """Upper bound on the share of ``target``'s area under ``covers`` (sum of the intersections)."""
    area = (target[2] - target[0]) * (target[3] - target[1])
    inter = 0
    for box in covers:
        w = min(target[2], box[2]) - max(target[0], box[0])
        h = min(target[3], box[3]) - max(target[1], box[1])
        inter += max(w, 0) * max(h, 0)
    return inter / area


def _capture(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """Exposure, gamma, colour cast, vignetting, blur, noise and JPEG artefacts on (H, W, 3) uint8."""
    height, width = pixels.shape[:2]
    # Gamma, exposure and colour cast as one lookup table per channel.
    levels = (np.arange(256, dtype=np.float32) / 255)[:, None] ** rng.uniform(0.7, 1.4)
    lut = np.clip(levels * rng.uniform(0.55, 1.3) * rng.uniform(0.88, 1.12, 3) * 255, 0, 255)
    image = np.stack([lut[pixels[..., c], c] for c in range(3)], axis=-1)
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    image *= (1 - rng.uniform(0, 0.35) * (xs ** 2 + ys ** 2) / 2)[..., None]
    out = Image.fromarray(image.astype(np.uint8))
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 1.3))))
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(rng.uniform(2, 10))
    noisy = np.asarray(out, np.float32) + noise
    out = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    if rng.random() < 0.85:
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=int(rng.integers(20, 81)))
        out = Image.open(buffer).convert("RGB")
    return np.asarray(out)


class ClutteredScenes:
    """Small cameras and phones among many look-alikes, partly occluded, on photographic backgrounds.

    Item i is a pure function of (seed, i, stream): ``{"image": (H, W, 3) uint8, "boxes": (N, 4) float32
    xyxy, "labels": (N,) int64 in 1..2, "image_id": str}``.
    """

    def __init__(self, num_images: int, seed: int = 0, empty_fraction: float = 0.1, max_objects: int = 8,
                 small_size: tuple[int, int] = (10, 40), large_size: tuple[int, int] = (40, 150),
                 small_fraction: float = 0.6, distractors: tuple[int, int] = (8, 24), max_occlusion: float = 0.4,
                 image_sizes: tuple[tuple[int, int], ...] = ((600, 600), (600, 720), (720, 600)),
                 stream: int = 0, class_weights=None):
        if not isinstance(num_images, (int, np.integer)) or num_images < 0:
            raise ValueError(f"num_images must be a non-negative integer, got {num_images!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not 0.0 <= empty_fraction <= 1.0 or not 0.0 <= small_fraction <= 1.0:
            raise ValueError(f"empty_fraction and small_fraction must be in [0, 1], got {empty_fraction!r}, "
                             f"{small_fraction!r}")
        if not isinstance(max_objects, (int, np.integer)) or max_objects < 1:
            raise ValueError(f"max_objects must be an integer >= 1, got {max_objects!r}")
        for name, pair in (("small_size", small_size), ("large_size", large_size), ("distractors", distractors)):
            if len(pair) != 2 or not 0 <= pair[0] <= pair[1] or (name != "distractors" and pair[0] < 2):
                raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi, got {pair!r}")
        if not 0.0 <= max_occlusion < 1.0:
            raise ValueError(f"max_occlusion must be in [0, 1), got {max_occlusion!r}")
        if not image_sizes or any(len(size) != 2 or min(size) < 16 for size in image_sizes):
            raise ValueError(f"image_sizes must be non-empty (height, width) pairs >= 16, got {image_sizes!r}")
        if not isinstance(stream, (int, np.integer)) or stream < 0:
            raise ValueError(f"stream must be a non-negative integer, got {stream!r}")
        self.num_images, self.seed, self.stream = int(num_images), int(seed), int(stream)
        self.empty_fraction, self.max_objects = float(empty_fraction), int(max_objects)
        self.small_size, self.large_size = tuple(small_size), tuple(large_size)
        self.small_fraction, self.distractors = float(small_fraction), tuple(int(d) for d in distractors)
        self.max_occlusion = float(max_occlusion)
        self.image_sizes = tuple((int(h), int(w)) for h, w in image_sizes)
        self.odds = class_odds(class_weights)  # None: equal odds

    def _rng(self, position: int) -> np.random.Generator:
        # A key that never equals an easy scene's, so the two generators never share pixels.
        return np.random.default_rng([self.seed, position, self.stream, 7])

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of item ``index`` without drawing it (its first random draw)."""
        rng = self._rng(operator.index(index) % max(self.num_images, 1))
        return self.image_sizes[int(rng.integers(len(self.image_sizes)))]

    def __len__(self) -> int:
        return self.num_images

    def _side(self, rng: np.random.Generator, limit: int) -> int:
        low, high = self.small_size if rng.random() < self.small_fraction else self.large_size
        return max(2, min(round(_log_uniform(rng, low, high)), limit))

    def _box(self, rng: np.random.Generator, aspect: float, height: int, width: int) -> Box:
        longest = self._side(rng, min(height, width))
        box_w, box_h = (longest, max(2, round(longest / aspect))) if aspect >= 1 else \
            (max(2, round(longest * aspect)), longest)
        x1, y1 = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
        return x1, y1, x1 + box_w, y1 + box_h

    def __getitem__(self, index: int) -> dict:
        position = item_position(index, self.num_images)
        rng = self._rng(position)
        height, width = self.image_sizes[int(rng.integers(len(self.image_sizes)))]
        alpha = rng.uniform(0.35, 0.9)
        background = alpha * _photo_background(rng, height, width) + \
            (1 - alpha) * _draw_background(rng, height, width).astype(np.float32)
        canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))

        targets: list[tuple[int, Box]] = []
        count = 0 if rng.random() < self.empty_fraction else int(rng.integers(1, self.max_objects + 1))
        for _ in range(count):
            label = draw_label(rng, self.odds)
            aspect = TARGET_SHAPES[label][0](rng)
            for _ in range(PLACEMENT_ATTEMPTS):
                box = self._box(rng, aspect, height, width)
                if all(_iou(box, other) <= MAX_TARGET_IOU for _, other in targets):
                    targets.append((label, box))
                    break
        # Distractors go on top of targets only while each target stays mostly visible.
        covers: dict[int, list[Box]] = {i: [] for i in range(len(targets))}
        layers: list[tuple[int, int, Box]] = [(-1, label, box) for label, box in targets]
        for _ in range(int(rng.integers(self.distractors[0], self.distractors[1] + 1))):
            kind = int(rng.integers(len(DISTRACTOR_SHAPES)))
            aspect = DISTRACTOR_SHAPES[kind][0](rng)
            for _ in range(PLACEMENT_ATTEMPTS):
                box = self._box(rng, aspect, height, width)
                if all(_covered_fraction(target, [*covers[i], box]) <= self.max_occlusion
                       for i, (_, target) in enumerate(targets)):
                    for i, (_, target) in enumerate(targets):
                        if _iou(box, target) > 0:
                            covers[i].append(box)
                    layers.append((kind, 0, box))
                    break
        # Random depth order: a distractor is under or over the targets it touches.
        order = rng.permutation(len(layers))
        draw = ImageDraw.Draw(canvas)
        for i in order:
            kind, label, box = layers[i]
            drawer = TARGET_SHAPES[label][1] if kind < 0 else DISTRACTOR_SHAPES[kind][1]
            drawer(draw, box, rng)
        pixels = _capture(rng, np.asarray(canvas))
        suffix = f"-s{self.stream}" if self.stream else ""
        return {
            "image": pixels,
            "boxes": np.array([box for _, box in targets], dtype=np.float32).reshape(-1, 4),
            "labels": np.array([label for label, _ in targets], dtype=np.int64),
            "image_id": f"hard-{self.seed}{suffix}-{position}",
        }
