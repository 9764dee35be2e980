"""Run a detector exported by ``frcnn_lab.export`` with onnxruntime, with the checkpoint's interface.

``OnnxDetector(path)`` reads the class names, their COCO category ids and the resize (its ``preprocess``) from the
file's metadata; called like the trained module (``detector([image], original_sizes=[(h, w)])``)
it returns per image "boxes" (D, 4) xyxy, "scores" (D,) and "labels" (D,) as tensors, in the coordinates of
``original_sizes`` when given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from frcnn_lab.errors import BadInputError, MissingInputError
from frcnn_lab.model.preprocess import RESIZE_KEYS, PreprocessConfig, rescale_boxes


class OnnxDetector:
    """An exported ``.onnx`` file in an onnxruntime CPU session (``threads``: intra-op threads, 0 = its default)."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"model={path}: no such ONNX file")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: the exporter's unused-initialiser notices are no news
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        metadata = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in ("classes", "category_ids", *RESIZE_KEYS) if k not in metadata]
        if missing:
            raise BadInputError(f"model={path} lacks the metadata {missing}: export it with python -m frcnn_lab.export")
        self.path = path
        self.classes: list[str] = json.loads(metadata["classes"])
        self.category_ids: list[int] = json.loads(metadata["category_ids"])
        # The normalisation is inside the graph; the resize is done before it, as the checkpoint's detector had it.
        self.preprocess = PreprocessConfig(**{key: json.loads(metadata[key]) for key in RESIZE_KEYS})

    def __call__(
        self, images: Sequence[Tensor], original_sizes: Sequence[tuple[int, int]] | None = None,
        proposals_per_image: int | None = None,
    ) -> list[dict[str, Tensor]]:
        """Resized images [(3, H_i, W_i)] in [0, 1] -> detections per image (one graph run each). The proposal
        budget is the one exported in the graph: ``proposals_per_image`` is not used."""
        detections = []
        for i, image in enumerate(images):
            boxes, scores, labels = self.session.run(None, {"image": image.detach().cpu().float().numpy()})
            detection = {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores),
                         "labels": torch.from_numpy(labels)}
            if original_sizes is not None:
                detection["boxes"] = rescale_boxes(detection["boxes"], tuple(image.shape[-2:]), original_sizes[i])
            detections.append(detection)
        return detections
