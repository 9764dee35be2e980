"""Host-device synchronisations per training step of ``python -m frcnn_lab.train``, and where they come from.

    python experiments/bench/syncs.py --device cuda --steps 20 --output experiments/bench/syncs_cuda.json
    python experiments/bench/syncs.py --device cpu --steps 4 --threads 1 -- data.image_size=128

A real training run (the train CLI's ``train()``: Lightning loop, logging, callbacks, optimiser, gradient clipping)
with one more callback that counts over ``--steps`` whole training steps after ``--warmup`` ones, in two ways:

- ``sync_ops``: operations that make the host wait for the device when the tensors are on a GPU, seen by a
  ``TorchDispatchMode`` (``aten._local_scalar_dense``: ``.item()``, ``bool(t)``, ``float(t)``; ``aten.nonzero``,
  ``masked_select``, ``unique``, indexing with a boolean mask, ``torchvision::nms``, copies from a GPU to the host)
  and ``Tensor.tolist`` / ``Tensor.numpy``. This works on any device, so the CPU run counts the same sites a GPU
  run would meet.
- ``cuda_sync_warnings`` (CUDA only): the warnings of ``torch.cuda.set_sync_debug_mode("warn")``, CUDA's own
  count of synchronising calls.

Both are per training step, and ``sync_ops_by_site`` attributes each op to the innermost Python frame outside
``torch`` (``file:line``). Trailing ``key=value`` arguments are Hydra overrides of the training config (after
``--``). Prints a summary; writes JSON to ``--output`` (never over an existing file unless ``--overwrite``).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops whose CUDA kernels copy a value or a size back to the host before returning.
SYNCING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2", "unique_dim",
               "unique_consecutive", "repeat_interleave", "masked_scatter", "nms"}
BOOL_INDEXED_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}  # a boolean index means a nonzero
HOST_READS = {"tolist", "numpy"}
# Code that only ever sees host tensors (the data loader's workers or, with num_workers=0, the main process).
HOST_ONLY_SITES = ("frcnn_lab/data/",)


def call_site() -> str:
    """``file:line`` of the innermost frame outside torch (the code that asked for the op)."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        path = frame.filename.replace("\\", "/")
        if "/torch/" not in path and not path.endswith(("syncs.py", "contextlib.py")):
            parts = path.split("/")
            package = next((i for i, p in enumerate(parts) if p in ("frcnn_lab", "torchvision", "lightning",
                                                                     "torchmetrics")), len(parts) - 1)
            return f"{'/'.join(parts[package:])}:{frame.lineno}"
    return "?"


class SyncOpCounter(TorchDispatchMode):
    """Counts the syncing aten ops (``SYNCING_OPS``, boolean indexing, device-to-host copies) by call site."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS or (name in BOOL_INDEXED_OPS and has_bool_index(args)) or is_device_to_host(
                name, args, kwargs):
            site = call_site()
            if not site.startswith(HOST_ONLY_SITES):
                self.sites[f"{name} @ {site}"] += 1
        return func(*args, **kwargs)


class HostReadCounter(TorchFunctionMode):
    """Counts ``Tensor.tolist`` / ``Tensor.numpy``, which read the data on the host (and wait for a GPU)."""

    def __init__(self, sites: collections.Counter[str]) -> None:
        super().__init__()
        self.sites = sites

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            site = call_site()
            if not site.startswith(HOST_ONLY_SITES):
                self.sites[f"{func.__name__} @ {site}"] += 1
        return func(*args, **(kwargs or {}))


def has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def is_device_to_host(name: str, args: tuple, kwargs: dict) -> bool:
    if name == "_to_copy" and args and torch.is_tensor(args[0]):
        target = kwargs.get("device")
        return args[0].device.type != "cpu" and target is not None and torch.device(target).type == "cpu"
    if name == "copy_" and len(args) > 1 and torch.is_tensor(args[1]):
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    return False


class SyncCounting(L.Callback):
    """Counts syncs from the start of training batch ``warmup`` to the start of batch ``warmup + steps`` or the end
    of the epoch, whichever comes first: whole steps with their logging (see the module doc)."""

    def __init__(self, warmup: int = 2, steps: int = 10) -> None:
        self.warmup, self.count_steps, self.steps, self.active = warmup, steps, 0, False
        self.ops = SyncOpCounter()
        self.reads = HostReadCounter(self.ops.sites)
        self.cuda_warnings: list[warnings.WarningMessage] = []
        self._catcher: warnings.catch_warnings | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.count_steps:
            self.stop()
        elif trainer.global_step == self.warmup and not self.active:
            self.start(pl_module.device)
        if self.active:
            self.steps += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.stop()  # the end of an epoch (validation, checkpoints) is not part of a step

    def start(self, device: torch.device) -> None:
        self.active = True
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            self._catcher = warnings.catch_warnings(record=True)
            self.cuda_warnings = self._catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        self.ops.__enter__()
        self.reads.__enter__()

    def stop(self) -> None:
        if not self.active:
            return
        self.reads.__exit__(None, None, None)
        self.ops.__exit__(None, None, None)
        if self._catcher is not None:
            torch.cuda.set_sync_debug_mode(0)
            self._catcher.__exit__(None, None, None)
        self.active = False

    def figures(self) -> dict[str, Any]:
        steps = max(self.steps, 1)
        sync_warnings = [w for w in self.cuda_warnings if "synchronizing" in str(w.message)]
        by_line = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in sync_warnings)
        return {
            "steps_counted": self.steps,
            "sync_ops_per_step": sum(self.ops.sites.values()) / steps,
            "sync_ops_by_site": {k: v / steps for k, v in self.ops.sites.most_common()},
            "cuda_sync_warnings_per_step": len(sync_warnings) / steps if self._catcher is not None else None,
            "cuda_sync_warnings_by_line": {k: v / steps for k, v in by_line.most_common()},
        }


def count(device: str, steps: int, warmup: int, overrides: list[str]) -> dict[str, Any]:
    """Train ``warmup + steps + 1`` steps with the default config (plus ``overrides``) and count the syncs."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from frcnn_lab.config import CONFIG_DIR
    from frcnn_lab.train import train

    trainer_overrides = ["trainer=gpu"] if device == "cuda" else ["trainer.accelerator=cpu"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[
            *trainer_overrides, "logger=csv", f"trainer.max_steps={warmup + steps + 1}", "trainer.max_epochs=1000",
            "+trainer.limit_val_batches=1", "data.source.num_val=2", "data.source.num_test=2", "data.num_negatives=2",
            "callbacks.step_checkpoint.every_n_train_steps=0", *overrides])
    counter = SyncCounting(warmup, steps)
    with tempfile.TemporaryDirectory() as tmp, open_dict(cfg):
        cfg.paths.output_dir = tmp
        start = time.perf_counter()
        try:
            train(cfg, extra_callbacks=[counter])
        finally:
            counter.stop()
        seconds = time.perf_counter() - start
    return {"device": device, "precision": cfg.trainer.precision, "backbone": cfg.backbone.name,
            "batch_size": cfg.data.batch_size, "image_size": cfg.data.image_size, "overrides": overrides,
            "run_s": seconds, **counter.figures()}


def summary(figures: dict[str, Any], top: int = 12) -> str:
    lines = [f"{figures['backbone']} {figures['precision']} on {figures['device']}, {figures['steps_counted']} steps: "
             f"{figures['sync_ops_per_step']:.1f} syncing ops per step"
             + (f", {figures['cuda_sync_warnings_per_step']:.1f} CUDA sync warnings per step"
                if figures["cuda_sync_warnings_per_step"] is not None else "")]
    lines += [f"  {per_step:6.2f}  {site}" for site, per_step in list(figures["sync_ops_by_site"].items())[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=10, help="training steps counted")
    parser.add_argument("--warmup", type=int, default=2, help="training steps before counting starts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the training config, after --")
    args = parser.parse_args(argv)
    if args.output is not None and args.output.exists() and not args.overwrite:
        parser.error(f"--output {args.output} exists; pass --overwrite to replace it")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = count(args.device, args.steps, args.warmup, args.overrides)
    print(summary(figures))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"command": " ".join(sys.argv), **figures}, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
