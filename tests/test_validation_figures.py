"""Validation losses that leave training untouched; AP by size, the confusion matrix and the val losses through a
tiny training, evaluate, W&B and the report."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loggers import WandbLogger

from frcnn_lab.engine.callbacks.validation import ConfusionMatrixRecorder
from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.evaluate import evaluate, write_results
from frcnn_lab.report import write_report
from frcnn_lab.report.plots import CURVES
from support import compose_config, tiny_run


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 96, 128, generator=generator) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0], [70.0, 20.0, 110.0, 80.0]]),
                "labels": torch.tensor([1, 2]), "difficult": torch.tensor([False, True])},
               {"boxes": torch.tensor([[30.0, 30.0, 90.0, 70.0]]), "labels": torch.tensor([2]),
                "difficult": torch.tensor([False])}]
    return images, targets


def running_statistics(module: DetectionModule) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.state_dict().items() if "running_" in name}


def test_val_losses_change_neither_the_statistics_nor_the_random_stream_nor_the_modes():
    torch.manual_seed(0)
    # weights=none: real BatchNorm layers, which a plain training-mode forward would update.
    module = DetectionModule(backbone={"name": "mobilenet_v2", "weights": "none"}, rpn={"anchor_sizes": [32, 64]},
                             classes=["camera", "phone"], val_losses=True)
    module.eval()
    before, rng = running_statistics(module), torch.get_rng_state()
    assert before, "the backbone has BatchNorm statistics to protect"

    first = module.losses_without_training(batch(), seed=3)
    assert set(first) == {"rpn_cls", "rpn_reg", "roi_cls", "roi_reg"}
    assert all(torch.isfinite(v) and not v.requires_grad for v in first.values())
    assert all(torch.equal(before[k], v) for k, v in running_statistics(module).items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(m.training for m in module.modules())
    # The same seed draws the same anchors and RoIs: the losses repeat exactly; another seed draws others.
    assert module.losses_without_training(batch(), seed=3) == first
    assert module.losses_without_training(batch(), seed=4) != first

    module.train()
    module.losses_without_training(batch(), seed=3)
    assert all(m.training for m in module.modules())
    # ... where the plain training-mode forward the loss path replaces moves the statistics.
    with torch.no_grad():
        module.detector(*batch())
    assert any(not torch.equal(before[k], v) for k, v in running_statistics(module).items())


@pytest.fixture(scope="module")
def run_with_val_losses(tmp_path_factory):
    from omegaconf import OmegaConf

    from frcnn_lab.train import train

    run = tmp_path_factory.mktemp("val_losses_run")
    cfg = compose_config("config", tiny_run(
        "backbone.weights=none", "data.source.num_train=8", "data.source.num_val=4", "data.source.num_test=2",
        "data.num_negatives=0", "data.image_size=128", "data.max_size=128", "eval.losses=true",
        "eval.score_threshold=0.0"), run)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    train(cfg)
    return run


def test_validation_logs_sizes_losses_and_writes_the_confusion_matrix(run_with_val_losses):
    with (run_with_val_losses / "csv" / "metrics.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/map_50")]
    logged = {key for key, value in rows[-1].items() if value != ""}
    for part in ("rpn_cls", "rpn_reg", "roi_cls", "roi_reg"):
        assert float(rows[-1][f"val/loss_{part}"]) >= 0
    assert {"val/loss", "val/map_small", "val/mar_large", "val/map_tertile1", "val/map_50_tertile3"} <= logged
    # The report's curves draw the val losses under the names validation logs them.
    assert {column for _, columns in CURVES for column, _ in columns if column.startswith("val/")} <= logged
    confusion = json.loads((run_with_val_losses / "val_confusion" / "epoch_001" / "confusion.json").read_text())
    assert confusion["labels"] == ["camera", "phone", "background"] and confusion["score_threshold"] == 0.0
    summary = json.loads((run_with_val_losses / "data_summary.json").read_text())
    edges = summary["size_bins_px"]
    assert edges[0][0] == 0 and edges[0][1] == edges[1][0] < edges[1][1] == edges[2][0] and edges[2][1] is None


def test_evaluate_writes_sizes_and_the_confusion_matrix(run_with_val_losses, tmp_path):
    ckpt = run_with_val_losses / "checkpoints" / "best.ckpt"
    results = evaluate(compose_config("evaluate", [f"ckpt_path={ckpt}", "score_threshold=0.0", "split=val"],
                                      tmp_path))
    bins = results["ap_by_size"]["bins"]
    summary = json.loads((run_with_val_losses / "data_summary.json").read_text())
    assert [b["side_px"] for b in bins] == summary["size_bins_px"]  # the train split's tertiles, as in training
    assert set(results["ap_by_area"]) == {"small", "medium", "large"}
    counts = results["confusion"]["counts"]
    # Four val images: every ground-truth box is in its class row once.
    assert sum(sum(row) for row in counts[:2]) == sum(b["boxes"] for b in bins)
    write_results(results, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "confusion.json").read_text()) == results["confusion"]
    assert (tmp_path / "out" / "confusion.png").stat().st_size > 1000


def test_report_shows_sizes_classes_and_val_losses(run_with_val_losses, tmp_path):
    report = write_report(run_with_val_losses, tmp_path / "report").read_text()
    section = report.split("## AP by class and object size", 1)[1]
    assert "| configuration | camera | phone | source |" in section
    assert "| configuration | COCO small | COCO medium | COCO large | train tertile 1 |" in section


def test_confusion_matrix_goes_to_wandb_as_a_table_and_a_picture(tmp_path):
    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    calls = []
    logger.log_table = lambda key, **kwargs: calls.append((key, kwargs))
    logger.log_image = lambda key, **kwargs: calls.append((key, kwargs))
    confusion = {"labels": ["camera", "background"], "counts": [[3, 1], [2, 0]],
                 "row_normalised": [[0.75, 0.25], [1.0, 0.0]], "iou_threshold": 0.5, "score_threshold": 0.9}
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[logger], current_epoch=1,
                              global_step=12)
    ConfusionMatrixRecorder(tmp_path / "files").on_validation_end(trainer, SimpleNamespace(
        val_figures={"confusion": confusion}))
    (table_key, table), (image_key, image) = calls
    assert table_key == "val/confusion" and table["data"] == [["camera", 3, 1], ["background", 2, 0]]
    assert image_key == "val/confusion_matrix" and image["images"][0].ndim == 3 and image["step"] == 12
    assert json.loads((tmp_path / "files" / "epoch_002" / "confusion.json").read_text()) == confusion
