"""frcnn_lab.report on run folders laid out like the CLI's, including failed, interrupted and empty runs."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from frcnn_lab.report import find_runs, group_runs, main, write_report

COLUMNS = ["epoch", "step", "train/loss_epoch", "train/epoch_time_s", "diag/cls_accuracy_epoch", "val/map_50",
           "val/map", "val/fn_rate", "val/fp_image_rate", "val/ms_per_image"]


def make_run(folder: Path, num_rois: int, seed: int, maps: list[float] | None, status: str = "completed",
             error: str | None = None) -> None:
    """A run folder: .hydra/config.yaml, status.json and (unless ``maps`` is None) csv/metrics.csv with one
    training row and one validation row per epoch, as Lightning's CSVLogger writes them."""
    config = {"seed": seed, "trainer": {"max_epochs": 3}, "rpn": {"num_rois": num_rois},
              "backbone": {"name": "vgg16"}, "paths": {"output_dir": "${hydra:runtime.output_dir}"}}
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    (folder / "status.json").write_text(json.dumps({"status": status, "error": error}))
    if maps is None:
        return
    (folder / "csv").mkdir()
    with (folder / "csv" / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for epoch, value in enumerate(maps):
            writer.writerow({"epoch": epoch, "step": epoch, "val/map_50": value, "val/map": value / 2,
                             "val/fn_rate": 0.1 * (epoch + 1), "val/fp_image_rate": 0.5, "val/ms_per_image": 20.0})
            writer.writerow({"epoch": epoch, "step": epoch, "train/loss_epoch": 1.0 / (epoch + 1),
                             "train/epoch_time_s": 10.0, "diag/cls_accuracy_epoch": 0.5})


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
    ranking = section.split("Keys ranked by effect")[1]
    assert ranking.index("`data.image_size`") < ranking.index("`rpn.num_rois`")  # 0.403 > 0.307
    assert (tmp_path / "report" / "differences.png").stat().st_size > 0
