"""Kill and resume: a training process killed with SIGKILL mid-epoch continues from its last checkpoint."""

from __future__ import annotations

import copy
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from frcnn_lab.train import train
from support import tiny_run

# 200 training images: 100 steps per epoch, so the kill lands well inside the first epoch
SMALL_RUN = tiny_run("backbone.weights=none", "data.source.num_train=200", "data.source.num_val=4",
                     "data.source.num_test=4", "data.batch_size=2", "data.image_size=128", "data.max_size=128",
                     "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
                     "callbacks.step_checkpoint.every_n_train_steps=2")


class ResumeProbe(L.Callback):
    """Records the state training starts from (after Lightning restored the checkpoint)."""

    seen: dict[str, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ResumeProbe.seen = {
            "global_step": trainer.global_step,
            "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),  # training goes on mutating it
            "scheduler": copy.deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict()),
            "weights": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
        }


def wait_for_checkpoint(process: subprocess.Popen, pattern: str, root: Path, min_step: int, timeout: float) -> Path:
    """The first ``pattern`` file under root whose global step is at least min_step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before a mid-epoch checkpoint appeared"
        for path in root.glob(pattern):
            # Atomic writes: any file at this path is complete and loads, even while training rewrites it.
            if torch.load(path, map_location="cpu", weights_only=True)["global_step"] >= min_step:
                return path
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint with global step >= {min_step} within {timeout} s")


def assert_same_state(actual: Any, expected: Any, where: str = "") -> None:
    if isinstance(expected, dict):
        assert set(actual) == set(expected), where
        for key in expected:
            assert_same_state(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_state(a, e, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(actual.cpu(), expected.cpu()), where
    else:
        assert actual == expected, where


def first_logged_train_step(metrics_csv: Path) -> int:
    with open(metrics_csv, newline="") as f:
        return min(int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss_step"))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_continues_from_the_checkpoint(make_config, tmp_path):
    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline"}
    process = subprocess.Popen(
        [sys.executable, "-m", "frcnn_lab.train", *SMALL_RUN], cwd=killed_dir, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        last = wait_for_checkpoint(process, "outputs/train/runs/*/checkpoints/last.ckpt", killed_dir, 4, timeout=240)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL

    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    step = checkpoint["global_step"]
    assert checkpoint["epoch"] == 0 and 4 <= step < 100  # mid-epoch: 100 batches per epoch
    assert checkpoint["optimizer_states"][0]["state"], "the optimiser had momentum buffers to save"
    time_before_kill = checkpoint["callbacks"]["Timer"]["time_elapsed"]["train"]
    assert time_before_kill > 0

    cfg = make_config(
        [*SMALL_RUN, f"ckpt_path={last}", "trainer.max_steps=100", "+callbacks.probe._target_=" + __name__
         + ".ResumeProbe"]
    )
    started = time.perf_counter()
    summary = train(cfg)
    took = time.perf_counter() - started

    seen = ResumeProbe.seen
    assert seen["global_step"] == step
    assert_same_state(seen["optimizer"], checkpoint["optimizer_states"][0], "optimizer")
    assert_same_state(seen["scheduler"], checkpoint["lr_schedulers"][0], "scheduler")
    assert_same_state(seen["weights"], checkpoint["state_dict"], "weights")
    # Steps are logged 0-based (a fresh run's first row is step 0): the resumed run's first row is the step
    # right after the checkpoint's, and it stops at max_steps.
    assert first_logged_train_step(Path(summary["metrics_csv"])) == step
    resumed_last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed_last["global_step"] == 100  # the end of epoch 0
    # The resumed epoch is timed from the resume (Lightning calls no on_train_epoch_start midway).
    with open(summary["metrics_csv"], newline="") as f:
        epoch_times = [float(row["train/epoch_time_s"]) for row in csv.DictReader(f) if row.get("train/epoch_time_s")]
    assert len(epoch_times) == 1 and 0 < epoch_times[0] < took
    # The run's training time adds the killed process's time up to its checkpoint, which the checkpoint carries.
    assert time_before_kill < summary["train_time_s"] < time_before_kill + took
