"""The project as a user installs it: a wheel, installed without -e into a fresh virtual environment, run from an
empty folder. The environment reuses the dependencies installed beside the test's interpreter (a .pth line naming
that site-packages; the .pth files there, the editable frcnn_lab's among them, are not run), so only the wheel
provides frcnn_lab."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

from frcnn_lab.errors import USER_ERROR_EXIT_CODE
from support import REPO_ROOT, cli_env, run_ok

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]

USER_PRESET = """\
# @package _global_
# A user's preset, kept outside the installed package.
defaults:
  - override /data: synthetic
  - override /logger: csv
  - _self_

tags: [mine]
backbone:
  weights: none
rpn:
  num_rois: 8
data:
  batch_size: 2
  image_size: 96
  max_size: 96
  num_negatives: 2
  source:
    num_train: 4
    num_val: 2
    num_test: 2
trainer:
  max_steps: 2
callbacks:
  progress_bar:
    refresh_rate: 0
"""


def build_wheel(tmp_path: Path) -> Path:
    """A wheel of a copy of the project's sources (the build leaves build/ and *.egg-info beside them)."""
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("frcnn_lab-*.whl")
    return wheel


def venv_with_wheel(tmp_path: Path, wheel: Path) -> Path:
    """A virtual environment holding the wheel, seeing this interpreter's site-packages -> its python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    own_site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
    shared = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (own_site / "shared_dependencies.pth").write_text("\n".join(shared) + "\n")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed", str(wheel)],
                   check=True, capture_output=True, timeout=300, env=user_env())
    return python


def user_env() -> dict[str, str]:
    env = cli_env()
    env.pop("PYTHONPATH", None)  # the test run's src/ must not be importable
    return env


def test_every_entry_point_has_its_console_script():
    """frcnn-<name> for each entry point of the layers contract (python -m frcnn_lab.<name>), and frcnn-report."""
    (contract,) = PYPROJECT["tool"]["importlinter"]["contracts"]
    entry_points = [module.strip().removeprefix("frcnn_lab.") for module in contract["layers"][0].split("|")]
    expected = {f"frcnn-{name}": f"frcnn_lab.{name}:main" for name in entry_points}
    assert {**expected, "frcnn-report": "frcnn_lab.report.cli:main"} == SCRIPTS
    for target in SCRIPTS.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def console_script(folder: Path, name: str) -> Path:
    """The launcher pip writes for ``[project.scripts]`` entry ``name``: it calls the function and exits with what
    it returns, with ``sys.argv[0]`` the script's own path (not a module of frcnn_lab)."""
    module, function = SCRIPTS[name].split(":")
    script = folder / name
    script.write_text(f"import sys\nfrom {module} import {function}\n\n"
                      f"if __name__ == '__main__':\n    sys.exit({function}())\n")
    return script


def test_a_console_script_finds_its_configs_and_reports_errors_in_one_line(tmp_path):
    def run(name: str, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(console_script(tmp_path, name)), *arguments], cwd=tmp_path,
                              env=cli_env(), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    job = run("frcnn-train", "--cfg", "job", "rpn.num_rois=8")
    assert job.returncode == 0 and "num_rois: 8" in job.stdout and "task_name: train" in job.stdout, job.stderr
    assert run("frcnn-predict", "--help").stdout.startswith("predict is powered by Hydra.")
    refused = run("frcnn-evaluate", "ckpt_path=gone.ckpt")
    assert refused.returncode == USER_ERROR_EXIT_CODE
    assert refused.stderr.splitlines()[0] == "error: ckpt_path=gone.ckpt: no such checkpoint file"
    report = run("frcnn-report", "missing_folder")
    assert report.returncode == USER_ERROR_EXIT_CODE and report.stderr.startswith("error: missing_folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["frcnn-train", "frcnn-predict", "frcnn-evaluate",
                                                                 "frcnn-report"])  # no run folder


@pytest.mark.slow
def test_the_wheel_installed_without_editable_runs_every_entry_point_from_an_empty_folder(tmp_path):
    python = str(venv_with_wheel(tmp_path, build_wheel(tmp_path)))
    env = user_env()
    folder = tmp_path / "empty"
    folder.mkdir()

    def run(module: str, *arguments: str) -> str:
        return run_ok(module, *arguments, cwd=folder, env=env, python=python)

    imported = subprocess.run([python, "-c", "import frcnn_lab.config as c; print(c.__file__, c.CONFIG_DIR)"],
                              cwd=folder, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(path).is_relative_to(tmp_path / "venv") for path in imported), imported

    job = run("frcnn_lab.train", "--cfg", "job")
    assert "rpn:" in job and "num_rois: 64" in job and "name: mobilenet_v2" in job
    scripts = Path(python).parent
    for name in SCRIPTS:  # pip installed each console script beside the venv's python
        assert (scripts / name).is_file(), name
    script_job = subprocess.run([str(scripts / "frcnn-train"), "--cfg", "job"], cwd=folder, env=env,
                                capture_output=True, text=True, timeout=300)
    assert script_job.returncode == 0 and script_job.stdout == job, script_job.stderr

    presets = tmp_path / "my_presets"
    (presets / "experiment").mkdir(parents=True)
    (presets / "experiment" / "tiny.yaml").write_text(USER_PRESET)
    assert "num_rois: 8" in run("frcnn_lab.train", "--config-dir", str(presets), "experiment=tiny", "--cfg", "job")
    output = run("frcnn_lab.train", f"hydra.searchpath=[file://{presets}]", "experiment=tiny", "hydra.run.dir=run")
    assert "best val mAP@0.5:" in output
    ckpt = folder / "run" / "checkpoints" / "best.ckpt"
    assert ckpt.is_file() and json.loads((folder / "run" / "status.json").read_text())["status"] == "completed"

    report = run("frcnn_lab.evaluate", f"ckpt_path={ckpt}", "device=cpu", "split=val")
    (evaluation,) = (folder / "run" / "evaluate").glob("*/evaluation.json")
    assert f"| mAP@0.5 | {json.loads(evaluation.read_text())['map_50']:.3f} |" in report

    photos = folder / "photos"
    photos.mkdir()
    shutil.copy(next((folder / "run" / "val_images").glob("epoch_*/*.png")), photos / "scene.png")
    run("frcnn_lab.predict", f"ckpt_path={ckpt}", f"input={photos}", "output=predicted", "device=cpu",
        "score_threshold=0.0")
    assert isinstance(json.loads((folder / "predicted" / "detections.json").read_text()), list)
    assert (folder / "predicted" / "scene.png").is_file()
    assert not (folder / "conf").exists()  # nothing was looked up in, or written to, a conf/ beside the user
