"""Seeded, procedurally drawn detection scenes with cameras and mobile phones.

Each item is an everyday surface seen from above (a wooden table, a tiled
floor, a painted wall) holding up to ``max_objects`` labelled targets, cameras
and phones, and optionally up to three unlabelled look-alike distractors:
cups and mugs, books, sunglasses, plates and clocks. The distractors share
parts with the targets (round lens-like rings, dark rectangles, rounded slabs),
so a detector has to learn how the parts combine rather than any single cue.

Nothing is read from disk. Item ``i`` is drawn on demand from
``np.random.default_rng([seed, i])``, so it depends only on ``(seed, i)`` and
the constructor arguments, never on access order. Boxes are pixel ``xyxy``
with exclusive right and bottom edges and tightly enclose everything drawn for
the object; labels are 1 = camera and 2 = phone (0 is kept for background).
Targets may partly cover each other (IoU at most 0.3, the smaller one on top)
but are never covered by distractors.

A ``stream`` other than 0 draws item ``i`` from ``default_rng([seed, i, stream])``
instead: a second, independent set of scenes for the same seed. The negatives
set uses stream 1 with ``empty_fraction=1`` and ``min_distractors=1``: scenes
with look-alikes and nothing to detect.

``class_weights`` (one per class) draws each target's class with those odds
instead of equal ones: an imbalanced set (``data.source.train_class_weights``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

CLASSES: tuple[str, ...] = ("camera", "phone")

Box = tuple[int, int, int, int]
Colour = tuple[int, int, int]
ShapeDrawer = Callable[[ImageDraw.ImageDraw, Box, np.random.Generator], None]
AspectSampler = Callable[[np.random.Generator], float]

MAX_PLACEMENT_IOU = 0.3
PLACEMENT_ATTEMPTS = 8
MAX_DISTRACTORS = 3


class _Frame:
    """Maps an object's own fractional layout (u across, v down) onto its pixel box.

    Mirroring and transposing let one layout serve every orientation.
    """

    def __init__(self, box: Box, transpose: bool = False, mirror_u: bool = False, mirror_v: bool = False):
        self.box, self.transpose, self.mirror_u, self.mirror_v = box, transpose, mirror_u, mirror_v
        width, height = box[2] - box[0], box[3] - box[1]
        self.u_px, self.v_px = (height, width) if transpose else (width, height)

    def point(self, u: float, v: float) -> tuple[float, float]:
        """Pixel position of the layout point (u, v)."""
        u = 1 - u if self.mirror_u else u
        v = 1 - v if self.mirror_v else v
        fx, fy = (v, u) if self.transpose else (u, v)
        x1, y1, x2, y2 = self.box
        return x1 + fx * (x2 - x1), y1 + fy * (y2 - y1)

    def rect(self, u1: float, v1: float, u2: float, v2: float) -> tuple[int, int, int, int]:
        """Inclusive PIL rectangle covering the layout rectangle; never inverted."""
        (ax, ay), (bx, by) = self.point(u1, v1), self.point(u2, v2)
        left, top = round(min(ax, bx)), round(min(ay, by))
        return left, top, max(left, round(max(ax, bx)) - 1), max(top, round(max(ay, by)) - 1)


def _colour(rng: np.random.Generator, low: int, high: int) -> Colour:
    """Random RGB colour with each channel in [low, high]."""
    return tuple(int(c) for c in rng.integers(low, high + 1, 3))


def _grey(rng: np.random.Generator, low: int, high: int, tint: int = 10) -> Colour:
    """Slightly tinted grey, the palette of camera bodies and phone frames."""
    level = int(rng.integers(low, high + 1))
    return tuple(int(np.clip(level + t, 0, 255)) for t in rng.integers(-tint, tint + 1, 3))


def _shade(colour: Colour, factor: float) -> Colour:
    """Colour scaled in brightness, clipped to the valid range."""
    return tuple(int(min(255, c * factor)) for c in colour)


def _disc(draw: ImageDraw.ImageDraw, centre: tuple[float, float], radius: float, fill: Colour) -> None:
    """Filled circle; radii below one pixel still draw a single dot."""
    r = max(radius, 0.5)
    x, y = centre
    draw.ellipse((round(x - r), round(y - r), max(round(x - r), round(x + r) - 1),
                  max(round(y - r), round(y + r) - 1)), fill=fill)


def _corner_radius(frame: _Frame, fraction: float) -> int:
    """Corner radius as a fraction of the shorter side."""
    return max(0, round(fraction * min(frame.u_px, frame.v_px)))


def _draw_camera(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """Compact camera: rounded body, grip, big ringed lens, optional flash and shutter bump."""
    frame = _Frame(box, mirror_u=bool(rng.random() < 0.5))
    body = _grey(rng, 15, 60) if rng.random() < 0.65 else _grey(rng, 150, 205)
    top = float(rng.uniform(0.08, 0.14)) if rng.random() < 0.8 else 0.0
    if top:
        # The shutter button overlaps the body slightly so it reads as attached.
        start = float(rng.uniform(0.62, 0.78))
        draw.rectangle(frame.rect(start, 0, start + 0.12, top + 0.03), fill=_shade(body, 0.7))
    draw.rounded_rectangle(frame.rect(0, top, 1, 1), radius=_corner_radius(frame, 0.12), fill=body)
    draw.rounded_rectangle(frame.rect(0, top, 0.17, 1), radius=_corner_radius(frame, 0.08),
                           fill=_shade(body, 0.6))
    if rng.random() < 0.6:
        draw.rectangle(frame.rect(0.22, top + 0.08, 0.36, top + 0.22), fill=_grey(rng, 215, 250))
    body_height = (1 - top) * frame.v_px
    centre = frame.point(float(rng.uniform(0.5, 0.6)), top + (1 - top) / 2)
    radius = float(rng.uniform(0.32, 0.42)) * body_height
    # Outer to inner: two or three of barrel, metal ring and dark ring, then tinted glass and a dark pupil.
    rings = [_shade(body, 0.55), _grey(rng, 120, 200), _grey(rng, 25, 60)][-int(rng.integers(2, 4)):]
    for step, colour in enumerate(rings):
        _disc(draw, centre, radius * (1 - 0.2 * step), colour)
    glass = (int(rng.integers(15, 45)), int(rng.integers(10, 35)), int(rng.integers(35, 80)))
    _disc(draw, centre, radius * (1 - 0.2 * len(rings)), glass)
    _disc(draw, centre, radius * 0.18, _grey(rng, 0, 12, tint=3))
    _disc(draw, (centre[0] - 0.3 * radius, centre[1] - 0.3 * radius), radius * 0.1, (245, 245, 245))


def _phone_body_colour(rng: np.random.Generator) -> Colour:
    """Black, white, silver, gold or a random bright finish."""
    finish = int(rng.integers(5))
    if finish == 0:
        return _grey(rng, 10, 40)
    if finish == 1:
        return _grey(rng, 215, 245, tint=5)
    if finish == 2:
        return _grey(rng, 150, 200)
    if finish == 3:
        return int(rng.integers(200, 231)), int(rng.integers(170, 201)), int(rng.integers(120, 151))
    return _colour(rng, 40, 230)


def _screen_colour(rng: np.random.Generator) -> Colour:
    """Switched-off black, bluish glow or a colourful wallpaper."""
    kind = int(rng.integers(3))
    if kind == 0:
        return _grey(rng, 5, 30)
    if kind == 1:
        return int(rng.integers(10, 61)), int(rng.integers(30, 101)), int(rng.integers(120, 221))
    return _colour(rng, 30, 230)


def _draw_phone(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """Phone slab seen from the front (screen, lens dot) or the back (lens bump)."""
    frame = _Frame(box, transpose=box[2] - box[0] > box[3] - box[1],
                   mirror_u=bool(rng.random() < 0.5), mirror_v=bool(rng.random() < 0.5))
    body = _phone_body_colour(rng)
    draw.rounded_rectangle(frame.rect(0, 0, 1, 1), radius=_corner_radius(frame, 0.15), fill=body)
    short = frame.u_px
    if rng.random() < 0.65:
        draw.rectangle(frame.rect(0.07, 0.1, 0.93, 0.9), fill=_screen_colour(rng))
        if rng.random() < 0.5:
            for row in range(4):
                for column in range(4):
                    u, v = 0.13 + 0.2 * column, 0.15 + 0.12 * row
                    draw.rectangle(frame.rect(u, v, u + 0.14, v + 0.07), fill=_colour(rng, 40, 250))
        _disc(draw, frame.point(0.25, 0.05), 0.05 * short, _grey(rng, 0, 25))
        return
    bump_v = 0.42 * short / frame.v_px
    bump = frame.rect(0.07, 0.03, 0.49, 0.03 + bump_v)
    draw.rounded_rectangle(bump, radius=_corner_radius(frame, 0.08), fill=_shade(body, 0.8))
    layouts = ([(0.5, 0.5)], [(0.5, 0.27), (0.5, 0.73)], [(0.27, 0.27), (0.27, 0.73), (0.73, 0.27)])
    for bu, bv in layouts[int(rng.integers(3))]:
        centre = frame.point(0.07 + 0.42 * bu, 0.03 + bump_v * bv)
        _disc(draw, centre, 0.095 * short, _grey(rng, 90, 160))
        _disc(draw, centre, 0.065 * short, _grey(rng, 0, 25))
    _disc(draw, frame.point(0.07 + 0.42 * 0.73, 0.03 + bump_v * 0.73), 0.04 * short, (250, 240, 200))


def _draw_cup(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """Cup from above: a rimmed circle of dark drink with a handle, much like a lens."""
    frame = _Frame(box, mirror_u=bool(rng.random() < 0.5))
    diameter = frame.v_px / frame.u_px
    ceramic = _colour(rng, 150, 250)
    handle = frame.rect(diameter - 0.1, 0.38, 1, 0.62)
    draw.rounded_rectangle(handle, radius=_corner_radius(frame, 0.06), fill=ceramic)
    draw.ellipse(frame.rect(0, 0, diameter, 1), fill=ceramic)
    rim = float(rng.uniform(0.07, 0.12))
    drink = (int(rng.integers(30, 110)), int(rng.integers(15, 60)), int(rng.integers(5, 30)))
    draw.ellipse(frame.rect(rim * diameter, rim, (1 - rim) * diameter, 1 - rim), fill=drink)


def _draw_mug(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """Mug from the side: a tapered body with an open handle."""
    frame = _Frame(box, mirror_u=bool(rng.random() < 0.5))
    colour = _colour(rng, 20, 240)
    draw.ellipse(frame.rect(0.55, 0.25, 1, 0.75), fill=colour)
    draw.ellipse(frame.rect(0.68, 0.37, 0.88, 0.63), fill=_shade(colour, 0.4))
    outline = [frame.point(0, 0), frame.point(0.78, 0), frame.point(0.7, 1), frame.point(0.08, 1)]
    draw.polygon(outline, fill=colour)
    draw.ellipse(frame.rect(0.01, 0, 0.77, 0.1), fill=_shade(colour, 0.6))


def _draw_book(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """Book cover: a plain, often dark, rectangle with a spine band and title stripes."""
    frame = _Frame(box, transpose=box[2] - box[0] > box[3] - box[1], mirror_u=bool(rng.random() < 0.5))
    cover = _colour(rng, 10, 200)
    draw.rectangle(frame.rect(0, 0, 1, 1), fill=cover)
    draw.rectangle(frame.rect(0, 0, 0.1, 1), fill=_shade(cover, 0.6))
    ink = _colour(rng, 150, 255)
    for line in range(int(rng.integers(2, 5))):
        v = 0.12 + 0.09 * line
        draw.rectangle(frame.rect(0.22, v, float(rng.uniform(0.45, 0.88)), v + 0.04), fill=ink)


def _draw_sunglasses(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """Sunglasses: two dark lenses joined by a bridge and a top bar."""
    frame = _Frame(box)
    rim, lens = _grey(rng, 10, 80), _grey(rng, 5, 40, tint=15)
    draw.rectangle(frame.rect(0, 0, 1, 0.12), fill=rim)
    draw.rectangle(frame.rect(0.4, 0.15, 0.6, 0.3), fill=rim)
    for u1, u2 in ((0, 0.44), (0.56, 1)):
        draw.ellipse(frame.rect(u1, 0.04, u2, 1), fill=rim)
        draw.ellipse(frame.rect(u1 + 0.03, 0.12, u2 - 0.03, 0.92), fill=lens)


def _draw_plate_or_clock(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """Round plate (concentric pale rings) or wall clock (ticks and hands)."""
    frame = _Frame(box)
    centre, radius = frame.point(0.5, 0.5), frame.u_px / 2
    is_clock = rng.random() < 0.5
    _disc(draw, centre, radius, _colour(rng, 20, 200) if is_clock else _colour(rng, 200, 250))
    _disc(draw, centre, radius * 0.88, _colour(rng, 225, 255))
    if not is_clock:
        _disc(draw, centre, radius * 0.6, _colour(rng, 190, 245))
        return
    for angle in np.linspace(0, 2 * np.pi, 12, endpoint=False):
        cos, sin = np.cos(angle), np.sin(angle)
        draw.line((centre[0] + 0.7 * radius * cos, centre[1] + 0.7 * radius * sin,
                   centre[0] + 0.82 * radius * cos, centre[1] + 0.82 * radius * sin), fill=(20, 20, 20))
    for length, angle in zip((0.45, 0.7), rng.uniform(0, 2 * np.pi, 2), strict=True):
        tip = (centre[0] + length * radius * np.cos(angle), centre[1] + length * radius * np.sin(angle))
        draw.line((*centre, *tip), fill=(10, 10, 10), width=max(1, round(radius * 0.05)))


def _aspect_between(low: float, high: float, either_orientation: bool = False) -> AspectSampler:
    """Sampler of width / height in [low, high], or its inverse half of the time."""
    def sample(rng: np.random.Generator) -> float:
        aspect = float(rng.uniform(low, high))
        return 1 / aspect if either_orientation and rng.random() < 0.5 else aspect
    return sample


TARGET_SHAPES: dict[int, tuple[AspectSampler, ShapeDrawer]] = {
    1: (_aspect_between(1.2, 1.8), _draw_camera),
    2: (_aspect_between(0.45, 0.6, either_orientation=True), _draw_phone),
}
DISTRACTOR_SHAPES: tuple[tuple[AspectSampler, ShapeDrawer], ...] = (
    (_aspect_between(1.3, 1.3), _draw_cup),
    (_aspect_between(1.1, 1.1), _draw_mug),
    (_aspect_between(0.65, 0.8, either_orientation=True), _draw_book),
    (_aspect_between(2.3, 2.8), _draw_sunglasses),
    (_aspect_between(1.0, 1.0), _draw_plate_or_clock),
)


def _low_frequency_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth blotches in [-1, 1]: a coarse random grid upsampled bilinearly."""
    cells = int(rng.integers(3, 7))
    coarse = Image.fromarray(rng.integers(0, 256, (cells, cells), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BILINEAR), dtype=np.float32)
    return smooth / 127.5 - 1


def _draw_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Table, wall or floor: two colours mixed by blotches, wood grain or tiles, under a light gradient."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    blotches = _low_frequency_field(rng, height, width)
    texture = int(rng.integers(3))
    if texture == 0:
        pattern = 0.5 + 0.5 * blotches
    elif texture == 1:
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
        along = np.cos(angle) * xs + np.sin(angle) * ys
        pattern = 0.5 + 0.5 * np.sin(along * (2 * np.pi / period) + 3 * blotches)
    else:
        tile, grout = int(rng.integers(24, 80)), int(rng.integers(1, 4))
        checker = ((xs // tile + ys // tile) % 2) * 0.15
        pattern = np.where((xs % tile < grout) | (ys % tile < grout), 1.0, checker)
    # Everyday surfaces are muted: pull a random colour part of the way towards its grey.
    colour = rng.uniform(40, 220, 3)
    base = (colour.mean() + rng.uniform(0.25, 0.8) * (colour - colour.mean())).astype(np.float32)
    second = np.clip(base + rng.uniform(-60, 60, 3), 0, 255).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs / width + np.sin(angle) * ys / height).astype(np.float32)
    lighting = 1 + rng.uniform(0.1, 0.35) * (ramp - ramp.mean())
    image = (base + (second - base) * pattern[..., None]) * lighting[..., None] + 10 * blotches[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def _add_sensor_noise(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """Mild uniform per-pixel noise, as a cheap stand-in for sensor grain."""
    amplitude = int(rng.integers(2, 8))
    noise = rng.integers(-amplitude, amplitude + 1, pixels.shape, dtype=np.int16)
    return np.clip(pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def class_odds(class_weights) -> np.ndarray | None:
    """Relative weights per label 1..K -> probabilities, or None (equal odds); checked."""
    if class_weights is None:
        return None
    weights = np.asarray(class_weights, dtype=np.float64)
    if weights.shape != (len(CLASSES),) or not np.all(np.isfinite(weights)) or (weights < 0).any() or not weights.sum():
        raise ValueError(f"class_weights must be {len(CLASSES)} numbers >= 0 (one per class of {list(CLASSES)}), "
                         f"not all 0; got {class_weights!r}")
    return weights / weights.sum()


def draw_label(rng: np.random.Generator, odds: np.ndarray | None) -> int:
    """A target's label 1..K: equal odds by the draw the default scenes were made with, else ``odds``."""
    if odds is None:
        return int(rng.integers(1, len(CLASSES) + 1))
    return int(rng.choice(len(CLASSES), p=odds)) + 1


def item_position(index: int, num_images: int) -> int:
    """``index`` as a position in ``[0, num_images)``, negative indices counting from the end."""
    position = operator.index(index)
    if position < 0:
        position += num_images
    if not 0 <= position < num_images:
        raise IndexError(f"index {index} out of range for {num_images} images")
    return position


def _area(box: Box) -> int:
    """Pixel area of an xyxy box."""
    return (box[2] - box[0]) * (box[3] - box[1])


def _iou(a: Box, b: Box) -> float:
    """Intersection over union of two xyxy boxes."""
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    return inter / (_area(a) + _area(b) - inter)


class SyntheticScenes:
    """Procedurally drawn everyday scenes with cameras and phones among look-alike distractors.

    Item i is a pure function of (seed, i): same seed -> same pixels and boxes.
    """

    def __init__(self, num_images: int, seed: int = 0, empty_fraction: float = 0.15,
                 max_objects: int = 3, object_size: tuple[int, int] = (40, 120),
                 distractors: bool = True,
                 image_sizes: tuple[tuple[int, int], ...] = ((320, 320), (240, 320), (320, 240)),
                 min_distractors: int = 0, stream: int = 0, class_weights=None):
        if not isinstance(num_images, (int, np.integer)) or num_images < 0:
            raise ValueError(f"num_images must be a non-negative integer, got {num_images!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not 0.0 <= empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction!r}")
        if not isinstance(max_objects, (int, np.integer)) or max_objects < 1:
            raise ValueError(f"max_objects must be an integer >= 1, got {max_objects!r}")
        if len(object_size) != 2 or not 0 < object_size[0] <= object_size[1]:
            raise ValueError(f"object_size must be (lo, hi) with 0 < lo <= hi, got {object_size!r}")
        if not image_sizes or any(not isinstance(size, (tuple, list)) or len(size) != 2 or min(size) < 1
                                  for size in image_sizes):
            raise ValueError(f"image_sizes must be non-empty (height, width) pairs >= 1, got {image_sizes!r}")
        self.num_images, self.seed, self.empty_fraction = int(num_images), int(seed), float(empty_fraction)
        self.max_objects, self.distractors = int(max_objects), bool(distractors)
        self.object_size = (int(object_size[0]), int(object_size[1]))
        if not isinstance(min_distractors, (int, np.integer)) or not 0 <= min_distractors <= MAX_DISTRACTORS:
            raise ValueError(f"min_distractors must be an integer in [0, {MAX_DISTRACTORS}], got {min_distractors!r}")
        if not isinstance(stream, (int, np.integer)) or stream < 0:
            raise ValueError(f"stream must be a non-negative integer, got {stream!r}")
        self.image_sizes = tuple((int(h), int(w)) for h, w in image_sizes)
        self.min_distractors, self.stream = int(min_distractors), int(stream)
        self.odds = class_odds(class_weights)  # None: equal odds

    def _rng(self, position: int) -> np.random.Generator:
        # Stream 0 keeps the original key [seed, i]; other streams never share a key with it.
        key = [self.seed, position] if self.stream == 0 else [self.seed, position, self.stream]
        return np.random.default_rng(key)

    def _id(self, position: int) -> str:
        suffix = f"-s{self.stream}" if self.stream else ""
        return f"synthetic-{self.seed}{suffix}-{position}"

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of item ``index`` without drawing it (its first random draw)."""
        rng = self._rng(operator.index(index) % max(self.num_images, 1))
        return self.image_sizes[int(rng.integers(len(self.image_sizes)))]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict:
        position = item_position(index, self.num_images)
        rng = self._rng(position)
        height, width = self.image_sizes[int(rng.integers(len(self.image_sizes)))]
        canvas = Image.fromarray(_draw_background(rng, height, width))

        is_empty = rng.random() < self.empty_fraction
        target_count = 0 if is_empty else int(rng.integers(1, self.max_objects + 1))
        distractor_count = int(rng.integers(self.min_distractors, MAX_DISTRACTORS + 1)) if self.distractors else 0
        placed: list[Box] = []
        # Targets are placed first so the first one always fits: a non-empty image never ends up empty.
        target_shapes = []
        for _ in range(target_count):
            label = draw_label(rng, self.odds)
            target_shapes.append((label, *TARGET_SHAPES[label]))
        targets = self._place_shapes(rng, target_shapes, height, width, placed)
        distractor_shapes = [(0, *DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))])
                             for _ in range(distractor_count)]
        clutter = self._place_shapes(rng, distractor_shapes, height, width, placed)

        draw = ImageDraw.Draw(canvas)
        # Distractors go underneath, and larger targets before smaller ones, so no target is hidden whole.
        by_area = sorted(targets, key=lambda target: -_area(target[2]))
        for _, drawer, box in clutter + by_area:
            drawer(draw, box, rng)
        pixels = _add_sensor_noise(rng, np.asarray(canvas))
        return {
            "image": pixels,
            "boxes": np.array([box for _, _, box in targets], dtype=np.float32).reshape(-1, 4),
            "labels": np.array([label for label, _, _ in targets], dtype=np.int64),
            "image_id": self._id(position),
        }

    def _place_shapes(self, rng: np.random.Generator, shapes: list[tuple[int, AspectSampler, ShapeDrawer]],
                      height: int, width: int, placed: list[Box]) -> list[tuple[int, ShapeDrawer, Box]]:
        """Boxes for the shapes, skipping any that cannot avoid heavy overlap with those already placed."""
        kept = []
        for label, sample_aspect, drawer in shapes:
            aspect = sample_aspect(rng)
            longest = min(int(rng.integers(self.object_size[0], self.object_size[1] + 1)), height, width)
            box_w, box_h = (longest, max(1, round(longest / aspect))) if aspect >= 1 else \
                (max(1, round(longest * aspect)), longest)
            for _ in range(PLACEMENT_ATTEMPTS):
                x1, y1 = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
                box = (x1, y1, x1 + box_w, y1 + box_h)
                if all(_iou(box, other) <= MAX_PLACEMENT_IOU for other in placed):
                    placed.append(box)
                    kept.append((label, drawer, box))
                    break
        return kept
