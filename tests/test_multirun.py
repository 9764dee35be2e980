"""Sweeps through the real CLI, resume from a checkpoint, and evaluate / predict / report on the outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from frcnn_lab.train import train
from support import cli_env, run_ok, tiny_run

TINY = tiny_run("backbone.weights=none", "data.source.num_train=8", "data.source.num_val=4", "data.source.num_test=4",
                "data.num_negatives=2")


@pytest.mark.slow
def test_resume_continues_epoch_optimizer_and_scheduler(make_config, tmp_path):
    train(make_config([*TINY, "optim=adam"]))
    first = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)

    last = tmp_path / "checkpoints" / "last.ckpt"
    cfg = make_config([*TINY, "optim=adam", "trainer.max_epochs=2", f"ckpt_path={last}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "resumed")
    train(cfg)
    second = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)

    # last.ckpt may be the epoch-end save (epoch 0) or the end-of-fit save (epoch 1): either way one more epoch
    assert second["epoch"] == first["epoch"] + 1
    assert second["global_step"] > first["global_step"] > 0
    adam_steps = {float(s["step"]) for s in second["optimizer_states"][0]["state"].values()}
    assert adam_steps == {float(second["global_step"])}  # Adam's moments continued, not restarted
    scheduler_offset = first["lr_schedulers"][0]["last_epoch"] - first["global_step"]
    assert second["lr_schedulers"][0]["last_epoch"] - second["global_step"] == scheduler_offset
    with open(tmp_path / "resumed" / "csv" / "metrics.csv", newline="") as f:
        epochs = {row["epoch"] for row in csv.DictReader(f)}
    assert epochs == {"1"}  # the resumed run trained the second epoch only


def run_cli(module: str, arguments: list[str], cwd: Path) -> str:
    return run_ok(module, *arguments, cwd=cwd, env=cli_env(WANDB_MODE="disabled"))


@pytest.mark.slow
def test_sweep_with_a_failing_job_then_evaluate_predict_and_report(tmp_path):
    overrides = tiny_run("data.source.num_train=4", base=TINY)
    run_cli("frcnn_lab.train", ["-m", *overrides, "rpn.num_rois=8,0", "seed=0,1"], tmp_path)
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]  # one folder per job; the failing ones did not stop the sweep
    statuses = [json.loads((job / "status.json").read_text()) for job in jobs]
    assert [s["status"] for s in statuses] == ["completed", "completed", "failed", "failed"]
    assert "rpn.num_rois=0 must be an integer >= 1" in statuses[2]["error"]
    assert all((job / "csv" / "metrics.csv").is_file() for job in jobs[:2])
    assert list((jobs[0] / "val_images").glob("epoch_*/*.png"))

    ckpt = jobs[0] / "checkpoints" / "best.ckpt"
    output = run_cli("frcnn_lab.evaluate", [f"ckpt_path={ckpt}", "score_threshold=0.0"], tmp_path)
    (evaluation,) = (jobs[0] / "evaluate").glob("*/evaluation.json")
    results = json.loads(evaluation.read_text())
    assert f"| mAP@0.5 | {results['map_50']:.3f} |" in output
    assert results["negatives"]["images"] == 2 and results["images"] == 4

    photos = tmp_path / "photos"
    photos.mkdir()
    first_val = next((jobs[0] / "val_images").glob("epoch_*/*.png"))
    (photos / "a.png").write_bytes(first_val.read_bytes())
    run_cli("frcnn_lab.predict", [f"ckpt_path={ckpt}", f"input={photos}", f"output={tmp_path / 'predicted'}",
                                  "score_threshold=0.0"], tmp_path)
    assert (tmp_path / "predicted" / "a.png").is_file()
    assert isinstance(json.loads((tmp_path / "predicted" / "detections.json").read_text()), list)

    report = run_cli("frcnn_lab.report", [str(sweep)], tmp_path)
    assert "| `rpn.num_rois=8` | 2/2 |" in report and "| `rpn.num_rois=0` | 0/2 (2 failed) |" in report
    assert "evaluate + val" in report  # job 0 has an evaluation, job 1 only its validation
    assert (sweep / "report" / "ablation_map50.png").is_file() and (sweep / "report" / "curves_01.png").is_file()
