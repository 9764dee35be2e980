"""Anchor fit on the data: the shape-match figure against hand-computed IoUs, the suggestion from the boxes,
``rpn.anchor_sizes=auto`` in training and in a checkpoint that predicts without the data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frcnn_lab.browse import browse
from frcnn_lab.config import ConfigError, validate
from frcnn_lab.engine.checkpoints import load_module
from frcnn_lab.model.anchor_fit import (
    WARN_SHARE,
    anchor_fit,
    fit_report,
    suggest_anchor_sizes,
    suggest_aspect_ratios,
)
from frcnn_lab.model.backbones import feature_levels
from frcnn_lab.predict import predict
from frcnn_lab.train import train
from support import compose_config


def test_fit_shares_match_hand_computed_ious():
    # Square boxes against square anchors of 32 (level a) and 64 (level b), centred together:
    # 16 -> 16²/32² = 0.25; 32 -> 1.0; 48 -> max(32²/48², 48²/64²) = 0.5625; 100 -> 64²/100² = 0.4096.
    sides = np.array([16.0, 32.0, 48.0, 100.0])
    fit = anchor_fit(sides, sides, {"a": [32], "b": [64]}, [1.0], fg_iou=0.7)
    assert fit["share_best_iou_at_least"] == {"0.7": 0.25, "0.5": 0.5, "0.3": 0.75}
    assert fit["levels"]["a"]["boxes_best_here"] == 2 and fit["levels"]["b"]["boxes_best_here"] == 2
    assert fit["levels"]["a"]["share_iou_at_least_0.7"] == 0.25 and fit["levels"]["b"]["share_iou_at_least_0.7"] == 0
    assert fit["share_smaller_than_smallest_anchor"] == 0.25 and fit["share_larger_than_largest_anchor"] == 0.25
    assert fit["warn"]  # 50 % at IoU 0.5
    one_level = anchor_fit(sides, sides, {"c4": [32, 64]}, [1.0], fg_iou=0.7)  # the best of two anchors
    assert one_level["share_best_iou_at_least"] == fit["share_best_iou_at_least"]
    assert one_level["levels"]["c4"]["boxes_best_here"] == 4


def test_fit_uses_the_anchors_torchvision_places():
    # Size 32, h/w 0.5: torchvision rounds the half sides 22.63 -> 23 and 11.31 -> 11, a 46 x 22 anchor.
    # A 32 x 16 box inside it: IoU = 512 / (46 * 22) = 0.5059 (0.4944 with unrounded sides 45.25 x 22.63).
    fit = anchor_fit(np.array([32.0]), np.array([16.0]), {"c4": [32]}, [0.5], fg_iou=0.7)
    assert fit["share_best_iou_at_least"]["0.5"] == 1.0
    fit = anchor_fit(np.array([32.0]), np.array([16.0]), {"c4": [32]}, [0.5], fg_iou=0.505)
    assert fit["share_best_iou_at_least"]["0.505"] == 1.0
    fit = anchor_fit(np.array([32.0]), np.array([16.0]), {"c4": [32]}, [0.5], fg_iou=0.507)
    assert fit["share_best_iou_at_least"]["0.507"] == 0.0


def test_suggested_sizes_and_ratios_are_quantiles_of_the_log_sides_and_shapes():
    # log sides ln 10, ln 20, ln 40, ln 80: the quantile at 0.25 lies 3/4 of the way from ln 10 to ln 20
    # (numpy's linear interpolation), 10 * 2^0.75 = 16.8; at 0.75, 40 * 2^0.25 = 47.6.
    sides = np.array([10.0, 20.0, 40.0, 80.0])
    assert suggest_anchor_sizes(sides, sides, 2) == [17.0, 48.0]
    # h / w 0.25, 1, 1, 4: quantiles at 1/6, 1/2, 5/6 of the logs: 4^(-1/2) = 0.5, 1, 4^(1/2) = 2.
    widths, heights = np.array([40.0, 20.0, 20.0, 10.0]), np.array([10.0, 20.0, 20.0, 40.0])
    assert suggest_aspect_ratios(widths, heights, 3) == [0.5, 1.0, 2.0]


def small_boxes(count: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of 8-40 px sides (log-uniform), h/w 0.5-2: below the default anchors (32-256)."""
    rng = np.random.default_rng(seed)
    sides = np.exp(rng.uniform(np.log(8), np.log(40), count))
    ratios = np.exp(rng.uniform(np.log(0.5), np.log(2), count))
    return sides / np.sqrt(ratios), sides * np.sqrt(ratios)


def test_a_poor_fit_warns_and_the_suggestion_fits():
    widths, heights = small_boxes()
    report = fit_report(widths, heights, [32, 64, 128, 256], [0.5, 1.0, 2.0], 0.7, ["c4"])
    assert report["fit"]["warn"] and report["fit"]["share_best_iou_at_least"]["0.5"] < WARN_SHARE
    suggested = report["suggested"]
    assert len(suggested["anchor_sizes"]) == 4 and suggested["anchor_sizes"] == sorted(set(suggested["anchor_sizes"]))
    assert suggested["anchor_sizes"][0] >= 8 and suggested["anchor_sizes"][-1] <= 40
    assert suggested["share_best_iou_at_least_0.5"] >= WARN_SHARE
    auto = fit_report(widths, heights, "auto", "auto", 0.7, ["c4"])
    assert auto["used"] == {k: suggested[k] for k in ("anchor_sizes", "aspect_ratios")}
    assert not auto["fit"]["warn"] and auto["auto"] == {"anchor_sizes": True, "aspect_ratios": True}


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50_fpn", "mobilenet_v2_fpn"])
def test_auto_gives_one_size_per_level_on_fpn(backbone):
    levels = list(feature_levels(backbone))
    report = fit_report(*small_boxes(), "auto", [0.5, 1.0, 2.0], 0.7, levels)
    expected = len(levels) if len(levels) > 1 else 4
    assert len(report["used"]["anchor_sizes"]) == expected
    assert list(report["fit"]["levels"]) == levels
    assert all(len(level["anchor_sizes"]) == expected // len(levels) for level in report["fit"]["levels"].values())


def test_auto_is_a_valid_config_value_and_other_words_are_not(make_config):
    validate(make_config(["rpn.anchor_sizes=auto", "rpn.aspect_ratios=auto"]))
    with pytest.raises(ConfigError, match="rpn.anchor_sizes='big' must be a non-empty list"):
        validate(make_config(["rpn.anchor_sizes=big"]))


SIZE = 64
BOX = (20, 24, 32, 36)  # 12 x 12 px: below the default anchors


def write_small_box_dataset(root: Path, count: int = 6) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        pixels = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        lines.append(f"{i}.png,{','.join(map(str, BOX))},camera")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root / "train.csv"


def test_a_checkpoint_trained_with_auto_anchors_predicts_without_the_data(tmp_path, monkeypatch):
    csv = write_small_box_dataset(tmp_path / "data")
    run = tmp_path / "run"
    summary = train(compose_config("config", [
        "data=csv", f"data.source.train={csv}", f"data.image_size={SIZE}", f"data.max_size={SIZE}",
        "data.num_workers=0", "data.batch_size=2", "backbone.weights=none", "rpn.anchor_sizes=auto", "logger=csv",
        "trainer.max_epochs=1", "rpn.num_rois=8", "rpn.post_nms_top_n_test=10", "eval.val_images=0",
        "callbacks.progress_bar.refresh_rate=0", "~callbacks.step_checkpoint"], run))
    used = json.loads((run / "data_summary.json").read_text())["anchors"]["used"]["anchor_sizes"]
    assert used == [12.0, 13.0, 14.0, 15.0]  # every box 12 px: the quantiles, made distinct
    assert "100% of the train boxes have an anchor of IoU >= 0.5" in summary["anchor_fit"]

    ckpt = shutil.copy(summary["checkpoint"], tmp_path / "model.ckpt")
    shutil.rmtree(tmp_path / "data")
    shutil.rmtree(run)
    monkeypatch.chdir(tmp_path)
    module = load_module(ckpt)
    assert module.hparams.rpn["anchor_sizes"] == used
    assert module.detector.rpn.anchor_generator.sizes == (tuple(used),)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(photos / "photo.png")
    predicted = predict(compose_config("predict", [f"ckpt_path={ckpt}", f"input={photos}",
                                                   f"output={tmp_path / 'out'}", "score_threshold=0.0"], tmp_path))
    assert (tmp_path / "out" / "photo.png").is_file() and predicted["skipped"] == []


def test_browse_reports_the_fit_of_the_configured_anchors(tmp_path):
    csv = write_small_box_dataset(tmp_path / "data")
    written = browse(compose_config("browse", [
        "data=csv", f"data.source.train={csv}", f"data.image_size={SIZE}", f"data.max_size={SIZE}",
        "data.num_workers=0", "n=1", "rpn.anchor_sizes=[8,16]"], tmp_path / "run"))
    summary = json.loads(Path(written["summary"]).read_text())
    anchors = summary["anchors"]
    assert anchors["used"]["anchor_sizes"] == [8.0, 16.0]
    assert anchors["fit"]["share_best_iou_at_least"]["0.5"] == 1.0  # 12² / 16² = 0.5625 with the 16 px anchor
    assert anchors["fit"]["levels"]["c4"]["boxes_best_here"] == summary["splits"]["train"]["boxes"] > 0
