"""User errors end in one line: every kind a user meets, run through its entry point as a user runs it, stops with one
``error: ...`` line on stderr (and at most one ``hint: ...``), exit code USER_ERROR_EXIT_CODE, and nothing written:
no run folder, no W&B run, no status.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from frcnn_lab.errors import USER_ERROR_EXIT_CODE
from frcnn_lab.runs.folders import make_run_dir, remove_refused_run_dir
from support import cli_env, run_module

SHORT = ["data.num_negatives=0", "data.image_size=128", "data.max_size=128", "trainer.max_epochs=1"]
"""A training that would take seconds, were it not refused (W&B stays in: logger=default, offline)."""
SMALL = [*SHORT, "data.source.num_train=8", "data.source.num_val=4", "data.source.num_test=2"]
"""SHORT on the synthetic data."""


def everything(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def refused(module: str, *arguments: str, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run ``python -m module arguments`` in ``cwd``; assert it was refused as a user error and wrote nothing there
    -> its stderr lines (the error line, then the hint if any)."""
    before = everything(cwd)
    result = run_module(module, *arguments, cwd=cwd, env=env, timeout=300)
    assert result.returncode == USER_ERROR_EXIT_CODE, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, result.stderr[-3000:]
    assert len(lines) == 1 or lines[1].startswith("hint: "), result.stderr[-3000:]
    assert everything(cwd) == before  # no run folder (outputs/...), no wandb/, no status.json
    return lines


def test_a_missing_checkpoint_for_training_is_one_line_before_the_data_and_wandb(tmp_path):
    lines = refused("frcnn_lab.train", *SMALL, "ckpt_path=gone/last.ckpt", cwd=tmp_path)
    assert lines == ["error: ckpt_path=gone/last.ckpt: no such checkpoint file",
                     "hint: training writes <run dir>/checkpoints/best.ckpt and last.ckpt"]


@pytest.mark.parametrize("module,arguments", [
    ("frcnn_lab.evaluate", []),
    ("frcnn_lab.predict", ["input=photos"]),
    ("frcnn_lab.export", []),
    ("frcnn_lab.serve", []),
])
def test_a_missing_checkpoint_is_one_line_for_every_entry_point(module, arguments, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"not looked at")
    assert refused(module, "ckpt_path=gone.ckpt", *arguments, cwd=tmp_path)[0] == \
        "error: ckpt_path=gone.ckpt: no such checkpoint file"


def test_an_unreadable_checkpoint_is_named(tmp_path):
    (tmp_path / "notes.ckpt").write_text("not a checkpoint\n")
    assert refused("frcnn_lab.evaluate", "ckpt_path=notes.ckpt", cwd=tmp_path) == [
        "error: ckpt_path=notes.ckpt: not a checkpoint, or a damaged one (not a complete zip archive, which "
        "torch.save writes)"]


def test_a_required_key_left_out_is_named_with_what_to_set(tmp_path):
    assert refused("frcnn_lab.export", cwd=tmp_path) == [
        "error: required keys without a value: ckpt_path", "hint: set ckpt_path=... on the command line"]


def test_an_empty_dataset_folder_is_one_line(tmp_path):
    (tmp_path / "exported").mkdir()
    lines = refused("frcnn_lab.train", *SHORT, "data=voc_folder", "data.source.root=exported", cwd=tmp_path)
    assert lines == [f"error: data.source.train: '.': no .xml annotation files in {tmp_path / 'exported'} "
                     "(subfolders included)"]


def test_a_malformed_csv_row_names_the_file_and_line(tmp_path):
    (tmp_path / "train.csv").write_text("a.jpg,10,10,50,50,camera\nb.jpg,1,2,3\n")
    lines = refused("frcnn_lab.train", *SHORT, "data=csv", "data.source.train=train.csv", cwd=tmp_path)
    assert lines == ["error: train.csv:2: expected 6 fields path,x1,y1,x2,y2,class, got 4: ['b.jpg', '1', '2', '3']"]


@pytest.mark.parametrize("override,expected", [
    ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5: trainer.max_epochs takes an integer, e.g. "
                               "trainer.max_epochs=1"),
    ("trainer.max_epochs=abc", "trainer.max_epochs=abc: trainer.max_epochs takes an integer, e.g. "
                               "trainer.max_epochs=1"),
    ("trainer.max_epochs=-5", "invalid config: trainer.max_epochs=-5 must be an integer >= -1"),
])
def test_an_impossible_trainer_value_is_one_line(override, expected, tmp_path):
    assert refused("frcnn_lab.train", *SMALL, override, cwd=tmp_path) == [f"error: {expected}"]


def test_a_misspelled_key_suggests_the_closest_one(tmp_path):
    assert refused("frcnn_lab.train", *SMALL, "rpn.num_roi=50", cwd=tmp_path) == [
        "error: rpn.num_roi is not a config key; did you mean rpn.num_rois?"]


def test_an_existing_export_file_is_refused(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"an earlier export")
    assert refused("frcnn_lab.export", "ckpt_path=run.ckpt", "output=model.onnx", cwd=tmp_path) == [
        "error: model.onnx exists already; choose another output= (nothing was written)"]
    assert (tmp_path / "model.onnx").read_bytes() == b"an earlier export"


def test_a_used_predict_folder_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "street.png").write_bytes(b"a photo")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "street.png").write_bytes(b"an earlier picture")
    assert refused("frcnn_lab.predict", "ckpt_path=run.ckpt", "input=photos", "output=out", cwd=tmp_path) == [
        "error: output=out already holds ['out/street.png']; choose another output folder"]


def test_an_existing_evaluation_is_refused_before_hydra_writes_there(tmp_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "evaluation.json").write_text("{}")
    assert refused("frcnn_lab.evaluate", "ckpt_path=run.ckpt", "hydra.run.dir=done", cwd=tmp_path) == [
        "error: done/evaluation.json exists already; evaluate writes each result to a new folder (leave "
        "hydra.run.dir out, or name an unused folder)"]


def test_predict_fails_when_no_input_image_is_usable(trained_run, tmp_path):
    (tmp_path / "photos").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "photos" / name).write_bytes(b"not an image")
    lines = refused("frcnn_lab.predict", f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}", "input=photos",
                    "output=out", cwd=tmp_path)
    assert lines == ["error: input=photos: none of the 2 images could be read: photos/a.png: not a readable image "
                     "(unknown or corrupt format) (and 1 more)"]


def test_a_used_folder_named_for_a_refused_run_is_left_as_it_was(tmp_path):
    """hydra.run.dir at a folder that holds files already: the refused run removes nothing of it."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept\n")
    (tmp_path / "train.csv").write_text("b.jpg,1,2,3\n")
    result = run_module("frcnn_lab.train", *SHORT, "data=csv", "data.source.train=train.csv", "hydra.run.dir=mine",
                        cwd=tmp_path, timeout=300)
    assert result.returncode == USER_ERROR_EXIT_CODE and result.stderr.startswith("error: train.csv:1: expected 6")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "kept\n"


def test_only_a_folder_this_process_created_and_left_unstarted_is_removed(tmp_path):
    started = make_run_dir(tmp_path / "outputs" / "train" / "runs" / "a")
    (started / ".hydra").mkdir()
    (started / ".hydra" / "config.yaml").write_text("{}")
    (started / "train.log").write_text("")
    assert remove_refused_run_dir(started) and not (tmp_path / "outputs").exists()  # and the parents it created

    working = make_run_dir(tmp_path / "runs" / "b")
    (working / "checkpoints").mkdir()
    assert not remove_refused_run_dir(working) and working.is_dir()  # its work began: kept

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    assert not remove_refused_run_dir(make_run_dir(earlier)) and earlier.is_dir()  # not created here: kept


def test_hydra_full_error_shows_the_traceback(tmp_path):
    result = run_module("frcnn_lab.train", *SMALL, "ckpt_path=gone.ckpt", cwd=tmp_path,
                        env=cli_env(HYDRA_FULL_ERROR="1"), timeout=300)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().endswith("MissingInputError: ckpt_path=gone.ckpt: no such checkpoint file")
    assert not list(tmp_path.iterdir())
