"""Draw the sample photos shipped in ``src/frcnn_lab/examples/``: scenes of the embedded generator.

    python scripts/make_examples.py                      # rewrites src/frcnn_lab/examples/scene_*.jpg
    python scripts/make_examples.py --out /tmp/examples  # somewhere else

Four 640 x 480 (or 480 x 640) scenes of cameras and phones among look-alike cups, books and sunglasses, drawn by
``frcnn_lab.data.synthetic.SyntheticScenes`` with a seed no training split uses, every scene with at least one
object. The objects are 60-180 px on these photos, so after the default resize (shortest side 320 px) they have
the 40-120 px of the embedded training scenes: ``python -m frcnn_lab.predict ckpt_path=...
input=src/frcnn_lab/examples`` runs on them. The same seed gives the same scenes (the JPEG bytes may differ between
Pillow versions).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from frcnn_lab.data.synthetic import SyntheticScenes

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "frcnn_lab" / "examples"
SEED = 2024  # the embedded splits use data.source.seed 0; serve's default examples seed 7
COUNT = 4
SIZES = ((480, 640), (640, 480))  # (height, width)
OBJECT_SIZE = (60, 180)  # longest side, px: 40-120 px after the default resize to 320 px
QUALITY = 90


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    scenes = SyntheticScenes(COUNT, seed=SEED, empty_fraction=0.0, object_size=OBJECT_SIZE, image_sizes=SIZES)
    for index in range(COUNT):
        path = args.out / f"scene_{index + 1}.jpg"
        Image.fromarray(scenes[index]["image"]).save(path, quality=QUALITY)
        print(f"{path}: {len(scenes[index]['boxes'])} objects")


if __name__ == "__main__":
    main()
