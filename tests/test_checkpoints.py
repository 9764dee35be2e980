"""A checkpoint stands alone: evaluate and predict work from the .ckpt file only, offline, with no pretrained
weights anywhere, and with the input size it was trained at."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch
from PIL import Image

import frcnn_lab.model.backbones as backbones
from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.engine.checkpoints import load_module
from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.evaluate import evaluate
from frcnn_lab.model.preprocess import PreprocessConfig
from frcnn_lab.model.weights import OFFLINE_ENV
from frcnn_lab.predict import predict
from frcnn_lab.train import train
from support import compose_config, tiny_run

SIZE = 64
TINY = tiny_run("data.source.num_train=2", "data.source.num_val=2", "data.source.num_test=2", "data.num_negatives=0",
                "data.batch_size=2", f"data.image_size={SIZE}", f"data.max_size={SIZE}", "rpn.num_rois=8",
                "rpn.post_nms_top_n_test=10", "+callbacks.model_checkpoint.save_weights_only=true",
                "callbacks.model_checkpoint.save_last=false", "~callbacks.step_checkpoint", "eval.val_images=0")


def stand_in_weights(weights):
    """Stands in for the ImageNet file while training: a state dict of the right shapes, made without
    initialising a network (unit variances, zeros elsewhere)."""
    constructor = next(c for c, enum, _ in backbones.BUILDERS.values() if weights in list(enum))
    with torch.device("meta"):
        shapes = constructor(weights=None).state_dict()
    return {k: (torch.ones if k.endswith("running_var") else torch.zeros)(v.shape, dtype=v.dtype)
            for k, v in shapes.items()}


def refuse_pretrained(weights):
    raise AssertionError(f"pretrained weights {weights} were loaded")


@pytest.mark.parametrize("backbone", [pytest.param("vgg16", marks=pytest.mark.slow),
                                      pytest.param("resnet50", marks=pytest.mark.slow), "mobilenet_v2",
                                      pytest.param("resnet50_fpn", marks=pytest.mark.slow),
                                      pytest.param("mobilenet_v2_fpn", marks=pytest.mark.slow)])
def test_evaluate_and_predict_from_the_checkpoint_file_alone(backbone, tmp_path, monkeypatch):
    # Trained "from ImageNet" (frozen BatchNorm, frozen stages: the layout that pretrained weights give).
    monkeypatch.setattr(backbones, "load_state_dict", stand_in_weights)
    run = tmp_path / "run"
    train(compose_config("config", [f"backbone={backbone}", "backbone.weights=imagenet", *TINY], run))
    alone = tmp_path / "alone"
    alone.mkdir()
    ckpt = shutil.copy(run / "checkpoints" / "best.ckpt", alone / "model.ckpt")

    # Elsewhere: no run folder, an empty torchvision cache, downloads forbidden, and any weights read is a failure.
    monkeypatch.setattr(backbones, "load_state_dict", refuse_pretrained)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    monkeypatch.chdir(alone)

    module = load_module(ckpt)
    assert DetectionModule.load_from_checkpoint(ckpt, weights_only=True).classes == module.classes  # Lightning's way
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(module.state_dict()[k], v) for k, v in trained.items())
    assert module.hparams.preprocess["image_size"] == SIZE and module.hparams.preprocess["max_size"] == SIZE
    assert module.classes == ["camera", "phone"] and module.category_ids == [1, 2]
    assert module.hparams.preprocess["image_mean"] == pytest.approx(backbones.IMAGENET_MEAN)
    assert module.hparams.preprocess["image_std"] == pytest.approx(backbones.IMAGENET_STD)
    assert module.preprocess == PreprocessConfig(**module.hparams.preprocess)

    results = evaluate(compose_config("evaluate", [f"ckpt_path={ckpt}", "data=synthetic", "data.source.num_test=2",
                                                   "data.num_negatives=0", "score_threshold=0.0"], alone / "eval"))
    assert results["images"] == 2 and (results["image_size"], results["max_size"]) == (SIZE, SIZE)
    assert 0 <= results["map_50"] <= 1 and results["ms_per_image_median"] > 0

    photos = alone / "photos"
    photos.mkdir()
    Image.fromarray(SyntheticScenes(1, seed=3)[0]["image"]).save(photos / "scene.png")
    summary = predict(compose_config("predict", [f"ckpt_path={ckpt}", f"input={photos}", f"output={alone / 'out'}",
                                                 "score_threshold=0.0"], alone))
    assert (summary["image_size"], summary["max_size"]) == (SIZE, SIZE)  # as trained, not a default
    assert (alone / "out" / "scene.png").is_file() and summary["skipped"] == []


def test_a_given_image_size_keeps_the_trained_ratio_and_a_sizeless_checkpoint_asks_for_one(trained_run):
    """Older layouts without sizes: tests/test_migration.py."""
    module = load_module(trained_run / "checkpoints" / "best.ckpt")
    trained = module.preprocess
    assert module.preprocess.at() == trained
    assert module.preprocess.at(image_size=2 * trained.image_size) == replace(
        trained, image_size=2 * trained.image_size, max_size=2 * trained.max_size)
    assert module.preprocess.at(image_size=100, max_size=150) == replace(trained, image_size=100, max_size=150)
    sizeless = replace(trained, image_size=None, max_size=None)
    with pytest.raises(ValueError, match="set image_size and max_size"):
        sizeless.at(image_size=300)
    assert sizeless.at(image_size=100, max_size=150) == replace(trained, image_size=100, max_size=150)


def test_the_requested_input_size_rule():
    def sizes(config: PreprocessConfig) -> tuple[int, int]:
        return config.image_size, config.max_size

    trained = PreprocessConfig(image_size=300, max_size=500)
    assert sizes(trained.at()) == (300, 500)
    assert sizes(trained.at(image_size=600)) == (600, 1000)  # the trained ratio of the two
    assert sizes(trained.at(max_size=400)) == (300, 400)
    assert sizes(PreprocessConfig(image_size=300, max_size=300).at(image_size=200)) == (200, 200)
    assert sizes(PreprocessConfig(image_size=600, max_size=600).at(image_size=200)) == (200, 200)
    assert trained.at(image_size=600).resize == "shortest_side" and trained.at().scale == 1.0
