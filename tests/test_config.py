"""The config tree composes for every choice, and bad configs stop early with a clear message."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import frcnn_lab.train as train_entry
from frcnn_lab.config import CONFIG_DIR, ConfigError, validate
from frcnn_lab.errors import USER_ERROR_EXIT_CODE
from support import run_module

GROUPS = {
    group: sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
    for group in ("backbone", "rpn", "roi_head", "loss", "optim", "data", "trainer", "logger", "callbacks", "debug")
}

# data options that configure another source
DATA_PRESETS = {"synthetic_hard": "synthetic", "synthetic_large": "synthetic"}


@pytest.mark.parametrize("group,option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_group_option_composes_and_validates(make_config, group, option):
    cfg = make_config([f"{group}={option}"])
    validate(cfg)
    if group in ("backbone", "data"):
        assert cfg[group].name == DATA_PRESETS.get(option, option)


def test_the_documented_usage_sets_backbone_and_num_rois(make_config):
    cfg = make_config(["backbone=resnet50", "rpn.num_rois=50"])
    assert cfg.backbone.name == "resnet50"
    assert cfg.rpn.num_rois == 50


@pytest.mark.parametrize(
    "override,expected",
    [
        ("rpn.num_rois=0", "rpn.num_rois=0 must be an integer >= 1"),
        ("data.image_size=0", "data.image_size=0 must be an integer >= 1"),
        ("data.image_size=-300", "data.image_size=-300 must be an integer >= 1"),
        ("rpn.positive_fraction=1.5", "rpn.positive_fraction=1.5 must be in [0, 1]"),
        ("roi_head.bg_iou_lo=0.5", "roi_head.bg_iou_lo < roi_head.bg_iou_hi"),
        (
            "roi_head.pooler=max",
            "roi_head.pooler='max' is unknown; choose one of ['crop_resize', 'roi_align', 'roi_pool']",
        ),
        (
            "backbone.name=alexnet",
            "backbone.name='alexnet' is unknown; choose one of "
            "['mobilenet_v2', 'mobilenet_v2_fpn', 'mobilenet_v3_large_320_fpn', 'mobilenet_v3_large_fpn', 'resnet50', "
            "'resnet50_fpn', 'vgg16']",
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


def exit_of_main(arguments: list[str], monkeypatch) -> SystemExit:
    """``python -m frcnn_lab.train arguments`` run in this process -> the SystemExit it ends with."""
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", ["frcnn_lab.train", *arguments])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as stop:
        train_entry.main()
    GlobalHydra.instance().clear()
    return stop.value


BAD_VALUES = [
    (["data.image_size=-5"], "data.image_size=-5 must be an integer >= 1"),
    (["data.max_size=100"], "data.max_size=100 must be an integer >= data.image_size (320)"),
    (["optim.schedule=linear"], "optim.schedule='linear' is unknown; choose one of ['constant', 'cosine']"),
    (["data=csv", "data.split=weird"], "data.split='weird' is unknown; choose one of ['official', 'random']"),
    (["roi_head.pooler=foo"],
     "roi_head.pooler='foo' is unknown; choose one of ['crop_resize', 'roi_align', 'roi_pool']"),
    (["rpn.anchor_sizes=[]"], "rpn.anchor_sizes=[] must be a non-empty list of numbers > 0"),
    (["rpn.anchor_sizes=[[32],[64,-1]]"],
     "rpn.anchor_sizes=[[32], [64, -1]] must be a non-empty list of numbers > 0"),
    (["rpn.aspect_ratios=[[]]"], "rpn.aspect_ratios=[[]] must be a non-empty list of numbers > 0"),
    (["roi_head.pool_size=0"], "roi_head.pool_size=0 must be an integer >= 1"),
    (["backbone.box_head=fc"], "backbone.box_head='fc' is unknown; choose one of ['classifier', 'mlp']"),
    (["backbone=resnet50_fpn", "backbone.box_head=classifier"],
     "backbone.box_head='classifier': an FPN backbone's box head is mlp"),
    (["backbone=vgg16", "roi_head.pool_size=5"], "roi_head.pool_size=5 must be 7 (or null) for vgg16's classifier"),
    (["roi_head.box_weights=[10,10,5]"], "roi_head.box_weights=[10, 10, 5] must be 4 numbers > 0"),
    (["roi_head.class_prior=2"], "roi_head.class_prior=2.0 must be null or in (0, 1)"),
    (["optim.min_lr_ratio=2"], "optim.min_lr_ratio=2.0 must be in [0, 1]"),  # a float key: 2 is 2.0
    (["backbone.weights=/no/such/weights.pth"],
     "backbone.weights='/no/such/weights.pth' must be imagenet, none or the path of an existing file"),
    (["backbone.freeze_stages=-1"], "backbone.freeze_stages=-1 must be an integer >= 0"),
    (["model.mode=two_stage"], "model.mode='two_stage' is unknown; choose one of ['full', 'rpn_only']"),
]


@pytest.mark.parametrize("overrides,expected", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_the_cli_refuses_a_bad_value_with_one_message_before_building_anything(overrides, expected, tmp_path,
                                                                                monkeypatch, capsys):
    """``python -m frcnn_lab.train <bad value>`` through its main function: one message naming the key and the
    valid choices or range, exit without a traceback, and no model or data code reached."""
    def unreachable(*args, **kwargs):
        raise AssertionError("model or data code ran before the config was checked")

    monkeypatch.setattr(train_entry, "build_module", unreachable)
    monkeypatch.setattr(train_entry, "DetectionDataModule", unreachable)
    run_dir = tmp_path / "run"
    assert exit_of_main([*overrides, "logger=csv", f"hydra.run.dir={run_dir}"], monkeypatch).code == \
        USER_ERROR_EXIT_CODE
    error = capsys.readouterr().err
    assert error.startswith(f"error: invalid config: {expected}") and error.count("\n") == 1  # one problem, one line
    assert not run_dir.exists()


WRONG_TYPES = [
    ("data.image_size=abc", "data.image_size takes an integer, e.g. data.image_size=320"),
    ("rpn.num_rois=2.5", "rpn.num_rois takes an integer, e.g. rpn.num_rois=64"),
    ("rpn.fg_iou=high", "rpn.fg_iou takes a number, e.g. rpn.fg_iou=0.7"),
    ("backbone.frozen_bn=maybe", "backbone.frozen_bn takes true or false, e.g. backbone.frozen_bn=true"),
    ("model.channels_last=maybe", "model.channels_last takes true or false, e.g. model.channels_last=true"),
    ("trainer.max_epochs=1.5", "trainer.max_epochs takes an integer, e.g. trainer.max_epochs=3"),
    ("trainer.max_epochs=abc", "trainer.max_epochs takes an integer, e.g. trainer.max_epochs=3"),
]


@pytest.mark.parametrize("override,expected", WRONG_TYPES, ids=[o for o, _ in WRONG_TYPES])
def test_the_cli_refuses_a_wrong_type_while_composing(override, expected, tmp_path, monkeypatch, capsys):
    """The parts' typed configs (frcnn_lab.config): Hydra stops at composition, and the entry point says in one line
    which override, what the key takes and an example (its current value), before the entry point's body runs."""
    monkeypatch.setattr(train_entry, "train", lambda cfg: pytest.fail("the entry point ran"))
    code = exit_of_main([override, "logger=csv", f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch).code
    assert code == USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err == f"error: {override}: {expected}\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset,expected", [
    ("rpn:\n  num_roi: 8\n", "Key 'num_roi' not in 'RPNConfig'"),
    ("data:\n  image_size: big\n", "Value 'big' of type 'str' could not be converted to Integer"),
    ("loss:\n  weights:\n    rpn_clss: 2.0\n", "Key 'rpn_clss' not in 'LossWeights'"),
])
def test_a_preset_with_an_unknown_key_or_a_wrong_type_does_not_compose(preset, expected, tmp_path, monkeypatch,
                                                                        capsys):
    """What struct mode alone let through: a preset (here a user's, from --config-dir) that sets a key the group
    does not have, or a value of the wrong type, stops composition naming the preset and the key."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\n" + preset)
    code = exit_of_main(["--config-dir", str(tmp_path), "experiment=mine", "--cfg", "job"], monkeypatch).code
    assert code == USER_ERROR_EXIT_CODE
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: In 'experiment/mine'") and expected in error


def test_per_level_anchor_sizes_pass_when_the_levels_match(make_config):
    """One list of sizes per level of the backbone (mobilenet_v2_fpn: 0, 1, 2 and pool); a count that does not
    match its levels is named with them."""
    validate(make_config(["backbone=mobilenet_v2_fpn", "rpn.anchor_sizes=[[32],[64],[128],[256]]"]))
    with pytest.raises(ConfigError, match=r"3 lists for the 4 levels \['0', '1', '2', 'pool'\]"):
        validate(make_config(["backbone=mobilenet_v2_fpn", "rpn.anchor_sizes=[[32],[64],[128,256]]"]))


def test_cli_unknown_backbone_lists_the_choices(tmp_path):
    result = run_module("frcnn_lab.train", "backbone=alexnet", cwd=tmp_path)
    assert result.returncode == USER_ERROR_EXIT_CODE
    assert result.stderr == ("error: could not find the option 'backbone/alexnet'; the options of backbone are "
                             "mobilenet_v2, mobilenet_v2_fpn, mobilenet_v3_large_320_fpn, mobilenet_v3_large_fpn, "
                             "resnet50, resnet50_fpn, vgg16\n")


def test_cli_impossible_value_stops_before_building_anything(tmp_path):
    result = run_module("frcnn_lab.train", "rpn.num_rois=0", "logger=csv", cwd=tmp_path)
    assert result.returncode == USER_ERROR_EXIT_CODE
    assert result.stderr == "error: invalid config: rpn.num_rois=0 must be an integer >= 1\n"
    assert not list(tmp_path.iterdir())  # no run folder: nothing was written


def leaf_keys(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in leaf_keys(value, f"{prefix}{key}.")]
    return [prefix[:-1]]


def test_every_key_of_the_default_config_is_documented(make_config):
    """docs/configuration.md names every key (a row may name siblings as `a.b.x` / `y` / `z`)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(make_config([]), resolve=False)
    documented = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    undocumented = [
        key for key in leaf_keys({k: v for k, v in cfg.items() if k not in ("trainer", "hydra")})
        if f"`{key}`" not in documented and f"`{key.rsplit('.', 1)[-1]}`" not in documented
        and f"`{key.rsplit('.', 1)[0]}.*`" not in documented
    ]
    assert not undocumented, f"keys missing from docs/configuration.md: {undocumented}"
