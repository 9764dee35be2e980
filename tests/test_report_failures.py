"""Failed runs: the definition, failure rates against scipy and statsmodels, the diagnosis on hand-made metric
tables, and the report's section on run folders."""

from __future__ import annotations

import csv

import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from frcnn_lab.report import find_runs, group_runs, write_report
from frcnn_lab.report.failures import diagnose, failed, failure_rate, failure_rates
from frcnn_lab.report.runs import configuration_scores, read_metrics
from frcnn_lab.report.sections import reference_configuration
from test_report import make_run, table_rows

EPOCHS = 6


def metrics(**columns: list[float]) -> dict[int, dict[str, float]]:
    """A hand-made per-epoch table: ``rpn_recall=[...]`` -> {epoch: {"diag/rpn_recall_epoch": value}}; names with
    a slash are taken as they are."""
    names = {name: name.replace("__", "/") if "__" in name else f"diag/{name}_epoch" for name in columns}
    return {e: {names[name]: values[e] for name, values in columns.items()} for e in range(EPOCHS)}


HEALTHY = {"rpn_recall": [0.2, 0.55, 0.7, 0.8, 0.88, 0.90], "roi_fg": [3.1, 3.5, 3.6, 3.6, 3.6, 3.6],
           "roi_bg": [12.9, 12.5, 10.8, 10.8, 10.8, 10.8], "cls_accuracy": [0.82, 0.8, 0.85, 0.9, 0.93, 0.95]}


def test_a_run_fails_when_it_never_leaves_the_floor_and_needs_more_validations_than_the_window():
    assert failed([0.0, 0.01, 0.004, 0.02, 0.01], window=3, floor=0.05) is True
    assert failed([0.0, 0.005, 0.012, 0.018, 0.021], window=3, floor=0.05) is True  # creeping up, still below
    assert failed([0.0, 0.01, 0.02, 0.06], window=3, floor=0.05) is False
    assert failed([0.3, 0.5], window=3, floor=0.05) is False  # it has left the floor, however short
    assert failed([0.0, 0.01, 0.02], window=3, floor=0.05) is None  # no outcome yet


def test_failure_rates_have_exact_intervals_and_fishers_test_against_the_reference():
    for k, n in ((0, 3), (2, 3), (3, 3), (4, 10)):
        rate = failure_rate([True] * k + [False] * (n - k))
        assert rate.interval == pytest.approx(proportion_confint(k, n, alpha=0.05, method="beta"), abs=1e-9)
    outcomes = {"default": [False] * 5, "16 rois": [True, False, False, True, False], "4 rois": [True] * 5,
                "band": [True, True, False, False, False]}
    rates = failure_rates(outcomes, "default")
    assert rates["default"].raw_p is None and rates["4 rois"].rate == 1.0
    raw = [stats.fisher_exact([[sum(outcomes[label]), 5 - sum(outcomes[label])], [0, 5]]).pvalue
           for label in ("16 rois", "4 rois", "band")]
    assert [rates[label].raw_p for label in ("16 rois", "4 rois", "band")] == pytest.approx(raw)
    assert rates["4 rois"].raw_p == pytest.approx(1 / 126)  # 5/5 against 0/5: 2 / C(10, 5)
    assert [rates[label].p for label in ("16 rois", "4 rois", "band")] == pytest.approx(
        list(multipletests(raw, method="holm")[1]))


def test_a_head_that_collapses_to_background_is_named_with_the_epoch():
    # The hard benchmark's failed runs: the RPN learns, foreground RoIs are sampled, the head's foreground
    # accuracy falls to 0 while its overall accuracy equals the background share.
    diagnosis = diagnose(metrics(**{**HEALTHY, "cls_accuracy": [0.82, 0.78, 0.76, 0.755, 0.75, 0.745]},
                                 cls_accuracy_fg=[0.40, 0.00, 0.02, 0.00, 0.00, 0.00]))
    assert diagnosis.stage == "head" and diagnosis.epoch == 2
    assert "RPN learns (recall 0.55 at epoch 2, 0.90 at epoch 6)" in diagnosis.text
    assert "foreground RoIs sampled (3.6 per image, 25 % of the sampled RoIs)" in diagnosis.text
    assert "falls from 0.40 (epoch 1) to 0.00 at epoch 2 and stays at or below 0.10 (0.00 at epoch 6)" in diagnosis.text
    assert "overall accuracy 0.74, the background share of the sampled RoIs (0.75)" in diagnosis.text
    assert diagnosis.text.endswith("the head collapses to background (it calls every RoI background)")
    # A dip and a recovery before the collapse: the first fall is where it went wrong, the rest is said.
    dip = diagnose(metrics(**HEALTHY, cls_accuracy_fg=[0.40, 0.01, 0.2, 0.15, 0.05, 0.00]))
    assert dip.epoch == 2 and "stays at or below 0.10 from epoch 5" in dip.text
    assert "calls every RoI background" not in dip.text  # overall accuracy 0.95 is not the background share
    # Where the head's silent units are logged: a collapse whose representation went dark is said so.
    dark = diagnose(metrics(**HEALTHY, cls_accuracy_fg=[0.40, 0.00, 0.02, 0.00, 0.00, 0.00],
                            head_silent=[0.05, 0.7, 0.4, 0.93, 0.95, 0.96]))
    assert "the box head silent: 96% of its units 0 on every RoI of a batch at epoch 6, at least 50% from epoch 4" in (
        dark.text)
    lit = diagnose(metrics(**HEALTHY, cls_accuracy_fg=[0.40, 0.00, 0.02, 0.00, 0.00, 0.00], head_silent=[0.3] * EPOCHS))
    assert lit.stage == "head" and "silent" not in lit.text
    never = diagnose(metrics(**HEALTHY, cls_accuracy_fg=[0.05, 0.02, 0.0, 0.0, 0.0, 0.0]))
    assert never.stage == "head" and never.epoch == 1 and "never learns the foreground" in never.text


def test_the_first_stage_that_fails_is_named():
    blind = diagnose(metrics(rpn_recall=[0.05, 0.1, 0.2, 0.31, 0.25, 0.3], roi_fg=[0.1] * EPOCHS,
                             cls_accuracy_fg=[0.0] * EPOCHS))
    assert blind.stage == "rpn" and "recall stays below 0.50 (best 0.31 at epoch 4)" in blind.text
    starved = diagnose(metrics(rpn_recall=HEALTHY["rpn_recall"], roi_fg=[2.0, 1.0, 0.4, 0.2, 0.1, 0.1],
                               roi_bg=[14.0, 15.0, 15.6, 15.8, 15.9, 15.9], cls_accuracy_fg=[0.0] * EPOCHS))
    assert starved.stage == "sampling" and starved.epoch == 3 and "below 0.5 from epoch 3" in starved.text
    silent = diagnose(metrics(**HEALTHY, cls_accuracy_fg=[0.4, 0.5, 0.6, 0.7, 0.8, 0.85],
                              **{"val__detections_per_image": [0.0, 2.0, 0.3, 0.1, 0.0, 0.0]}))
    assert silent.stage == "validation" and silent.epoch == 3 and "below the score threshold" in silent.text
    healthy = diagnose(metrics(**HEALTHY, cls_accuracy_fg=[0.4, 0.5, 0.6, 0.7, 0.8, 0.85],
                               **{"val__detections_per_image": [3.0] * EPOCHS}))
    assert healthy.stage == "unknown" and "do not say why" in healthy.text
    assert diagnose({0: {"train/loss_epoch": 1.0}}).text.startswith("no diagnostics logged")
    skipped = diagnose(metrics(**HEALTHY, cls_accuracy_fg=[0.4, 0.0, 0.0, 0.0, 0.0, 0.0],
                               **{"train__nonfinite_batches": [0, 0, 3, 3, 7, 7]}))
    assert skipped.text.startswith("7 batches with a non-finite loss or gradient skipped, the first in epoch 3")


def test_the_diagnosis_reads_lightnings_step_and_epoch_columns(tmp_path):
    # Lightning writes a diagnostic twice, per step and per epoch: the epoch column is the one read.
    path = tmp_path / "metrics.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["epoch", "step", "diag/cls_accuracy_fg_step", "diag/cls_accuracy_fg_epoch",
                                    "diag/rpn_recall_epoch", "diag/roi_fg_epoch", "val/map_50"])
        writer.writeheader()
        for epoch, (accuracy, recall) in enumerate(zip([0.3, 0.0, 0.0, 0.0], [0.6, 0.8, 0.9, 0.9], strict=True)):
            writer.writerow({"epoch": epoch, "step": 10 * epoch + 4, "diag/cls_accuracy_fg_step": 0.9})
            writer.writerow({"epoch": epoch, "step": 10 * epoch + 9, "diag/cls_accuracy_fg_epoch": accuracy,
                             "diag/rpn_recall_epoch": recall, "diag/roi_fg_epoch": 3.5})
            writer.writerow({"epoch": epoch, "step": 10 * epoch + 9, "val/map_50": 0.01})
    read = read_metrics(path)
    assert read.validation_steps == {0: 10, 1: 20, 2: 30, 3: 40} and read.steps == 40
    diagnosis = diagnose(read.epochs)
    assert diagnosis.stage == "head" and diagnosis.epoch == 2


def study(root, maps: dict[int, list[list[float]]], fg_accuracy: dict[int, list[list[float]]]) -> None:
    for rois, curves in maps.items():
        for seed, curve in enumerate(curves):
            make_run(root / f"rois{rois}_s{seed}", rois, seed, curve,
                     columns={"diag/rpn_recall_epoch": [0.6, 0.8, 0.9, 0.9, 0.9],
                              "diag/roi_fg_epoch": [3.5] * 5, "diag/roi_bg_epoch": [12.5] * 5,
                              "diag/cls_accuracy_fg_epoch": fg_accuracy[rois][seed]})


def test_the_report_counts_failed_runs_diagnoses_them_and_compares_the_runs_that_learned(tmp_path):
    learns, floor = [0.1, 0.3, 0.5, 0.55, 0.56], [0.0, 0.01, 0.004, 0.01, 0.02]
    up, down = [0.3, 0.5, 0.7, 0.8, 0.85], [0.4, 0.0, 0.0, 0.0, 0.0]
    study(tmp_path / "runs",
          {64: [[v + 0.01 * s for v in learns] for s in range(3)],
           16: [[v + 0.01 * s for v in learns] for s in range(2)] + [floor],
           4: [floor] * 3},
          {64: [up] * 3, 16: [up, up, down], 4: [down] * 3})
    report = write_report(tmp_path / "runs", tmp_path / "report", reference=["rpn.num_rois=64"]).read_text()
    rows = {row[0]: row for row in table_rows(report, "## Failed runs")}
    assert rows["`rpn.num_rois=64`"][1:] == ["0/3", "0.00 [0.00, 0.71]", "reference"]
    assert rows["`rpn.num_rois=16`"][1:3] == ["1/3", "0.33 [0.01, 0.91]"]
    assert rows["`rpn.num_rois=4`"][1] == "3/3" and rows["`rpn.num_rois=4`"][3].startswith("0.100 (")
    section = report.split("## Failed runs")[1].split("## Which choice mattered")[0]
    assert section.count("the head collapses to background") == 4 and "Went wrong at epoch 2." in section
    assert "- `rois16_s2` (`rpn.num_rois=16`, seed 2, best 0.020" in section
    learned = {(row[1], row[2]): row for row in table_rows(report, "### On the runs that learned")}
    # 16 -> 64 RoIs without 16's failed seed: Welch on 2 against 3 runs, and the split said.
    assert learned[("16 → 64", "`–`")][-1] == "2/3 → 3/3 learned" and "welch (2/3)" in learned[("16 → 64", "`–`")]
    assert "No run of `rpn.num_rois=4` learned" in report


def test_the_reference_is_the_configuration_next_to_most_others_unless_named(tmp_path):
    for name, rois, size in (("a", 64, 600), ("b", 16, 600), ("c", 4, 600), ("d", 64, 300)):
        make_run(tmp_path / name, rois, 0, [0.5])
        config = tmp_path / name / ".hydra" / "config.yaml"
        config.write_text(config.read_text() + f"data:\n  image_size: {size}\n")
    groups = group_runs(find_runs(tmp_path))
    configurations, _ = configuration_scores(groups)
    assert reference_configuration(groups, configurations, None) == "rpn.num_rois=64 data.image_size=600"
    assert reference_configuration(groups, configurations, ["rpn.num_rois=16"]) == "rpn.num_rois=16 data.image_size=600"
    with pytest.raises(ValueError, match="matches 2 configurations"):
        reference_configuration(groups, configurations, ["rpn.num_rois=64"])
