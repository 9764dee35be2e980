"""experiments/findings/run.sh, study.sh and converge.sh: every cell once, resumable, and safe to run as two drivers
on one runs dir; every cell is a config that Hydra composes and ``validate`` accepts.

The training command is replaced by a stand-in interpreter that records the cell it was given and writes
the ``status.json`` a finished ``frcnn_lab.train`` run writes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from frcnn_lab.config import CONFIG_DIR, validate
from support import compose_config

DRIVER = Path(__file__).resolve().parents[1] / "experiments" / "findings" / "run.sh"
CONVERGE = DRIVER.with_name("converge.sh")
STUDY = DRIVER.with_name("study.sh")
COLLAPSE = DRIVER.with_name("collapse.sh")
CELLS = 33

FAKE_PYTHON = """#!/usr/bin/env bash
# Called as: python -m frcnn_lab.train experiment=findings/hard logger=csv <overrides> hydra.run.dir=<dir>,
# then python -m frcnn_lab.evaluate ckpt_path=<dir>/checkpoints/best.ckpt split=val [inference.* overrides]
if [[ "$2" == frcnn_lab.evaluate ]]; then echo "${*:3}" >> "$CALLS.evaluate"; exit 0; fi
dir=""
for arg in "$@"; do
  case "$arg" in hydra.run.dir=*) dir=${arg#hydra.run.dir=} ;; esac
done
echo "$(basename "$dir") $*" >> "$CALLS"
mkdir -p "$dir"
sleep 0.05
if [[ "$(basename "$dir")" == "$FAIL_CELL" ]]; then exit 1; fi
echo '{"status": "completed"}' > "$dir/status.json"
"""


def fake_python(tmp_path: Path) -> Path:
    path = tmp_path / "python"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


def drive(runs: Path, python: Path, calls: Path, drivers: int = 1, fail_cell: str = "", script: Path = DRIVER,
          arguments: tuple[str, ...] = ()) -> list[str]:
    """Run ``drivers`` copies of ``script RUNS_DIR [arguments] PYTHON`` at once -> their outputs."""
    env = {"PATH": "/usr/bin:/bin", "CALLS": str(calls), "FAIL_CELL": fail_cell}
    processes = [subprocess.Popen(["bash", str(script), str(runs), *arguments, str(python)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(drivers)]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    return outputs


def called_cells(calls: Path) -> list[str]:
    return [line.split()[0] for line in calls.read_text().splitlines()] if calls.exists() else []


def test_every_cell_runs_once_with_its_overrides(tmp_path):
    runs, calls = tmp_path / "runs", tmp_path / "calls.txt"
    drive(runs, fake_python(tmp_path), calls)
    lines = calls.read_text().splitlines()
    cells = called_cells(calls)
    assert len(cells) == len(set(cells)) == CELLS
    assert cells[:3] == ["rois64_px600_s0", "rois4_px600_s0", "rois64_px300_s0"]  # calibration first
    by_cell = {line.split()[0]: line for line in lines}
    assert "rpn.num_rois=4 data.image_size=300 seed=2" in by_cell["rois4_px300_s2"]
    assert "roi_head.pooler=crop_resize seed=1" in by_cell["cropresize_s1"]
    assert "roi_head.bg_iou_lo=0.1 seed=0" in by_cell["bglo01_s0"]
    assert all("experiment=findings/hard" in line for line in lines)
    evaluations = (tmp_path / "calls.txt.evaluate").read_text().splitlines()
    assert sorted(evaluations) == sorted(f"ckpt_path={runs / cell}/checkpoints/best.ckpt split=val" for cell in cells)


def test_two_drivers_share_the_cells(tmp_path):
    runs, calls = tmp_path / "runs", tmp_path / "calls.txt"
    outputs = drive(runs, fake_python(tmp_path), calls, drivers=2)
    cells = called_cells(calls)
    assert len(cells) == len(set(cells)) == CELLS
    assert all(" start " in output for output in outputs), "each driver should have run some cells"
    assert not any((runs.parent / "runs.unfinished").iterdir()), "a driver moved the other's running cell"


def test_a_rerun_skips_completed_cells_and_keeps_unfinished_ones(tmp_path):
    runs, calls, python = tmp_path / "runs", tmp_path / "calls.txt", fake_python(tmp_path)
    output = drive(runs, python, calls, fail_cell="rois4_px600_s0")[0]
    assert "FAILED rois4_px600_s0" in output
    (runs / "rois4_px600_s0" / "partial.txt").write_text("from the first attempt")
    calls.unlink()
    drive(runs, python, calls)
    assert called_cells(calls) == ["rois4_px600_s0"]
    assert json.loads((runs / "rois4_px600_s0" / "status.json").read_text())["status"] == "completed"
    kept = list((tmp_path / "runs.unfinished").iterdir())
    assert len(kept) == 1 and (kept[0] / "partial.txt").read_text() == "from the first attempt"


def test_the_study_runs_five_cells_per_seed_at_its_budget(tmp_path):
    runs, calls, python = tmp_path / "runs", tmp_path / "calls.txt", fake_python(tmp_path)
    drive(runs, python, calls, script=STUDY, arguments=("17", "0 1 2 3"))
    lines = calls.read_text().splitlines()
    cells = called_cells(calls)
    assert len(cells) == len(set(cells)) == 20
    assert cells[:5] == ["rois64_px600_s0", "rois4_px600_s0", "rois16_px600_s0", "rois64_px300_s0", "bglo01_s0"]
    by_cell = {line.split()[0]: line for line in lines}
    assert "rpn.num_rois=64 data.image_size=300 seed=3" in by_cell["rois64_px300_s3"]
    assert "roi_head.bg_iou_lo=0.1 seed=2" in by_cell["bglo01_s2"]
    assert all("experiment=findings/hard" in line and "trainer.max_epochs=17" in line for line in lines)
    assert not any("ckpt_path=" in line for line in lines)


def test_the_study_resumes_an_interrupted_cell_from_its_last_checkpoint(tmp_path):
    runs, calls, python = tmp_path / "runs", tmp_path / "calls.txt", fake_python(tmp_path)
    drive(runs, python, calls, script=STUDY, arguments=("5", "0"))
    for name, checkpoint in (("rois4_px600_s0", True), ("bglo01_s0", False)):  # killed, with or without a ckpt
        (runs / name / "status.json").write_text('{"status": "running"}')
        if checkpoint:
            (runs / name / "checkpoints").mkdir()
            (runs / name / "checkpoints" / "last.ckpt").write_text("epoch 3")
    calls.unlink()
    output = drive(runs, python, calls, script=STUDY, arguments=("5", "0"))[0]
    by_cell = {line.split()[0]: line for line in calls.read_text().splitlines()}
    assert sorted(by_cell) == ["bglo01_s0", "rois4_px600_s0"]
    assert f"ckpt_path={runs}/rois4_px600_s0/checkpoints/last.ckpt" in by_cell["rois4_px600_s0"]
    assert (runs / "rois4_px600_s0" / "checkpoints" / "last.ckpt").read_text() == "epoch 3"  # resumed in place
    assert "ckpt_path" not in by_cell["bglo01_s0"] and "resume rois4_px600_s0" in output
    assert [p.name.split("-")[0] for p in (tmp_path / "runs.unfinished").iterdir()] == ["bglo01_s0"]


@pytest.mark.parametrize("script,arguments,count",
                         [pytest.param(DRIVER, (), CELLS, marks=pytest.mark.slow),  # every cell: ~20 s
                          (CONVERGE, ("3", "0 1"), 2), (STUDY, ("4", "0"), 5),
                          pytest.param(COLLAPSE, (), 18, marks=pytest.mark.slow)],  # 6 seeds x 3 variants
                         ids=["run.sh", "converge.sh", "study.sh", "collapse.sh"])
def test_every_cell_composes_with_the_findings_preset_and_validates(tmp_path, script, arguments, count):
    """Each cell's command line as the script builds it (bash's own word splitting), composed through Hydra: a
    mistyped key fails to compose, an impossible value fails ``validate``, and each value reaches the config."""
    calls = tmp_path / "calls.txt"
    drive(tmp_path / "runs", fake_python(tmp_path), calls, script=script, arguments=arguments)
    lines = calls.read_text().splitlines()
    assert len(lines) == count
    groups = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}
    for line in lines:
        cell, module_flag, module, *arguments = line.split()
        assert (module_flag, module) == ("-m", "frcnn_lab.train"), line
        overrides = [a for a in arguments if not a.startswith("hydra.")]
        assert "experiment=findings/hard" in overrides, line
        cfg = compose_config("config", overrides, tmp_path / cell)
        validate(cfg)
        for key, value in (o.split("=", 1) for o in overrides if o.split("=", 1)[0] not in groups):
            assert OmegaConf.select(cfg, key) == yaml.safe_load(value), f"{cell}: {key}"
