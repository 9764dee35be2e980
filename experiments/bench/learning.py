"""Does this project's detector learn as well as torchvision's? Both trained alike, then scored alike.

    python experiments/bench/learning.py --data easy --steps 300 --output experiments/bench/learning_easy.json
    python experiments/bench/learning.py --data hard --steps 200 --output experiments/bench/learning_hard.json

For each seed, this project's ``FasterRCNN`` (MobileNetV2 trunk with ImageNet weights, the default config
groups; ``--data hard`` adds the findings preset's anchors down to 16 px) and torchvision's
``FasterRCNN`` built from copies of the same parts by ``frcnn_lab.model.reference.torchvision_equivalent``
start from the same weights, see the same batches in the same order (square scenes, so torchvision's
resize is a scale of 1), use the same SGD optimiser, warm-up + cosine schedule (the lab's
``warmup_then_decay``) and gradient clipping, for ``--steps`` steps. Both are then scored on the same
validation scenes by the lab's dataset-level mAP (torchmetrics). Prints val mAP@0.5 and mAP of each,
the ratio ours / torchvision and the seconds each took; writes them with the machine as JSON
(never over an existing file unless ``--overwrite``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from frcnn_lab.checks import typed
from frcnn_lab.config import group_option
from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.data.synthetic_hard import ClutteredScenes
from frcnn_lab.engine.optim import OptimConfig, warmup_then_decay
from frcnn_lab.metrics import mean_average_precision
from frcnn_lab.model.detector import FasterRCNN, build_detector
from frcnn_lab.model.reference import torchvision_equivalent

# (generator, square image side, rpn overrides): the quickstart's scenes and the findings benchmark's.
DATASETS = {
    "easy": (SyntheticScenes, 320, {}),
    "hard": (ClutteredScenes, 600, {"anchor_sizes": [16, 32, 64, 128, 256]}),
}


def config_group(group: str, name: str = "default") -> dict:
    return group_option(group, name)


def to_tensors(sample: dict) -> tuple[Tensor, dict[str, Tensor]]:
    image = torch.from_numpy(sample["image"]).permute(2, 0, 1).float().div(255)
    return image, {"boxes": torch.as_tensor(sample["boxes"], dtype=torch.float32).reshape(-1, 4),
                   "labels": torch.as_tensor(sample["labels"], dtype=torch.int64)}


def losses_of(model: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]]) -> Tensor:
    output = model(images, targets)
    return sum((output.losses if isinstance(model, FasterRCNN) else output).values())


def train(model: nn.Module, batches: list[tuple[list[Tensor], list[dict]]], seed: int, optim: dict) -> float:
    """SGD with the lab's schedule and clipping over ``batches``; returns the seconds it took."""
    torch.manual_seed(seed)  # the RPN / RoI samplers draw from torch's generator
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, **{k: v for k, v in optim["optimizer"].items() if k != "_target_"})
    schedule = warmup_then_decay(typed(OptimConfig, optim, "optim"), len(batches))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    start = time.perf_counter()
    for images, targets in batches:
        loss = losses_of(model, images, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 10.0)  # the trainer's gradient_clip_val
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


@torch.no_grad()
def score(model: nn.Module, val: list[tuple[Tensor, dict]]) -> dict[str, float]:
    """Dataset-level mAP@0.5 and mAP@[.5:.95] on ``val``, one image at a time."""
    model.eval()
    metric = mean_average_precision()
    for image, target in val:
        output = model([image])
        detections = output.detections[0] if isinstance(model, FasterRCNN) else output[0]
        metric.update([{k: detections[k] for k in ("boxes", "scores", "labels")}], [target])
    results = metric.compute()
    return {"map_50": float(results["map_50"]), "map": float(results["map"])}


def run_seed(data: str, seed: int, steps: int, batch_size: int, num_val: int) -> dict:
    generator, side, rpn_overrides = DATASETS[data]
    train_scenes = generator(steps * batch_size, seed=100 + seed, image_sizes=((side, side),))
    val_scenes = generator(num_val, seed=10_000, image_sizes=((side, side),))
    samples = [to_tensors(train_scenes[i]) for i in range(len(train_scenes))]
    batches = [tuple(map(list, zip(*samples[i:i + batch_size], strict=True)))
               for i in range(0, len(samples), batch_size)]
    val = [to_tensors(val_scenes[i]) for i in range(num_val)]

    backbone = {**config_group("backbone", "mobilenet_v2"), "weights": "imagenet"}
    rpn = {**config_group("rpn"), **rpn_overrides}
    head, loss, optim = config_group("roi_head"), config_group("loss"), config_group("optim", "sgd")
    torch.manual_seed(seed)  # the same initial head weights for both: torchvision's gets copies
    ours = build_detector(backbone, rpn, head, loss, num_classes=2)
    reference = torchvision_equivalent(copy.deepcopy(ours), rpn, head, min_size=side)
    result = {"seed": seed}
    for name, model in (("ours", ours), ("torchvision", reference)):
        seconds = train(model, batches, seed, optim)
        result[name] = {**score(model, val), "train_s": round(seconds, 1)}
    result["ratio_map_50"] = result["ours"]["map_50"] / max(result["torchvision"]["map_50"], 1e-9)
    return result


def summarise(runs: list[dict]) -> dict:
    def stats(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return {
        "ours_map_50": stats([r["ours"]["map_50"] for r in runs]),
        "torchvision_map_50": stats([r["torchvision"]["map_50"] for r in runs]),
        "difference_map_50": stats([r["ours"]["map_50"] - r["torchvision"]["map_50"] for r in runs]),
        "ratio_of_means_map_50": statistics.fmean(r["ours"]["map_50"] for r in runs)
        / max(statistics.fmean(r["torchvision"]["map_50"] for r in runs), 1e-9),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(DATASETS), default="easy")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.output and args.output.exists() and not args.overwrite:
        parser.error(f"{args.output} exists; pass --overwrite to replace it")
    torch.set_num_threads(args.threads)

    runs = []
    for seed in args.seeds:
        run = run_seed(args.data, seed, args.steps, args.batch_size, args.num_val)
        runs.append(run)
        ours, tv = run["ours"], run["torchvision"]
        print(f"seed {seed}: val mAP@0.5 ours {ours['map_50']:.3f} / torchvision {tv['map_50']:.3f} "
              f"= {run['ratio_map_50']:.2f}; mAP {ours['map']:.3f} / {tv['map']:.3f}; "
              f"train {ours['train_s']:.0f} s / {tv['train_s']:.0f} s", flush=True)
    summary = summarise(runs)
    print(f"{args.data}: mAP@0.5 ours {summary['ours_map_50']['mean']:.3f} ± {summary['ours_map_50']['std']:.3f}, "
          f"torchvision {summary['torchvision_map_50']['mean']:.3f} ± {summary['torchvision_map_50']['std']:.3f}, "
          f"ratio of means {summary['ratio_of_means_map_50']:.2f}, difference "
          f"{summary['difference_map_50']['mean']:+.3f} ± {summary['difference_map_50']['std']:.3f}")
    if args.output:
        machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                   "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                   "python": sys.version.split()[0]}
        record = {"command": " ".join(["python", "experiments/bench/learning.py", *(argv or sys.argv[1:])]),
                  "data": args.data, "steps": args.steps, "batch_size": args.batch_size, "num_val": args.num_val,
                  "machine": machine, "runs": runs, "summary": summary}
        args.output.write_text(json.dumps(record, indent=2) + "\n")
        print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
