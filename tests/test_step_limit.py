"""A run stopped by ``trainer.max_steps`` inside an epoch validates what it trained and keeps it as best.ckpt."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from frcnn_lab.train import train
from support import run_ok, tiny_run

# 24 train images in batches of 4: 6 steps an epoch, so 2 steps stop inside the first one.
STEP_LIMITED = tiny_run("backbone.weights=none", "data.source.num_val=4", "data.image_size=128", "data.max_size=128",
                        "trainer.max_steps=2", "trainer.max_epochs=3")


def val_rows(metrics_csv) -> list[dict[str, str]]:
    with open(metrics_csv, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("val/map_50")]


@pytest.mark.slow
def test_status_names_best_ckpt_and_evaluate_reproduces_its_validation(tmp_path):
    run = tmp_path / "run"
    run_ok("frcnn_lab.train", *STEP_LIMITED, f"hydra.run.dir={run}", cwd=tmp_path)
    status = json.loads((run / "status.json").read_text())
    best = run / "checkpoints" / "best.ckpt"
    assert status["status"] == "completed" and status["checkpoint"] == str(best)
    assert 0 < status["train_time_s"] < status["duration_s"]  # the fit, within the process's wall time
    assert torch.load(best, weights_only=True)["global_step"] == 2
    (row,) = val_rows(run / "csv" / "metrics.csv")  # one validation, at the step limit
    assert row["step"] == "1" and float(row["val/map_50"]) == pytest.approx(status["best_map_50"], abs=1e-9)

    # The README's next step (evaluate) works on it and gives the figure the run validated.
    run_ok("frcnn_lab.evaluate", f"ckpt_path={best}", "split=val", cwd=tmp_path)
    (evaluation,) = (run / "evaluate").glob("*/evaluation.json")
    assert json.loads(evaluation.read_text())["map_50"] == pytest.approx(status["best_map_50"], abs=1e-6)


def test_step_limit_validates_in_an_epoch_that_check_val_every_n_epoch_skips(make_config, tmp_path):
    summary = train(make_config([*STEP_LIMITED, "trainer.check_val_every_n_epoch=3"]))
    assert summary["checkpoint"] == str(tmp_path / "checkpoints" / "best.ckpt")
    assert summary["best_epoch"] == 1
    assert len(val_rows(tmp_path / "csv" / "metrics.csv")) == 1
