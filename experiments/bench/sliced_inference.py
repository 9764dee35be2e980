"""Sliced against whole-image inference on the large synthetic canvases (``data=synthetic_large``, their own scale).

    python experiments/bench/sliced_inference.py --threads 2 --rounds 3 [--ckpt <run>/checkpoints/best.ckpt] \
        --output experiments/bench/sliced_inference_cpu.json

One process, the same canvases and the same model: a trained checkpoint (``--ckpt``, e.g. a tiles cell of the
small-objects benchmark) or, without one, the default detector with ``rpn.anchor_sizes`` of the benchmark and random
head weights (its proposals and detections fill every budget, the costliest case). Each round times every canvas
through ``DetectionModule.evaluation_step``'s detection call: whole (``inference.slicing.size=null``), sliced
(``--tile`` px tiles, ``--overlap``, ``inference.slicing.batch_size``, each tile its share of the proposal budget),
and ``one_by_one``: one tile per pass, each with the whole image's budget (tiles detected as separate images), the
order reversed every other round; the figure is the median seconds per canvas, and each ratio to whole per round,
median over rounds. With ``--map-images N`` each way also detects the first N val canvases once and scores them
(mAP@0.5, ``frcnn_lab.metrics.mean_average_precision``): sliced with the shared budget against tiles that each keep
the whole image's budget (``one_by_one``'s detections, computed in batches).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from profile_step import bench_parser, machine, parse_bench_args, quickstart_config  # same folder

from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.engine.checkpoints import load_module
from frcnn_lab.engine.module import DetectionModule
from frcnn_lab.inference.slicing import Slicing, detect_images
from frcnn_lab.metrics import mean_average_precision

DATA = ["experiment=small_objects/large", "data.source.num_train=1", "data.num_negatives=0"]


def seconds_per_image(module: DetectionModule, images: list[torch.Tensor], slicing: Slicing | None,
                      shared_budget: bool = True) -> list[float]:
    times = []
    budget = module.proposals_per_image if shared_budget else None
    with torch.inference_mode():
        for image in images:
            start = time.perf_counter()
            detect_images(module, [image], slicing, budget=budget)
            times.append(time.perf_counter() - start)
    return times


def map_50(module: DetectionModule, samples: list[tuple[torch.Tensor, dict]], slicing: Slicing | None,
           shared_budget: bool) -> float:
    metric = mean_average_precision([0.5])
    budget = module.proposals_per_image if shared_budget else None
    with torch.inference_mode():
        for image, target in samples:
            (found,) = detect_images(module, [image], slicing, budget=budget)
            metric.update([found], [{"boxes": target["boxes"], "labels": target["labels"]}])
    return float(metric.compute()["map_50"])


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--ckpt", help="a trained checkpoint (default: an untrained detector)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=4, help="val canvases timed per round")
    parser.add_argument("--tile", type=int, default=400)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=Slicing.batch_size, help="tiles per pass")
    parser.add_argument("--map-images", type=int, default=0, help="val canvases scored per way (0: none)")
    args = parse_bench_args(parser, argv)
    val = max(args.images, args.map_images)
    cfg = quickstart_config([*DATA, f"data.source.num_val={val}", "backbone.weights=none"], "unused")
    datamodule = DetectionDataModule(cfg.data)
    datamodule.setup("test")
    images = [datamodule.datasets["val"][i][0] for i in range(args.images)]
    if args.ckpt:
        module = load_module(args.ckpt)
    else:
        torch.manual_seed(0)
        module = DetectionModule(rpn={"anchor_sizes": list(cfg.rpn.anchor_sizes)}, pretrained_backbone=False).eval()
    slicing = Slicing(size=args.tile, overlap=args.overlap, batch_size=args.batch_size)
    seconds_per_image(module, images[:1], None)  # warm-up: kernels chosen, memory held
    ways = {"whole": (None, True), "sliced": (slicing, True),
            "one_by_one": (Slicing(size=args.tile, overlap=args.overlap, batch_size=1), False)}
    rounds = []
    for r in range(args.rounds):
        order = list(ways)[:: -1 if r % 2 else 1]
        rounds.append({name: statistics.median(seconds_per_image(module, images, *ways[name])) for name in order})
    ratios = {name: statistics.median(r[name] / r["whole"] for r in rounds) for name in ways}
    shape = tuple(images[0].shape[-2:])
    print(f"{args.images} canvases (first {shape[0]} x {shape[1]}), {args.threads} thread(s), {args.rounds} rounds; "
          f"model: {args.ckpt or 'untrained'}")
    print("| inference | s per canvas (median of rounds) | rounds |")
    print("| --- | ---: | --- |")
    for name in ways:
        values = [r[name] for r in rounds]
        print(f"| {name} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    print(", ".join(f"{name} / whole: {ratio:.2f}" for name, ratio in ratios.items() if name != "whole"))
    scores = {}
    if args.map_images:
        samples = [datamodule.datasets["val"][i] for i in range(args.map_images)]
        budgets = {"whole": (None, True), "sliced": (slicing, True), "one_by_one": (slicing, False)}
        scores = {name: map_50(module, samples, *way) for name, way in budgets.items()}
        print(f"mAP@0.5 on {args.map_images} val canvases: "
              + ", ".join(f"{name} {value:.4f}" for name, value in scores.items()))
    if args.output:
        arguments = sys.argv[1:] if argv is None else argv
        args.output.write_text(json.dumps({
            "command": "python experiments/bench/sliced_inference.py " + " ".join(arguments),
            "machine": machine(args.threads), "checkpoint": args.ckpt, "canvases": args.images,
            "slicing": {"size": args.tile, "overlap": args.overlap, "batch_size": args.batch_size},
            "seconds": rounds, "over_whole": ratios, "map_50": scores, "map_images": args.map_images}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
