"""Image files of every awkward kind: modes, EXIF rotation, empty, corrupt, truncated, tiny and huge."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from frcnn_lab.data.images import ImageError, load, probe


def test_grey_rgba_palette_and_16_bit_images_load_as_8_bit_rgb(tmp_path):
    Image.new("L", (8, 6), 200).save(tmp_path / "grey.png")
    Image.new("RGBA", (8, 6), (255, 0, 0, 0)).save(tmp_path / "transparent.png")
    Image.new("RGB", (8, 6), (0, 0, 255)).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(np.full((6, 8), 65535, np.uint16)).save(tmp_path / "sixteen.png")
    expected = {"grey.png": (200, 200, 200), "transparent.png": (255, 255, 255), "palette.png": (0, 0, 255),
                "sixteen.png": (255, 255, 255)}
    for name, colour in expected.items():
        pixels = load(tmp_path / name)
        assert pixels.dtype == np.uint8 and pixels.shape == (6, 8, 3), name
        assert tuple(pixels[3, 4]) == colour, name


def test_exif_rotated_photo_is_turned_upright_and_probe_agrees(tmp_path):
    # Stored 40 wide x 20 high with a red left half; orientation 6 means "rotate 90 degrees clockwise to view".
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    pixels = load(tmp_path / "rotated.jpg")
    assert pixels.shape == (40, 20, 3) and probe(tmp_path / "rotated.jpg") == (40, 20, 6)
    assert pixels[5, 10, 0] > 200 and pixels[35, 10, 0] < 60  # the red half is now on top


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "missing file"),
        (lambda p: p.write_bytes(b""), r"empty file \(0 bytes\)"),
        (lambda p: p.write_bytes(b"this is not an image at all"), "not a readable image"),
    ],
)
def test_unreadable_files_raise_an_error_naming_them(tmp_path, make, message):
    path = tmp_path / "bad.jpg"
    make(path)
    for read in (probe, load):
        with pytest.raises(ImageError, match=f"bad.jpg: {message}"):
            read(path)


def test_truncated_jpeg_is_found_by_decoding(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    assert probe(tmp_path / "t.jpg")[:2] == (64, 64)  # the header alone looks fine
    with pytest.raises(ImageError, match="t.jpg: corrupt or truncated image"):
        probe(tmp_path / "t.jpg", decode=True)
    with pytest.raises(ImageError, match="t.jpg: corrupt or truncated image"):
        load(tmp_path / "t.jpg")


def test_one_pixel_image_loads(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "dot.png")
    assert load(tmp_path / "dot.png").tolist() == [[[10, 20, 30]]]


def test_ten_thousand_pixel_jpeg_loads_at_reduced_scale_for_a_600_px_input(tmp_path):
    Image.new("L", (10000, 10000), 128).save(tmp_path / "huge.jpg", quality=50)
    assert probe(tmp_path / "huge.jpg")[:2] == (10000, 10000)
    pixels = load(tmp_path / "huge.jpg", min_side=600, max_side=1000)
    # Decoded at 1/8 scale: 1250 px >= 600 px needed, instead of 300 MB of full-size pixels.
    assert pixels.shape == (1250, 1250, 3)
