"""Shared fixtures: pinned torch threads, configs composed into a temporary run dir, a tiny trained run."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from frcnn_lab.runs.memory import keep_freed_memory
from support import TEST_THREADS, compose_config, tiny_run

LONG_FILES = ("test_slurm.py", "test_wheel.py", "test_train_e2e.py", "test_config.py", "test_report.py",
              "test_reliability.py", "test_tracking.py")
"""The files with the longest work: jobs through SLURM and a wheel's install (slow part), then the fast suite's
three-epoch training, CLI starts, reports and W&B sweep."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """LONG_FILES first, the rest in their order: scripts/test.sh hands whole files to the workers in this order
    (``--dist=loadfile --no-loadscope-reorder``), so no long file starts last while the other worker idles."""
    items.sort(key=lambda item: item.path.name not in LONG_FILES)


@pytest.fixture(scope="session", autouse=True)
def session_threads():
    """Session- and module-scoped fixtures (trained runs, models) run at TEST_THREADS too; the entry points
    that tests start inherit OMP_NUM_THREADS."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(TEST_THREADS)
    os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="session", autouse=True)
def entry_point_memory():
    """Each test process keeps freed memory for reuse, as every entry point's process does."""
    keep_freed_memory()


@pytest.fixture(autouse=True)
def test_threads(monkeypatch):
    """Every test starts at TEST_THREADS torch threads whatever the test before it set, and the count is put
    back after it: a test's figures do not depend on which tests ran first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    monkeypatch.setenv("OMP_NUM_THREADS", str(TEST_THREADS))
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """compose(overrides) -> the resolved-at-use config, writing its outputs under tmp_path."""
    return lambda overrides=(): compose_config("config", overrides, tmp_path)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny completed training run laid out like the CLI's: .hydra/config.yaml, csv/, checkpoints/best.ckpt."""
    from omegaconf import OmegaConf

    from frcnn_lab.train import train

    run = tmp_path_factory.mktemp("trained_run")
    cfg = compose_config("config", tiny_run("backbone.weights=none", "data.source.num_train=8", "data.source.num_val=4",
                                            "data.source.num_test=4", "data.num_negatives=3"), run)
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
