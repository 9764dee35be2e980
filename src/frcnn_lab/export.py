"""Export a checkpoint for deployment:
``python -m frcnn_lab.export ckpt_path=<run>/checkpoints/best.ckpt [format=onnx | torchscript] [output=<file>]``.

The exported graph takes one image and holds the rest of inference:

- input ``image``: float32 (3, H, W), RGB in [0, 1], already resized the training way (the checkpoint's
  ``preprocess``: e.g. shortest side to ``image_size``, long side at most ``max_size``); H and W are dynamic.
- inside: the detector's own inference (``FasterRCNN`` in eval mode, the code that validation, ``predict``
  and ``serve`` run): normalisation with the backbone's mean / std, zero padding to multiples of 32, trunk
  (one level for C4 backbones, several for FPN), RPN with its per-level top-N / NMS proposal filtering, RoI
  pooling (from each box's level with FPN), head, class-specific decoding, clipping, score threshold,
  per-class NMS and the top detections (the checkpoint's ``rpn`` and ``roi_head`` settings).
- outputs ``boxes`` (D, 4) xyxy in the input image's pixels, ``scores`` (D,), ``labels`` (D,) int64 in 1..K.

Outside the graph, and done by ``frcnn_lab.inference.onnx_detector``: decoding the file, the resize, and scaling the
boxes back to the original image. The file's metadata (ONNX ``metadata_props``; TorchScript extra file
``frcnn_lab.json``) holds ``classes``, their ``category_ids`` and the resize (``resize``, ``image_size``,
``max_size``, ``scale``) for that.
The ONNX graph comes from PyTorch's TorchScript-based exporter (``dynamo=False``), the one torchvision's
detection tests use.
An existing output file is never replaced.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from frcnn_lab.cli import hydra_main
from frcnn_lab.engine.checkpoints import load_module
from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.errors import ConfigError, OutputExistsError
from frcnn_lab.model.detector import FasterRCNN
from frcnn_lab.model.preprocess import RESIZE_KEYS, PreprocessConfig

log = logging.getLogger(__name__)
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
METADATA_FILE = "frcnn_lab.json"  # TorchScript extra file with the metadata


class SingleImageDetector(nn.Module):
    """image (3, H, W) RGB in [0, 1], resized -> boxes (D, 4), scores (D,), labels (D,): the detector's own
    inference (``FasterRCNN`` in eval mode) on a batch of one, as a graph with H and W left dynamic."""

    def __init__(self, detector: FasterRCNN) -> None:
        super().__init__()
        self.detector = detector.eval()

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        (detection,) = self.detector([image]).detections
        return detection["boxes"], detection["scores"], detection["labels"]


def traceable(module: DetectionModule) -> SingleImageDetector:
    return SingleImageDetector(module.detector).cpu().eval()


def export_metadata(module: DetectionModule, preprocess: PreprocessConfig) -> dict[str, Any]:
    """What a runner needs beside the graph: class names (label i is ``classes[i - 1]``), their COCO category
    ids and the resize of ``preprocess`` (the module's, possibly at another input size; the normalisation is in
    the graph)."""
    return {"classes": list(module.classes), "category_ids": list(module.category_ids), "mode": module.hparams.mode,
            **{key: getattr(preprocess, key) for key in RESIZE_KEYS}}


def export_onnx(module: DetectionModule, path: Path, metadata: dict[str, Any], opset: int = 17) -> Path:
    """Trace ``module``'s detector on an example image of the training size and write an ONNX file."""
    import onnx

    graph = traceable(module)
    example = torch.rand(3, metadata["image_size"], metadata["image_size"] * 4 // 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes: the sizes are read as tensors on purpose
        torch.onnx.export(
            graph, (example,), str(path), input_names=["image"], output_names=["boxes", "scores", "labels"],
            dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                          "scores": {0: "detections"}, "labels": {0: "detections"}},
            opset_version=opset, dynamo=False,
        )
    model = onnx.load(str(path))
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def export_torchscript(module: DetectionModule, path: Path, metadata: dict[str, Any]) -> Path:
    """Trace ``module``'s detector into a TorchScript file, the metadata as its extra file ``frcnn_lab.json``."""
    graph = traceable(module)
    example = torch.rand(3, metadata["image_size"], metadata["image_size"] * 4 // 3)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, (example,), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})
    return path


def output_path(cfg: DictConfig) -> Path:
    """``output``, else the checkpoint's path with the format's suffix; an existing file is refused."""
    path = Path(cfg.output) if cfg.output else Path(cfg.ckpt_path).with_suffix(FORMATS[cfg.format])
    if path.exists():
        raise OutputExistsError(f"{path} exists already; choose another output= (nothing was written)")
    return path


def export(cfg: DictConfig) -> Path:
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is unknown; choose one of {list(FORMATS)}")
    if cfg.inference.slicing.size is not None:
        raise ConfigError(f"inference.slicing.size={cfg.inference.slicing.size}: the exported graph takes whole "
                         "inputs; slice when running it: python -m frcnn_lab.predict model=<file>.onnx "
                         "inference.slicing.size=...")
    path = output_path(cfg)
    module = load_module(cfg.ckpt_path, torch.device("cpu"))
    metadata = export_metadata(module, module.preprocess.at(cfg.image_size, cfg.max_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.format == "onnx":
        return export_onnx(module, path, metadata, cfg.opset)
    return export_torchscript(module, path, metadata)


@hydra_main("export")
def main(cfg: DictConfig) -> None:
    path = export(cfg)
    print(f"exported {cfg.ckpt_path} -> {path} ({cfg.format}; input: float32 (3, H, W) RGB in [0, 1] resized to "
          "the training size; outputs: boxes, scores, labels). Run it with: "
          f"python -m frcnn_lab.predict model={path} input=<images>")


if __name__ == "__main__":
    main()
