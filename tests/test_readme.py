"""The README, as a new user meets it: its walkthrough runs command by command (on a tiny budget), its other
commands compose, its links resolve, and it stays short and about the project rather than the machine it was
measured on.

The walkthrough is the bash blocks of the sections "Quickstart" and "The next ten minutes", run in order by bash
in an empty folder (with ``src/`` of this checkout, where the sample photos are): ``bash scripts/setup.sh`` is
left out (CI runs it first), every ``python -m frcnn_lab.train`` gets the tiny budget below, and the ``serve``
block starts the server on a free port and sends its ``curl`` request with an HTTP client.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tomllib
from PIL import Image

from doc_commands import broken_links, check, commands_in, fenced_blocks, sections
from support import REPO_ROOT, cli_env, free_port, override_key, stop, wait_for_server

README = REPO_ROOT / "README.md"
TEXT = README.read_text()
WALKTHROUGH = ("Quickstart", "The next ten minutes")
EXAMPLES = REPO_ROOT / "src" / "frcnn_lab" / "examples"
BUDGET = ["data.source.num_train=24", "data.source.num_val=8", "data.source.num_test=8", "data.num_negatives=4",
          "data.batch_size=4", "trainer.max_epochs=1", "callbacks.progress_bar.refresh_rate=0"]
"""Added to each training command of the walkthrough (keys it sets itself win): seconds, not minutes."""
CONSOLE_SCRIPTS = ("frcnn-train", "frcnn-evaluate", "frcnn-predict", "frcnn-report", "frcnn-export", "frcnn-serve",
                   "frcnn-browse", "frcnn-convert")
"""Beside ``python -m frcnn_lab.<entry>`` (frcnn-browse: ``frcnn_lab.browse``), with the same arguments."""


def walkthrough_blocks() -> list[str]:
    return [body for title, text, _ in sections(TEXT) if title in WALKTHROUGH
            for language, body, _ in fenced_blocks(text) if language == "bash"]


def with_budget(line: str) -> str:
    """A walkthrough line as the test runs it: the quickstart without the setup, training on the tiny budget."""
    line = line.replace("bash scripts/setup.sh && ", "").replace(".venv/bin/python", "python")
    if "python -m frcnn_lab.train" not in line:
        return line
    code, _, comment = line.partition(" #")
    keys = {override_key(arg) for arg in shlex.split(code)}
    extra = [o for o in BUDGET if override_key(o) not in keys]
    return f"{code.rstrip()} {' '.join(extra)}" + (f"  #{comment}" if comment else "")


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """An empty working folder with ``src/`` of this checkout, and ``python`` on PATH the interpreter of the tests."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "src").symlink_to(REPO_ROOT / "src")
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    folder.joinpath(".env_path").write_text(f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return folder


def environment(clone: Path) -> dict[str, str]:
    return cli_env(PATH=(clone / ".env_path").read_text(),
                   PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def walked(clone) -> dict:
    """The walkthrough's blocks up to ``serve``, run by bash in ``clone`` -> their output and the serve block."""
    blocks = walkthrough_blocks()
    serve = [b for b in blocks if "frcnn_lab.serve" in b]
    assert len(serve) == 1, "the walkthrough has one serve block"
    script = ["set -euo pipefail"]
    for number, block in enumerate(b for b in blocks if b not in serve):
        script.append(f"echo '=== README block {number} ==='")
        script += [with_budget(line) for line in block.replace("\\\n", " ").splitlines()]
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=clone, env=environment(clone),
                            capture_output=True, text=True, timeout=1500, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return {"output": output, "serve": serve[0]}



def latest(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.is_dir())[-1]


@pytest.mark.slow
def test_quickstart_prints_the_summary_the_readme_shows(walked):
    (expected,) = [body for title, text, _ in sections(TEXT) if title == "Quickstart"
                   for language, body, _ in fenced_blocks(text) if language == "" and "run summary" in body]
    printed = [line.strip() for line in walked["output"].splitlines()]
    for line in expected.strip().splitlines():
        label = line.split(":", 1)[0].strip() if ":" in line else line.strip()
        assert any(p.startswith(label) or f"] - {label}" in p for p in printed), \
            f"README's summary line {line!r}: no printed line starts with {label!r}\n" + walked["output"][-3000:]


@pytest.mark.slow
def test_walkthrough_commands_write_what_the_readme_says(walked, clone):
    run = latest(clone / "outputs" / "train" / "runs")
    assert list(run.glob("evaluate/*/evaluation.json")), "evaluate wrote no evaluation.json"
    assert (run / "checkpoints" / "best.onnx").is_file(), "export wrote no best.onnx beside the checkpoint"
    predictions = sorted((clone / "outputs" / "predict" / "runs").iterdir())
    assert len(predictions) == 2, "predict with the checkpoint, then with the ONNX file"
    photos = sorted(p.stem for p in EXAMPLES.glob("*.jpg"))
    for folder in predictions:
        assert sorted(p.stem for p in folder.glob("*.png")) == photos, folder
        summary = json.loads((folder / "predict_summary.json").read_text())
        assert not summary.get("unreadable"), summary
        assert isinstance(json.loads((folder / "detections.json").read_text()), list)
    sweep = latest(clone / "outputs" / "train" / "multiruns")
    report = (sweep / "report" / "report.md").read_text()
    assert "rpn.num_rois=16" in report and "rpn.num_rois=64" in report, report[:2000]


@pytest.mark.slow
def test_serve_answers_the_readme_request(walked, clone):
    """The serve block: the server as the README starts it (on a free port), and its curl request: the
    thresholded detections are exactly the unthresholded ones that score at least the threshold."""
    serve_line, curl_line = [line for line in walked["serve"].splitlines() if line.strip()]
    run = latest(clone / "outputs" / "train" / "runs")
    port = free_port()
    code = serve_line.partition(" #")[0].replace("$RUN", str(run))
    args = shlex.split(code)[3:] + [f"port={port}"]
    process = subprocess.Popen([sys.executable, "-m", "frcnn_lab.serve", *args], cwd=clone,
                               env=environment(clone), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               stdin=subprocess.DEVNULL)
    try:
        tokens = shlex.split(curl_line)
        photo = clone / tokens[tokens.index("-F") + 1].split("=@", 1)[1]
        url = next(t for t in tokens if t.startswith("http")).replace(":8000/", f":{port}/")
        base = url.split("/predict")[0]
        wait_for_server(process, f"{base}/examples")
        threshold = float(re.search(r"score_threshold=([0-9.]+)", url).group(1))
        answers = []
        for target in (url, url.split("?")[0]):
            with open(photo, "rb") as f:
                response = httpx.post(target, files={"file": (photo.name, f, "image/jpeg")}, timeout=120)
            assert response.status_code == 200, response.text
            answers.append(response.json())
        thresholded, everything = answers
        width, height = Image.open(photo).size
        assert (everything["width"], everything["height"]) == (width, height)
        assert everything["classes"] == ["camera", "phone"]
        assert all(d["score"] >= 0.05 for d in everything["detections"])
        below = [d["score"] for d in thresholded["detections"] if d["score"] < threshold]
        assert not below, f"POST /predict?score_threshold={threshold} returned {len(below)} detections below it"
        assert thresholded["detections"] == [d for d in everything["detections"] if d["score"] >= threshold]
    finally:
        stop(process)


README_COMMANDS = [command for title, text, line in sections(TEXT) if title not in WALKTHROUGH
                   for command in commands_in(README, text, line)]


@pytest.mark.parametrize("command", README_COMMANDS, ids=[c.where for c in README_COMMANDS])
def test_readme_command_outside_the_walkthrough_composes(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok, output = check(command, tmp_path)
    assert ok, f"{command.where}: {command.text}\n{output[-2500:]}"


def test_readme_shows_each_format_and_scaling_command():
    texts = " ".join(c.text for c in README_COMMANDS)
    for needed in ("data=csv", "data=coco", "data=yolo", "data=voc_folder", "data=openimages", "-m ",
                   "trainer=ddp", "hydra/launcher=slurm"):
        assert needed in texts, needed


def test_readme_is_short_and_about_the_project():
    assert len(TEXT.split()) < 1800, f"README has {len(TEXT.split())} words"
    machine = re.findall(r"\bVM\b|paused|background|load average|\b\d+ (?:tests|passed)\b", TEXT)
    assert not machine, machine


def test_readme_links_resolve():
    assert not broken_links(README)


def test_readme_names_the_console_scripts_that_pyproject_installs():
    """Shown once in the README; each is in [project.scripts] and its target imports."""
    import importlib

    for name in CONSOLE_SCRIPTS:
        assert f"`{name}`" in TEXT, name
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    missing = sorted(set(CONSOLE_SCRIPTS) - set(scripts))
    assert not missing, f"pyproject.toml [project.scripts] lacks {missing}"
    for name in CONSOLE_SCRIPTS:
        target_module, _, attribute = scripts[name].partition(":")
        assert callable(getattr(importlib.import_module(target_module), attribute)), scripts[name]


def test_sample_photos_ship_with_the_package_and_regenerate(tmp_path):
    """3-4 JPEGs in src/frcnn_lab/examples (package data) that ``python scripts/make_examples.py`` draws again
    (the same pixels up to the JPEG encoder of the installed Pillow)."""
    photos = sorted(EXAMPLES.glob("*.jpg"))
    assert 3 <= len(photos) <= 4, photos
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "examples/*.jpg" in package_data["frcnn_lab"]
    assert "src/frcnn_lab/examples" in TEXT
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "make_examples.py"), "--out", str(tmp_path)],
                            env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.glob("*.jpg")) == [p.name for p in photos]
    for photo in photos:
        shipped = np.asarray(Image.open(photo), dtype=np.float32)
        drawn = np.asarray(Image.open(tmp_path / photo.name), dtype=np.float32)
        assert shipped.shape == drawn.shape and np.abs(shipped - drawn).mean() < 1, photo
