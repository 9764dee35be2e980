"""frcnn_lab.export: the ONNX graph run by onnxruntime gives the PyTorch detector's detections at any image size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_lab.checkpoints import load_module
from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.data.transforms import apply_transforms, build_transforms
from frcnn_lab.export import export, export_metadata, export_onnx, export_torchscript
from frcnn_lab.onnx_runner import OnnxDetector
from frcnn_lab.predict import predict
from frcnn_lab.train import build_module
from support import compose_config

# (height, width) crops of a synthetic scene: after the shortest-side resize each gives another input size.
CROPS = [(320, 320), (240, 320), (320, 200), (150, 320), (320, 97)]


def resized_inputs(image_size: int, max_size: int) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    scene = SyntheticScenes(1, seed=3, image_sizes=((320, 320),))[0]["image"]
    transforms = build_transforms(image_size, max_size, train=False)
    inputs = []
    for height, width in CROPS:
        pixels = np.ascontiguousarray(scene[:height, :width])
        sample = {"image": pixels, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                  "image_id": "crop"}
        inputs.append((apply_transforms(transforms, sample)[0], (height, width)))
    return inputs


def assert_same_detections(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    """One-to-one: every expected detection has an unused actual one of its label within 1e-3 px / 1e-4 score."""
    assert len(actual["boxes"]) == len(expected["boxes"])
    unused = set(range(len(actual["boxes"])))
    for box, score, label in zip(expected["boxes"], expected["scores"], expected["labels"], strict=True):
        match = next((j for j in sorted(unused) if int(actual["labels"][j]) == int(label)
                      and abs(float(actual["scores"][j]) - float(score)) <= 1e-4
                      and float((actual["boxes"][j] - box).abs().max()) <= 1e-3), None)
        assert match is not None, f"no match for {box.tolist()} {float(score):.5f} label {int(label)}"
        unused.discard(match)


@pytest.fixture(scope="module")
def module(initialised_checkpoint):
    module = load_module(initialised_checkpoint, torch.device("cpu"))
    module.detector.roi_head.score_thresh = 0.0  # keep every candidate: many detections to compare
    return module


def test_onnx_matches_pytorch_at_several_sizes(module, tmp_path):
    path = export_onnx(module, tmp_path / "model.onnx", export_metadata(module, 200, 400))
    runner = OnnxDetector(path, threads=1)
    assert (runner.classes, runner.image_size, runner.max_size) == (module.classes, 200, 400)
    inputs = resized_inputs(200, 400)
    assert len({tuple(image.shape) for image, _ in inputs}) == len(CROPS)  # each a different input size
    for image, original in inputs:
        with torch.no_grad():
            (expected,) = module([image], original_sizes=[original])
        (actual,) = runner([image], original_sizes=[original])
        assert len(expected["boxes"]) > 10 and len(expected["scores"].unique()) > 0.9 * len(expected["scores"])
        assert_same_detections(expected, actual)


def test_torchscript_matches_pytorch(module, tmp_path):
    path = export_torchscript(module, tmp_path / "model.pt", export_metadata(module, 200, 400))
    extra = {"frcnn_lab.json": ""}
    traced = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["frcnn_lab.json"])["classes"] == module.classes
    for image, _ in resized_inputs(200, 400)[:3]:
        with torch.no_grad():
            (expected,) = module([image])
            boxes, scores, labels = traced(image)
        assert len(boxes) > 10  # the comparison is between detections, not between two empty results
        assert_same_detections(expected, {"boxes": boxes, "scores": scores, "labels": labels})


def test_cli_export_then_predict_with_onnx(initialised_checkpoint, tmp_path):
    ckpt = initialised_checkpoint
    target = tmp_path / "exported" / "best.onnx"
    path = export(compose_config("export", [f"ckpt_path={ckpt}", f"output={target}"], tmp_path))
    assert path == target and path.stat().st_size > 1_000_000
    written = path.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="exists already"):
        export(compose_config("export", [f"ckpt_path={ckpt}", f"output={target}"], tmp_path))
    assert path.stat().st_mtime_ns == written
    with pytest.raises(ValueError, match="format='tflite' is unknown"):
        export(compose_config("export", [f"ckpt_path={ckpt}", "format=tflite"], tmp_path))

    photos = tmp_path / "photos"
    photos.mkdir()
    scenes = SyntheticScenes(2, seed=5)
    for i in range(2):
        Image.fromarray(scenes[i]["image"]).save(photos / f"scene{i}.png")
    results = {}
    for name, source in (("torch", f"ckpt_path={ckpt}"), ("onnx", f"model={path}")):
        cfg = compose_config("predict", [source, f"input={photos}", f"output={tmp_path / name}",
                                         "score_threshold=0.0"], tmp_path)
        predict(cfg)
        results[name] = json.loads((tmp_path / name / "detections.json").read_text())
        assert (tmp_path / name / "scene0.png").is_file()
    assert len(results["torch"]) > 5 and len(results["onnx"]) == len(results["torch"])
    for theirs, ours in zip(sorted(results["torch"], key=lambda d: (d["image_id"], -d["score"], d["bbox"])),
                            sorted(results["onnx"], key=lambda d: (d["image_id"], -d["score"], d["bbox"])),
                            strict=True):
        assert theirs["category_id"] == ours["category_id"] and abs(theirs["score"] - ours["score"]) <= 1e-4
        assert np.allclose(theirs["bbox"], ours["bbox"], atol=0.011)  # detections.json rounds to 0.01 px


def test_a_detector_with_several_feature_levels_is_refused_naming_its_backbone(tmp_path):
    module = build_module(compose_config("config", ["backbone=mobilenet_v2_fpn", "backbone.weights=none"]))
    with pytest.raises(ValueError, match=r"backbone=mobilenet_v2_fpn gives \d+ feature levels .* one level \(C4"):
        export_onnx(module, tmp_path / "fpn.onnx", export_metadata(module, 200, 400))
    assert not (tmp_path / "fpn.onnx").exists()
