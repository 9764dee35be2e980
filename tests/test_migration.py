"""Checkpoints of every earlier layout load as today's module (``frcnn_lab.engine.migration``).

``tests/checkpoints/layout_*.ckpt`` hold the hyperparameters each earlier version of ``DetectionModule`` saved, in
order, and no weights (loaded with ``strict=False``: a freshly built model of the upgraded layout takes their place);
``run_of_layout_1/`` is the first layout inside its training run folder.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from torchvision.models.detection.faster_rcnn import TwoMLPHead

from frcnn_lab.engine.migration import read_hparams, upgrade_hparams
from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.inference.slicing import Slicing
from frcnn_lab.model.backbones import IMAGENET_MEAN, IMAGENET_STD
from frcnn_lab.model.preprocess import PreprocessConfig

LAYOUTS = Path(__file__).parent / "checkpoints"
pytestmark = pytest.mark.filterwarnings("ignore:.*(state dict|checkpoint):UserWarning")


def load(path: Path) -> DetectionModule:
    return DetectionModule.load_from_checkpoint(path, map_location="cpu", strict=False, weights_only=True)


@pytest.mark.parametrize("path", sorted(LAYOUTS.glob("layout_*.ckpt")), ids=lambda p: p.stem)
def test_every_layout_loads_with_its_own_settings(path):
    """Every value a checkpoint holds is kept (here: 2000 proposals before NMS in training, where today's default is
    1000; a beta of 0.1111 for 1/9); what it lacks takes the value its version used."""
    saved = read_hparams(path)
    module = load(path)
    assert module.classes == ["camera", "phone"]
    assert module.hparams.rpn["pre_nms_top_n_train"] == 2000 and module.detector.rpn.pre_nms_top_n["train"] == 2000
    assert module.detector.rpn.smooth_l1_beta == 0.1111
    box_head = saved["backbone"].get("box_head")
    if box_head is None:  # before the choice: a C4 backbone's classifier tail (MobileNetV2's blocks 14-18)
        assert module.hparams.backbone["box_head"] == "classifier"
        assert not isinstance(module.detector.roi_head.tail, TwoMLPHead)
    else:
        assert isinstance(module.detector.roi_head.tail, TwoMLPHead)
    assert module.preprocess.resize == saved.get("resize", "shortest_side")
    assert module.preprocess.scale == saved.get("scale", 1.0)
    normalization = saved.get("normalization") or {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert (module.preprocess.image_mean, module.preprocess.image_std) == (normalization["mean"], normalization["std"])
    assert module.hparams.preprocess == asdict(module.preprocess)
    assert not {"image_size", "max_size", "resize", "scale", "normalization"} & set(module.hparams)
    assert module.slicing == Slicing.from_config(saved.get("slicing"))
    assert "on_nonfinite" not in module.hparams and "val_images" not in module.hparams
    if "image_size" in saved:
        assert sizes(module.preprocess) == (saved["image_size"], saved["max_size"])
    else:  # a loose checkpoint of the first layouts knows no input size: inference asks for one
        with pytest.raises(ValueError, match="set image_size and max_size"):
            module.preprocess.at()
        assert sizes(module.preprocess.at(300, 500)) == (300, 500)


def sizes(preprocess: PreprocessConfig) -> tuple[int | None, int | None]:
    return preprocess.image_size, preprocess.max_size


def test_a_checkpoint_in_its_run_folder_takes_the_sizes_of_its_run():
    module = load(LAYOUTS / "run_of_layout_1" / "checkpoints" / "best.ckpt")
    assert sizes(module.preprocess.at()) == (320, 480)


def test_todays_layout_is_left_as_it_is():
    module = load(LAYOUTS / "layout_7_flat_input_sizes.ckpt")
    hparams = upgrade_hparams(dict(module.hparams), "elsewhere.ckpt")
    assert upgrade_hparams(hparams, "elsewhere.ckpt") == hparams == dict(module.hparams)
