"""Where the quickstart's training step and validation pass spend their time, stage by stage.

    python experiments/bench/profile_step.py --threads 2 --steps 12 --output experiments/bench/profile_cpu.json

The config is ``python -m frcnn_lab.train``'s (plus any ``--set key=value`` overrides). Four measurements, each
the median over ``--steps`` batches after ``--warmup`` untimed ones:

- **bare step**: data (drawing and collating a batch), the forward pass split into stages by wall-clock timers
  around the detector's parts (self time: a stage's time minus the stages nested in it), the backward pass, and
  the optimiser step. The trunk's share of the backward is the backward's drop when the trunk needs no gradient.
- **Lightning step**: ``Trainer.fit`` for the same steps with the configured callbacks and loggers; the time per
  step beyond the bare step is what the loop spends outside the model (logging, diagnostics, progress bar).
- **validation pass**: ``Trainer.validate`` on the val split, split into the detector's forward, the metrics'
  update and compute (COCO mAP, rates, VOC07, TIDE), and the rest (the val pictures, logging).

Prints a table and writes it as JSON with the command and the machine (never over an existing file unless
``--overwrite``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

import frcnn_lab.model.roi_head as roi_head_module
import frcnn_lab.model.rpn as rpn_module
from frcnn_lab.config import CONFIG_DIR
from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.engine.callbacks.nonfinite import NonFiniteGuard
from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.metrics.evaluation import DetectionEvaluation
from frcnn_lab.model.losses import weighted_total


class StageTimer:
    """Wall-clock self time per named stage; stages nest (a stage's time excludes the stages inside it)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[list[float]] = []  # [start, time of nested stages]

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.stack.append([time.perf_counter(), 0.0])
        try:
            yield
        finally:
            start, nested = self.stack.pop()
            elapsed = time.perf_counter() - start
            self.totals[name] += elapsed - nested
            if self.stack:
                self.stack[-1][1] += elapsed

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        """Time every call of ``owner.attribute`` (a module's ``forward``, a method, a module-level function)."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            with self.stage(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)

    def take(self) -> dict[str, float]:
        totals, self.totals = dict(self.totals), defaultdict(float)
        return totals


def instrument(module: DetectionModule, timer: StageTimer) -> None:
    """Stage timers around the detector's parts and the module-level functions its RPN and RoI head call."""
    detector = module.detector
    rpn, head = detector.rpn, detector.roi_head
    timer.wrap(detector, "forward", "other (batching images)")
    timer.wrap(detector.trunk, "forward", "trunk forward")
    timer.wrap(rpn, "forward", "RPN other (reshapes, box decoding)")
    timer.wrap(rpn.head, "forward", "RPN head conv")
    timer.wrap(rpn.anchor_generator, "forward", "anchors")
    timer.wrap(rpn, "filter_proposals", "proposals (top-k, NMS)")
    timer.wrap(rpn, "targets", "RPN anchor matching and sampling")
    timer.wrap(rpn_module, "rpn_losses", "losses")
    timer.wrap(rpn_module, "proposal_stats", "diagnostics")
    timer.wrap(head, "forward", "RoI head other")
    timer.wrap(head, "sample", "RoI matching and sampling")
    timer.wrap(head.pooler, "forward", "RoI op")
    timer.wrap(head.tail, "forward", "head tail")
    timer.wrap(head.predictor, "forward", "box predictor")
    timer.wrap(head, "postprocess", "detections (decode, NMS)")
    timer.wrap(roi_head_module, "roi_losses", "losses")
    timer.wrap(roi_head_module, "head_stats", "diagnostics")


def quickstart_config(overrides: list[str], output_dir: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "logger=csv"])
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
    return cfg


def build(cfg: DictConfig) -> tuple[DetectionDataModule, DetectionModule]:
    from frcnn_lab.train import build_module  # the module exactly as the train entry point builds it

    L.seed_everything(cfg.seed, workers=True)
    datamodule = DetectionDataModule(cfg.data)
    datamodule.setup("fit")
    return datamodule, build_module(cfg)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def bare_step(cfg: DictConfig, steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per stage of a training step outside Lightning."""
    datamodule, module = build(cfg)
    timer = StageTimer()
    instrument(module, timer)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.optim.optimizer, params=params)
    loader = iter(datamodule.train_dataloader())
    trunk_params = [p for p in module.detector.trunk.parameters() if p.requires_grad]
    per_stage: dict[str, list[float]] = defaultdict(list)
    for step in range(warmup + 2 * steps):
        # Every other step the trunk needs no gradient: the backward's drop is the trunk's backward.
        trunk_grad = step % 2 == 0
        for p in trunk_params:
            p.requires_grad_(trunk_grad)
        start = time.perf_counter()
        images, targets = next(loader)
        data = time.perf_counter() - start
        timer.take()
        output = module.detector(images, targets)
        forward = timer.take()
        total = weighted_total(output.losses, module.loss_weights)
        start = time.perf_counter()
        total.backward()
        backward = time.perf_counter() - start
        start = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        optim = time.perf_counter() - start
        if step < warmup:
            continue
        if trunk_grad:
            per_stage["data (draw and collate a batch)"].append(data)
            for name, seconds in forward.items():
                per_stage[name].append(seconds)
            per_stage["backward"].append(backward)
            per_stage["optimiser step"].append(optim)
        else:
            per_stage["backward without the trunk"].append(backward)
    figures = {name: median(values) for name, values in per_stage.items()}
    figures["trunk backward"] = figures["backward"] - figures.pop("backward without the trunk")
    figures["backward"] -= figures["trunk backward"]
    return figures


class StepClock(L.Callback):
    """Wall time from one training batch's start to the next's (data fetch and logging included)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())

    def step_times(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[warmup:], self.starts[warmup + 1:], strict=False)]


def lightning_step(cfg: DictConfig, steps: int, warmup: int) -> float:
    """Median seconds per step of ``Trainer.fit`` with the configured callbacks and loggers, no validation."""
    datamodule, module = build(cfg)
    clock = StepClock()
    callbacks = [NonFiniteGuard(cfg.train.on_nonfinite), *(instantiate(c) for c in cfg.callbacks.values()), clock]
    with open_dict(cfg):
        cfg.trainer.max_steps = warmup + steps
        cfg.trainer.limit_val_batches = 0
    loggers = [instantiate(c) for c in cfg.logger.values()]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    return median(clock.step_times(warmup))


def validation_pass(cfg: DictConfig) -> dict[str, float]:
    """Seconds of one ``Trainer.validate`` on the val split, split into forward, metrics and the rest."""
    timer = StageTimer()
    # On the class, before the module builds its metrics (torchmetrics wraps update and compute per instance).
    timer.wrap(DetectionEvaluation, "update", "metrics update")
    timer.wrap(DetectionEvaluation, "compute", "metrics compute (COCO mAP, rates, VOC07, TIDE)")
    datamodule, module = build(cfg)
    timer.wrap(module.detector, "forward", "detector forward")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks, enable_model_summary=False)
    start = time.perf_counter()
    with timer.stage("rest (val pictures, logging, loader)"):
        trainer.validate(module, datamodule=datamodule, verbose=False)
    figures = timer.take()
    figures["images"] = len(datamodule.val_dataloader().dataset)
    figures["total"] = time.perf_counter() - start
    return figures


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every CPU benchmark here shares: --threads, --output, --overwrite."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--output", type=Path, help="JSON file for the figures (default: print only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return parser


def parse_bench_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parsed options, an existing ``--output`` refused (unless ``--overwrite``), torch's threads set."""
    args = parser.parse_args(argv)
    if args.output and args.output.exists() and not args.overwrite:
        raise SystemExit(f"{args.output} exists; pass --overwrite to replace it")
    torch.set_num_threads(args.threads)
    return args


def machine(threads: int) -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": threads, "torch": torch.__version__, "python": platform.python_version()}


def table(bare: dict[str, float], loop: float, val: dict[str, float], batch_size: int) -> str:
    step = sum(bare.values())
    lines = [f"training step (batch {batch_size}), median ms", "| stage | ms | share |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {seconds * 1e3:.1f} | {seconds / step:.0%} |"
              for name, seconds in sorted(bare.items(), key=lambda item: -item[1])]
    lines += [f"| **bare step** | **{step * 1e3:.1f}** | 100% |",
              f"| Lightning step (same batch, callbacks and loggers) | {loop * 1e3:.1f} | {loop / step:.0%} |",
              f"| outside the model step (logging, diagnostics, progress bar) | {(loop - step) * 1e3:.1f} | "
              f"{(loop - step) / step:.0%} |", "",
              f"validation pass ({val['images']} images), s", "| part | s | share |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {val[name]:.2f} | {val[name] / val['total']:.0%} |"
              for name in val if name not in ("images", "total")]
    lines.append(f"| **total** | **{val['total']:.2f}** | 100% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the train config")
    args = parse_bench_args(parser, argv)
    with tempfile.TemporaryDirectory() as folder:
        cfg = quickstart_config(args.set, folder)
        bare = bare_step(cfg, args.steps, args.warmup)
        loop = lightning_step(cfg, args.steps, args.warmup)
        val = validation_pass(quickstart_config(args.set, str(Path(folder) / "val")))
    text = table(bare, loop, val, cfg.data.batch_size)
    print(text)
    if args.output:
        args.output.write_text(json.dumps({
            "command": " ".join(["experiments/bench/profile_step.py", *(argv or sys.argv[1:])]),
            "config_overrides": args.set, "batch_size": cfg.data.batch_size, "steps": args.steps,
            "training_step_s": bare, "lightning_step_s": loop, "validation_s": val, "machine": machine(args.threads),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
