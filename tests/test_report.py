"""frcnn_lab.report on run folders laid out like the CLI's, including failed, interrupted and empty runs."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from frcnn_lab.report import find_runs, group_runs, main, write_report

COLUMNS = ["epoch", "step", "train/loss_epoch", "train/epoch_time_s", "diag/cls_accuracy_epoch", "val/map_50",
           "val/map", "val/fn_rate", "val/fp_image_rate", "val/ms_per_image"]


def make_run(folder: Path, num_rois: int, seed: int, maps: list[float] | None, status: str = "completed",
             error: str | None = None, ms_per_image: float = 20.0, train_time_s: float | None = None,
             steps_per_epoch: int = 1, columns: Mapping[str, Sequence[float]] = MappingProxyType({})) -> None:
    """A run folder: .hydra/config.yaml, status.json and (unless ``maps`` is None) csv/metrics.csv with one
    training row and one validation row per epoch, as Lightning's CSVLogger writes them (``step`` counts from 0,
    ``steps_per_epoch`` per epoch); ``columns``: more per-epoch values of the training rows (``diag/...``)."""
    config = {"seed": seed, "trainer": {"max_epochs": 3}, "rpn": {"num_rois": num_rois},
              "backbone": {"name": "vgg16"}, "paths": {"output_dir": "${hydra:runtime.output_dir}"}}
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    (folder / "status.json").write_text(json.dumps({"status": status, "error": error, "train_time_s": train_time_s}))
    if maps is None:
        return
    (folder / "csv").mkdir()
    with (folder / "csv" / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, [*COLUMNS, *(c for c in columns if c not in COLUMNS)])
        writer.writeheader()
        for epoch, value in enumerate(maps):
            step = (epoch + 1) * steps_per_epoch - 1
            writer.writerow({"epoch": epoch, "step": step, "val/map_50": value, "val/map": value / 2,
                             "val/fn_rate": 0.1 * (epoch + 1), "val/fp_image_rate": 0.5,
                             "val/ms_per_image": ms_per_image})
            writer.writerow({"epoch": epoch, "step": step, "train/loss_epoch": 1.0 / (epoch + 1),
                             "train/epoch_time_s": 10.0, "diag/cls_accuracy_epoch": 0.5,
                             **{column: values[epoch] for column, values in columns.items()}})


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    make_run(root / "0", 4, 0, [0.2, 0.6, 0.4])
    make_run(root / "1", 4, 1, [0.3, 0.5, 0.55])
    make_run(root / "2", 50, 0, [0.7, 0.8])
    make_run(root / "3", 50, 1, None, status="failed", error="RuntimeError: out of memory")
    make_run(root / "4", 50, 2, None, status="running")  # killed before it logged anything
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: ['rpn.num_rois=4,50', 'seed=0,1,2', 'trainer.max_epochs=3']\n"
        "  sweeper:\n    params: {seed: '0,1'}\n"
    )
    # An evaluation folder inside a run is not a run of its own.
    (root / "2" / "evaluate" / "t" / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"ckpt_path": "x"}), root / "2" / "evaluate" / "t" / ".hydra" / "config.yaml")
    (root / "2" / "evaluate" / "t" / "evaluation.json").write_text(json.dumps(
        {"fn_rate": 0.05, "negatives": {"images": 10, "fp_image_rate": 0.25}, "ms_per_image_median": 12.5}))
    return root


def test_report_groups_seeds_and_marks_what_is_missing(sweep):
    runs = find_runs(sweep)
    assert [r.path.name for r in runs] == ["0", "1", "2", "3", "4"]
    groups = group_runs(runs)
    assert list(groups) == ["rpn.num_rois=4", "rpn.num_rois=50"]

    report = write_report(sweep, sweep / "report").read_text()
    row_4 = next(line for line in report.splitlines() if line.startswith("| `rpn.num_rois=4`"))
    cells = [c.strip() for c in row_4.strip("|").split("|")]
    best = [0.6, 0.55]  # per seed, the best epoch's mAP@0.5: epochs 2 and 3
    assert cells[1] == "2/2" and cells[2] == "2, 3"
    assert cells[3] == f"{statistics.mean(best):.3f} ± {statistics.stdev(best):.3f}"
    assert cells[4] == f"{statistics.mean([0.3, 0.275]):.3f} ± {statistics.stdev([0.3, 0.275]):.3f}"
    assert cells[5] == f"{statistics.mean([0.2, 0.3]):.3f}"  # val/fn_rate at the best epochs
    assert cells[7] == "20.0" and cells[8] == "30.0" and cells[9] == "val"  # per run: 3 epochs x 10 s
    row_50 = next(line for line in report.splitlines() if line.startswith("| `rpn.num_rois=50`"))
    cells = [c.strip() for c in row_50.strip("|").split("|")]
    assert cells[1] == "1/3 (1 failed, 1 interrupted)" and cells[3] == "0.800"
    assert cells[5] == "0.050" and cells[6] == "0.250" and cells[7] == "12.5" and cells[9] == "evaluate"
    assert "failed: RuntimeError: out of memory" in report
    assert "interrupted" in report
    assert "The sweep has 6 jobs; 1 of them have no run folder" in report  # seed=0,1,2 on the command line wins
    for name in ("ablation_map50.png", "map_per_epoch.png", "curves_01.png", "curves_02.png"):
        assert (sweep / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in report


def test_keys_that_a_null_switch_turns_off_do_not_split_configurations(tmp_path):
    # Whole-image cells written before and after a change of the slicing merge's default, and two sliced cells.
    cells = {"whole_old": (None, "greedy_nmm"), "whole_new": (None, "nms"), "sliced": (400, "nms"),
             "sliced_greedy": (400, "greedy_nmm")}
    for name, (size, merge) in cells.items():
        make_run(tmp_path / name, 4, 0, [0.5])
        config = OmegaConf.load(tmp_path / name / ".hydra" / "config.yaml")
        config.inference = {"slicing": {"size": size, "merge": merge}}
        OmegaConf.save(config, tmp_path / name / ".hydra" / "config.yaml")
    groups = group_runs(find_runs(tmp_path))
    assert {label: sorted(r.path.name for r in runs) for label, runs in groups.items()} == {
        "inference.slicing.size=None": ["whole_new", "whole_old"],
        "inference.slicing.size=400 inference.slicing.merge=nms": ["sliced"],
        "inference.slicing.size=400 inference.slicing.merge=greedy_nmm": ["sliced_greedy"]}


def test_report_of_a_single_run_without_metrics(tmp_path, capsys):
    make_run(tmp_path / "run", 4, 0, None, status="running")
    assert main([str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "| `all runs` | 0/1 (1 interrupted) | – | – |" in out
    # An existing report is never replaced unless asked.
    assert main([str(tmp_path / "run")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main([str(tmp_path / "run"), "--overwrite"]) == 0


def test_report_names_a_folder_without_runs(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no training run" in capsys.readouterr().err
    assert main([str(tmp_path / "absent")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_report_gives_differences_with_intervals_and_ranks_the_keys(tmp_path):
    root = tmp_path / "ablation"
    best = {(4, 300): [0.10, 0.14, 0.12], (4, 600): [0.30, 0.35, 0.31], (64, 300): [0.20, 0.26, 0.21],
            (64, 600): [0.60, 0.66, 0.62]}
    for index, ((rois, size), maps) in enumerate(best.items()):
        for seed, value in enumerate(maps):
            folder = root / f"{index}_{seed}"
            make_run(folder, rois, seed, [value / 2, value])
            config = OmegaConf.load(folder / ".hydra" / "config.yaml")
            config.data = {"image_size": size}
            OmegaConf.save(config, folder / ".hydra" / "config.yaml")
    report = write_report(root, tmp_path / "report").read_text()
    section = report.split("## Which choice mattered")[1].split("## Runs")[0]
    # 64 vs 4 RoIs at 600 px: per-seed differences 0.30, 0.31, 0.31 (paired), mean 0.307.
    row = next(line for line in section.splitlines() if "4 → 64" in line and "data.image_size=600" in line)
    assert "+0.307" in row and "paired" in row and "**yes**" in row
    # Main effects over both levels of the other key, paired per seed: image size +0.30, +0.305, +0.30;
    # RoIs +0.20, +0.215, +0.20; the gap between them is clear of 0, so image size is named first.
    assert "**`data.image_size` mattered most** over the ranges swept: +0.302" in section
    assert "Holm" in section and "Bonferroni" in section
    assert "abs Δ / seed std" not in report and "Keys ranked by effect" not in report
    for name in ("differences.png", "main_effects.png", "pareto.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0


def red_pixels(path: Path) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)).sum())


def test_runs_that_have_not_plateaued_are_labelled_and_their_comparisons_warned(tmp_path, capsys):
    root = tmp_path / "sweep"
    flat = [0.1, 0.3, 0.5, 0.50, 0.51, 0.50, 0.505]
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    for seed in range(3):
        make_run(root / f"flat4_{seed}", 4, seed, [v + 0.01 * seed for v in flat])
        make_run(root / f"flat8_{seed}", 8, seed, [v + 0.1 + 0.01 * seed for v in flat])
        make_run(root / f"rising_{seed}", 64, seed, [v + 0.01 * seed for v in rising])
    make_run(root / "short", 16, 0, [0.2, 0.21])
    assert main([str(root), "--output", str(tmp_path / "report")]) == 0
    captured = capsys.readouterr()
    report = (tmp_path / "report" / "report.md").read_text()
    assert report == captured.out.split("written: ")[0].rstrip("\n") + "\n"
    assert "ranks learning speed in this budget, not final accuracy" in captured.err
    runs = {row[0]: row for row in table_rows(report, "## Runs")}
    assert runs["`flat4_0`"][7] == "plateaued" and runs["`rising_0`"][7] == "still learning"
    assert runs["`short`"][7] == "too short to judge"
    # best of the last three (0.7) minus the best before (0.4), and the tolerance at 0.7: 0.02 * 2 sqrt(0.21)
    assert runs["`rising_0`"][8] == "+0.300 / 0.018"
    configurations = {row[0]: row for row in table_rows(report, "# Report")}
    assert configurations["`rpn.num_rois=4`"][-1] == "3/3 plateaued"
    assert configurations["`rpn.num_rois=64`"][-1] == "0/3 plateaued (3 still learning)"
    assert "> **⚠ 4 of 10 runs have not plateaued**" in report
    pairs = table_rows(report, "### One-key pairs")
    budget = {row[1]: row[-1] for row in pairs}
    assert budget["4 → 8"] == "settled"
    assert budget["4 → 64"] == budget["8 → 64"] == budget["4 → 16"] == "⚠ learning speed"
    assert "ranks learning speed in this budget, not final accuracy" in report.split("## Accuracy against cost")[1]
    assert red_pixels(tmp_path / "report" / "differences.png") > 0  # the warning across the top
    assert red_pixels(tmp_path / "report" / "ablation_map50.png") > 0

    # Among plateaued runs only, no warning; a tolerance below the last gain (0.51 - 0.50) or a window that
    # reaches back into the rise reads the same curves as still learning.
    plateaued = tmp_path / "plateaued"
    for seed in range(3):
        make_run(plateaued / f"a{seed}", 4, seed, [v + 0.01 * seed for v in flat])
        make_run(plateaued / f"b{seed}", 8, seed, [v + 0.1 + 0.01 * seed for v in flat])
    report = write_report(plateaued, tmp_path / "quiet").read_text()
    assert "⚠" not in report and "learning speed in this budget" not in report
    assert red_pixels(tmp_path / "quiet" / "differences.png") == 0
    for option, value in (("--plateau-tolerance", "0.005"), ("--plateau-window", "5")):
        output = tmp_path / option.strip("-")
        assert main([str(plateaued), "--output", str(output), option, value]) == 0
        assert "0/3 plateaued (3 still learning)" in (output / "report.md").read_text()
    # A floor above the runs' best (0.51-0.63): flat curves that have not learned the task, not plateaus.
    assert main([str(plateaued), "--output", str(tmp_path / "floor"), "--plateau-floor", "0.7"]) == 0
    assert "0/3 plateaued (3 flat at the floor)" in (tmp_path / "floor" / "report.md").read_text()
    assert "> **⚠ 6 of 6 runs have not plateaued**" in (tmp_path / "floor" / "report.md").read_text()
    with pytest.raises(SystemExit):
        main([str(plateaued), "--plateau-tolerance", "-0.1"])
    assert "--plateau-tolerance >= 0 (got -0.1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(plateaued), "--plateau-floor", "-1"])
    assert "--plateau-floor >= 0 (got -1.0)" in capsys.readouterr().err


def test_accuracy_against_cost_marks_the_pareto_front(tmp_path):
    root = tmp_path / "sweep"
    # (RoIs, mAP, ms/img, training time): 64 is best, 4 cheapest; 16 is beaten by 64 in accuracy and speed.
    for rois, value, ms, seconds in ((4, 0.2, 10.0, 100.0), (16, 0.3, 40.0, 200.0), (64, 0.5, 30.0, 300.0)):
        make_run(root / str(rois), rois, 0, [value], ms_per_image=ms, train_time_s=seconds)
    report = write_report(root, tmp_path / "report").read_text()
    rows = {row[0]: row for row in table_rows(report, "## Accuracy against cost")}
    assert rows["`rpn.num_rois=4`"][1:] == ["0.200", "10.0", "**yes**", "100", "**yes**"]
    assert rows["`rpn.num_rois=16`"][1:] == ["0.300", "40.0", "no", "200", "**yes**"]
    assert rows["`rpn.num_rois=64`"][1:] == ["0.500", "30.0", "**yes**", "300", "**yes**"]
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 0


def table_rows(report: str, heading: str) -> list[list[str]]:
    """The cells of the first table after ``heading``."""
    lines = report.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows
