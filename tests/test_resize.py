"""The resize policy (``data.resize``): a fixed scale keeps objects at one size across photo sizes, scale
jitter, the train / val object-size check of the data summary, and the policy carried to inference."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_lab.config import ConfigError, validate
from frcnn_lab.data.config import AugmentConfig
from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.data.transforms import apply_transforms, build_transforms
from frcnn_lab.engine.photos import PhotoDetector
from frcnn_lab.model.preprocess import PreprocessConfig
from frcnn_lab.train import build_module
from support import compose_config

OBJECT = 30  # px: the same object at the same ground resolution in every photo


def write_photo(root: Path, name: str, height: int, width: int, left: int, top: int) -> str:
    """A grey photo with one OBJECT x OBJECT dark square at (left, top); -> its CSV line."""
    pixels = np.full((height, width, 3), 160, np.uint8)
    pixels[top:top + OBJECT, left:left + OBJECT] = 20
    Image.fromarray(pixels).save(root / name, quality=95)
    return f"{name},{left},{top},{left + OBJECT},{top + OBJECT},tree"


def two_sizes_dataset(root: Path) -> tuple[Path, Path]:
    """train: a large crop (a 1600 x 1200 JPEG: decoded at a reduced scale when the resize allows); val: a
    400 x 300 tile. Both at one ground resolution: the object is 30 px in both files."""
    root.mkdir(parents=True)
    (root / "train.csv").write_text(write_photo(root, "crop.jpg", 1200, 1600, 700, 500) + "\n")
    (root / "val.csv").write_text(write_photo(root, "tile.png", 300, 400, 100, 120) + "\n")
    return root / "train.csv", root / "val.csv"


def datamodule(train: Path, val: Path, **overrides) -> DetectionDataModule:
    cfg = compose_config("config", ["data=csv", "data.classes=[tree]", "data.split=official",
                                    f"data.source.train={train}", f"data.source.val={val}", "data.num_workers=0",
                                    *[f"data.{k}={v}" for k, v in {"image_size": 800, "max_size": 2000,
                                                                   **overrides}.items()]])
    module = DetectionDataModule(cfg.data)
    module.setup()
    return module


def input_box_side(module: DetectionDataModule, split: str) -> tuple[float, float, tuple[int, int]]:
    dataset = module.datasets[split]
    dataset.transforms = build_transforms(module.preprocess, train=False)  # no flips
    image, target = dataset[0]
    (x1, y1, x2, y2), = target["boxes"].tolist()
    return x2 - x1, y2 - y1, tuple(image.shape[-2:])


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_fixed_scale_gives_one_object_size_whatever_the_photo_size(tmp_path, scale):
    train, val = two_sizes_dataset(tmp_path / "data")
    # image_size plays no part under fixed_scale (at 200 it would let the JPEG decode at 1/4 of its size).
    module = datamodule(train, val, resize="fixed_scale", scale=scale, image_size=200)
    for split, (height, width) in (("train", (1200, 1600)), ("val", (300, 400))):
        box_w, box_h, shape = input_box_side(module, split)
        assert box_w == pytest.approx(OBJECT * scale, abs=0.5) and box_h == pytest.approx(OBJECT * scale, abs=0.5)
        assert shape == (round(height * scale), round(width * scale))
        summary = module.input_annotations(split)[0][1]
        assert summary[0, 2] - summary[0, 0] == pytest.approx(OBJECT * scale)


def test_shortest_side_resizes_the_same_object_to_different_sizes(tmp_path):
    train, val = two_sizes_dataset(tmp_path / "data")
    module = datamodule(train, val)  # shortest side to 800: x 2/3 for the crop, x 8/3 for the tile
    assert input_box_side(module, "train")[0] == pytest.approx(OBJECT * 800 / 1200, abs=0.5)
    assert input_box_side(module, "val")[0] == pytest.approx(OBJECT * 800 / 300, abs=0.5)


def test_the_summary_warns_when_train_and_val_objects_differ_in_size(tmp_path, caplog):
    train, val = two_sizes_dataset(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="frcnn_lab.data.summary"):
        path = datamodule(train, val).write_summary(tmp_path / "shortest")
    mismatch = json.loads(path.read_text())["object_size_mismatch"]
    assert mismatch["train_median_px"] == pytest.approx(20) and mismatch["val_median_px"] == pytest.approx(80)
    assert mismatch["ratio"] == pytest.approx(4) and mismatch["warn"]
    assert "data.resize=fixed_scale" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="frcnn_lab.data.summary"):
        path = datamodule(train, val, resize="fixed_scale").write_summary(tmp_path / "fixed")
    summary = json.loads(path.read_text())
    assert summary["object_size_mismatch"]["ratio"] == 1.0 and not summary["object_size_mismatch"]["warn"]
    assert summary["resize"] == "fixed_scale" and "differ in size" not in caplog.text


def test_scale_jitter_rescales_image_and_boxes_within_its_range():
    image = np.zeros((100, 200, 3), np.uint8)
    sample = {"image": image, "boxes": np.array([[20, 10, 60, 50]], np.float32), "labels": np.array([1]),
              "image_id": "a"}
    transforms = build_transforms(PreprocessConfig(image_size=100, max_size=1000), train=True, scale_jitter=[0.5, 2.0])
    factors = []
    for seed in range(20):
        transforms.set_random_seed(seed)
        tensor, target = apply_transforms(transforms, sample)
        factor = tensor.shape[-1] / 200
        assert target["boxes"][0].tolist() == pytest.approx([20 * factor, 10 * factor, 60 * factor, 50 * factor],
                                                            abs=1.0)
        factors.append(factor)
    assert 0.5 - 0.01 <= min(factors) < 0.9 and 1.5 < max(factors) <= 2.0 + 0.01
    with pytest.raises(ConfigError, match=r"data.augment.scale_jitter=\[2.0, 1.0\] must be"):
        AugmentConfig(scale_jitter=[2.0, 1.0])


def test_a_read_only_image_at_scale_1_passes_without_a_warning(recwarn):
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)
    image.flags.writeable = False  # as np.asarray(PIL image) gives it
    sample = {"image": image, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
              "image_id": "a"}
    tensor, _ = apply_transforms(build_transforms(PreprocessConfig(resize="fixed_scale"), train=False), sample)
    assert torch.equal(tensor, torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255)
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_the_checkpoint_carries_the_policy_to_inference():
    cfg = compose_config("config", ["backbone.weights=none", "data.resize=fixed_scale", "data.scale=0.5"])
    module = build_module(cfg)
    assert (module.preprocess.resize, module.preprocess.scale) == ("fixed_scale", 0.5)
    detector = PhotoDetector(module.eval())
    sample = {"image": np.zeros((100, 240, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
              "labels": np.zeros(0, np.int64), "image_id": "photo"}
    tensor, _ = apply_transforms(detector.transforms, sample)
    assert tuple(tensor.shape[-2:]) == (50, 120)  # shortest side would have given 320 x 768 (capped at 320)
    assert isinstance(detector(sample["image"])["boxes"], torch.Tensor)


def test_a_bad_policy_or_scale_is_refused(make_config):
    with pytest.raises(ConfigError, match=r"data.resize='native' is unknown; choose one of \['fixed_scale'"):
        validate(make_config(["data.resize=native"]))
    with pytest.raises(ConfigError, match="data.scale=0.0 must be finite and > 0"):
        validate(make_config(["data.scale=0"]))
