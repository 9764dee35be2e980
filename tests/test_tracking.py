"""What a training run tells W&B and the console, read back: the offline run's transaction log and media files,
and the console output of a CLI sweep job."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.engine.callbacks.validation import compact_line
from frcnn_lab.engine.checkpoints import load_module
from frcnn_lab.metrics.matching import match_counts
from support import cli_env, run_ok
from test_outputs import wandb_records

# A thesis preset shrunk to seconds: MobileNetV2 (ImageNet) instead of VGG16, 4 + 4 tiny images, two epochs.
# Every candidate detection is kept (score_thresh 0, 10 per image) so the logged boxes follow the weights.
RUN = ["experiment=thesis/model4", "backbone=mobilenet_v2", "data=synthetic", "data.source.num_train=4",
       "data.source.num_val=4", "data.source.num_test=2", "data.num_negatives=0", "data.batch_size=2",
       "data.image_size=128", "data.max_size=160", "trainer.max_epochs=2", "callbacks.progress_bar.refresh_rate=0",
       "optim.optimizer.lr=1e-3", "roi_head.score_thresh=0.0", "roi_head.detections_per_image=10",
       "eval.score_threshold=0.0", "callbacks.wandb_model.enabled=true", "logger.wandb.mode=offline"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One job of a CLI sweep (-m) with an offline W&B run -> (sweep dir, job dir, console output)."""
    home = tmp_path_factory.mktemp("wandb_sweep")
    output = run_ok("frcnn_lab.train", "-m", *RUN, "seed=0", cwd=home, env=cli_env(HOME=str(home)))
    (sweep_dir,) = (home / "outputs" / "train" / "multiruns").iterdir()
    return sweep_dir, sweep_dir / "0", output


def records(job: Path, kind: str) -> list:
    (log,) = job.glob("wandb/offline-run-*/run-*.wandb")
    return [getattr(r, kind) for r in wandb_records(log) if r.WhichOneof("record_type") == kind]


def history(job: Path, prefix: str) -> list[dict]:
    """The history rows holding a key that starts with ``prefix``, in logging order, values decoded."""
    rows = []
    for item_list in records(job, "history"):
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in item_list.item}
        if any(k.startswith(prefix) for k in row):
            rows.append(row)
    return rows


def test_config_group_tags_and_epoch_metrics_reach_wandb(sweep):
    sweep_dir, job, _ = sweep
    config = {u.key: json.loads(u.value_json) for c in records(job, "config") for u in c.update}
    assert config["backbone.name"] == "mobilenet_v2" and config["rpn.num_rois"] == 50
    assert config["data.image_size"] == 128 and config["experiment"] == "thesis/model4"
    (run,) = records(job, "run")
    assert run.run_group == sweep_dir.name  # the sweep's jobs share a group
    assert "thesis/model4" in run.tags
    epochs = history(job, "val/map_50")
    assert [row["epoch"] for row in epochs] == [0, 1]
    for row in epochs:
        assert 0 <= row["val/map_50"] <= 1 and 0 <= row["val/map"] <= row["val/map_50"]
        assert {"val/fn_rate", "val/fp_image_rate", "val/ms_per_image"} <= set(row)


def test_logged_boxes_follow_the_predictions_of_each_epoch(sweep):
    _, job, _ = sweep
    files = next(job.glob("wandb/offline-run-*/files"))
    logged = []  # per epoch, per image: the predicted boxes W&B holds
    for row in history(job, "val/images/all_boxes"):
        epoch = []
        for image_boxes in row["val/images/all_boxes"]:
            data = json.loads((files / image_boxes["predictions"]["path"]).read_text())["box_data"]
            epoch.append(torch.tensor([[b["position"][k] for k in ("minX", "minY", "maxX", "maxY")] for b in data]))
        logged.append(epoch)
    assert len(logged) == 2 and all(len(epoch) == 4 and all(len(b) for b in epoch) for epoch in logged)
    assert any(a.shape != b.shape or not torch.allclose(a, b) for a, b in zip(*logged, strict=True))

    # The last epoch's boxes are what last.ckpt predicts on the same val images.
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    datamodule = DetectionDataModule(cfg.data)
    datamodule.setup("fit")
    module = load_module(job / "checkpoints" / "last.ckpt", torch.device("cpu"))
    images, targets = [], []
    for batch_images, batch_targets in datamodule.val_dataloader():
        images += batch_images
        targets += batch_targets
    with torch.no_grad():
        preds = module(images[:4])
    for pred, boxes in zip(preds, logged[-1], strict=True):
        assert torch.allclose(pred["boxes"], boxes, atol=1e-3)

    # The predictions table of the last epoch: counts at IoU 0.5 and eval.score_threshold (0: every detection).
    path = history(job, "val/predictions")[-1]["val/predictions/path"]
    table = json.loads((files / path).read_text())
    assert table["columns"] == ["epoch", "image_id", "image", "gt_boxes", "detections", "tp", "fp", "fn"]
    for row, pred, target in zip(table["data"], preds, targets, strict=True):
        assert row[0] == 2 and row[1] == target["image_id"] and row[3] == len(target["boxes"])
        assert row[4] == len(pred["boxes"]) and row[5:] == list(match_counts(pred, target, 0.0))


def test_best_checkpoint_is_a_model_artifact(sweep):
    _, job, _ = sweep
    (model,) = [a for a in records(job, "artifact") if a.type == "model"]
    assert "best" in model.aliases
    (entry,) = model.manifest.contents
    digest = base64.b64encode(hashlib.md5((job / "checkpoints" / "best.ckpt").read_bytes()).digest()).decode()
    assert entry.path == "best.ckpt" and entry.digest == digest


def test_console_shows_one_compact_line_per_epoch_and_no_coco_summary(sweep):
    _, _, output = sweep
    assert "Average Precision" not in output and "Average Recall" not in output
    assert "Images sizes do not match" not in output
    lines = [line for line in output.splitlines() if ": val mAP@0.5 " in line]
    assert len(lines) == 2 and "epoch 1: val mAP@0.5 " in lines[0] and "epoch 2: val mAP@0.5 " in lines[1]
    assert "FN share" in lines[0] and "FP share" in lines[0] and "(score >= 0.0)" in lines[0]


def test_compact_line_shows_missing_figures_as_dashes():
    line = compact_line(3, {"val/map_50": 0.51234, "val/map": 0.3, "val/fn_rate": float("nan")}, 0.9)
    assert line == "epoch 3: val mAP@0.5 0.512  mAP 0.300  FN share -  FP share - (score >= 0.9)"


def test_match_counts_at_iou_half():
    gt = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]),
          "labels": torch.tensor([1, 1, 2])}
    pred = {"boxes": torch.tensor([[0.0, 0, 10, 10],    # TP on GT 0
                                   [1.0, 0, 10, 10],    # duplicate of GT 0: FP
                                   [20, 20, 30, 30],    # right place, wrong class: FP (GT 1 is missed)
                                   [50, 50, 60, 62],    # TP on GT 2 (IoU 0.83)
                                   [100, 100, 110, 110]]),  # background: FP
            "labels": torch.tensor([1, 1, 2, 2, 1]), "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])}
    assert match_counts(pred, gt, 0.0) == (2, 3, 1)
    assert match_counts(pred, gt, 0.65) == (1, 2, 2)  # only the three best detections count
    assert match_counts(pred, gt, 0.0, iou_threshold=0.9) == (1, 4, 2)  # the 0.83 match no longer counts
    no_gt = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)}
    assert match_counts(pred, no_gt, 0.0) == (0, 5, 0)
    assert match_counts({k: v[:0] for k, v in pred.items()}, gt, 0.0) == (0, 0, 3)


def test_only_rank_zero_writes_the_status(tmp_path, monkeypatch):
    """The ranks of a DDP job share the run directory; two writers of status.json could interleave their bytes."""
    from lightning.pytorch.utilities import rank_zero_only

    from frcnn_lab.runs.tracking import write_status

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    write_status(tmp_path, "completed", best_map_50=0.5)
    assert not (tmp_path / "status.json").exists() and not list(tmp_path.iterdir())
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    write_status(tmp_path, "completed", best_map_50=0.5)
    assert json.loads((tmp_path / "status.json").read_text())["best_map_50"] == 0.5
