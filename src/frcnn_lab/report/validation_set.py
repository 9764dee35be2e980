"""The validation set's own uncertainty: mAP@0.5 over a bootstrap of the validation images.

``frcnn_lab.evaluate`` writes a run's scored detections and the ground truth as COCO JSON
(``<run>/evaluate/<time>/predictions_coco.json`` and ``ground_truth_coco.json``). From them each detection is
matched once at IoU 0.5 exactly as pycocotools' ``COCOeval`` matches it (per image and category: at most 100
detections by score, crowd / difficult boxes ignored, a detection on one neither rewarded nor penalised), which
leaves per detection its class, score and TP / FP / ignored flag and per image its count of GT boxes per class.
A resample of the images (with replacement, as many as the set has) weights every detection and GT box by how
often its image was drawn, and AP@0.5 is COCO's 101-point interpolated AP of the weighted precision-recall
curve, averaged over the classes with a GT box in the resample. On the full set (every weight 1) this is
``COCOeval``'s AP@0.5.

The percentile interval of a run's resampled mAP@0.5 says how much the score would move with another draw of
validation images of the same kind; a comparison of runs evaluated on the same images applies the same resample
to every run, so what the images share cancels.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frcnn_lab.metrics.coco_json import GROUND_TRUTH_FILE, PREDICTIONS_FILE

IOU = 0.5
MAX_DETECTIONS = 100                   # per image and class, COCOeval's maxDets for AP@0.5
RECALLS = np.linspace(0.0, 1.0, 101)   # COCO's recall thresholds
CHUNK = 250                            # resamples per array, to bound memory


@dataclass(frozen=True)
class Matches:
    """One run's detections matched at IoU 0.5: per detection (D) and per image (I) x class (K)."""

    key: str                  # digest of the ground truth: runs with the same key were scored on the same images
    gt: np.ndarray            # (I, K) GT boxes that count (not crowd / difficult)
    image: np.ndarray         # (D,) image index of each detection
    category: np.ndarray      # (D,) class index
    score: np.ndarray         # (D,)
    tp: np.ndarray            # (D,) bool: matched a GT box that counts
    ignored: np.ndarray       # (D,) bool: matched a crowd / difficult box

    @property
    def images(self) -> int:
        return self.gt.shape[0]


def box_iou(detections: np.ndarray, boxes: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, 4) and (G, 4) COCO [x, y, w, h] -> (D, G) IoU; against a crowd box, intersection over the detection's
    area (pycocotools' ``bbIou``)."""
    dx, dy, dw, dh = (detections[:, i, None] for i in range(4))
    gx, gy, gw, gh = (boxes[None, :, i] for i in range(4))
    w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
    h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
    overlap = (w > 0) & (h > 0)
    inter = np.where(overlap, w * h, 0.0)
    union = np.where(crowd[None, :], dw * dh, dw * dh + gw * gh - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlap)


def match_image(scores: np.ndarray, detections: np.ndarray, boxes: np.ndarray,
                crowd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image and class -> (indexes of the detections kept, highest score first; their TP and ignored flags),
    by ``COCOeval.evaluateImg``'s greedy rule at IoU 0.5."""
    kept = np.argsort(-scores, kind="mergesort")[:MAX_DETECTIONS]
    order = np.argsort(crowd, kind="mergesort")  # boxes that count first
    boxes, crowd = boxes[order], crowd[order]
    ious = box_iou(detections[kept], boxes, crowd)
    taken = np.zeros(len(boxes), bool)
    tp, ignored = np.zeros(len(kept), bool), np.zeros(len(kept), bool)
    for d in range(len(kept)):
        best, match = min(IOU, 1 - 1e-10), -1
        for g in range(len(boxes)):
            if taken[g] and not crowd[g]:
                continue
            if match > -1 and not crowd[match] and crowd[g]:
                break
            if ious[d, g] < best:
                continue
            best, match = ious[d, g], g
        if match > -1:
            taken[match] = True
            ignored[d], tp[d] = crowd[match], not crowd[match]
    return kept, tp, ignored


def match(predictions: Sequence[Mapping[str, Any]], ground_truth: Mapping[str, Any], key: str = "") -> Matches:
    """COCO results and a COCO dataset -> ``Matches`` (images and classes in ascending id order, as COCOeval)."""
    images = sorted(image["id"] for image in ground_truth["images"])
    classes = sorted(category["id"] for category in ground_truth["categories"])
    image_index, class_index = {v: i for i, v in enumerate(images)}, {v: i for i, v in enumerate(classes)}
    if unknown := sorted({p["image_id"] for p in predictions} - set(image_index)):
        raise ValueError(f"detections on images {unknown[:5]} that the ground truth does not list")
    gt = np.zeros((len(images), len(classes)), int)
    boxes: dict[tuple[int, int], list] = {}
    for annotation in ground_truth["annotations"]:
        cell = (image_index[annotation["image_id"]], class_index[annotation["category_id"]])
        crowd = bool(annotation.get("iscrowd", 0))
        boxes.setdefault(cell, []).append((annotation["bbox"], crowd))
        gt[cell] += not crowd
    found: dict[tuple[int, int], list] = {}
    for p in predictions:
        if p["category_id"] in class_index:  # COCOeval scores only the ground truth's classes
            found.setdefault((image_index[p["image_id"]], class_index[p["category_id"]]), []).append(p)
    rows = []
    for (i, k), detections in sorted(found.items(), key=lambda item: (item[0][1], item[0][0])):
        cell_boxes = boxes.get((i, k), [])
        scores = np.array([d["score"] for d in detections], float)
        kept, tp, ignored = match_image(scores, np.array([d["bbox"] for d in detections], float).reshape(-1, 4),
                                        np.array([b for b, _ in cell_boxes], float).reshape(-1, 4),
                                        np.array([c for _, c in cell_boxes], bool))
        rows += [(i, k, scores[d], t, g) for d, t, g in zip(kept, tp, ignored, strict=True)]
    image, category, score, tp, ignored = (np.array([row[i] for row in rows]) for i in range(5))
    return Matches(key, gt, image.astype(int), category.astype(int), score.astype(float), tp.astype(bool),
                   ignored.astype(bool))


def load_matches(folder: Path) -> Matches:
    """``folder``'s ``predictions_coco.json`` and ``ground_truth_coco.json`` -> ``Matches``."""
    truth = (folder / GROUND_TRUTH_FILE).read_bytes()
    return match(json.loads((folder / PREDICTIONS_FILE).read_text()), json.loads(truth),
                 hashlib.sha256(truth).hexdigest())


def mean_ap(matches: Matches, weights: np.ndarray) -> np.ndarray:
    """(B, I) image weights (how often each image is drawn) -> (B,) mAP@0.5, COCO's 101-point AP averaged over the
    classes with a weighted GT count above 0 (NaN where no class has one)."""
    weights = np.atleast_2d(weights).astype(float)
    counts = weights @ matches.gt                                   # (B, K)
    per_class = np.full(counts.shape, np.nan)
    for k in range(matches.gt.shape[1]):
        rows = np.flatnonzero(matches.category == k)
        # COCOeval: per image highest score first, images in id order, then a stable sort by score
        rows = rows[np.argsort(-matches.score[rows], kind="mergesort")]
        w = weights[:, matches.image[rows]]
        tp = np.cumsum(w * matches.tp[rows], axis=1)
        fp = np.cumsum(w * ~(matches.tp[rows] | matches.ignored[rows]), axis=1)
        precision = tp / (tp + fp + np.spacing(1))
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        for b in np.flatnonzero(counts[:, k] > 0):
            reached = np.searchsorted(tp[b] / counts[b, k], RECALLS, side="left")
            inside = reached < len(rows)
            per_class[b, k] = envelope[b, reached[inside]].sum() / len(RECALLS)
    with warnings.catch_warnings():  # a resample without any GT box: NaN, said by the result itself
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_class, axis=1) if per_class.size else np.full(len(weights), np.nan)


def resample_weights(images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, images): how often each image is drawn in each bootstrap resample."""
    return np.random.default_rng(seed).multinomial(images, np.full(images, 1 / images), size=resamples)


def bootstrap_maps(runs: Sequence[Matches], resamples: int, seed: int) -> np.ndarray:
    """(runs, resamples) mAP@0.5 of runs scored on the same images, every run under the same resamples."""
    if len({m.key for m in runs}) > 1:
        raise ValueError("runs scored on different images cannot share resamples")
    weights = resample_weights(runs[0].images, resamples, seed)
    return np.stack([np.concatenate([mean_ap(m, weights[i:i + CHUNK]) for i in range(0, resamples, CHUNK)])
                     for m in runs])


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


@dataclass(frozen=True)
class OverImages:
    """Runs' mAP@0.5 on their saved detections, on all images and per bootstrap resample of the images."""

    full: dict[Any, float]            # run -> mAP@0.5 on every image
    resampled: dict[Any, np.ndarray]  # run -> (resamples,), the same resamples for runs scored on the same images
    keys: dict[Any, str]              # run -> digest of its ground truth
    images: dict[Any, int]

    def interval(self, run: Any, level: float) -> tuple[float, float, float] | None:
        """(mAP@0.5, low, high) of one run; None without saved detections."""
        if run not in self.full:
            return None
        return (self.full[run], *percentile_interval(self.resampled[run], level))

    def contrast(self, weights: Mapping[Any, float], level: float) -> tuple[float, float, float] | None:
        """(sum of weight x mAP@0.5, its interval) over runs scored on the same images; None when a run has no
        saved detections or the runs were scored on different images."""
        if any(run not in self.full for run in weights) or len({self.keys[run] for run in weights}) != 1:
            return None
        point = sum(w * self.full[run] for run, w in weights.items())
        samples = sum(w * self.resampled[run] for run, w in weights.items())
        return (point, *percentile_interval(samples, level))


def over_images(folders: Mapping[Any, Path], resamples: int, seed: int) -> OverImages:
    """Run -> its folder of COCO files -> the bootstrap over images of every run, runs scored on the same images
    under the same resamples."""
    matches = {run: load_matches(folder) for run, folder in folders.items()}
    resampled, full = {}, {}
    for key in {m.key for m in matches.values()}:
        runs = [run for run, m in matches.items() if m.key == key]
        for run, maps in zip(runs, bootstrap_maps([matches[r] for r in runs], resamples, seed), strict=True):
            resampled[run] = maps
            full[run] = float(mean_ap(matches[run], np.ones((1, matches[run].images)))[0])
    return OverImages(full, resampled, {run: m.key for run, m in matches.items()},
                      {run: m.images for run, m in matches.items()})
