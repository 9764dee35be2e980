"""Scaling: mixed precision keeps losses and detections in fp32, the SLURM launcher config resolves, and a
Hydra multirun with a local DDP strategy is refused before any work."""

from __future__ import annotations

import csv
import math
import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from frcnn_lab.config import CONFIG_DIR, ConfigError, group_option, processes_per_node, refuse_local_ddp_in_multirun
from frcnn_lab.model.detector import build_detector
from frcnn_lab.train import train
from support import TINY_RUN, cli_env, require_modules, run_module

SMALL = ["backbone.weights=none", "data.image_size=128", "data.max_size=128"]


def group(name: str) -> dict:
    return group_option(name)


def test_losses_and_detections_stay_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    detector = build_detector(
        {"name": "mobilenet_v2", "weights": "none", "freeze_stages": 0, "frozen_bn": True},
        group("rpn"), group("roi_head"), group("loss"), num_classes=2,
    )
    trunk_dtypes = []
    detector.trunk.register_forward_hook(lambda module, inputs, output: trunk_dtypes.append(output["c4"].dtype))
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 5.0, 120.0, 60.0], [0.0, 0.0, 40.0, 40.0]]), "labels": torch.tensor([2, 1])},
    ]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = detector.train()(images, targets).losses
        with torch.no_grad():
            detections = detector.eval()(images).detections
    assert trunk_dtypes == [torch.bfloat16, torch.bfloat16]  # the convolutions did run in bf16
    assert set(losses) == {"rpn_cls", "rpn_reg", "roi_cls", "roi_reg"}
    for name, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    for detection in detections:
        assert len(detection["boxes"]) > 0
        assert detection["boxes"].dtype == detection["scores"].dtype == torch.float32


def test_bf16_mixed_training_runs_end_to_end(make_config):
    cfg = make_config([*TINY_RUN, *SMALL, "trainer.precision=bf16-mixed", "trainer.max_steps=3",
                       "trainer.log_every_n_steps=1", "data.source.num_train=8", "data.source.num_val=4",
                       "optim.warmup_steps=0"])
    summary = train(cfg)
    assert summary["best_map_50"] is not None and math.isfinite(summary["best_map_50"])
    with open(summary["metrics_csv"], newline="") as f:
        losses = [float(row["train/loss_step"]) for row in csv.DictReader(f) if row.get("train/loss_step")]
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_slurm_launcher_takes_one_task_per_device():
    require_modules("hydra_plugins.hydra_submitit_launcher", "submitit", install="pip install -e '.[slurm]'")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", return_hydra_config=True, overrides=[
                "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                "hydra.launcher.partition=gpu",
            ])
        HydraConfig.instance().set_config(cfg)
        launcher = cfg.hydra.launcher
        assert launcher._target_ == "hydra_plugins.frcnn_lab_slurm.SlurmLauncher"  # submitit's, sacct-free
        assert launcher.tasks_per_node == launcher.gpus_per_node == 4
        assert launcher.nodes == 2 and launcher.partition == "gpu"
        assert launcher.submitit_folder.startswith(cfg.hydra.sweep.dir)
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()


@pytest.fixture
def multirun_config():
    """compose(overrides) -> a config whose HydraConfig says MULTIRUN, as in a job of ``-m``."""

    def make(overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield make
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("overrides,refused", [
    (["trainer=ddp"], True),
    (["trainer.devices=2"], True),  # strategy auto picks DDP for several devices
    (["trainer=ddp", "trainer.devices=-1"], True),
    (["trainer=ddp", "trainer.devices=1"], False),
    (["trainer=ddp", "trainer.strategy=ddp_spawn"], False),
    ([], False),
])
def test_multirun_refuses_strategies_that_relaunch_the_command(multirun_config, monkeypatch, overrides, refused):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    cfg = multirun_config(overrides)
    if refused:
        with pytest.raises(ConfigError, match="cannot run inside a Hydra multirun"):
            refuse_local_ddp_in_multirun(cfg)
    else:
        refuse_local_ddp_in_multirun(cfg)


def test_multirun_with_ddp_is_allowed_under_slurm(multirun_config, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    refuse_local_ddp_in_multirun(multirun_config(["trainer=ddp"]))


@pytest.mark.parametrize("devices,count", [(1, 1), (4, 4), ("2", 2), ("0,1", 2), ("1,", 1), ([0, 2], 2),
                                           (-1, None), ("auto", None)])
def test_processes_per_node_reads_lightnings_device_forms(devices, count):
    assert processes_per_node(devices) == count


@pytest.mark.slow  # a CLI start, ~20 s; the refusal itself is checked in-process above
def test_cli_multirun_with_local_ddp_stops_before_any_work(tmp_path):
    env = {k: v for k, v in cli_env().items() if not k.startswith("SLURM_")}  # not inside a cluster's allocation
    sweep_dir = tmp_path / "sweep"
    result = run_module("frcnn_lab.train", "-m", "trainer=ddp", "trainer.accelerator=cpu", "seed=0,1", *TINY_RUN,
                        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, env=env, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "cannot run inside a Hydra multirun" in output
    assert "trainer.devices=1" in output  # says what to do instead
    assert not list(sweep_dir.rglob("*.ckpt")) and not list(sweep_dir.rglob("metrics.csv"))
    assert not list(sweep_dir.rglob("train_ddp_process_*"))  # no rank was started
    assert not (sweep_dir / "1").exists()  # the sweep stopped at its first job
