"""The cost of a training step under each policy of the small-objects benchmark (docs/small_objects.md).

    python experiments/bench/small_objects_steps.py --threads 2 --rounds 2 \
        --output experiments/bench/small_objects_steps_cpu.json

``experiment=small_objects/large`` (batch 2) on 6 train canvases (drawn during the warm-up) with
each policy's training overrides as in experiments/small_objects/run.sh: ``resize`` (600 px shortest side),
``fixed`` (whole canvases at their own scale) and ``tiles`` (400 px tiles at the fixed scale; the ``sliced`` cells
train the same way and differ only at validation). Each round runs the policies in fresh processes, the order
reversed every other round; a process reports the median seconds of a ``Trainer.fit`` step after ``--warmup`` steps
(``profile_step.lightning_step``). Ratios: a policy's step time over the tiles' in the same round, median of the
rounds.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time

from profile_step import bench_parser, lightning_step, machine, parse_bench_args, quickstart_config  # same folder

COMMON = ["experiment=small_objects/large", "data.source.num_train=6", "data.source.num_val=1",
          "data.num_negatives=0"]
POLICIES = {
    "resize": ["data.resize=shortest_side", "data.image_size=600", "data.max_size=1000"],
    "fixed": ["data.resize=fixed_scale", "data.scale=1.0"],
    "tiles": ["data.resize=fixed_scale", "data.scale=1.0", "data.tiles.size=400", "data.tiles.overlap=0.2"],
}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the canvases drawn)")
    parser.add_argument("--child", choices=POLICIES, help="internal: measure one policy in this process")
    args = parse_bench_args(parser, argv)
    if args.child:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(lightning_step(quickstart_config([*COMMON, *POLICIES[args.child]], folder),
                                            args.steps, args.warmup)))
        return 0
    times: dict[str, list[float]] = {policy: [] for policy in POLICIES}
    for r in range(args.rounds):
        for policy in list(POLICIES)[::-1] if r % 2 else POLICIES:
            command = [sys.executable, __file__, "--child", policy, "--threads", str(args.threads),
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            times[policy].append(json.loads(done.stdout.strip().splitlines()[-1]))
    ratios = {policy: statistics.median(t / tiles for t, tiles in zip(times[policy], times["tiles"], strict=True))
              for policy in POLICIES}
    print(f"Trainer.fit step, batch 2, {args.threads} thread(s), {args.rounds} rounds")
    print("| policy | step s (median of rounds) | rounds | / tiles |")
    print("| --- | ---: | --- | ---: |")
    for policy, values in times.items():
        print(f"| {policy} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} | "
              f"{ratios[policy]:.2f} |")
    if args.output:
        args.output.write_text(json.dumps({
            "command": " ".join(["experiments/bench/small_objects_steps.py", *(argv or sys.argv[1:])]),
            "common": COMMON, "policies": POLICIES, "step_s": times, "ratio_to_tiles": ratios,
            "machine": machine(args.threads), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
