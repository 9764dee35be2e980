"""Resuming an interrupted run in its own directory: it continues from last.ckpt and keeps what was written."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from frcnn_lab.runs.folders import CLAIM_FILE, OutputDirInUseError
from frcnn_lab.train import train

TWO_EPOCHS_OF_ONE_STEP = [
    "logger=csv",
    "backbone.weights=none",
    "data.source.num_train=2",
    "data.source.num_val=2",
    "data.source.num_test=2",
    "data.batch_size=2",
    "data.image_size=64",
    "data.max_size=64",
    "callbacks.progress_bar.refresh_rate=0",
]


def val_epochs(run: Path) -> list[int]:
    with (run / "csv" / "metrics.csv").open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f) if row.get("val/map_50")]


def as_interrupted(run: Path) -> None:
    """Make ``run`` look like a run whose process was killed: its claim names a process that has ended."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim = run / CLAIM_FILE
    claim.write_text(claim.read_text().replace(f"pid {os.getpid()} ", f"pid {ended.stdout.strip()} ", 1))


def test_an_interrupted_run_resumes_in_place_and_appends_its_metrics(make_config, tmp_path):
    train(make_config([*TWO_EPOCHS_OF_ONE_STEP, "trainer.max_epochs=1"]))
    assert val_epochs(tmp_path) == [0]
    as_interrupted(tmp_path)

    last = tmp_path / "checkpoints" / "last.ckpt"
    train(make_config([*TWO_EPOCHS_OF_ONE_STEP, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert val_epochs(tmp_path) == [0, 1]  # epoch 0's rows kept, epoch 1 appended
    assert "resumed by pid" in (tmp_path / CLAIM_FILE).read_text().splitlines()[-1]


def test_a_run_whose_process_is_alive_is_not_taken_over(make_config, tmp_path):
    train(make_config([*TWO_EPOCHS_OF_ONE_STEP, "trainer.max_epochs=1"]))  # this process owns the directory
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(OutputDirInUseError, match="still going"):
        train(make_config([*TWO_EPOCHS_OF_ONE_STEP, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert val_epochs(tmp_path) == [0]


def test_a_completed_run_is_not_continued_in_place(make_config, tmp_path):
    train(make_config([*TWO_EPOCHS_OF_ONE_STEP, "trainer.max_epochs=1"]))
    as_interrupted(tmp_path)
    (tmp_path / "status.json").write_text(json.dumps({"status": "completed"}))
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(OutputDirInUseError, match="completed run; to train it further, start a new run"):
        train(make_config([*TWO_EPOCHS_OF_ONE_STEP, "trainer.max_epochs=2", f"ckpt_path={last}"]))


@pytest.mark.slow
def test_the_cli_resumes_a_killed_run_and_keeps_its_first_config(tmp_path):
    run, env = tmp_path / "run", {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}

    def cli(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "frcnn_lab.train", *TWO_EPOCHS_OF_ONE_STEP, *overrides,
                               f"hydra.run.dir={run}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=300)

    first = cli("trainer.max_epochs=1", "seed=3")
    assert first.returncode == 0, first.stderr[-2000:]
    (run / "status.json").write_text(json.dumps({"status": "running"}))  # killed after epoch 0's checkpoint

    resumed = cli("trainer.max_epochs=2", "seed=3", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert val_epochs(run) == [0, 1]
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    kept = list(run.glob(".hydra.before_resume_*"))
    assert len(kept) == 1 and "trainer.max_epochs=1" in (kept[0] / "overrides.yaml").read_text()
    assert "ckpt_path=" in (run / ".hydra" / "overrides.yaml").read_text()
