"""The non-finite guard (stop / skip, loss parts, gradients, weights) and atomic checkpoint writes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import frcnn_lab.train as train_entry
from frcnn_lab.config import ConfigError, validate
from frcnn_lab.engine.callbacks.checkpoint_io import DEFERRED_SIGNALS, AtomicCheckpointIO
from frcnn_lab.engine.callbacks.nonfinite import NonFiniteLossError, nonfinite_names
from frcnn_lab.errors import USER_ERROR_EXIT_CODE
from frcnn_lab.train import train
from support import run_module, tiny_run

TINY_STEPS = tiny_run("backbone.weights=none", "data.source.num_train=12", "data.source.num_val=2",
                      "data.source.num_test=2", "data.batch_size=2", "data.image_size=96", "data.max_size=96",
                      "trainer.log_every_n_steps=1")
"""Six optimiser steps on 96 px images: seconds on a CPU."""

POISONED_BATCHES = (2, 4)


class Poison:
    """Wraps a module's detector so chosen training batches produce a non-finite loss part, gradient or weight.

    ``batches`` records, for every training batch: the global step, the image ids and the trainable weights at
    the start of the step.
    """

    def __init__(self, module, kind: str, part: str = "roi_reg") -> None:
        self.module, self.kind, self.part = module, kind, part
        self.forward = module.detector.forward
        self.batches: list[dict] = []
        self.target_name, self.target = next((n, p) for n, p in module.named_parameters() if p.requires_grad)
        module.detector.forward = self

    def __call__(self, images, targets=None, **kwargs):
        module = self.module
        if module.training:
            self.batches.append({
                "step": module.global_step,
                "ids": [t["image_id"] for t in targets],
                "weights": {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad},
            })
        poison = module.training and len(self.batches) - 1 in POISONED_BATCHES
        if poison and self.kind == "weight":  # as if the previous optimiser step had produced it
            with torch.no_grad():
                self.target.fill_(float("nan"))
        output = self.forward(images, targets, **kwargs)
        if not poison:
            return output
        if self.kind == "loss":
            output.losses[self.part] = output.losses[self.part] * float("nan")
        elif self.kind == "gradient":
            output.losses[self.part] = output.losses[self.part] + NanGradient.apply(self.target)
        return output


class NanGradient(torch.autograd.Function):
    """Zero in the forward pass, NaN gradients in the backward pass: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.shape = tensor.shape
        return tensor.new_zeros(())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.full(ctx.shape, float("nan"))


@pytest.fixture
def poisoned(monkeypatch):
    """poisoned(kind) -> the Poison that the next train() call's module gets."""
    made: list[Poison] = []

    def arm(kind: str) -> list[Poison]:
        build = train_entry.build_module
        monkeypatch.setattr(train_entry, "build_module", lambda cfg: made.append(Poison(build(cfg), kind)) or
                            made[-1].module)
        return made

    return arm


def column(metrics_csv: str, name: str) -> list[float]:
    with open(metrics_csv, newline="") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def test_nonfinite_loss_stops_naming_step_part_and_image_ids(make_config, poisoned):
    made = poisoned("loss")
    with pytest.raises(NonFiniteLossError) as error:
        train(make_config(TINY_STEPS))
    batches = made[0].batches
    assert len(batches) == 3  # stopped at the batch it happened
    message = str(error.value)
    assert f"non-finite loss at global step {batches[2]['step']}: roi_reg;" in message
    assert str(batches[2]["ids"]) in message
    assert "train.on_nonfinite=skip" in message


def test_skip_mode_leaves_weights_untouched_and_counts_the_batches(make_config, poisoned):
    made = poisoned("loss")
    summary = train(make_config([*TINY_STEPS, "train.on_nonfinite=skip"]))
    batches = made[0].batches
    assert len(batches) == 6
    assert column(summary["metrics_csv"], "train/nonfinite_batches") == [len(POISONED_BATCHES)]
    for i in range(5):
        unchanged = all(torch.equal(batches[i]["weights"][n], w) for n, w in batches[i + 1]["weights"].items())
        assert unchanged == (i in POISONED_BATCHES), f"batch {i}"
    # Every logged loss is finite: skipped batches never enter the epoch means.
    assert all(torch.isfinite(torch.tensor(column(summary["metrics_csv"], "train/loss_epoch"))))


def test_nonfinite_gradients_stop_or_are_dropped(make_config, poisoned, tmp_path):
    made = poisoned("gradient")
    with pytest.raises(NonFiniteLossError) as error:
        train(make_config(TINY_STEPS))
    poison = made[0]
    assert f"non-finite gradients at global step {poison.batches[2]['step']}: {poison.target_name};" in str(error.value)
    made.clear()
    cfg = make_config([*TINY_STEPS, "train.on_nonfinite=skip"])
    cfg.paths.output_dir = str(tmp_path / "skip")
    summary = train(cfg)
    assert column(summary["metrics_csv"], "train/nonfinite_batches") == [len(POISONED_BATCHES)]
    batches = made[0].batches
    for i in POISONED_BATCHES:
        assert all(torch.equal(batches[i]["weights"][n], w) for n, w in batches[i + 1]["weights"].items())
    assert nonfinite_names(made[0].module.named_parameters()) == []


def test_nonfinite_weights_always_stop(make_config, poisoned):
    poisoned("weight")
    with pytest.raises(NonFiniteLossError, match="non-finite weights at global step"):
        train(make_config([*TINY_STEPS, "train.on_nonfinite=skip"]))


def test_nonfinite_names_lists_only_the_bad_tensors():
    nan, inf = float("nan"), float("inf")
    named = [("a", torch.ones(3)), ("b", torch.tensor([1.0, inf])), ("c", None), ("d", torch.tensor(nan))]
    assert nonfinite_names(named) == ["b", "d"]
    assert nonfinite_names([("a", torch.zeros(2))]) == []


KILL_DURING_SAVE = textwrap.dedent(
    """
    import io, os, sys, torch
    from frcnn_lab.engine.callbacks.checkpoint_io import AtomicCheckpointIO

    serialise = torch.save

    def killed_halfway(checkpoint, f):
        data = io.BytesIO()
        serialise(checkpoint, data)
        f.write(data.getvalue()[: len(data.getvalue()) // 2])
        f.flush()
        os._exit(9)  # like SIGKILL: no cleanup, the half-written file stays as it is

    torch.save = killed_halfway
    AtomicCheckpointIO().save_checkpoint({"global_step": 8, "weights": torch.zeros(100_000)}, sys.argv[1])
    """
)


def test_a_kill_during_saving_leaves_the_previous_checkpoint_intact(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 7, "weights": torch.arange(5.0)}, target)
    result = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(target)], capture_output=True, timeout=120)
    assert result.returncode == 9
    partial = target.with_name("last.ckpt.partial")
    assert partial.stat().st_size > 100_000  # the interrupted write happened, beside the target
    loaded = AtomicCheckpointIO().load_checkpoint(target)
    assert loaded["global_step"] == 7 and torch.equal(loaded["weights"], torch.arange(5.0))
    # The next save replaces both the stale partial file and the checkpoint.
    AtomicCheckpointIO().save_checkpoint({"global_step": 8}, target)
    assert not partial.exists() and AtomicCheckpointIO().load_checkpoint(target)["global_step"] == 8


STOPPING_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
"""Ctrl-C, a scheduler's or container's stop, SLURM's preemption signals (submitit: SIGUSR2; others use SIGUSR1)."""


def test_every_stopping_signal_is_deferred():
    assert {signal.Signals(s).name for s in DEFERRED_SIGNALS} == set(STOPPING_SIGNALS)


class SignalWhilePickled:
    """Sends ``signum`` to this process while torch.save pickles it; pickles as an OrderedDict (a weights-only
    type)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __reduce__(self):
        os.kill(os.getpid(), self.signum)
        return OrderedDict, ((("value", 7),),)


@pytest.mark.parametrize("name", STOPPING_SIGNALS)
def test_a_signal_during_a_checkpoint_write_is_handled_once_the_file_is_complete(tmp_path, name):
    """As submitit's handler of SLURM's preemption signal does, the handler raises SystemExit: it runs after the
    write, with the complete file in place, instead of inside torch.save."""
    signum, target, seen = signal.Signals[name], tmp_path / "last.ckpt", []

    def preempted(number, frame):
        seen.append((number, target.is_file()))
        raise SystemExit(-1)

    previous = signal.signal(signum, preempted)
    try:
        with pytest.raises(SystemExit):
            AtomicCheckpointIO().save_checkpoint({"weights": torch.arange(5.0), "marker": SignalWhilePickled(signum)},
                                                 target)
        assert signal.getsignal(signum) is preempted  # the handler is back in place
    finally:
        signal.signal(signum, previous)
    assert seen == [(signum, True)]
    loaded = AtomicCheckpointIO().load_checkpoint(target)
    assert loaded["marker"] == {"value": 7} and torch.equal(loaded["weights"], torch.arange(5.0))


def test_checkpoints_never_unpickle_code(tmp_path):
    target = tmp_path / "evil.ckpt"
    torch.save({"payload": os.system}, target)  # any callable: what a crafted checkpoint would carry
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        AtomicCheckpointIO().load_checkpoint(target, weights_only=False)


def test_no_torch_load_without_weights_only_in_the_package():
    source = Path(train_entry.__file__).parent
    calls = [
        (path, line) for path in source.rglob("*.py") for line in path.read_text().splitlines()
        if "torch.load(" in line and "weights_only=True" not in line
    ]
    assert calls == []


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["train.on_nonfinite=ignore"], "train.on_nonfinite='ignore' is unknown; choose one of ['skip', 'stop']"),
        (["logger=default", "logger.wandb.mode=sometimes"],
         "logger.wandb.mode='sometimes' is unknown; choose one of ['auto', 'disabled', 'offline', 'online']"),
        (["rpn.post_nms_top_n_train=0"], "rpn.post_nms_top_n_train=0 must be an integer >= 1"),
        (["roi_head.detections_per_image=0"], "roi_head.detections_per_image=0 must be an integer >= 1"),
        (["loss.weights.roi_reg=-1"], "loss.weights.roi_reg=-1.0 must be finite and >= 0"),
        (["loss.weights.rpn_cls=nan"], "loss.weights.rpn_cls=nan must be finite and >= 0"),
        (["optim.optimizer.lr=0"], "optim.optimizer.lr=0 must be finite and > 0"),
        (["rpn.anchor_sizes=[]"], "rpn.anchor_sizes=[] must be a non-empty list of numbers > 0"),
        (["rpn.aspect_ratios=[1.0,-2.0]"], "rpn.aspect_ratios=[1.0, -2.0] must be a non-empty list of numbers > 0"),
        (["roi_head.fg_iou=1.5"], "roi_head.fg_iou=1.5 must be in [0, 1]"),
        (["roi_head.bg_iou_lo=0.5", "roi_head.bg_iou_hi=0.3"], "roi_head.bg_iou_lo < roi_head.bg_iou_hi"),
    ],
)
def test_impossible_values_are_refused_before_any_work(make_config, overrides, expected):
    with pytest.raises(ConfigError) as error:
        validate(make_config(overrides))
    assert expected in str(error.value)


def test_an_unknown_logger_lists_the_choices(tmp_path):
    result = run_module("frcnn_lab.train", "logger=spreadsheet", cwd=tmp_path)
    assert result.returncode == USER_ERROR_EXIT_CODE
    assert result.stderr == ("error: could not find the option 'logger/spreadsheet'; the options of logger are csv, "
                             "default\n")
    assert not (tmp_path / "outputs").exists()
