"""How close a CPU training step comes to what the machine can compute: FLOPs per step against sustained GFLOP/s.

    python experiments/bench/roofline.py --threads 2 --output experiments/bench/roofline_cpu.json

For each case (the quickstart's config; ResNet50-C4 at 600 px, batch 2) one training step's floating-point
operations are counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward and backward; it counts the
matrix products and convolutions, which are nearly all of a detector's arithmetic; ``flop_counter`` corrects its
count of grouped convolutions' backward) and the step (forward,
backward, optimiser) is timed: median of ``--repeats`` after ``--warmup``. The machine's sustained rate is
measured in the same run on a large fp32 matrix product and on a 3×3 convolution of the trunk's kind; achieved /
peak divides the step's GFLOP/s by the matrix product's.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time

import torch
from hydra.utils import instantiate
from profile_step import bench_parser, build, machine, parse_bench_args, quickstart_config  # same folder
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from frcnn_lab.model.losses import weighted_total

CASES = {
    "quickstart (mobilenet_v2 C4, 320 px)": [],
    "resnet50 C4, 600 px": ["backbone=resnet50", "backbone.weights=none", "data=synthetic_hard",
                            "data.image_size=600", "data.max_size=1000", "data.batch_size=2"],
}


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """A convolution's backward: the input gradient and the weight gradient each take the forward's FLOPs.

    torch's own formula (2.14) computes the weight gradient as a convolution whose channel product ignores
    ``groups``: a depthwise convolution's backward comes out about ``groups`` times too large.
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    """``FlopCounterMode`` with grouped convolutions' backward counted right (``conv_backward_flop``)."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop})


def timed(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sustained_rates(repeats: int) -> dict[str, float]:
    """GFLOP/s of an fp32 2048² matrix product and of a 3×3 convolution (256 → 256 channels, 2 × 76 × 76)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    matmul = 2 * 2048 ** 3 / timed(lambda: torch.mm(a, b), repeats, 2)
    x, w = torch.randn(2, 256, 76, 76), torch.randn(256, 256, 3, 3)
    conv_flops = 2 * 2 * 256 * 76 * 76 * 256 * 9
    conv = conv_flops / timed(lambda: torch.nn.functional.conv2d(x, w, padding=1), repeats, 2)
    return {"matmul_fp32_gflops": matmul / 1e9, "conv3x3_fp32_gflops": conv / 1e9}


def training_step(overrides: list[str], folder: str, repeats: int, warmup: int) -> dict[str, float]:
    """FLOPs and median seconds of one training step (forward, backward, optimiser) on one fixed batch."""
    cfg = quickstart_config(overrides, folder)
    datamodule, module = build(cfg)
    module.train()
    optimizer = instantiate(cfg.optim.optimizer, params=[p for p in module.parameters() if p.requires_grad])
    images, targets = next(iter(datamodule.train_dataloader()))

    def step() -> None:
        output = module.detector(images, targets)
        weighted_total(output.losses, module.loss_weights).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    counter = flop_counter()
    with counter:
        step()
    seconds = timed(step, repeats, warmup)
    flops = counter.get_total_flops()
    return {"batch_size": len(images), "input_px": list(images[0].shape[-2:]), "gflop_per_step": flops / 1e9,
            "step_s": seconds, "achieved_gflops": flops / seconds / 1e9}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parse_bench_args(parser, argv)
    rates = sustained_rates(args.repeats * 4)
    peak = rates["matmul_fp32_gflops"]
    cases = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, overrides in CASES.items():
            case = training_step(overrides, folder, args.repeats, args.warmup)
            case["achieved_over_peak"] = case["achieved_gflops"] / peak
            cases[name] = case
    print(f"sustained fp32, {args.threads} thread(s): matrix product {peak:.1f} GFLOP/s, "
          f"3x3 convolution {rates['conv3x3_fp32_gflops']:.1f} GFLOP/s")
    print("| case | batch | GFLOP per step | step s | achieved GFLOP/s | achieved / peak |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, case in cases.items():
        print(f"| {name} | {case['batch_size']} | {case['gflop_per_step']:.1f} | {case['step_s']:.2f} | "
              f"{case['achieved_gflops']:.1f} | {case['achieved_over_peak']:.0%} |")
    if args.output:
        args.output.write_text(json.dumps({
            "command": " ".join(["experiments/bench/roofline.py", *(argv or sys.argv[1:])]),
            "sustained": rates, "cases": cases, "machine": machine(args.threads),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
