"""Two CPU processes (Lightning DDP over gloo): the val metrics cover the whole val set, not rank 0's share.

The training runs as a CLI subprocess because Lightning starts rank 1 by re-running the command line. The
val set (8 images) is divisible by the 2 ranks, so Lightning's DistributedSampler pads no duplicate image
into either shard (with an odd size it would repeat one image and shift mAP slightly; docs/scaling.md).
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset

from frcnn_lab.data.datamodule import DetectionDataModule, collate
from frcnn_lab.engine.module import DetectionModule
from support import cli_env, run_ok, tiny_run

NUM_VAL = 8
RUN = tiny_run("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "backbone.weights=none",
               "data.source.num_train=8", f"data.source.num_val={NUM_VAL}", "data.batch_size=2",
               "data.image_size=128", "data.max_size=128")
COMPARED = ("val/map_50", "val/map", "val/detections_per_image", "val/fn_rate", "val/fp_image_rate")


def last_val_row(metrics_csv: Path) -> dict[str, float]:
    with open(metrics_csv, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/map_50")]
    return {key: float(value) for key, value in rows[-1].items() if value}


def single_process_validation(module: DetectionModule, loader: DataLoader, root: Path) -> dict[str, float]:
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))
    return {key: float(value) for key, value in trainer.validate(module, loader, verbose=False)[0].items()}


@pytest.mark.slow
def test_two_process_val_metrics_equal_a_single_process_evaluation_of_the_same_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in cli_env().items() if not k.startswith("SLURM_")}  # not inside a cluster's allocation
    output = run_ok("frcnn_lab.train", *RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env)
    assert output.count("=== frcnn_lab run summary ===") == 1, "only rank 0 reports"
    assert len(list(run_dir.rglob("metrics.csv"))) == 1
    ddp = last_val_row(run_dir / "csv" / "metrics.csv")

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    datamodule = DetectionDataModule(**OmegaConf.to_container(cfg.data, resolve=True))
    datamodule.setup("validate")
    module = DetectionModule.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    whole = single_process_validation(module, datamodule.val_dataloader(), tmp_path / "whole")
    val = datamodule.val_dataloader().dataset
    rank0_share = single_process_validation(
        module, DataLoader(Subset(val, range(0, NUM_VAL, 2)), batch_size=2, collate_fn=collate), tmp_path / "shard"
    )

    assert whole["val/map"] > 0  # the comparison is not between empty results
    for key in COMPARED:
        assert ddp[key] == pytest.approx(whole[key], abs=1e-6), key
    # ... and it can tell: rank 0's half of the val set gives other figures.
    assert any(rank0_share[key] != pytest.approx(whole[key], abs=1e-6) for key in COMPARED)
