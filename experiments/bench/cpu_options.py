"""What the CPU speed options buy on the quickstart's training step: channels_last, bf16 autocast, torch.compile.

    python experiments/bench/cpu_options.py --threads 2 --repeats 8 --output experiments/bench/cpu_options.json

One model and the same ``--batches`` batches of the quickstart's config; the options' steps (forward, backward,
optimiser) alternate, the order rotated every round, so machine noise hits all alike. Each figure is the median
over ``--repeats`` rounds after one untimed round; ``compile`` (``torch.compile`` of the trunk, dynamic shapes)
also reports the seconds its first round took, compilation included. Ratios are against fp32.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import tempfile
import time

import torch
from hydra.utils import instantiate
from profile_step import bench_parser, build, machine, parse_bench_args, quickstart_config  # same folder

from frcnn_lab.model.losses import weighted_total

OPTIONS = ("fp32", "channels_last", "bf16", "bf16+channels_last", "compile")


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS)
    args = parse_bench_args(parser, argv)
    with tempfile.TemporaryDirectory() as folder:
        cfg = quickstart_config([], folder)
        datamodule, module = build(cfg)
    module.train()
    detector = module.detector
    optimizer = instantiate(cfg.optim.optimizer, params=[p for p in module.parameters() if p.requires_grad])
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(args.batches)]
    eager_trunk = detector.trunk.forward
    compiled_trunk = torch.compile(eager_trunk, dynamic=True) if "compile" in args.options else None

    def step(option: str, batch) -> float:
        images, targets = batch
        memory_format = torch.channels_last if "channels_last" in option else torch.contiguous_format
        detector.to(memory_format=memory_format)
        detector.trunk.forward = compiled_trunk if option == "compile" else eager_trunk
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in option else contextlib.nullcontext())
        start = time.perf_counter()
        with autocast:
            output = detector(images, targets)
        weighted_total(output.losses, module.loss_weights).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    first_round = {option: step(option, batches[0]) for option in args.options}  # compile happens here
    times: dict[str, list[float]] = {option: [] for option in args.options}
    for r in range(args.repeats):
        order = args.options[r % len(args.options):] + args.options[:r % len(args.options)]
        for i, option in enumerate(order):
            times[option].append(step(option, batches[(r + i) % len(batches)]))
    medians = {option: statistics.median(values) for option, values in times.items()}
    reference = medians.get("fp32")
    print(f"training step (batch {cfg.data.batch_size}), {args.threads} thread(s), median of {args.repeats}")
    print("| option | ms | ratio to fp32 | first round s |")
    print("| --- | ---: | ---: | ---: |")
    for option, seconds in medians.items():
        ratio = f"{seconds / reference:.2f}" if reference else "–"
        print(f"| {option} | {seconds * 1e3:.0f} | {ratio} | {first_round[option]:.1f} |")
    if args.output:
        args.output.write_text(json.dumps({
            "command": " ".join(["experiments/bench/cpu_options.py", *(argv or sys.argv[1:])]),
            "batch_size": cfg.data.batch_size, "median_step_s": medians, "first_round_s": first_round,
            "ratio_to_fp32": {o: s / reference for o, s in medians.items()} if reference else None,
            "machine": machine(args.threads), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
