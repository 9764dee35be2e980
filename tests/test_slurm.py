"""Sweeps through sbatch on a live SLURM cluster (``bash scripts/slurm_local.sh start`` makes a one-node one).

Without a cluster these tests are skipped, and fail when CI is set (``.ci/run`` starts the local cluster).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from support import (
    DDP_COMPARED,
    cli_env,
    last_val_row,
    run_ok,
    single_process_validation,
    tiny_run,
    trained_module_and_data,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY_JOB = tiny_run("backbone.weights=none", "data.source.num_train=8", "data.source.num_val=4",
                    "data.source.num_test=4", "data.image_size=128", "data.max_size=128")
"""Epochs of 2 optimiser steps on 128 px images."""
TWO_STEPS = tiny_run("trainer.max_steps=2", base=TINY_JOB)
"""Seconds of work per job: 2 optimiser steps, then the validation at the step limit."""
JOB_TIMEOUT_S = 900  # the submitting process waits for its jobs: a lost job must not hang the suite


def cluster_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> None:
    if cluster_answers():
        return
    message = "no SLURM cluster answers (bash scripts/slurm_local.sh start)"
    if os.environ.get("CI"):
        pytest.fail(message + "; with CI set this fails")
    pytest.skip(message)


def test_sweep_through_sbatch_completes_and_reports(tmp_path):
    sweep = tmp_path / "sweep"
    output = run_ok("frcnn_lab.train", "-m", "hydra/launcher=slurm_cpu", *TWO_STEPS, "rpn.num_rois=8,16",
                    f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=JOB_TIMEOUT_S)
    # Without an accounting database (the local cluster has none) sacct is not asked: one line says so.
    assert "sacct error" not in output and "accounting storage is disabled" not in output
    assert output.count("sacct does not answer") == 1

    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "completed", status
        assert status["checkpoint"] == str(job / "checkpoints" / "best.ckpt")
        assert (job / "checkpoints" / "best.ckpt").is_file()
    tasks = sorted(p.parent.name for p in (sweep / ".submitit").glob("*/*_submitted.pkl"))
    assert len(tasks) == 2 and tasks[0].endswith("_0") and tasks[1].endswith("_1")  # one sbatch array, 2 jobs

    report = run_ok("frcnn_lab.report", str(sweep), cwd=tmp_path)
    assert "| `rpn.num_rois=8` | 1/1 |" in report and "| `rpn.num_rois=16` | 1/1 |" in report


def test_ddp_job_takes_its_ranks_from_slurm_and_validates_the_whole_val_set(tmp_path):
    """One sbatch job of 2 tasks started by srun; Lightning's SLURMEnvironment gives the ranks, gloo joins them.
    8 val images split evenly over the 2 ranks (no padding repeats), one per batch, NCHW weights and the classifier
    box head, as in tests/test_ddp.py."""
    sweep = tmp_path / "sweep"
    output = run_ok("frcnn_lab.train", "-m", "hydra/launcher=slurm_cpu", *TWO_STEPS, "trainer=ddp",
                    "trainer.accelerator=cpu", "trainer.devices=2", "data.source.num_val=8", "data.batch_size=1",
                    "model.channels_last=false", "backbone.box_head=classifier",
                    f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=JOB_TIMEOUT_S)
    job = sweep / "0"
    assert json.loads((job / "status.json").read_text())["status"] == "completed", output[-2000:]
    (submitted,) = (sweep / ".submitit").glob("*/*_submitted.pkl")
    folder = submitted.parent
    started = "".join(p.read_text() for p in sorted(folder.glob("*_log.*")))  # each task's stdout and stderr
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in started
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in started
    assert started.count("=== frcnn_lab run summary ===") == 1, "only rank 0 reports"

    ddp = last_val_row(job / "csv" / "metrics.csv")
    module, datamodule = trained_module_and_data(job)
    whole = single_process_validation(module, datamodule.val_dataloader(), tmp_path / "whole")
    assert whole["val/map"] > 0 or whole["val/detections_per_image"] > 0  # not two empty results
    for key in DDP_COMPARED:
        assert ddp[key] == pytest.approx(whole[key], abs=1e-6), key


def validated_epochs(metrics_csv: Path) -> list[int]:
    if not metrics_csv.is_file():
        return []
    with open(metrics_csv, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f) if row.get("val/map_50")]


def test_signalled_job_saves_last_ckpt_is_requeued_and_resumes_where_it_stopped(tmp_path):
    """SLURM signals a job ``signal_delay_s`` before its time limit (submitit asks for SIGUSR2) or when it is
    preempted; ``scancel --signal=USR2`` sends the same signal now. The job saves last.ckpt, submitit requeues it, and
    the requeued job resumes from last.ckpt in the same directory until max_epochs. The job is signalled after its
    first epoch; the other epochs (about 2 s each unloaded) leave the signal time to arrive on a loaded machine."""
    sweep, epochs = tmp_path / "sweep", 20
    command = [sys.executable, "-m", "frcnn_lab.train", "-m", "hydra/launcher=slurm_cpu", *TINY_JOB,
               f"trainer.max_epochs={epochs}", f"hydra.sweep.dir={sweep}"]
    sweep_process = subprocess.Popen(command, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    job = sweep / "0"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (job / "checkpoints" / "best.ckpt").is_file():  # the first epoch is validated: training is under way
        assert sweep_process.poll() is None and time.monotonic() < deadline, "the job ended before it was signalled"
        time.sleep(0.2)
    (submitted,) = (sweep / ".submitit").glob("*/*_submitted.pkl")
    subprocess.run(["scancel", "--signal=USR2", submitted.parent.name], check=True)
    output, _ = sweep_process.communicate(timeout=JOB_TIMEOUT_S)
    assert sweep_process.returncode == 0, output[-3000:]

    logs = "".join(p.read_text() for p in sorted(submitted.parent.glob("*_log.*")))
    assert "Caught signal SIGUSR2" in logs, "the job ended before the signal reached it:\n" + logs[-2000:]
    assert "saved " in logs and "last.ckpt on the way out" in logs
    claim = (job / ".frcnn_lab_run").read_text()
    assert "resumed by pid" in claim and "from last.ckpt" in claim  # the requeued job took over its directory
    assert "ckpt_path=" in (job / ".hydra" / "overrides.yaml").read_text()
    status = json.loads((job / "status.json").read_text())
    assert status["status"] == "completed" and status["checkpoint"] == str(job / "checkpoints" / "best.ckpt")
    # The epoch count continued from the checkpoint: every epoch validated once, none restarted from 0.
    assert validated_epochs(job / "csv" / "metrics.csv") == list(range(epochs))
    assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] in (epochs - 1, epochs)
