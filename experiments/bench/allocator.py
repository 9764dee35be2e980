"""What keeping freed memory (``frcnn_lab.runs.memory``, on in every entry point) buys a CPU training step.

    python experiments/bench/allocator.py --threads 2 --rounds 3 --output experiments/bench/allocator_cpu.json

Two workloads: ``quickstart`` (``python -m frcnn_lab.train``'s config) and ``canvases``, the small-objects
benchmark's whole canvases (``experiment=small_objects/large``, fixed scale, 750 x 1000 to 1500 x 2000 px, batch 2;
4 train canvases, all drawn during the warm-up). Each round runs both settings in fresh processes, one after the
other, the order swapped every round: ``keep`` (``keep_freed_memory()`` before anything is built, as the entry
points' Hydra callback does) and ``system`` (glibc's own settings). A process reports the median seconds of a
``Trainer.fit`` step after ``--warmup`` steps (``profile_step.lightning_step``), and over the whole fit the minor page
faults, user and kernel CPU seconds and peak resident memory. keep / system is the median of the rounds' ratios.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from profile_step import bench_parser, lightning_step, machine, parse_bench_args, quickstart_config  # same folder

from frcnn_lab.runs.memory import glibc_version, keep_freed_memory

WORKLOADS = {
    "quickstart": [],
    "canvases": ["experiment=small_objects/large", "data.resize=fixed_scale", "data.scale=1.0",
                 "data.source.num_train=4", "data.source.num_val=1", "data.num_negatives=0"],
}
SETTINGS = ("keep", "system")


def measure(setting: str, workload: str, steps: int, warmup: int) -> dict[str, float]:
    """One process's figures: run in a child, as the setting is process-wide."""
    if setting == "keep" and not keep_freed_memory():
        raise SystemExit(f"keep_freed_memory() does nothing here (C library: {glibc_version() or 'not glibc'})")
    before = resource.getrusage(resource.RUSAGE_SELF)
    with tempfile.TemporaryDirectory() as folder:
        step = lightning_step(quickstart_config(WORKLOADS[workload], folder), steps, warmup)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"step_s": step, "minor_faults": after.ru_minflt - before.ru_minflt,
            "user_s": after.ru_utime - before.ru_utime, "kernel_s": after.ru_stime - before.ru_stime,
            "peak_rss_mb": after.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--steps", type=int, nargs=2, default=[20, 4], metavar=("QUICKSTART", "CANVASES"),
                        help="timed steps per process of each workload")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the canvases drawn)")
    parser.add_argument("--child", choices=SETTINGS, help="internal: measure one setting in this process")
    args = parse_bench_args(parser, argv)
    steps = dict(zip(WORKLOADS, args.steps, strict=True))
    if args.child:
        print(json.dumps(measure(args.child, args.workloads[0], steps[args.workloads[0]], args.warmup)))
        return 0
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for workload in args.workloads:
        results[workload] = {setting: [] for setting in SETTINGS}
        for r in range(args.rounds):
            for setting in SETTINGS[::-1] if r % 2 else SETTINGS:
                command = [sys.executable, __file__, "--child", setting, "--workloads", workload,
                           "--threads", str(args.threads), "--warmup", str(args.warmup),
                           "--steps", *map(str, args.steps)]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                results[workload][setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = {}
    print(f"Trainer.fit step, {args.threads} thread(s), {args.rounds} rounds, keep = keep_freed_memory(), "
          f"system = glibc's settings ({glibc_version()})")
    print("| workload | setting | step s | minor faults | user s | kernel s | peak RSS MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for workload, by_setting in results.items():
        for setting, runs in by_setting.items():
            row = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            print(f"| {workload} | {setting} | {row['step_s']:.3f} | {row['minor_faults']:,.0f} | "
                  f"{row['user_s']:.1f} | {row['kernel_s']:.1f} | {row['peak_rss_mb']:,.0f} |")
        ratios = [k["step_s"] / s["step_s"] for k, s in zip(by_setting["keep"], by_setting["system"], strict=True)]
        summary[workload] = {"step_ratio_keep_to_system": statistics.median(ratios), "round_ratios": ratios}
        print(f"{workload}: keep / system step time {statistics.median(ratios):.3f} "
              f"(rounds {', '.join(f'{x:.3f}' for x in ratios)})")
    if args.output:
        args.output.write_text(json.dumps({
            "command": " ".join(["experiments/bench/allocator.py", *(argv or sys.argv[1:])]),
            "workloads": WORKLOADS, "runs": results, "summary": summary, "glibc": glibc_version(),
            "machine": machine(args.threads), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
