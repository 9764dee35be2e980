"""A run resumed from a checkpoint continues the W&B run of the run that wrote it (read from offline files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import wandb
from omegaconf import open_dict

from frcnn_lab.runs.tracking import WANDB_RUN_FILE, wandb_run_to_resume
from frcnn_lab.train import train
from support import TINY_RUN, tiny_run
from test_outputs import wandb_records

WANDB_TINY = tiny_run("backbone.weights=none", "data.source.num_train=8", "data.source.num_val=4",
                      "data.image_size=128", "data.max_size=128", "logger.wandb.mode=offline",
                      base=[o for o in TINY_RUN if o != "logger=csv"])


def offline_run(run_dir: Path) -> tuple[str, list[dict]]:
    """(W&B run id, history rows) of the run folder's one offline W&B run."""
    wandb.teardown()  # the W&B service writes the offline files behind the process: wait for it
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = list(wandb_records(log))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    return run.run_id, rows


@pytest.mark.slow
def test_resume_continues_the_wandb_run_and_its_steps(make_config, tmp_path):
    train(make_config(WANDB_TINY))
    first_id, first_rows = offline_run(tmp_path)
    assert (tmp_path / WANDB_RUN_FILE).read_text().strip() == first_id
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert wandb_run_to_resume(last) == first_id

    cfg = make_config([*WANDB_TINY, "trainer.max_epochs=2", f"ckpt_path={last}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "resumed")
    train(cfg)
    resumed_id, resumed_rows = offline_run(tmp_path / "resumed")
    assert resumed_id == first_id  # the same W&B run, continued
    assert (tmp_path / "resumed" / WANDB_RUN_FILE).read_text().strip() == first_id

    checkpoint_step = torch.load(last, weights_only=True)["global_step"]
    first_steps = [row["trainer/global_step"] for row in first_rows if "trainer/global_step" in row]
    resumed_steps = [row["trainer/global_step"] for row in resumed_rows if "trainer/global_step" in row]
    assert max(first_steps) <= checkpoint_step <= min(resumed_steps)  # the step count carries on
    assert {row["epoch"] for row in resumed_rows if "val/map_50" in row} == {1}


def test_a_checkpoint_outside_a_run_folder_or_without_wandb_starts_a_new_run(tmp_path):
    loose = tmp_path / "model.ckpt"
    loose.write_bytes(b"")
    assert wandb_run_to_resume(loose) is None and wandb_run_to_resume(None) is None
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert wandb_run_to_resume(tmp_path / "run" / "checkpoints" / "last.ckpt") is None  # csv-only run
