"""Guided searches: ``-m hparams_search=thesis_optuna`` (hydra-optuna-sweeper) maximises the best val mAP@0.5 that
``frcnn_lab.train`` returns, and ``report`` lists the trials."""

from __future__ import annotations

import json

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from frcnn_lab.config import CONFIG_DIR
from support import require_modules, run_ok, tiny_run

require_modules("hydra_plugins.hydra_optuna_sweeper", install="pip install -e '.[optuna]'")

SEARCHED = ("rpn.num_rois", "data.image_size", "roi_head.bg_iou_lo", "optim.optimizer.lr")


def test_search_space_names_keys_of_the_config():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", ["hparams_search=thesis_optuna"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and str(sweeper.direction) == "maximize"
    assert tuple(sweeper.params) == SEARCHED
    for key in SEARCHED:
        assert OmegaConf.select(cfg, key) is not None, f"{key} is searched but not a key of the config"


@pytest.mark.slow
def test_four_trial_study_maximises_best_val_map_and_report_lists_the_trials(tmp_path):
    sweep = tmp_path / "study"
    # 128 px images: a fixed command-line value takes data.image_size out of the search space.
    overrides = tiny_run("backbone.weights=none", "data.source.num_train=8", "data.source.num_val=4",
                         "data.source.num_test=4", "data.image_size=128", "data.max_size=128", "trainer.max_steps=2")
    run_ok("frcnn_lab.train", "-m", "hparams_search=thesis_optuna", *overrides, "hydra.sweeper.n_trials=4",
           "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    trials = sorted((p for p in sweep.iterdir() if (p / "status.json").is_file()), key=lambda p: int(p.name))
    assert [p.name for p in trials] == ["0", "1", "2", "3"]
    values = [json.loads((p / "status.json").read_text())["best_map_50"] for p in trials]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(values))  # the objective is what each trial returned
    best = trials[values.index(max(values))]
    best_overrides = (best / ".hydra" / "overrides.yaml").read_text()
    for key, value in results["best_params"].items():
        assert f"{key}={value}" in best_overrides
    assert set(results["best_params"]) == set(SEARCHED) - {"data.image_size"}

    report = run_ok("frcnn_lab.report", str(sweep), cwd=tmp_path)
    assert "## Optuna study" in report and f"best {results['best_value']:.3f}" in report
    for trial, value in zip(trials, values, strict=True):
        assert f"| `{trial.name}` |" in report and f"| completed | {value:.3f} |" in report
    assert "`data.image_size`" not in report.split("## Optuna study")[1].split("## Runs")[0]
