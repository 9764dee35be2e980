"""The README's Python example runs as written and does what it says."""

from __future__ import annotations

import re

import torch

from support import REPO_ROOT


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), flags=re.S)


def test_rpn_and_roi_head_work_on_a_user_feature_map():
    (example,) = [b for b in python_blocks() if "RegionProposalNetwork" in b]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    proposals, detections = namespace["proposals"], namespace["detections"]
    assert len(proposals) == 2 and len(detections) == 2
    for boxes, (height, width) in zip(proposals, [(320, 400), (300, 380)], strict=True):
        assert boxes.shape[1] == 4 and len(boxes) > 0
        assert torch.all(boxes[:, 2] <= width) and torch.all(boxes[:, 3] <= height)
    for detection in detections:
        assert set(detection) == {"boxes", "scores", "labels"}
        assert torch.all((detection["labels"] >= 1) & (detection["labels"] <= 2))
