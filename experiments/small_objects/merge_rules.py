"""Merge rules of sliced inference compared on the benchmark's geometry, with a simulated detector.

The val canvases of ``data=synthetic_large`` (their real boxes) are cut into tiles as ``inference.slicing`` cuts
them; in each tile a simulated detector reports every object that shows there: the part of its box inside the
tile (a fragment where a tile edge cuts it), its corners jittered by 5 % of its side, scored
uniform(0.5, 1) x sqrt(visible share) (fragments score lower, as a detector's do), plus one false positive
per tile at a score uniform(0, 0.6). The merged detections are scored by the project's evaluation
(``DetectionEvaluation``) on the whole canvases. The only error a merge rule can add or remove is how it treats
the same object seen from several tiles, so the figures isolate the merge.

    python experiments/small_objects/merge_rules.py [--canvases 20] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from frcnn_lab.config import CONFIG_DIR
from frcnn_lab.data.datamodule import synthetic_splits
from frcnn_lab.data.tiles import boxes_in_window, tile_windows
from frcnn_lab.inference.slicing import Slicing, merge_detections
from frcnn_lab.metrics import DetectionEvaluation

RULES = {"nms @ IoU 0.5": dict(merge="nms", match_metric="iou"),
         "greedy_nmm @ IoU 0.5": dict(merge="greedy_nmm", match_metric="iou"),
         "greedy_nmm @ IoS 0.5": dict(merge="greedy_nmm", match_metric="ios")}
LAYOUTS = ((400, 0.2), (200, 0.1))  # tile side, overlap: 80 px shared (every object whole in a tile); 20 px


def simulated_tile_detections(rng, boxes, labels, window):
    """The tile's detections in the canvas's coordinates (see the module docstring)."""
    kept, clipped, _, _ = boxes_in_window(boxes, window, min_visible=0.05)
    x1, y1 = window[:2]
    parts = clipped + np.array([x1, y1, x1, y1], np.float32)
    full = boxes[kept]
    visible = np.prod(clipped[:, 2:] - clipped[:, :2], axis=1) / np.prod(full[:, 2:] - full[:, :2], axis=1)
    sides = np.repeat(np.sqrt(np.prod(parts[:, 2:] - parts[:, :2], axis=1))[:, None], 4, axis=1)
    found = parts + rng.normal(0, 0.05, parts.shape) * sides
    scores = rng.uniform(0.5, 1.0, len(kept)) * np.sqrt(visible)
    side = rng.uniform(10, 40)
    fx, fy = rng.uniform(window[0], window[2] - side), rng.uniform(window[1], window[3] - side)
    found = np.vstack([found, [[fx, fy, fx + side, fy + side]]])
    return (torch.tensor(found, dtype=torch.float32), torch.tensor(np.append(scores, rng.uniform(0, 0.6)),
            dtype=torch.float32), torch.tensor(np.append(labels[kept], rng.integers(1, 3)), dtype=torch.long))


def on_objects(detection, boxes, labels) -> int:
    """Detections scoring >= 0.5 whose centre lies in an object's box of their class: 1 per object when each
    object is reported once, more when a rule leaves an object's fragments apart."""
    confident = detection["scores"] >= 0.5
    centres = ((detection["boxes"][:, :2] + detection["boxes"][:, 2:]) / 2)[confident].numpy()
    classes = detection["labels"][confident].numpy()
    inside = ((centres[:, None, :] >= boxes[None, :, :2]) & (centres[:, None, :] < boxes[None, :, 2:])).all(-1)
    return int((inside & (classes[:, None] == labels[None, :])).any(1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canvases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        source = OmegaConf.to_container(compose("config", overrides=["data=synthetic_large"]).data.source)
    source.update(num_train=0, num_val=args.canvases, num_test=0)
    canvases = synthetic_splits(**source)["val"]
    truths = [canvases.annotation(i) for i in range(len(canvases))]
    print(f"{args.canvases} val canvases of data=synthetic_large, {sum(len(t[1]) for t in truths)} objects\n")
    print("| tiles | rule | mAP@0.5 | mAP@[.5:.95] | detections >= 0.5 on an object, per object |")
    print("| --- | --- | --- | --- | --- |")
    for size, overlap in LAYOUTS:
        for name, rule in RULES.items():
            rng = np.random.default_rng(args.seed)  # the same simulated detections for every rule
            evaluation = DetectionEvaluation(["camera", "phone"], score_threshold=0.5)
            slicing = Slicing(size=size, overlap=overlap, **rule)
            found_total = objects = 0
            for (height, width), boxes, labels, _ in truths:
                parts = [simulated_tile_detections(rng, boxes, labels, window)
                         for window in tile_windows(height, width, size, overlap)]
                joined = {key: torch.cat([part[i] for part in parts]) for i, key in
                          enumerate(("boxes", "scores", "labels"))}
                merged = merge_detections(joined, slicing)
                evaluation.update([merged], [{"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}], 0.0)
                found_total += on_objects(merged, boxes, labels)
                objects += len(boxes)
            figures = evaluation.compute()
            print(f"| {size} px, overlap {overlap} | {name} | {figures['map_50']:.3f} | {figures['map']:.3f} | "
                  f"{found_total / objects:.2f} |")


if __name__ == "__main__":
    main()
