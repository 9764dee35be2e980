"""Shared fixtures: composing the project's Hydra config the way the CLI does, into a temporary run dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from frcnn_lab.train import CONFIG_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_RUN = [
    "logger=csv",
    "data.source.num_train=24",
    "data.source.num_val=8",
    "data.source.num_test=8",
    "data.batch_size=4",
    "trainer.max_epochs=1",
    "callbacks.progress_bar.refresh_rate=0",
]
"""Overrides for runs that must finish in seconds on a CPU."""


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """compose(overrides) -> the resolved-at-use config, writing its outputs under tmp_path."""

    def make(overrides: list[str] = ()) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
        return cfg

    yield make
    GlobalHydra.instance().clear()
