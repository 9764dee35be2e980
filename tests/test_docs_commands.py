"""Every ``python -m frcnn_lab.*`` command that docs/*.md shows composes as written (``tests/doc_commands.py``), and
the Python example of docs/detector.md runs and does what it says."""

from __future__ import annotations

import re

import pytest
import torch

from doc_commands import Command, broken_links, check, commands_in, fenced_blocks
from support import REPO_ROOT

DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
COMMANDS = [command for page in DOCS for command in commands_in(page)]

CANNOT_COMPOSE: dict[tuple[str, str], str] = {}
"""(file, a fragment of the command) -> why the command cannot compose without files only a user has. Empty: every
documented command composes here (placeholders stand in for paths, heredocs are written first)."""

_checked: dict[tuple[str, tuple[str, ...]], tuple[bool, str]] = {}


def allowed(command: Command) -> str | None:
    for (file, fragment), reason in CANNOT_COMPOSE.items():
        if command.file == file and fragment in command.text:
            return reason
    return None


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 30, [c.where for c in COMMANDS]
    modules = {c.module for c in COMMANDS}
    assert {"frcnn_lab.train", "frcnn_lab.evaluate", "frcnn_lab.predict", "frcnn_lab.report", "frcnn_lab.export",
            "frcnn_lab.serve", "frcnn_lab.browse"} <= modules, modules


def test_every_allow_list_entry_names_a_documented_command():
    for file, fragment in CANNOT_COMPOSE:
        assert any(c.file == file and fragment in c.text for c in COMMANDS), (file, fragment)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_composes(command: Command, tmp_path, monkeypatch):
    """``--cfg job`` for the Hydra entry points (a sweep as its first job), the report on a committed study, the
    Open Images downloader's argument parser. ``trainer.val_check_interval`` (docs/small_objects.md) is expected to
    compose like every other key."""
    reason = allowed(command)
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)
    key = (command.module, command.args) if not command.heredocs else (command.where, command.args)
    if key not in _checked:
        _checked[key] = check(command, tmp_path)
    ok, output = _checked[key]
    assert ok, f"{command.where}: {command.text}\n{output[-2500:]}"


def test_rpn_and_roi_head_work_on_a_user_feature_map():
    """docs/detector.md's example, run as written."""
    page = REPO_ROOT / "docs" / "detector.md"
    (example,) = [body for language, body, _ in fenced_blocks(page.read_text())
                  if language == "python" and "RegionProposalNetwork" in body]
    namespace: dict = {}
    exec(compile(example, str(page), "exec"), namespace)
    proposals, detections = namespace["proposals"], namespace["detections"]
    assert len(proposals) == 2 and len(detections) == 2
    for boxes, (height, width) in zip(proposals, [(320, 400), (300, 380)], strict=True):
        assert boxes.shape[1] == 4 and len(boxes) > 0
        assert torch.all(boxes[:, 2] <= width) and torch.all(boxes[:, 3] <= height)
    for detection in detections:
        assert set(detection) == {"boxes", "scores", "labels"}
        assert torch.all((detection["labels"] >= 1) & (detection["labels"] <= 2))


MACHINE_STATE = re.compile(r"\bVM\b|\bpaused\b|load average|background (?:job|training|trainings|study)|\d+ passed")


@pytest.mark.parametrize("page", DOCS, ids=[p.name for p in DOCS])
def test_docs_do_not_describe_the_measuring_machine_state(page):
    """No test counts, load averages or "VM" / "paused" / "background job" anecdotes: a figure's conditions live
    with the figure, in experiments/."""
    hits = [f"{page.name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
            for text in [page.read_text()] for m in MACHINE_STATE.finditer(text)]
    assert not hits, hits


@pytest.mark.parametrize("page", DOCS, ids=[p.name for p in DOCS])
def test_docs_links_resolve(page):
    assert not broken_links(page)
