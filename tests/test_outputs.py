"""Outputs: every run has its own directory, nothing already written is overwritten, failed W&B runs are marked."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from frcnn_lab.runs.folders import CLAIM_FILE, OutputDirInUseError, claim_output_dir
from frcnn_lab.train import train
from support import tiny_run

ONE_STEP = tiny_run("backbone.weights=none", "data.source.num_train=4", "data.source.num_val=2",
                    "data.source.num_test=2", "data.batch_size=2", "data.image_size=64", "data.max_size=64",
                    "trainer.max_steps=1")


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under directory -> sha256 of its bytes."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


def start_cli(*overrides: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "frcnn_lab.train", *overrides], cwd=cwd,
        env=env or {**os.environ, "WANDB_MODE": "offline"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def test_a_run_into_a_used_directory_is_refused_and_changes_nothing(make_config, tmp_path):
    train(make_config(ONE_STEP))
    before = snapshot(tmp_path)
    assert "checkpoints/last.ckpt" in before and "csv/metrics.csv" in before and CLAIM_FILE in before

    with pytest.raises(OutputDirInUseError, match=f"{tmp_path} already holds the outputs of another run"):
        train(make_config(ONE_STEP))
    assert snapshot(tmp_path) == before


def test_the_cli_refuses_a_used_run_directory_before_hydra_writes_to_it(tmp_path):
    used = claim_output_dir(tmp_path / "used")
    (used / ".hydra").mkdir()
    (used / ".hydra" / "config.yaml").write_text("the earlier run's config\n")
    before = snapshot(used)
    code, output = finish(start_cli(f"hydra.run.dir={used}", *ONE_STEP, cwd=tmp_path))
    assert code != 0
    assert f"error: {used} already holds the outputs of another run (pid {os.getpid()}" in output
    assert snapshot(used) == before


@pytest.mark.slow
def test_two_runs_started_together_get_their_own_directories(tmp_path):
    first, second = start_cli(*ONE_STEP, cwd=tmp_path), start_cli(*ONE_STEP, cwd=tmp_path)
    results = [finish(first), finish(second)]
    for code, output in results:
        assert code == 0, output[-3000:]
    runs = sorted((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 2
    owners = {(run / CLAIM_FILE).read_text().split(",")[0] for run in runs}
    assert owners == {f"pid {first.pid} on {os.uname().nodename}", f"pid {second.pid} on {os.uname().nodename}"}
    for run in runs:
        assert (run / "csv" / "metrics.csv").is_file() and (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_a_sweep_never_writes_into_an_earlier_sweeps_directory(tmp_path):
    sweep = tmp_path / "sweep"
    code, output = finish(start_cli("-m", f"hydra.sweep.dir={sweep}", "seed=0", *ONE_STEP, cwd=tmp_path))
    assert code == 0, output[-3000:]
    before = snapshot(sweep)
    assert "0/checkpoints/last.ckpt" in before

    code, output = finish(start_cli("-m", f"hydra.sweep.dir={sweep}", "seed=1", *ONE_STEP, cwd=tmp_path))
    assert code != 0
    assert f"{sweep} already holds the outputs of another run" in output
    assert snapshot(sweep) == before


def wandb_records(path: Path):
    """The protobuf records of a W&B transaction log (``run-<id>.wandb``: a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow
def test_a_failed_run_finishes_its_offline_wandb_run_as_failed(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HOME": str(tmp_path)}
    overrides = [o for o in ONE_STEP if o not in ("logger=csv", "trainer.max_steps=1", "trainer.max_epochs=1")]
    # A learning rate this large sends the weights to infinity within two steps: the non-finite guard stops the run
    # (epochs of 2 steps: the guard sees the diverged weights in the second epoch).
    diverging = ["optim.optimizer.lr=1e12", "optim.warmup_steps=0", "trainer.max_epochs=3"]
    code, output = finish(start_cli(*overrides, *diverging, cwd=tmp_path, env=env))
    assert code != 0
    assert "NonFiniteLossError: non-finite" in output
    logs = list((tmp_path / "outputs").rglob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    exits = [r.exit for r in wandb_records(logs[0]) if r.WhichOneof("record_type") == "exit"]
    assert len(exits) == 1 and exits[0].exit_code == 1
