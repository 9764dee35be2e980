"""Speed of the validation mAP: torchmetrics MeanAveragePrecision (faster_coco_eval backend), as the lab uses it.

    python experiments/bench/eval_speed.py --images 5000 --classes 20

Synthetic but realistic inputs: per image 0-6 GT boxes, and 100 predictions of which about a third are
jittered copies of the GT boxes (often with the right class) and the rest random boxes with low scores.
Updates go in batches of 8 images, as validation_step gives them. Prints the seconds for update + compute
and mAP@0.5 (a sanity figure: well above 0, below 1).
"""

from __future__ import annotations

import argparse
import time

import torch

from frcnn_lab.metrics import mean_average_precision


def random_boxes(count: int, generator: torch.Generator, size: float = 600.0) -> torch.Tensor:
    """(count, 4) xyxy boxes inside a size x size image, sides 20-300 px."""
    corner = torch.rand(count, 2, generator=generator) * (size - 300)
    side = 20 + torch.rand(count, 2, generator=generator) * 280
    return torch.cat([corner, corner + side], dim=1)


def image_pair(classes: int, detections: int, generator: torch.Generator) -> tuple[dict, dict]:
    """One image's predictions and targets."""
    num_gt = int(torch.randint(0, 7, (1,), generator=generator))
    gt_boxes = random_boxes(num_gt, generator)
    gt_labels = torch.randint(1, classes + 1, (num_gt,), generator=generator)
    hits = min(num_gt * 5, detections // 3)
    source = torch.randint(0, max(num_gt, 1), (hits,), generator=generator)
    jitter = torch.randn(hits, 4, generator=generator) * 8
    hit_boxes = gt_boxes[source] + jitter if num_gt else random_boxes(hits, generator)
    wrong_class = torch.rand(hits, generator=generator) < 0.2
    hit_labels = torch.where(wrong_class, torch.randint(1, classes + 1, (hits,), generator=generator),
                             gt_labels[source] if num_gt else torch.ones(hits, dtype=torch.long))
    misses = detections - hits
    boxes = torch.cat([hit_boxes, random_boxes(misses, generator)])
    scores = torch.cat([0.3 + 0.7 * torch.rand(hits, generator=generator),
                        0.6 * torch.rand(misses, generator=generator)])
    labels = torch.cat([hit_labels, torch.randint(1, classes + 1, (misses,), generator=generator)])
    return {"boxes": boxes, "scores": scores, "labels": labels}, {"boxes": gt_boxes, "labels": gt_labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--detections", type=int, default=100, help="predictions per image")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    pairs = [image_pair(args.classes, args.detections, generator) for _ in range(args.images)]

    metric = mean_average_precision()
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(0, len(pairs), args.batch_size):
        chunk = pairs[i : i + args.batch_size]
        metric.update([p for p, _ in chunk], [t for _, t in chunk])
    updated = time.perf_counter()
    results = metric.compute()
    done, cpu = time.perf_counter(), time.process_time() - cpu_start
    print(f"mAP over {args.images} images, {args.classes} classes, {args.detections} detections per image "
          f"(faster_coco_eval, per-class AP on): update {updated - start:.1f} s + compute {done - updated:.1f} s "
          f"= {done - start:.1f} s wall, {cpu:.1f} s CPU (target <= 30 s); mAP@0.5 {float(results['map_50']):.3f}")


if __name__ == "__main__":
    main()
