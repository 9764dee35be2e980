"""Shared fixtures: composing the project's Hydra config the way the CLI does, into a temporary run dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
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


def compose_config(name: str, overrides: list[str] = (), output_dir: Path | None = None) -> DictConfig:
    """The primary config ``name`` (config, evaluate, predict) composed like its CLI, outputs in ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny completed training run laid out like the CLI's: .hydra/config.yaml, csv/, checkpoints/best.ckpt."""
    from omegaconf import OmegaConf

    from frcnn_lab.train import train

    run = tmp_path_factory.mktemp("trained_run")
    cfg = compose_config("config", [*TINY_RUN, "backbone.weights=none", "data.source.num_train=8",
                                    "data.source.num_val=4", "data.source.num_test=4", "data.num_negatives=3"], run)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    train(cfg)
    return run


@pytest.fixture(scope="session")
def initialised_checkpoint(trained_run, tmp_path_factory) -> Path:
    """The tiny run (its .hydra config) with the ImageNet trunk and a freshly initialised RPN and head: one epoch
    from scratch leaves nearly all scores tied, while these differ from box to box, so detections compare one to
    one and a score threshold keeps some and drops others."""
    import shutil

    from omegaconf import OmegaConf

    from frcnn_lab.train import build_module

    run = tmp_path_factory.mktemp("initialised_run")
    shutil.copytree(trained_run / ".hydra", run / ".hydra")
    state = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.backbone.weights = "imagenet"
    torch.manual_seed(0)
    state["state_dict"] = build_module(cfg).state_dict()
    (run / "checkpoints").mkdir()
    torch.save(state, run / "checkpoints" / "best.ckpt")
    return run / "checkpoints" / "best.ckpt"


@pytest.fixture
def one_cpu_thread(monkeypatch):
    """Torch on one thread, and OMP_NUM_THREADS=1 for subprocesses: on a shared, busy CPU, more threads only
    spin against other processes (a small CNN step runs many times slower on two contended threads than on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)
