"""Comparisons at equal training cost: step costs from the benchmark's file or the runs' logged times, the
budget, the validation each run is read at, and the report's section, on made-up run folders."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from frcnn_lab.report import find_runs, group_runs, main, write_report
from frcnn_lab.report.budget import equal_cost, file_cost, read_step_costs, step_costs
from support import REPO_ROOT
from test_report import make_run, table_rows

BENCH = REPO_ROOT / "experiments" / "bench" / "small_objects_steps_cpu.json"
CHEAP = [0.1, 0.2, 0.3, 0.35, 0.4, 0.42]   # 4 RoIs: 1 s per step, validated every 100 steps, 600 steps
DEAR = [0.3, 0.5, 0.6]                      # 64 RoIs: 3 s per step, validated every 100 steps, 300 steps


def test_step_costs_of_the_benchmark_file_match_the_most_specific_policy():
    costs = read_step_costs(BENCH)
    data = json.loads(BENCH.read_text())
    assert costs["fixed"] == (data["policies"]["fixed"], pytest.approx(sum(data["step_s"]["fixed"]) / 2))
    runs = {run.path.name: run for run in find_runs(REPO_ROOT / "experiments" / "small_objects" / "runs")}
    # tiles add data.tiles.size=400 to the fixed scale: a tiles run takes the tiles cost, sliced ones train as tiles
    assert {name: file_cost(runs[name].config, costs).source for name in ("fixed_s0", "resize_s1", "tiles_s2",
                                                                          "sliced_s0")} == {
        "fixed_s0": "fixed", "resize_s1": "resize", "tiles_s2": "tiles", "sliced_s0": "tiles"}
    ratio = file_cost(runs["fixed_s0"].config, costs).seconds / file_cost(runs["tiles_s0"].config, costs).seconds
    # the mean step times' ratio; the benchmark's own figure, a median of per-round ratios, agrees to 1e-4
    assert ratio == pytest.approx(data["ratio_to_tiles"]["fixed"], rel=1e-4)


def test_step_cost_names_can_be_overrides_and_must_not_tie(tmp_path):
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"step_s": {"rpn.num_rois=4": 1.0, "rpn.num_rois=64 backbone.name=vgg16": [2.0, 4.0],
                                           "backbone.name=vgg16": 9.0}}))
    costs = read_step_costs(path)
    config = {"rpn.num_rois": 64, "backbone.name": "vgg16", "data.tiles.size": None}
    assert file_cost(config, costs).seconds == 3.0
    assert file_cost({**config, "rpn.num_rois": 16}, costs).source == "backbone.name=vgg16"
    assert file_cost({"rpn.num_rois": 8}, costs) is None
    with pytest.raises(ValueError, match="equally specific"):
        file_cost({**config, "rpn.num_rois": 4}, costs)
    path.write_text(json.dumps({"step_s": {"rpn.num_rois=4": -1.0}}))
    with pytest.raises(ValueError, match="positive seconds"):
        read_step_costs(path)


def study(root, train_time: bool = False) -> None:
    for seed in range(3):
        make_run(root / f"cheap_s{seed}", 4, seed, [v + 0.01 * seed for v in CHEAP], steps_per_epoch=100,
                 train_time_s=600.0 if train_time else None)
        make_run(root / f"dear_s{seed}", 64, seed, [v + 0.01 * seed for v in DEAR], steps_per_epoch=100,
                 train_time_s=900.0 if train_time else None)


def test_each_run_is_read_at_its_best_validation_within_the_largest_common_cost(tmp_path):
    study(tmp_path / "runs")
    make_run(tmp_path / "runs" / "dear_s3", 64, 3, [0.3], status="running", steps_per_epoch=100)  # killed early
    costs_file = tmp_path / "costs.json"
    costs_file.write_text(json.dumps({"step_s": {"rpn.num_rois=4": 1.0, "rpn.num_rois=64": 3.0}}))
    groups = group_runs(find_runs(tmp_path / "runs"))
    spent = equal_cost(groups, step_costs(groups, costs_file))
    # cheap runs reach 600 s, dear ones 900 s: the budget is 600 s, two validations (200 steps) of a dear run;
    # the run killed at 300 s does not set the budget, it is left out
    assert spent.cost == 600.0 and not spent.chosen
    assert spent.left_out["rpn.num_rois=64"] == ["`dear_s3`: stopped at 300.0 s, short of the budget"]
    assert spent.scores["rpn.num_rois=4"] == pytest.approx({s: 0.42 + 0.01 * s for s in range(3)})
    assert spent.scores["rpn.num_rois=64"] == pytest.approx({s: 0.5 + 0.01 * s for s in range(3)})
    assert spent.steps["rpn.num_rois=64"] == {0: 200, 1: 200, 2: 200}
    chosen = equal_cost(groups, step_costs(groups, costs_file), budget=800.0)
    assert chosen.scores["rpn.num_rois=4"] == {} and chosen.scores["rpn.num_rois=64"][0] == pytest.approx(0.5)
    assert chosen.left_out["rpn.num_rois=4"][0] == "`cheap_s0`: stopped at 600.0 s, short of the budget"
    # step costs are measurements: a run within 1 % of the budget is at it, one 2 % short is not
    assert equal_cost(groups, step_costs(groups, costs_file), budget=605.0).scores["rpn.num_rois=4"][0] == (
        pytest.approx(0.42))
    assert equal_cost(groups, step_costs(groups, costs_file), budget=612.0).scores["rpn.num_rois=4"] == {}
    early = equal_cost(groups, step_costs(groups, costs_file), budget=250.0)
    assert early.left_out["rpn.num_rois=64"][0] == "`dear_s0`: no validation within the budget"
    assert early.scores["rpn.num_rois=4"][0] == pytest.approx(0.2)


def test_the_report_compares_at_equal_cost_from_a_file_or_the_logged_times(tmp_path, capsys):
    study(tmp_path / "runs", train_time=True)
    costs_file = tmp_path / "costs.json"
    costs_file.write_text(json.dumps({"step_s": {"rpn.num_rois=4": 1.0, "rpn.num_rois=64": 3.0}}))
    tables = {}
    for source, options in (("file", ["--step-costs", str(costs_file)]), ("logged", [])):
        assert main([str(tmp_path / "runs"), "--output", str(tmp_path / source), "--budget", "cost", *options]) == 0
        report = (tmp_path / source / "report.md").read_text()
        assert "a budget of 600 s, the largest cost every completed run reached" in report
        rows = {row[0]: row for row in table_rows(report, "## Equal training cost")}
        tables[source] = rows
        assert rows["`rpn.num_rois=64`"][2:5] == ["200", "200, 200, 200", "0.500, 0.510, 0.520"]
        pair = next(row for row in table_rows(report, "### One-key pairs") if row[1] == "4 → 64")
        assert pair[3].startswith("+0.080 ")  # 0.50 - 0.42 at equal cost; +0.18 at equal steps
    assert tables["file"]["`rpn.num_rois=4`"][1] == "1.000 (rpn.num_rois=4)"
    assert tables["logged"]["`rpn.num_rois=4`"][1] == "1.000 (logged)"  # 600 s over 600 steps
    capsys.readouterr()
    steps = write_report(tmp_path / "runs", tmp_path / "steps").read_text()
    assert "## Equal training cost" not in steps
    assert next(row for row in table_rows(steps, "### One-key pairs") if row[1] == "4 → 64")[3].startswith("+0.180 ")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "runs"), "--step-costs", str(costs_file)])
    assert "--step-costs and --cost-budget need --budget cost" in capsys.readouterr().err


def set_config(run, **values) -> None:
    """Change keys ("trainer.max_epochs") of a made-up run's .hydra/config.yaml."""
    path = run / ".hydra" / "config.yaml"
    config = OmegaConf.load(path)
    for key, value in values.items():
        OmegaConf.update(config, key.replace("__", "."), value)
    OmegaConf.save(config, path)


@pytest.mark.slow  # two reports with their plots: ~7 s
def test_at_equal_cost_a_configuration_is_compared_by_its_longest_runs(tmp_path):
    """Cheap runs at 600 and at 1,200 steps are one configuration at equal cost (run length is the budget's to set):
    the longer ones are compared with the dear runs, the shorter left out and named; at equal steps they are two."""
    root = tmp_path / "runs"
    study(root)
    longer = [0.1, 0.2, 0.3, 0.35, 0.4, 0.42, 0.44, 0.46, 0.5, 0.55, 0.6, 0.61]  # a stretched schedule
    for seed in range(3):
        make_run(root / f"long_s{seed}", 4, seed, [v + 0.01 * seed for v in longer], steps_per_epoch=100)
        set_config(root / f"long_s{seed}", trainer__max_epochs=12)
    costs_file = tmp_path / "costs.json"
    costs_file.write_text(json.dumps({"step_s": {"rpn.num_rois=4": 1.0, "rpn.num_rois=64": 3.0}}))
    groups = group_runs(find_runs(root))
    assert sorted(groups) == ["trainer.max_epochs=12 rpn.num_rois=4", "trainer.max_epochs=3 rpn.num_rois=4",
                              "trainer.max_epochs=3 rpn.num_rois=64"]
    spent = equal_cost(groups, step_costs(groups, costs_file), budget=500.0)  # every run reaches it
    assert spent.scores["trainer.max_epochs=3 rpn.num_rois=4"] == {}
    assert spent.left_out["trainer.max_epochs=3 rpn.num_rois=4"][0] == (
        "`cheap_s0`: a longer run of this configuration (`trainer.max_epochs=12 rpn.num_rois=4`) is compared")
    assert spent.scores["trainer.max_epochs=12 rpn.num_rois=4"][0] == pytest.approx(0.4)
    assert main([str(root), "--output", str(tmp_path / "cost"), "--budget", "cost", "--step-costs", str(costs_file),
                 "--cost-budget", "900"]) == 0
    pairs = table_rows((tmp_path / "cost" / "report.md").read_text(), "### One-key pairs")
    # the dear runs' 300 steps (0.6 + s/100) against the longer cheap runs' best of their first 900 (0.5 + s/100)
    assert [(row[0], row[1], row[3].split()[0]) for row in pairs] == [("`rpn.num_rois`", "4 → 64", "+0.100")]
    steps = write_report(root, tmp_path / "steps").read_text()
    assert len(table_rows(steps, "### One-key pairs")) == 2  # 4 → 64 at 3 epochs; 3 → 12 epochs at 4 RoIs


def test_floats_equal_to_four_digits_are_one_setting(tmp_path):
    """A default written out (0.1111) and computed (1/9) by two code versions: one configuration, not two."""
    root = tmp_path / "runs"
    study(root)
    set_config(root / "cheap_s0", loss__roi_smooth_l1_beta=0.1111)
    for name in ("cheap_s1", "cheap_s2"):
        set_config(root / name, loss__roi_smooth_l1_beta=1 / 9)
    assert sorted(group_runs(find_runs(root))) == ["rpn.num_rois=4", "rpn.num_rois=64"]
    set_config(root / "cheap_s0", loss__roi_smooth_l1_beta=0.1112)
    assert len(group_runs(find_runs(root))) == 3
