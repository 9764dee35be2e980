"""frcnn_lab.export: the ONNX graph run by onnxruntime gives the PyTorch detector's detections at any image size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_config
from frcnn_lab.checkpoints import load_module
from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.data.transforms import apply_transforms, build_transforms
from frcnn_lab.export import export, export_metadata, export_onnx, export_torchscript
from frcnn_lab.onnx_runner import OnnxDetector
from frcnn_lab.predict import predict
from frcnn_lab.train import build_module

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


def test_onnx_matches_pytorch_at_several_sizes(module, tmp_path, one_cpu_thread):
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


def test_torchscript_matches_pytorch(module, tmp_path, one_cpu_thread):
    path = export_torchscript(module, tmp_path / "model.pt", export_metadata(module, 200, 400))
    extra = {"frcnn_lab.json": ""}
    traced = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["frcnn_lab.json"])["classes"] == module.classes
    for image, _ in resized_inputs(200, 400)[:3]:
        with torch.no_grad():
            (expected,) = module([image])
            boxes, scores, labels = traced(image)
        assert_same_detections(expected, {"boxes": boxes, "scores": scores, "labels": labels})


def test_cli_export_then_predict_with_onnx(initialised_checkpoint, tmp_path, one_cpu_thread):
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


def spread_logits(layer: torch.nn.Module, logits: torch.Tensor, std: float) -> None:
    """Rescale ``layer`` so that its ``logits`` get standard deviation ``std``: random weights without ImageNet
    statistics give near-equal scores, whose order two runtimes may break differently."""
    with torch.no_grad():
        scale = std / logits.std()
        layer.weight.mul_(scale)
        layer.bias.mul_(scale)


@pytest.fixture(scope="module", params=["mobilenet_v2_fpn", "resnet50_fpn"])
def fpn_export(request, tmp_path_factory):
    """An FPN detector (random weights, scores spread out, every candidate kept) and its ONNX file (128 / 256)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = build_module(compose_config("config", [f"backbone={request.param}", "backbone.weights=none"])).eval()
    detector = module.detector
    detector.roi_head.score_thresh = 0.0
    with torch.no_grad():
        batch = detector.batch_images([resized_inputs(128, 256)[0][0]])
        features = detector.trunk(batch.tensors)
        rpn_head = detector.rpn.head
        spread_logits(rpn_head.cls_logits, torch.cat(
            [rpn_head.cls_logits(torch.relu(rpn_head.conv(level))).flatten() for level in features.values()]), 1.0)
        proposals, _, _, _ = detector.rpn(batch, features)
        classifier = detector.roi_head.predictor.cls_score
        spread_logits(classifier, classifier(detector.roi_head.tail(detector.roi_head.pooler(features, proposals))), 2.0)
    path = export_onnx(module, tmp_path_factory.mktemp("fpn") / "model.onnx", export_metadata(module, 128, 256))
    yield module, path
    torch.set_num_threads(threads)


def test_onnx_of_an_fpn_detector_matches_pytorch_at_several_sizes(fpn_export):
    module, path = fpn_export
    detector = module.detector
    assert len(detector.rpn.anchor_generator.sizes) > 1 and len(detector.roi_head.pooler.strides) > 1
    runner = OnnxDetector(path, threads=1)
    inputs = resized_inputs(128, 256)
    assert len({tuple(image.shape) for image, _ in inputs}) == len(CROPS)
    for image, original in inputs:
        with torch.no_grad():
            (expected,) = module([image], original_sizes=[original])
            batch = detector.batch_images([image])
            proposals, _, _, _ = detector.rpn(batch, detector.trunk(batch.tensors))
        # proposals from several levels, pooled from several levels: the per-level steps all take part
        assert len(detector.roi_head.pooler.level_mapper(proposals).unique()) > 1
        (actual,) = runner([image], original_sizes=[original])
        assert len(expected["boxes"]) > 10 and len(expected["scores"].unique()) > 0.9 * len(expected["scores"])
        assert_same_detections(expected, actual)


def test_cli_exports_an_fpn_checkpoint(fpn_export, tmp_path):
    """``python -m frcnn_lab.export`` no longer refuses several feature levels: from the .ckpt to a file onnxruntime runs."""
    module, _ = fpn_export
    if module.hparams.backbone["name"] != "mobilenet_v2_fpn":
        pytest.skip("one FPN backbone is enough for the command line")
    ckpt = tmp_path / "fpn.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.0.0"}, ckpt)
    path = export(compose_config("export", [f"ckpt_path={ckpt}", "image_size=128", "max_size=256"], tmp_path))
    runner = OnnxDetector(path, threads=1)
    assert (runner.image_size, runner.max_size) == (128, 256)
    image, original = resized_inputs(128, 256)[1]
    with torch.no_grad():
        (expected,) = module([image], original_sizes=[original])
    assert_same_detections(expected, runner([image], original_sizes=[original])[0])


def test_predict_and_serve_feed_an_onnx_model_given_only_image_size_alike(fpn_export, tmp_path, monkeypatch):
    """Both load through ``inference.load_photo_detector``: ``image_size=64`` alone keeps the file's 128 / 256 ratio."""
    import uvicorn

    from frcnn_lab import serve

    module, path = fpn_export
    if module.hparams.backbone["name"] != "mobilenet_v2_fpn":
        pytest.skip("one exported file is enough")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(SyntheticScenes(1, seed=5)[0]["image"]).save(photos / "scene.png")
    summary = predict(compose_config("predict", [f"model={path}", f"input={photos}", f"output={tmp_path / 'out'}",
                                                 "image_size=64"], tmp_path))
    served = {}
    monkeypatch.setattr(serve, "create_app", lambda detector, *args: served.setdefault("detector", detector))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr("sys.argv", ["serve", f"model={path}", "image_size=64", f"hydra.run.dir={tmp_path / 'serve'}"])
    serve.main()
    assert (summary["image_size"], summary["max_size"]) == (64, 128)
    assert (served["detector"].image_size, served["detector"].max_size) == (64, 128)
