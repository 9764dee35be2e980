"""frcnn_lab.evaluate on a trained checkpoint: every figure present, consistent, written as JSON."""

from __future__ import annotations

import json
import math

import pytest

from frcnn_lab.evaluate import evaluate, format_table, write_results
from frcnn_lab.runs.folders import evaluation_dir, training_run_dir
from support import compose_config


def test_evaluate_reports_every_figure_consistently(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    cfg = compose_config("evaluate", [f"ckpt_path={ckpt}", "score_threshold=0.0"], tmp_path)
    results = evaluate(cfg)  # data: the training run's (.hydra/config.yaml)

    assert results["data"] == "synthetic" and results["split"] == "test" and results["images"] == 4
    assert set(results["ap_50_per_class"]) == set(results["ap_per_class"]) == {"camera", "phone"}
    assert 0 <= results["map"] <= results["map_50"] <= 1
    present = [v for v in results["ap_50_per_class"].values() if v is not None]
    # torchmetrics' mAP@0.5 is the mean of the per-class AP@0.5 over the classes in the split.
    assert results["map_50"] == pytest.approx(sum(present) / len(present), abs=1e-4)
    for name, ap in results["ap_per_class"].items():
        assert ap is None or ap <= results["ap_50_per_class"][name] + 1e-6
    # At threshold 0 every kept detection counts: the shares must agree with the detection count.
    assert 0 <= results["fn_rate"] <= 1 and results["detections_per_image"] >= 0
    if results["detections_per_image"] == 0:
        assert results["fn_rate"] == 1
    assert results["negatives"]["images"] == 3 and 0 <= results["negatives"]["fp_image_rate"] <= 1
    assert results["ms_per_image_median"] > 0 and results["device"] == "cpu"
    assert results["voc07"] is None

    path = write_results(results, tmp_path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))
    with pytest.raises(FileExistsError, match="exists already"):
        write_results(results, tmp_path)
    table = format_table(results)
    assert "| mAP@0.5 |" in table and f"{results['map_50']:.3f}" in table and "3 images" in table


def test_evaluate_threshold_changes_only_the_rates(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    low = evaluate(compose_config("evaluate", [f"ckpt_path={ckpt}", "score_threshold=0.0", "split=val"], tmp_path))
    high = evaluate(compose_config("evaluate", [f"ckpt_path={ckpt}", "score_threshold=1.0", "split=val"], tmp_path))
    assert low["map_50"] == high["map_50"] and low["map"] == high["map"]
    assert high["detections_per_image"] <= low["detections_per_image"]
    assert high["fn_rate"] == 1.0  # no score reaches 1.0


def test_evaluate_output_goes_beside_the_training_run(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    assert training_run_dir(ckpt) == trained_run.resolve()
    assert evaluation_dir(str(ckpt), "outputs") == str(trained_run.resolve() / "evaluate")
    loose = tmp_path / "model.ckpt"
    loose.write_bytes(b"")
    assert evaluation_dir(str(loose), "outputs") == "outputs/evaluate/runs"


def test_evaluate_names_bad_input(trained_run, tmp_path):
    missing = tmp_path / "nothing.ckpt"
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        evaluate(compose_config("evaluate", [f"ckpt_path={missing}", "data=synthetic"], tmp_path))
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    with pytest.raises(ValueError, match="split='train'"):
        evaluate(compose_config("evaluate", [f"ckpt_path={ckpt}", "split=train"], tmp_path))
    with pytest.raises(ValueError, match=r"differ from the checkpoint's classes"):
        evaluate(compose_config("evaluate", [f"ckpt_path={ckpt}", "data=synthetic", "data.classes=[phone,camera]"],
                                tmp_path))


def test_finite_maps_missing_values_to_none():
    from frcnn_lab.metrics import finite

    assert finite(float("nan")) is None and finite(-1.0) is None and finite(0.25) == 0.25
    assert not math.isnan(finite(0.0))


def test_evaluate_explains_its_errors_and_writes_what_it_scored(trained_run, tmp_path):
    import contextlib
    import csv
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from frcnn_lab.metrics.coco_json import GROUND_TRUTH_FILE, PREDICTIONS_FILE
    from frcnn_lab.metrics.tide import ERROR_TYPES, format_tide

    ckpt = trained_run / "checkpoints" / "best.ckpt"
    results = evaluate(compose_config("evaluate", [f"ckpt_path={ckpt}", "split=val"], tmp_path), coco_dir=tmp_path)
    analysis = results["error_analysis"]
    assert analysis["map_50"] == pytest.approx(results["map_50"], abs=1e-6)  # TIDE starts from the same mAP@0.5
    assert set(analysis["delta_ap"]) == {*ERROR_TYPES, "fp", "fn"}
    assert all(0 <= v <= 1 for v in analysis["delta_ap"].values())
    assert sum(analysis["counts"].values()) > 0  # an untrained detector makes errors
    assert "| miss | missed |" in format_tide(analysis)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / GROUND_TRUTH_FILE))
        scored = COCOeval(gt, gt.loadRes(str(tmp_path / PREDICTIONS_FILE)), "bbox")
        scored.evaluate()
        scored.accumulate()
        scored.summarize()
    assert len(gt.getImgIds()) == results["images"]
    assert scored.stats[0] == pytest.approx(results["map"], abs=1e-4)
    assert scored.stats[1] == pytest.approx(results["map_50"], abs=1e-4)
    # Validation logs the breakdown every epoch.
    with (trained_run / "csv" / "metrics.csv").open() as f:
        header = next(csv.reader(f))
    assert {f"val/tide_{k}" for k in analysis["delta_ap"]} <= set(header)
