"""Export a checkpoint for deployment:
``python -m frcnn_lab.export ckpt_path=<run>/checkpoints/best.ckpt [format=onnx | torchscript] [output=<file>]``.

The exported graph takes one image and holds the rest of inference:

- input ``image``: float32 (3, H, W), RGB in [0, 1], already resized the training way (shortest side to
  ``image_size``, long side at most ``max_size``); H and W are dynamic.
- inside: normalisation with the backbone's mean / std, zero padding to multiples of 32, trunk, RPN with
  its top-N / NMS proposal filtering, RoI pooling, head, class-specific decoding, clipping, score
  threshold, per-class NMS and the top detections (the checkpoint's ``rpn`` and ``roi_head`` settings).
- outputs ``boxes`` (D, 4) xyxy in the input image's pixels, ``scores`` (D,), ``labels`` (D,) int64 in 1..K.

Outside the graph, and done by ``frcnn_lab.onnx_runner``: decoding the file, the resize, and scaling the
boxes back to the original image. The file's metadata (ONNX ``metadata_props``; TorchScript extra file
``frcnn_lab.json``) holds ``classes``, their ``category_ids``, ``image_size`` and ``max_size`` for that.
Detectors with one feature level (the C4 backbones) export; FPN backbones are refused with an error.
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

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torchvision.models.detection._utils import _topk_min
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms, nms, remove_small_boxes

from frcnn_lab.checkpoints import input_sizes, load_module
from frcnn_lab.config import CONFIG_DIR
from frcnn_lab.inference import trained_resize
from frcnn_lab.lit_module import DetectionModule
from frcnn_lab.model.detector import FasterRCNN

log = logging.getLogger(__name__)
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
METADATA_FILE = "frcnn_lab.json"  # TorchScript extra file with the metadata


class SingleImageDetector(nn.Module):
    """image (3, H, W) RGB in [0, 1], resized -> boxes (D, 4), scores (D,), labels (D,): the detector's
    inference for one image, written with ops that trace to ONNX with H and W left dynamic.

    It uses the detector's own modules and settings; sizes are read as tensors (``_shape_as_tensor``) and the
    top-N uses torchvision's ``_topk_min``, so nothing about the example image's size is frozen into the trace.
    Detectors with one feature level (C4 trunks) only: ``backbone`` names the trunk in the error otherwise.
    """

    def __init__(self, detector: FasterRCNN, backbone: str = "?") -> None:
        super().__init__()
        levels = len(detector.rpn.anchor_generator.sizes)
        pooled = len(detector.roi_head.pooler.strides) if detector.roi_head is not None else 1
        if levels != 1 or pooled != 1:
            raise ValueError(f"backbone={backbone} gives {levels} feature levels to the RPN and {pooled} to the "
                             "RoI pooler; export supports detectors with one level (C4 backbones) only")
        self.detector = detector.eval()

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        detector, rpn, head = self.detector, self.detector.rpn, self.detector.roi_head
        height, width = image.shape[-2], image.shape[-1]
        limits = torch._shape_as_tensor(image)[1:].flip(0).repeat(2).to(image.dtype)  # (W, H, W, H)
        d = detector.size_divisible  # ceil to a multiple without negative floor division (ONNX Div truncates)
        padded = F.pad((image - detector.image_mean) / detector.image_std,
                       (0, (width + d - 1) // d * d - width, 0, (height + d - 1) // d * d - height))[None]
        features = detector.trunk(padded)
        (level,) = features.values()

        objectness, deltas = rpn.head(level)
        objectness = objectness.permute(0, 2, 3, 1).reshape(-1)
        deltas = deltas.reshape(1, -1, 4, deltas.shape[-2], deltas.shape[-1]).permute(0, 3, 4, 1, 2).reshape(-1, 4)
        anchors = rpn.anchor_generator(ImageList(padded, [(height, width)]), [level])[0]
        boxes = rpn.box_coder.decode_single(deltas, anchors)
        objectness, top = objectness.topk(_topk_min(objectness, rpn.pre_nms_top_n["test"], 0))
        boxes, scores = torch.min(boxes[top].clamp(min=0), limits), objectness.sigmoid()
        keep = remove_small_boxes(boxes, rpn.min_size)
        keep = keep[scores[keep] >= rpn.score_thresh]
        keep = keep[nms(boxes[keep], scores[keep], rpn.nms_iou)][: rpn.post_nms_top_n["test"]]
        proposals = boxes[keep]
        if head is None:
            return proposals, scores[keep], torch.ones_like(keep)

        class_logits, box_deltas = head.predict(features, [proposals])
        num_classes = class_logits.shape[-1]
        boxes = head.box_coder.decode_single(box_deltas, proposals).reshape(-1, num_classes, 4)
        boxes = torch.min(boxes.clamp(min=0), limits)
        scores = F.softmax(class_logits, dim=-1)
        labels = torch.arange(num_classes, device=image.device).expand_as(scores)
        # drop the background column, then one candidate per (RoI, class)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(scores > head.score_thresh)[0]
        keep = keep[remove_small_boxes(boxes[keep], head.min_size)]
        keep = keep[batched_nms(boxes[keep], scores[keep], labels[keep], head.nms_iou)][: head.detections_per_image]
        return boxes[keep], scores[keep], labels[keep]


def traceable(module: DetectionModule) -> SingleImageDetector:
    return SingleImageDetector(module.detector, module.hparams.backbone["name"]).cpu().eval()


def export_metadata(module: DetectionModule, image_size: int, max_size: int) -> dict[str, Any]:
    """What a runner needs beside the graph: class names (label i is ``classes[i - 1]``), their COCO category
    ids and the resize."""
    return {"classes": list(module.classes), "category_ids": list(module.category_ids),
            "image_size": int(image_size), "max_size": int(max_size), "mode": module.hparams.mode,
            **trained_resize(module)}


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
        raise FileExistsError(f"{path} exists already; choose another output= (nothing was written)")
    return path


def export(cfg: DictConfig) -> Path:
    if cfg.format not in FORMATS:
        raise ValueError(f"format={cfg.format!r} is unknown; choose one of {list(FORMATS)}")
    path = output_path(cfg)
    module = load_module(cfg.ckpt_path, torch.device("cpu"))
    metadata = export_metadata(module, *input_sizes(module, cfg.ckpt_path, cfg.image_size, cfg.max_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.format == "onnx":
        return export_onnx(module, path, metadata, cfg.opset)
    return export_torchscript(module, path, metadata)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    path = export(cfg)
    print(f"exported {cfg.ckpt_path} -> {path} ({cfg.format}; input: float32 (3, H, W) RGB in [0, 1] resized to "
          "the training size; outputs: boxes, scores, labels). Run it with: "
          f"python -m frcnn_lab.predict model={path} input=<images>")


if __name__ == "__main__":
    main()
