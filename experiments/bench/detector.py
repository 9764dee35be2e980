"""Speed of this project's detector next to torchvision's FasterRCNN, configured alike, in one run.

    python experiments/bench/detector.py --backbone mobilenet_v2 --image-size 320 --device cpu --repeats 10
    python experiments/bench/detector.py --backbone resnet50 --image-size 600 --device cuda --precision bf16 \
        --channels-last --output experiments/bench/results_cuda.json

Both detectors get the same trunk and tail (copies with equal weights and the same frozen stages), the
anchors, RoI Align, thresholds, sampling sizes and box-coder weights of the default config groups
(``rpn/default.yaml``, ``roi_head/default.yaml``, ``loss/default.yaml`` under ``src/frcnn_lab/conf/``), square
images of ``--image-size`` (torchvision's resize is then a scale of 1) and the same SGD optimiser. The trunks
are newly initialised with trainable BatchNorm (``backbone.weights=none``, what trains offline), or with
``--frozen-bn`` laid out as for pretrained weights: frozen BatchNorm, which ours computes inside the
convolutions and torchvision's copy runs as its ``FrozenBatchNorm2d`` layers (``frcnn_lab.model.folding``).

Measured: the train step (forward + backward + optimiser step, batch of 2) and inference latency
(batch of 1), ``--repeats`` times after ``--warmup`` untimed steps, with Python's garbage collector off while
timing (as ``timeit`` does). The two detectors' calls alternate (A/B, order swapped every repeat) so machine
noise hits both alike, and the ratio ours / torchvision is the median of the per-repeat ratios (each repeat's
two calls ran back to back) with its distribution-free 95 % interval (``scipy.stats.quantile_test``). Prints a
table and writes the figures, every timing and the machine as JSON to ``--output`` (never over an existing
file unless ``--overwrite``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import scipy.stats
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN

from frcnn_lab.config import group_option
from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.model.detector import FasterRCNN, build_detector
from frcnn_lab.model.reference import torchvision_equivalent

NUM_CLASSES = 2
BACKBONES = ["mobilenet_v2", "resnet50", "vgg16"]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def config_group(group: str, name: str = "default") -> dict:
    return group_option(group, name)


def build_pair(
    backbone: str, image_size: int, settings: list[str] = (), frozen_bn: bool = False
) -> tuple[FasterRCNN, TorchvisionFasterRCNN]:
    """Ours from the default config groups with ``settings`` (``rpn.num_rois=8``...), and torchvision's with copies of
    the same parts and settings. ``frozen_bn``: the pretrained layout (frozen BatchNorm), weights not read."""
    torch.manual_seed(0)
    backbone_cfg = {**config_group("backbone", backbone), "weights": "imagenet" if frozen_bn else "none"}
    groups = OmegaConf.merge({"rpn": config_group("rpn"), "roi_head": config_group("roi_head")},
                             OmegaConf.from_dotlist(list(settings)))
    unknown = set(groups) - {"rpn", "roi_head"}
    if unknown or any(key not in config_group(group) for group in ("rpn", "roi_head") for key in groups[group]):
        raise SystemExit(f"--set {list(settings)}: only existing keys of the rpn and roi_head groups can be set")
    rpn, head, loss = OmegaConf.to_container(groups.rpn), OmegaConf.to_container(groups.roi_head), config_group("loss")
    ours = build_detector(backbone_cfg, rpn, head, loss, num_classes=NUM_CLASSES, pretrained=False)
    return ours, torchvision_equivalent(ours, rpn, head, min_size=image_size)


def scenes(image_size: int, count: int, device: torch.device) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``count`` synthetic scenes with objects, (3, S, S) in [0, 1], and their targets."""
    source = SyntheticScenes(4 * count, seed=0, empty_fraction=0.0, image_sizes=((image_size, image_size),))
    images, targets = [], []
    for sample in (source[i] for i in range(count)):
        images.append(torch.from_numpy(sample["image"]).permute(2, 0, 1).float().div(255).to(device))
        targets.append({"boxes": torch.as_tensor(sample["boxes"], dtype=torch.float32, device=device),
                        "labels": torch.as_tensor(sample["labels"], dtype=torch.int64, device=device)})
    return images, targets


def total_loss(model: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]]) -> Tensor:
    output = model(images, targets)
    losses = output.losses if isinstance(model, FasterRCNN) else output
    return sum(losses.values())


def train_step_fn(model: nn.Module, images, targets, autocast, scaler) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    # lr 0: the step does all its arithmetic but the weights stay put, so both detectors keep the same weights
    # every repeat (the proposal NMS, a sixth of the step, costs what the weights make it: it would drift apart)
    optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = total_loss(model, images, targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def inference_fn(model: nn.Module, image: Tensor, autocast) -> Callable[[], None]:
    def infer() -> None:
        model.eval()
        with torch.inference_mode(), autocast():
            model([image])

    return infer


def interleaved_times(
    ours: Callable, theirs: Callable, repeats: int, warmup: int, sync: Callable
) -> tuple[list[float], list[float]]:
    """Seconds per call of each, timed alternately (order swapped every repeat) after warm-up, the garbage
    collector run between repeats and off inside them (a collection would be charged to whichever call it hit)."""
    for _ in range(warmup):
        ours()
        theirs()
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    collecting = gc.isenabled()
    try:
        for repeat in range(repeats):
            gc.collect()
            gc.disable()
            order = [("ours", ours), ("theirs", theirs)]
            for name, fn in order if repeat % 2 == 0 else order[::-1]:
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
    finally:
        if collecting:
            gc.enable()
    return times["ours"], times["theirs"]


def compared(ours: list[float], theirs: list[float], batch_size: int) -> dict[str, object]:
    """Median seconds of each, and the ratio ours / torchvision: the median of the per-repeat ratios (each repeat's
    two calls ran back to back, so a slow moment of the machine cancels) with its 95 % interval, distribution-free
    (order statistics). An interval that holds 1.0 is parity within this machine's noise."""
    repeat_ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    interval = scipy.stats.quantile_test(repeat_ratios, q=1.0, p=0.5).confidence_interval(0.95)
    return {"ours": statistics.median(ours), "torchvision": statistics.median(theirs),
            "ratio": statistics.median(repeat_ratios), "ratio_ci95": [float(interval.low), float(interval.high)],
            "repeat_ratio_range": [min(repeat_ratios), max(repeat_ratios)], "batch_size": batch_size,
            "ours_s": ours, "torchvision_s": theirs}


def machine(device: torch.device) -> dict[str, object]:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(args: argparse.Namespace) -> dict[str, object]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if device.type == "cpu" and args.precision == "fp16":
        raise SystemExit("--precision fp16 needs --device cuda (CPU autocast supports bf16)")
    dtype = PRECISIONS[args.precision]
    if dtype is None:
        autocast = nullcontext
    else:
        def autocast():
            return torch.autocast(device.type, dtype=dtype)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    ours, theirs = (m.to(device, memory_format=memory_format)
                    for m in build_pair(args.backbone, args.image_size, args.set, args.frozen_bn))
    images, targets = scenes(args.image_size, 2, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def scaler():
        return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    train = interleaved_times(
        train_step_fn(ours, images, targets, autocast, scaler()),
        train_step_fn(theirs, images, targets, autocast, scaler()),
        args.repeats, args.warmup, sync,
    )
    infer = interleaved_times(
        inference_fn(ours, images[0], autocast), inference_fn(theirs, images[0], autocast),
        args.repeats, args.warmup, sync,
    )
    return {
        "backbone": args.backbone, "image_size": args.image_size, "device": args.device, "precision": args.precision,
        "channels_last": args.channels_last, "frozen_bn": args.frozen_bn, "repeats": args.repeats,
        "warmup": args.warmup, "settings": args.set,
        "train_step_s": compared(*train, batch_size=2),
        "inference_s": compared(*infer, batch_size=1),
        "machine": machine(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def table(results: list[dict[str, object]]) -> str:
    lines = ["| backbone | size | device | precision | measure | ours (ms) | torchvision (ms) | ours / torchvision "
             "| 95 % interval | per-repeat ratios |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        for key, label in (("train_step_s", "train step, batch 2"), ("inference_s", "inference, batch 1")):
            m = r[key]
            precision = r["precision"] + (", frozen BN" if r.get("frozen_bn") else "")
            lines.append(f"| {r['backbone']} | {r['image_size']} | {r['device']} | {precision} | {label} | "
                         f"{1000 * m['ours']:.1f} | {1000 * m['torchvision']:.1f} | {m['ratio']:.3f} | "
                         f"{m['ratio_ci95'][0]:.3f}–{m['ratio_ci95'][1]:.3f} | "
                         f"{m['repeat_ratio_range'][0]:.2f}–{m['repeat_ratio_range'][1]:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", nargs="+", default=["mobilenet_v2"], choices=BACKBONES)
    parser.add_argument("--image-size", type=int, nargs="+", default=[320])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="autocast dtype; fp16: cuda")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format (for GPUs)")
    parser.add_argument("--frozen-bn", action="store_true",
                        help="the pretrained layout: frozen BatchNorm (default: trainable, as with weights=none)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings of both detectors, e.g. rpn.num_rois=8 rpn.post_nms_top_n_test=16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    args = parser.parse_args(argv)
    if args.output is not None and args.output.exists() and not args.overwrite:
        parser.error(f"--output {args.output} exists; pass --overwrite to replace it")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for backbone in args.backbone:
        for size in args.image_size:
            one = argparse.Namespace(**{**vars(args), "backbone": backbone, "image_size": size})
            results.append(run(one))
            print("\n".join(table(results[-1:]).splitlines()[2:]), file=sys.stderr, flush=True)
    print(table(results))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
