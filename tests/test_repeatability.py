"""``seed=N`` with ``trainer.deterministic=true`` makes a CPU run repeatable to the last digit of its metrics."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from frcnn_lab.train import train
from support import tiny_run

REPEATABLE_RUN = tiny_run("data.source.num_train=6", "data.source.num_val=2", "data.source.num_test=2",
                          "data.batch_size=2", "data.image_size=96", "data.max_size=96", "trainer.max_epochs=2",
                          "trainer.log_every_n_steps=1", "trainer.deterministic=true")
WALL_CLOCK_COLUMNS = {"train/epoch_time_s", "train/images_per_s", "val/ms_per_image"}
"""Timings differ from run to run by nature; every other logged figure must not."""


def logged_figures(metrics_csv: str) -> list[dict[str, str]]:
    """metrics.csv rows as text (compared digit for digit), without the wall-clock columns."""
    with open(metrics_csv, newline="") as f:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK_COLUMNS} for row in csv.DictReader(f)]


def run(make_config, tmp_path: Path, name: str, seed: int, hflip: float) -> list[dict[str, str]]:
    cfg = make_config([*REPEATABLE_RUN, f"seed={seed}", f"data.augment.hflip={hflip}"])
    cfg.paths.output_dir = str(tmp_path / name)
    return logged_figures(train(cfg)["metrics_csv"])


@pytest.mark.parametrize(
    "hflip",
    [
        0.0,
        pytest.param(0.5, marks=pytest.mark.slow),
    ],
    ids=["no_augmentation", "random_flips"],
)
def test_same_seed_repeats_every_logged_figure_exactly(make_config, tmp_path, hflip):
    first = run(make_config, tmp_path, "first", seed=3, hflip=hflip)
    second = run(make_config, tmp_path, "second", seed=3, hflip=hflip)
    other_seed = run(make_config, tmp_path, "other", seed=4, hflip=hflip)

    losses = [row["train/loss_step"] for row in first if row.get("train/loss_step")]
    assert len(losses) >= 4 and any(row.get("val/map_50") for row in first)
    assert first == second
    # The seed reaches the weights, the sampling and the augmentation: another seed logs other figures.
    assert [row["train/loss_step"] for row in other_seed if row.get("train/loss_step")] != losses
