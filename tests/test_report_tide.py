"""frcnn_lab.report's error-analysis section: TIDE dAPs per configuration from evaluations and validation logs."""

from __future__ import annotations

import csv
import json

import numpy as np
from PIL import Image

from frcnn_lab.metrics.tide import ERROR_TYPES
from frcnn_lab.report import write_report
from test_report import make_run

TYPES = [*ERROR_TYPES, "fp", "fn"]


def add_tide_columns(run, per_epoch: list[dict[str, float]]) -> None:
    """Rewrite the run's metrics.csv with ``val/tide_<type>`` on each validation row."""
    path = run / "csv" / "metrics.csv"
    rows = list(csv.DictReader(path.open()))
    columns = list(rows[0]) + [f"val/tide_{k}" for k in TYPES]
    validation = [row for row in rows if row["val/map_50"]]
    for row, values in zip(validation, per_epoch, strict=True):
        row.update({f"val/tide_{k}": v for k, v in values.items()})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def test_report_shows_tide_per_configuration(tmp_path):
    root = tmp_path / "sweep"
    make_run(root / "0", 4, 0, [0.2, 0.6])
    make_run(root / "1", 4, 1, [0.3, 0.5])
    make_run(root / "2", 50, 0, [0.7, 0.8])
    make_run(root / "3", 64, 0, [0.1])  # no TIDE figures at all
    # Seeds 0 and 1 of num_rois=4 from validation at their best epoch (epoch 2 and 2): the mean is reported.
    add_tide_columns(root / "0", [dict.fromkeys(TYPES, 0.9), {**dict.fromkeys(TYPES, 0.0), "cls": 0.10, "miss": 0.3}])
    add_tide_columns(root / "1", [dict.fromkeys(TYPES, 0.9), {**dict.fromkeys(TYPES, 0.0), "cls": 0.20, "miss": 0.1}])
    # num_rois=50 was evaluated: its evaluation's error analysis wins over the validation logs.
    evaluation = root / "2" / "evaluate" / "t" / "evaluation.json"
    evaluation.parent.mkdir(parents=True)
    evaluation.write_text(json.dumps({"error_analysis": {"delta_ap": {**dict.fromkeys(TYPES, 0.01), "loc": 0.25}}}))

    report = write_report(root, tmp_path / "report").read_text()
    section = report[report.index("## Where the AP is lost (TIDE)"):]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in section.splitlines() if line.startswith("| `")}
    assert set(rows) == {"`rpn.num_rois=4`", "`rpn.num_rois=50`"}
    four, fifty = rows["`rpn.num_rois=4`"], rows["`rpn.num_rois=50`"]
    assert four[TYPES.index("cls")] == "0.150" and four[TYPES.index("miss")] == "0.200" and four[-1] == "val"
    assert fifty[TYPES.index("loc")] == "0.250" and fifty[TYPES.index("bkg")] == "0.010" and fifty[-1] == "evaluate"

    pixels = np.asarray(Image.open(tmp_path / "report" / "tide_errors.png").convert("RGB"))
    colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7]}
    assert len(colours) > 6  # stacked segments in several colours, not a blank canvas
    assert "![tide_errors](tide_errors.png)" in section


def test_report_without_tide_figures_has_no_section(tmp_path):
    make_run(tmp_path / "run", 4, 0, [0.2])
    report = write_report(tmp_path / "run", tmp_path / "report").read_text()
    assert "TIDE" not in report and not (tmp_path / "report" / "tide_errors.png").exists()
