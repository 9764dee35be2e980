"""frcnn_lab.export: the ONNX graph run by onnxruntime gives the PyTorch detector's detections at any image size."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.data.transforms import apply_transforms, build_transforms
from frcnn_lab.engine.checkpoints import load_module
from frcnn_lab.export import export, export_metadata, export_onnx, export_torchscript
from frcnn_lab.inference.onnx_detector import OnnxDetector
from frcnn_lab.model.preprocess import PreprocessConfig
from frcnn_lab.predict import predict
from frcnn_lab.train import build_module
from support import compose_config

# (height, width) crops of a synthetic scene: after the shortest-side resize each gives another input size.
CROPS = [(320, 320), (240, 320), (320, 200), (150, 320), (320, 97)]


def resized_inputs(image_size: int, max_size: int) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    scene = SyntheticScenes(1, seed=3, image_sizes=((320, 320),))[0]["image"]
    transforms = build_transforms(PreprocessConfig(image_size=image_size, max_size=max_size), train=False)
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
    path = export_onnx(module, tmp_path / "model.onnx", export_metadata(module, module.preprocess.at(200, 400)))
    runner = OnnxDetector(path, threads=1)
    assert runner.classes == module.classes
    # the resize as the metadata gives it; the normalisation is inside the graph
    assert runner.preprocess == replace(module.preprocess.at(200, 400), image_mean=None, image_std=None)
    inputs = resized_inputs(200, 400)
    assert len({tuple(image.shape) for image, _ in inputs}) == len(CROPS)  # each a different input size
    for image, original in inputs:
        with torch.no_grad():
            (expected,) = module([image], original_sizes=[original])
        (actual,) = runner([image], original_sizes=[original])
        assert len(expected["boxes"]) > 10 and len(expected["scores"].unique()) > 0.9 * len(expected["scores"])
        assert_same_detections(expected, actual)


def test_torchscript_matches_pytorch(module, tmp_path):
    path = export_torchscript(module, tmp_path / "model.pt", export_metadata(module, module.preprocess.at(200, 400)))
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


def spread_outputs(layer: torch.nn.Module, outputs: torch.Tensor, std: float) -> None:
    """Rescale ``layer`` so that its ``outputs`` get standard deviation ``std``. Random weights without ImageNet
    statistics give near-equal scores, whose order two runtimes may break differently, and box deltas far larger
    than a trained detector's, which magnify float32 rounding into the boxes."""
    with torch.no_grad():
        scale = std / outputs.std()
        layer.weight.mul_(scale)
        layer.bias.mul_(scale)


# Per FPN backbone: the input sizes (image_size, max_size) and RPN settings of the test. RoIs go above the finest
# pooled level from sqrt(w h) = 112 (mobilenet_v2_fpn, strides 8..32; with anchors up to 512 at 256 px) or 56
# (resnet50_fpn, strides 4..32). 50 proposals per level before NMS: fewer than the finer levels have and more
# than the coarsest ("pool") has, so both sides of the per-level top-N run and no level fills the 100 alone.
FPN_CASES = {
    "mobilenet_v2_fpn": ((256, 512), ["rpn.anchor_sizes=[64,128,256,512]"]),
    "resnet50_fpn": ((128, 256), []),
}
FPN_RPN = ["rpn.pre_nms_top_n_test=50", "rpn.post_nms_top_n_test=100"]


@pytest.fixture(scope="module", params=["mobilenet_v2_fpn", pytest.param("resnet50_fpn", marks=pytest.mark.slow)])
def fpn_export(request, tmp_path_factory):
    """An FPN detector (random weights, outputs rescaled, every candidate kept), its ONNX file and input sizes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sizes, overrides = FPN_CASES[request.param]
    module = build_module(compose_config("config", [f"backbone={request.param}", "backbone.weights=none",
                                                    *FPN_RPN, *overrides])).eval()
    detector = module.detector
    detector.roi_head.score_thresh = 0.0
    rpn_head, predictor = detector.rpn.head, detector.roi_head.predictor
    with torch.no_grad():
        batch = detector.preprocess([resized_inputs(*sizes)[0][0]])
        features = detector.trunk(batch.tensors)
        hidden = [torch.relu(rpn_head.conv(level)) for level in features.values()]
        spread_outputs(rpn_head.cls_logits, torch.cat([rpn_head.cls_logits(h).flatten() for h in hidden]), 1.0)
        spread_outputs(rpn_head.bbox_pred, torch.cat([rpn_head.bbox_pred(h).flatten() for h in hidden]), 0.1)
        proposals, _, _, _ = detector.rpn(batch, features)
        representation = detector.roi_head.tail(detector.roi_head.pooler(features, proposals))
        spread_outputs(predictor.cls_score, predictor.cls_score(representation), 2.0)
        spread_outputs(predictor.bbox_pred, predictor.bbox_pred(representation), 0.5)
    metadata = export_metadata(module, module.preprocess.at(*sizes))
    path = export_onnx(module, tmp_path_factory.mktemp("fpn") / "model.onnx", metadata)
    yield module, path, sizes
    torch.set_num_threads(threads)


def test_onnx_of_an_fpn_detector_matches_pytorch_at_several_sizes(fpn_export):
    module, path, sizes = fpn_export
    detector = module.detector
    assert len(detector.rpn.anchor_generator.sizes) > 1 and len(detector.roi_head.pooler.strides) > 1
    runner = OnnxDetector(path, threads=1)
    inputs = resized_inputs(*sizes)
    assert len({tuple(image.shape) for image, _ in inputs}) == len(CROPS)
    pooled_levels = []
    for image, original in inputs:
        with torch.no_grad():
            (expected,) = module([image], original_sizes=[original])
            batch = detector.preprocess([image])
            proposals, _, _, _ = detector.rpn(batch, detector.trunk(batch.tensors))
        pooled_levels.append(set(detector.roi_head.pooler.level_mapper(proposals).tolist()))
        (actual,) = runner([image], original_sizes=[original])
        assert len(expected["boxes"]) > 10 and len(expected["scores"].unique()) > 0.9 * len(expected["scores"])
        assert_same_detections(expected, actual)
    # RoIs pooled from several levels, with a level left without RoIs: the merge of levels runs both ways
    assert all(1 < len(levels) < len(detector.roi_head.pooler.strides) for levels in pooled_levels), pooled_levels


@pytest.mark.slow
@pytest.mark.parametrize("fpn_export", ["mobilenet_v2_fpn"], indirect=True)
def test_cli_exports_an_fpn_checkpoint(fpn_export, tmp_path):
    """``frcnn_lab.export`` takes a checkpoint with several feature levels to a file that onnxruntime runs alike."""
    module, _, sizes = fpn_export
    ckpt = tmp_path / "fpn.ckpt"
    hparams = {**module.hparams, "preprocess": asdict(module.preprocess.at(*sizes))}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": "2.0.0"}, ckpt)
    path = export(compose_config("export", [f"ckpt_path={ckpt}"], tmp_path))
    runner = OnnxDetector(path, threads=1)
    assert (runner.preprocess.image_size, runner.preprocess.max_size) == sizes  # the sizes the checkpoint records
    image, original = resized_inputs(*sizes)[1]
    with torch.no_grad():
        (expected,) = load_module(ckpt)([image], original_sizes=[original])
    assert_same_detections(expected, runner([image], original_sizes=[original])[0])


@pytest.mark.parametrize("fpn_export", ["mobilenet_v2_fpn"], indirect=True)
def test_predict_and_serve_feed_an_onnx_model_given_only_image_size_alike(fpn_export, tmp_path, monkeypatch):
    """Both load through ``inference.load_photo_detector``: an ``image_size`` alone keeps the file's ratio."""
    import uvicorn

    from frcnn_lab import serve

    _, path, sizes = fpn_export
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(SyntheticScenes(1, seed=5)[0]["image"]).save(photos / "scene.png")
    summary = predict(compose_config("predict", [f"model={path}", f"input={photos}", f"output={tmp_path / 'out'}",
                                                 f"image_size={sizes[0] // 2}"], tmp_path))
    served = {}
    monkeypatch.setattr(serve, "create_app", lambda detector, *args: served.setdefault("detector", detector))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr("sys.argv", ["serve", f"model={path}", f"image_size={sizes[0] // 2}",
                                     f"hydra.run.dir={tmp_path / 'serve'}"])
    serve.main()
    half = (sizes[0] // 2, sizes[1] // 2)  # the file's ratio of the two
    assert (summary["image_size"], summary["max_size"]) == half
    assert (served["detector"].preprocess.image_size, served["detector"].preprocess.max_size) == half
