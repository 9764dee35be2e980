"""DetectionEvaluation, the figures of validation and evaluate: states on the module's device, one rule for
missing values, the warm-up batch left out of the timing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from frcnn_lab.engine.module import validation_logs
from frcnn_lab.metrics import DetectionEvaluation
from frcnn_lab.model.detector import DetectorOutput
from frcnn_lab.train import build_module
from support import compose_config


def metric_states(evaluation: DetectionEvaluation) -> dict[str, list[torch.Tensor]]:
    """Every torchmetrics state of the collection, list states flattened: {metric.state: [tensors]}."""
    states = {}
    for name, metric in evaluation.named_children():
        for state in metric._defaults:
            value = getattr(metric, state)
            states[f"{name}.{state}"] = list(value) if isinstance(value, list) else [value]
    return states


class FixedDetections(nn.Module):
    """A detector stand-in that returns the same detections, on the device of the images."""

    def forward(self, images, targets=None, original_sizes=None, proposals_per_image=None) -> DetectorOutput:
        device = images[0].device
        detection = {"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0], [5.0, 5.0, 30.0, 40.0]], device=device),
                     "scores": torch.tensor([0.9, 0.3], device=device),
                     "labels": torch.tensor([1, 2], device=device)}
        return DetectorOutput(detections=[dict(detection) for _ in images])


def test_validation_keeps_every_metric_state_on_the_module_device():
    """Under DDP torchmetrics all-gathers each state on the state's own device, and NCCL gathers CUDA tensors
    only: a state left on the CPU while the module is on a GPU fails at the first validation's end. The meta
    device stands in for the GPU here: a `.cpu()` copy (or an `.item()` / `int()` sync) of a prediction or a
    target on the way into the metrics raises, and every state must end up on the module's device."""
    cfg = compose_config("config", ["backbone.weights=none", "data=voc"])  # VOC adds the VOC07 metric
    module = build_module(cfg)
    module.detector = FixedDetections()
    module.to("meta")
    meta = torch.device("meta")
    images = [torch.zeros(3, 48, 64, device=meta), torch.zeros(3, 64, 48, device=meta)]
    targets = [{"boxes": torch.zeros(n, 4, device=meta), "labels": torch.ones(n, dtype=torch.long, device=meta),
                "difficult": torch.zeros(n, dtype=torch.bool, device=meta), "image_id": f"image{n}",
                "original_size": (48, 64)} for n in (1, 0)]

    for batch_idx in range(2):
        preds = module.validation_step((images, targets), batch_idx)
        assert all(p["boxes"].device == meta for p in preds)

    states = metric_states(module.val_metrics)
    assert "voc07.det_boxes" in states and "coco.detection_box" in states and "time.ms_per_image" in states
    misplaced = {name: [t.device for t in tensors] for name, tensors in states.items()
                 if any(t.device != meta for t in tensors)}
    assert not misplaced, f"metric states off the module's device: {misplaced}"
    assert len(states["coco.detection_box"]) == 4  # two batches of two images were added


def test_figures_on_the_cpu_with_one_rule_for_absent_classes():
    evaluation = DetectionEvaluation(["camera", "phone", "remote"], score_threshold=0.5)

    def detections(boxes, scores, labels):
        return {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}

    # Image 1: its camera found exactly (0.9) plus a phone (0.3, below the threshold); image 2 has no object,
    # and a camera false alarm (0.6) ranked below every true one.
    preds = [detections([[1.0, 1.0, 20.0, 20.0], [5.0, 5.0, 30.0, 40.0]], [0.9, 0.3], [1, 2]),
             detections([[2.0, 2.0, 9.0, 9.0]], [0.6], [1])]
    targets = [{"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    for ms in (50.0, 2.0, 4.0):  # the first batch (warm-up) is left out of the median
        evaluation.update(preds, targets, ms)
    figures = evaluation.compute()

    assert figures["images"] == 6 and figures["ms_per_image_median"] == 3.0
    assert figures["ap_50_per_class"]["camera"] == pytest.approx(1.0)
    assert figures["ap_per_class"]["camera"] == pytest.approx(1.0)
    assert figures["map_50"] == pytest.approx(1.0)  # over the classes present in the ground truth only
    # phone: detections but no ground truth; remote: neither. Both are None, whatever torchmetrics reports.
    assert figures["ap_50_per_class"]["phone"] is None and figures["ap_per_class"]["remote"] is None
    assert figures["fn_rate"] == 0.0 and figures["fp_image_rate"] == 1.0 and figures["detections_per_image"] == 1.0
    assert figures["voc07"] is None
    logs = validation_logs(figures, ["camera", "phone", "remote"])
    assert math.isnan(logs["val/ap_phone"]) and math.isnan(logs["val/ap50_remote"]) and logs["val/ap_camera"] == 1.0

    evaluation.reset()
    evaluation.update(preds, targets, 7.0)
    assert evaluation.compute()["ms_per_image_median"] == 7.0  # a single batch is all there is
