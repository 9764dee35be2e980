"""The config tree composes for every choice, and bad configs stop early with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from frcnn_lab.config import ConfigError, validate
from frcnn_lab.train import CONFIG_DIR

GROUPS = {
    group: sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
    for group in ("backbone", "rpn", "roi_head", "loss", "optim", "data", "trainer", "logger", "callbacks", "debug")
}


@pytest.mark.parametrize("group,option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_group_option_composes_and_validates(make_config, group, option):
    cfg = make_config([f"{group}={option}"])
    validate(cfg)
    if group in ("backbone", "data"):
        assert cfg[group].name == option


def test_the_documented_usage_sets_backbone_and_num_rois(make_config):
    cfg = make_config(["backbone=resnet50", "rpn.num_rois=50"])
    assert cfg.backbone.name == "resnet50"
    assert cfg.rpn.num_rois == 50


@pytest.mark.parametrize(
    "override,expected",
    [
        ("rpn.num_rois=0", "rpn.num_rois=0 must be an integer >= 1"),
        ("data.image_size=0", "data.image_size=0 must be > 0"),
        ("data.image_size=-300", "data.image_size=-300 must be > 0"),
        ("rpn.positive_fraction=1.5", "rpn.positive_fraction=1.5 must be in [0, 1]"),
        ("roi_head.bg_iou_lo=0.5", "roi_head.bg_iou_lo < roi_head.bg_iou_hi"),
        (
            "roi_head.pooler=max",
            "roi_head.pooler='max' is unknown; choose one of ['crop_resize', 'roi_align', 'roi_pool']",
        ),
        (
            "backbone.name=alexnet",
            "backbone.name='alexnet' is unknown; choose one of "
            "['mobilenet_v2', 'mobilenet_v2_fpn', 'resnet50', 'resnet50_fpn', 'vgg16']",
        ),
        ("model.mode=two_stage", "model.mode='two_stage' is unknown"),
        ("data.name=imagenet", "data.name='imagenet' is unknown"),
    ],
)
def test_impossible_values_name_the_key(make_config, override, expected):
    cfg = make_config([override])
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert expected in str(error.value)


def test_all_problems_are_reported_at_once(make_config):
    cfg = make_config(["rpn.num_rois=0", "data.image_size=0"])
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert "rpn.num_rois" in str(error.value) and "data.image_size" in str(error.value)


def test_missing_required_key_is_named(make_config):
    cfg = make_config(["backbone.weights=???"])
    with pytest.raises(ConfigError, match="backbone.weights"):
        validate(cfg)


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "frcnn_lab.train", *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def test_cli_unknown_backbone_lists_the_choices(tmp_path):
    result = run_cli("backbone=alexnet", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'backbone/alexnet'" in result.stderr
    for name in ("mobilenet_v2", "resnet50", "vgg16"):
        assert name in result.stderr


def test_cli_impossible_value_stops_before_building_anything(tmp_path):
    result = run_cli("rpn.num_rois=0", "logger=csv", cwd=tmp_path)
    assert result.returncode != 0
    assert "rpn.num_rois=0 must be an integer >= 1" in result.stderr
    # No model was built and no training directory was filled with checkpoints or metrics.
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.csv"))


def leaf_keys(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in leaf_keys(value, f"{prefix}{key}.")]
    return [prefix[:-1]]


def test_every_key_of_the_default_config_is_documented(make_config):
    """docs/configuration.md names every key (a row may name siblings as `a.b.x` / `y` / `z`)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(make_config([]), resolve=False)
    documented = Path(CONFIG_DIR).parent.joinpath("docs", "configuration.md").read_text()
    undocumented = [
        key for key in leaf_keys({k: v for k, v in cfg.items() if k not in ("trainer", "hydra")})
        if f"`{key}`" not in documented and f"`{key.rsplit('.', 1)[-1]}`" not in documented
        and f"`{key.rsplit('.', 1)[0]}.*`" not in documented
    ]
    assert not undocumented, f"keys missing from docs/configuration.md: {undocumented}"
