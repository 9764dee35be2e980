"""RoI Align on CPU: the lab's ``roi_align_cpu`` (a weighted ``embedding_bag``) against ``torchvision.ops.roi_align``.

    python experiments/bench/roi_align.py --threads 2 --repeats 30 --output experiments/bench/roi_align_cpu.json

Two shapes, each as the detector meets it in training (the sampled RoIs, forward and the features' gradient) and
in inference (the proposals, forward only): the quickstart's (MobileNetV2-C4 at 320 px: batch 4 of 20 x 27
stride-16 maps of 96 channels, 64 RoIs per image in training and 100 at inference, 7 x 7 bins) and ResNet50-C4's at
600 px (batch 2 of 38 x 50 maps of 1024 channels, 14 x 14 bins). channels_last features, sampling ratio 2, boxes
drawn inside the image. Before timing, both ops' outputs and gradients are compared (largest absolute difference
printed). Timing, the ratio and its interval as ``detector.py``'s: calls alternate, the ratio is the median of
the per-repeat ratios with a distribution-free 95 % interval.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import torch
from detector import compared, interleaved_times, machine  # same folder
from profile_step import bench_parser, parse_bench_args
from torchvision.ops import roi_align

from frcnn_lab.model.roi_pooling import roi_align_cpu

# name -> (batch, channels, map height, map width, RoIs per image in training, at inference, bins P, image h, w)
SHAPES = {
    "quickstart: mobilenet_v2 C4, 320 px": (4, 96, 20, 27, 64, 100, 7, 320, 427),
    "resnet50 C4, 600 px": (2, 1024, 38, 50, 64, 100, 14, 600, 800),
}


def inputs(shape: tuple, rois: int, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    batch, channels, height, width, _, _, _, image_height, image_width = shape
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=generator)
    features = features.to(memory_format=torch.channels_last).requires_grad_(True)
    size = torch.tensor([image_width, image_height], dtype=torch.float32)
    boxes = []
    for _ in range(batch):
        corner = torch.rand(rois, 2, generator=generator) * size * 0.8
        side = 8 + torch.rand(rois, 2, generator=generator) * size * 0.5
        boxes.append(torch.cat([corner, torch.minimum(corner + side, size)], dim=1))
    return features, boxes


def largest_differences(features: torch.Tensor, boxes: list[torch.Tensor], bins: int) -> dict[str, float]:
    ours = roi_align_cpu(features, boxes, bins, 1 / 16, 2, False)
    theirs = roi_align(features, boxes, bins, 1 / 16, 2, False)
    upstream = torch.randn(theirs.shape, generator=torch.Generator().manual_seed(1))
    (our_grad,) = torch.autograd.grad(ours, features, upstream)
    (their_grad,) = torch.autograd.grad(theirs, features, upstream)
    output = float((ours - theirs).detach().abs().max())
    return {"output": output, "gradient": float((our_grad - their_grad).abs().max())}


def train_call(op, features: torch.Tensor, boxes: list[torch.Tensor], bins: int) -> None:
    op(features, boxes, bins, 1 / 16, 2, False).sum().backward()


@torch.no_grad()
def inference_call(op, features: torch.Tensor, boxes: list[torch.Tensor], bins: int) -> None:
    op(features, boxes, bins, 1 / 16, 2, False)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parse_bench_args(parser, argv)
    results = []
    for name, shape in SHAPES.items():
        bins = shape[6]
        for measure, rois, call in (("train: forward + backward", shape[4], train_call),
                                    ("inference: forward", shape[5], inference_call)):
            features, boxes = inputs(shape, rois)
            differences = largest_differences(features, boxes, bins) if call is train_call else {}
            ours, theirs = interleaved_times(functools.partial(call, roi_align_cpu, features, boxes, bins),
                                             functools.partial(call, roi_align, features, boxes, bins),
                                             args.repeats, args.warmup, lambda: None)
            figures = compared(ours, theirs, shape[0])
            results.append({"shape": name, "measure": measure, "rois_per_image": rois,
                            "largest_difference": differences, **figures})
            low, high = figures["ratio_ci95"]
            print(f"{name:38s} {measure:26s} ours {figures['ours'] * 1e3:8.1f} ms  torchvision "
                  f"{figures['torchvision'] * 1e3:8.1f} ms  ratio {figures['ratio']:.3f} [{low:.3f}, {high:.3f}]"
                  + (f"  max |diff| output {differences['output']:.1e}, gradient {differences['gradient']:.1e}"
                     if differences else ""), flush=True)
    if args.output:
        args.output.write_text(json.dumps({
            "command": " ".join(["experiments/bench/roi_align.py", *(argv or sys.argv[1:])]),
            "results": results, "machine": machine(torch.device("cpu")), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
