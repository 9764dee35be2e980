"""The thesis presets compose, carry the thesis's settings, and pass validation with the embedded data."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from frcnn_lab.config import CONFIG_DIR, validate
from support import compose_config as compose_at


def compose_config(name, overrides):
    return compose_at(name, overrides, Path("unused-output-dir"))  # validation writes nothing


THESIS = {  # model: (backbone, RoIs per image, image size), DESIGN §3
    "model1": ("vgg16", 4, 300), "model2": ("resnet50", 4, 300), "model3": ("resnet50", 50, 300),
    "model4": ("vgg16", 50, 300), "model5": ("vgg16", 4, 600),
}


@pytest.mark.parametrize("model", sorted(THESIS))
def test_model_presets_carry_the_thesis_settings(model):
    for data in ([], ["data=synthetic"]):
        cfg = compose_config("config", [f"experiment=thesis/{model}", *data])
        validate(cfg)
        assert (cfg.backbone.name, cfg.rpn.num_rois, cfg.data.image_size) == THESIS[model]
        assert cfg.data.batch_size == 1 and list(cfg.rpn.anchor_sizes) == [64, 128, 256]
        assert cfg.optim.optimizer._target_ == "torch.optim.Adam" and cfg.optim.optimizer.lr == 1e-5
        assert "momentum" not in cfg.optim.optimizer  # nothing of SGD leaks into Adam's arguments
        assert (cfg.roi_head.bg_iou_lo, cfg.roi_head.bg_iou_hi, cfg.roi_head.positive_fraction) == (0.1, 0.5, 0.5)
        assert list(cfg.roi_head.box_weights) == [8, 8, 4, 4] and list(cfg.rpn.box_weights) == [4, 4, 4, 4]
        assert cfg.rpn.post_nms_top_n_train == 300 and cfg.eval.score_threshold == 0.9
        assert dict(cfg.data.augment) == {"hflip": 0.5, "vflip": 0.5, "rot90": 1.0, "scale_jitter": None, "extra": []}
        assert list(cfg.tags) == ["thesis", model]


def test_presets_only_override_what_they_name():
    default = compose_config("config", [])
    assert compose_config("config", ["experiment=thesis/model4"]).data.name == "openimages"  # the thesis's data
    model4 = compose_config("config", ["experiment=thesis/model4", "data=synthetic", "backbone.weights=none",
                                       "rpn.num_rois=7"])
    assert model4.rpn.num_rois == 7 and model4.backbone.weights == "none"  # the command line wins over a preset
    assert model4.roi_head.detections_per_image == default.roi_head.detections_per_image
    assert model4.data.name == "synthetic" and model4.data.source == default.data.source


def test_ablation_preset_sweeps_the_thesis_grid():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=thesis/ablation"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    params = dict(cfg.hydra.sweeper.params)
    assert params == {"backbone": "vgg16,resnet50", "rpn.num_rois": "4,50", "data.image_size": "300,600",
                      "seed": "0,1,2"}
    assert list(cfg.tags) == ["thesis", "ablation"] and cfg.data.max_size >= 600
    for backbone in ("vgg16", "resnet50"):
        overrides = ["experiment=thesis/ablation", f"backbone={backbone}", "data.image_size=600"]
        validate(compose_config("config", overrides))


def test_early_stopping_callbacks_keep_the_checkpoints():
    cfg = compose_config("config", ["callbacks=early_stopping"])
    stopper = instantiate(cfg.callbacks.early_stopping)
    assert stopper.monitor == "val/map_50" and stopper.mode == "max"
    assert cfg.callbacks.model_checkpoint.monitor == "val/map_50"
