"""Where the AP is lost: the TIDE error breakdown (Bolya et al., ECCV 2020), computed by hotcoco.

At IoU t_f = 0.5 every false positive gets one error type, tested in this order:

- ``loc`` (localisation): right class, IoU with a box of its class in [t_b, t_f];
- ``cls`` (classification): IoU >= t_f with a box of another class;
- ``dupe`` (duplicate): IoU >= t_f with a box of its class already taken by a higher-scoring detection;
- ``bkg`` (background): IoU <= t_b (0.1) with every box;
- ``both``: wrong class and IoU in (t_b, t_f) with a box of another class;

and ``miss`` counts the ground-truth boxes that are never detected nor covered by a ``loc`` / ``cls`` error.
Each type's dAP is how much mAP@0.5 (COCO's 101-point AP, the project's ``map_50``) rises when that type
alone is fixed by an oracle: ``cls`` / ``loc`` errors become true positives (the highest-scoring one
per box; the others are dropped), ``dupe`` / ``bkg`` / ``both`` detections are dropped, missed boxes
leave the count of positives. ``fp`` fixes every false positive, ``fn`` every unmatched box. The dAPs
overlap and do not sum to 1 - mAP. Crowd / difficult boxes are ignored regions, as in the mAP. A class
whose boxes are all missed without any detection keeps AP 0 under the ``miss`` fix (hotcoco's convention;
the reference tidecv drops such a class from the mean), so ``miss`` may understate a wholly missed class:
its count still shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hotcoco
from torch import Tensor

from frcnn_lab.metrics.coco_json import ground_truth, results
from frcnn_lab.metrics.gathered import GatheredDetections

# Our key -> hotcoco's name. The order is the one tables and plots show.
ERROR_TYPES = {"cls": "Cls", "loc": "Loc", "both": "Both", "dupe": "Dupe", "bkg": "Bkg", "miss": "Miss"}
SPECIAL_TYPES = {"fp": "FP", "fn": "FN"}
DESCRIPTIONS = {
    "cls": "classification", "loc": "localisation", "both": "classification + localisation",
    "dupe": "duplicate", "bkg": "background", "miss": "missed", "fp": "all false positives",
    "fn": "all false negatives",
}


def tide_errors(preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]], num_classes: int,
                foreground_iou: float = 0.5, background_iou: float = 0.1) -> dict[str, Any]:
    """preds: per image "boxes" (D, 4) xyxy, "scores" (D,), "labels" (D,) 1..K; targets: "boxes" (G, 4),
    "labels" (G,), optional "difficult" (G,) bool.

    -> {"map_50": the mAP@0.5 the dAPs start from, "delta_ap": {type: dAP} for the six error types and
    "fp" / "fn", "counts": {type: number of errors}, "foreground_iou", "background_iou"}. Without any
    ground-truth box to score, mAP and dAPs are None (JSON null)."""
    classes = [str(label) for label in range(1, num_classes + 1)]
    gt = hotcoco.COCO(ground_truth(targets, classes))
    evaluation = hotcoco.COCOeval(gt, gt.load_res(results(preds, range(1, num_classes + 1))), "bbox")
    evaluation.evaluate()
    found = evaluation.tide_errors(pos_thr=foreground_iou, bg_thr=background_iou)
    positives = sum(int((~t["difficult"].bool()).sum()) if "difficult" in t else len(t["labels"]) for t in targets)
    scored = positives > 0
    return {
        "map_50": float(found["ap_base"]) if scored else None,
        "delta_ap": {key: float(found["delta_ap"][name]) if scored else None
                     for key, name in {**ERROR_TYPES, **SPECIAL_TYPES}.items()},
        "counts": {key: int(found["counts"][name]) for key, name in ERROR_TYPES.items()},
        "foreground_iou": foreground_iou,
        "background_iou": background_iou,
    }


class TideErrors(GatheredDetections):
    """torchmetrics wrapper of ``tide_errors``: update(preds, targets) per batch; compute() -> the breakdown,
    computed once on all gathered images (hotcoco is fast enough for every validation epoch)."""

    def __init__(self, num_classes: int, foreground_iou: float = 0.5, background_iou: float = 0.1) -> None:
        super().__init__()
        self.num_classes, self.foreground_iou, self.background_iou = num_classes, foreground_iou, background_iou

    def compute(self) -> dict[str, Any]:
        preds, targets = self.images_seen()
        return tide_errors(preds, targets, self.num_classes, self.foreground_iou, self.background_iou)


def format_tide(breakdown: dict[str, Any]) -> str:
    """The breakdown as a Markdown table: type, what it means, dAP (mAP@0.5 points, 0..1) and count."""

    def show(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    lines = [f"TIDE errors (mAP@0.5 {show(breakdown['map_50'])}; dAP = gain when the type is fixed)",
             "| error | meaning | dAP | count |", "| --- | --- | --- | --- |"]
    for key in (*ERROR_TYPES, *SPECIAL_TYPES):
        count = breakdown["counts"].get(key)
        lines.append(f"| {key} | {DESCRIPTIONS[key]} | {show(breakdown['delta_ap'][key])} | "
                     f"{'' if count is None else count} |")
    return "\n".join(lines)
