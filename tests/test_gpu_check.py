"""The CPU rehearsal of scripts/gpu_check.py: every step runs with tiny sizes and leaves its figures in the JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from support import REPO_ROOT


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_step_and_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                    "--out", str(out), "--workdir", str(tmp_path / "work"), "--budget-s", "3000"],
                   check=True, env=env, timeout=3300)
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert list(steps) == ["syncs", "bench", "pytest_gpu", "quickstart", "thesis"]
    failed = {name: step.get("log_tail") for name, step in steps.items() if step["status"] != "ok"}
    assert not failed, failed

    syncs = steps["syncs"]["figures"]
    assert syncs["steps_counted"] == 2 and number(syncs["sync_ops_per_step"]) and syncs["sync_ops_by_site"]
    bench = steps["bench"]["figures"]
    assert not bench["failures"]
    ran = {(r["backbone"], r["precision"], r["channels_last"]) for r in bench["results"]}
    skipped = {(r["backbone"], r["precision"], r["channels_last"]) for r in bench["skipped"]}
    every = {(b, p, c) for b in ("mobilenet_v2", "resnet50", "vgg16") for p, c in (("fp32", False), ("bf16", False),
                                                                                   ("bf16", True))}
    assert ran | skipped == every and not ran & skipped
    # Only where the CPU emulates bf16, and only the bf16 runs of the large trunks.
    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    emulated = {(b, "bf16", c) for b in ("resnet50", "vgg16") for c in (False, True)}
    assert skipped == (set() if native_bf16 else emulated)
    for r in bench["results"]:
        for measure in ("train_step_s", "inference_s"):
            assert all(number(r[measure][k]) and r[measure][k] > 0 for k in ("ours", "torchvision", "ratio"))
    tests = steps["pytest_gpu"]["figures"]
    assert tests["exit_code"] == 0 and tests["failure"] == tests["error"] == 0
    # bf16-mixed for each backbone (the MobileNetV2 ones where the CPU has no native bf16), the checkpoint tools,
    # metric states, CPU = device
    assert tests["passed"] >= 5
    for name in ("quickstart", "thesis"):
        run = steps[name]["figures"]
        assert number(run["best_map_50"]) and number(run["wall_s"]) and run["train_images_per_s"]
    for target in report["targets"].values():  # every target comes from a bf16 run of ResNet50 or VGG16
        if native_bf16:
            assert number(target["value"]) and number(target["ratio_to_target"]) and target["met"] in (True, False)
        else:
            assert target["value"] is target["ratio_to_target"] is target["met"] is None
    summary = out.with_suffix(".md").read_text()
    assert "| bench | ok |" in summary and "VGG16 inference ms per image" in summary


def test_targets_take_the_best_bf16_run_of_each_trunk():
    """The targets from bench figures: the better of bf16 with and without channels_last, images/s from the
    faster train step, and None (not met, not failed) where a trunk has no bf16 run."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))

    def run(backbone, precision, channels_last, train_s, ratio, inference_s):
        return {"backbone": backbone, "precision": precision, "channels_last": channels_last,
                "train_step_s": {"ours": train_s, "torchvision": train_s / ratio, "ratio": ratio, "batch_size": 2},
                "inference_s": {"ours": inference_s, "torchvision": inference_s, "ratio": 1.0}}

    bench = {"figures": {"results": [run("resnet50", "fp32", False, 0.01, 0.5, 0.001),  # fp32: not a target
                                     run("resnet50", "bf16", False, 0.10, 0.9, 0.05),
                                     run("resnet50", "bf16", True, 0.08, 0.7, 0.04)]}}
    figures = gpu_check.targets(bench)
    assert figures["resnet50_bf16_train_ratio"]["value"] == pytest.approx(0.7)
    assert figures["resnet50_bf16_train_ratio"]["met"] is True  # <= 0.8
    assert figures["resnet50_train_images_per_s"]["value"] == pytest.approx(2 / 0.08)  # 25: >= 20
    assert figures["resnet50_train_images_per_s"]["met"] is True
    assert figures["vgg16_inference_ms"]["value"] is None and figures["vgg16_inference_ms"]["met"] is None
    bench["figures"]["results"].append(run("vgg16", "bf16", True, 1.0, 1.0, 0.025))
    vgg = gpu_check.targets(bench)["vgg16_inference_ms"]
    assert vgg["value"] == pytest.approx(25.0) and vgg["met"] is False and vgg["ratio_to_target"] == pytest.approx(1.25)
