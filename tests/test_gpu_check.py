"""The CPU rehearsal of scripts/gpu_check.py: every step runs with tiny sizes and leaves its figures in the JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

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
    assert {(r["backbone"], r["precision"], r["channels_last"]) for r in bench["results"]} == {
        (b, p, c) for b in ("mobilenet_v2", "resnet50", "vgg16") for p, c in (("fp32", False), ("bf16", False),
                                                                              ("bf16", True))}
    for r in bench["results"]:
        for measure in ("train_step_s", "inference_s"):
            assert all(number(r[measure][k]) and r[measure][k] > 0 for k in ("ours", "torchvision", "ratio"))
    tests = steps["pytest_gpu"]["figures"]
    assert tests["exit_code"] == 0 and tests["failure"] == tests["error"] == 0
    assert tests["passed"] >= 8  # bf16-mixed for each backbone, the checkpoint tools, metric states, CPU = device
    for name in ("quickstart", "thesis"):
        run = steps[name]["figures"]
        assert number(run["best_map_50"]) and number(run["wall_s"]) and run["train_images_per_s"]
    for target in report["targets"].values():
        assert number(target["value"]) and number(target["ratio_to_target"]) and target["met"] in (True, False)
    summary = out.with_suffix(".md").read_text()
    assert "| bench | ok |" in summary and "VGG16 inference ms per image" in summary
