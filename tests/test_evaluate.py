"""frcnn_lab.evaluate on a trained checkpoint: every figure present, consistent, written as JSON."""

from __future__ import annotations

import json
import math

import pytest

from conftest import compose_config
from frcnn_lab.checkpoints import evaluation_dir, training_run_dir
from frcnn_lab.evaluate import evaluate, format_table, write_results


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
