"""The GPU part of the suite (``pytest -m gpu``): training with mixed precision, the checkpoint tools, the metric
states and CPU / GPU agreement on a CUDA device.

Skipped where CUDA is missing, unless ``FRCNN_LAB_GPU_TESTS_DEVICE=cpu`` runs them on the CPU (the rehearsal of
``scripts/gpu_check.py --device cpu --quick``; ``16-mixed`` has no CPU autocast in Lightning and stays skipped, and
on a CPU without native bf16 kernels only the MobileNetV2 backbones train in bf16).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from frcnn_lab.config import CONFIG_DIR, group_option
from support import TINY_RUN, compose_config

pytestmark = pytest.mark.gpu

BACKBONES = sorted(p.stem for p in (Path(CONFIG_DIR) / "backbone").glob("*.yaml"))
TINY_IMAGES = ["data.image_size=128", "data.max_size=128", "data.source.num_train=8", "data.source.num_val=4",
               "data.source.num_test=4", "data.num_negatives=2", "data.batch_size=2", "trainer.log_every_n_steps=1"]
# Detections on the GPU against the CPU, fp32 without TF32: boxes within this many pixels, scores within SCORE_ATOL.
BOX_ATOL, SCORE_ATOL = 1e-2, 1e-4


@pytest.fixture(scope="module")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("FRCNN_LAB_GPU_TESTS_DEVICE") == "cpu":
        return torch.device("cpu")
    pytest.skip("needs CUDA (FRCNN_LAB_GPU_TESTS_DEVICE=cpu runs the rehearsal on the CPU)")


def accelerator(device: torch.device) -> str:
    return "trainer.accelerator=gpu" if device.type == "cuda" else "trainer.accelerator=cpu"


def losses_logged(metrics_csv: str) -> list[float]:
    with open(metrics_csv, newline="") as f:
        return [float(row["train/loss_step"]) for row in csv.DictReader(f) if row.get("train/loss_step")]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_backbone_trains_with_mixed_precision(backbone, precision, device, tmp_path):
    if device.type == "cpu" and precision == "16-mixed":
        pytest.skip("Lightning has no fp16 autocast on the CPU")
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported() and "mobilenet" not in backbone:
        # Without AVX-512 bf16 kernels the CPU emulates bf16 convolutions: minutes per step for the larger trunks.
        pytest.skip(f"{backbone}: this CPU has no native bf16; the rehearsal trains the MobileNetV2 backbones")
    from frcnn_lab.train import train

    cfg = compose_config("config", [*TINY_RUN, *TINY_IMAGES, accelerator(device), f"backbone={backbone}",
                                    "backbone.weights=none", f"trainer.precision={precision}"],
                         tmp_path)
    summary = train(cfg)
    losses = losses_logged(summary["metrics_csv"])
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses), losses  # 8 images, batches of 2
    state = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert summary["best_map_50"] is not None


@pytest.fixture(scope="module")
def gpu_run(device, tmp_path_factory) -> Path:
    """A tiny bf16-mixed run (one epoch of 4 steps) trained on the device, laid out like the CLI's
    (.hydra/config.yaml, checkpoints/)."""
    from frcnn_lab.train import train

    run = tmp_path_factory.mktemp("gpu_run")
    cfg = compose_config("config", [*TINY_RUN, *TINY_IMAGES, accelerator(device), "trainer.precision=bf16-mixed"],
                         run)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    train(cfg)
    return run


def test_evaluate_predict_export_serve_from_the_gpu_checkpoint(gpu_run, device, tmp_path):
    from fastapi.testclient import TestClient

    from frcnn_lab.engine.photos import load_photo_detector
    from frcnn_lab.evaluate import evaluate
    from frcnn_lab.export import export
    from frcnn_lab.inference.onnx_detector import OnnxDetector
    from frcnn_lab.predict import predict
    from frcnn_lab.serve import create_app

    ckpt = gpu_run / "checkpoints" / "best.ckpt"
    results = evaluate(compose_config("evaluate", [f"ckpt_path={ckpt}", f"device={device.type}", "split=val",
                                                   "score_threshold=0.0"], tmp_path / "eval"))
    assert results["device"].startswith(device.type) and results["images"] == 4
    assert 0.0 <= results["map_50"] <= 1.0 and results["ms_per_image_median"] > 0

    photo = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    summary = predict(compose_config("predict", [f"ckpt_path={ckpt}", f"input={tmp_path / 'photo.png'}",
                                                 f"output={tmp_path / 'predicted'}", f"device={device.type}",
                                                 "score_threshold=0.0"], tmp_path / "predict"))
    assert summary["images"] == 1 and (tmp_path / "predicted" / "detections.json").is_file()

    onnx_path = export(compose_config("export", [f"ckpt_path={ckpt}", f"output={tmp_path / 'best.onnx'}"],
                                      tmp_path / "export"))
    image = torch.rand(3, 128, 160)
    onnx_detections = OnnxDetector(onnx_path)([image])[0]
    assert set(onnx_detections) >= {"boxes", "scores", "labels"}

    detector = load_photo_detector(ckpt, None, None, None, device.type)
    png = io.BytesIO()
    Image.fromarray(photo).save(png, format="PNG")
    answer = TestClient(create_app(detector, {})).post("/predict", files={"file": ("photo.png", png.getvalue(),
                                                                                   "image/png")})
    assert answer.status_code == 200 and answer.json()["width"] == 200


def test_metric_states_stay_on_the_device_through_compute(device):
    from frcnn_lab.metrics import DetectionEvaluation

    metrics = DetectionEvaluation(["camera", "phone"], score_threshold=0.5).to(device)
    boxes = torch.tensor([[10.0, 10.0, 50.0, 60.0], [70.0, 20.0, 120.0, 90.0]], device=device)
    preds = [{"boxes": boxes, "scores": torch.tensor([0.9, 0.4], device=device),
              "labels": torch.tensor([1, 2], device=device)}]
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2], device=device)}]
    metrics.update(preds, targets, ms_per_image=3.0)
    figures = metrics.compute()
    assert figures["map_50"] == pytest.approx(1.0)
    states = [value for metric in metrics.modules() if hasattr(metric, "_defaults")
              for name in metric._defaults for value in _tensors(getattr(metric, name))]
    assert states and all(t.device.type == device.type for t in states)


def _tensors(state) -> list[torch.Tensor]:
    return [state] if torch.is_tensor(state) else [t for t in state if torch.is_tensor(t)]


def test_detections_on_the_device_equal_the_cpu_ones(device):
    """fp32 with TF32 off on both: the same detections, boxes within BOX_ATOL px and scores within SCORE_ATOL."""
    from frcnn_lab.data.synthetic import SyntheticScenes
    from frcnn_lab.model.detector import build_detector

    groups = {g: group_option(g) for g in ("rpn", "roi_head", "loss")}
    backbone = group_option("backbone", "mobilenet_v2")
    torch.manual_seed(0)
    detector = build_detector({**backbone, "weights": "none"}, groups["rpn"], groups["roi_head"], groups["loss"],
                              num_classes=2).eval()
    with torch.no_grad():  # a head whose scores differ from box to box, so detections compare one to one
        detector.roi_head.predictor.cls_score.weight.normal_(std=0.05)
    scenes = SyntheticScenes(8, seed=0, empty_fraction=0.0, image_sizes=((224, 288),))
    images = [torch.from_numpy(scenes[i]["image"]).permute(2, 0, 1).float().div(255) for i in range(2)]
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            on_cpu = detector(images).detections
            on_device = detector.to(device)([image.to(device) for image in images]).detections
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    for cpu, gpu in zip(on_cpu, on_device, strict=True):
        assert len(cpu["boxes"]) > 0 and len(cpu["boxes"]) == len(gpu["boxes"])
        torch.testing.assert_close(gpu["boxes"].cpu(), cpu["boxes"], atol=BOX_ATOL, rtol=0)
        torch.testing.assert_close(gpu["scores"].cpu(), cpu["scores"], atol=SCORE_ATOL, rtol=0)
        assert torch.equal(gpu["labels"].cpu(), cpu["labels"])
