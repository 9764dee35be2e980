"""``python -m frcnn_lab.report <run or multirun dir> [--output DIR] [--overwrite]`` and the statistics' options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from frcnn_lab.errors import USER_ERROR_EXIT_CODE, one_line
from frcnn_lab.report import convergence
from frcnn_lab.report.budget import BUDGETS, STEPS
from frcnn_lab.report.nonparametric import ROPE
from frcnn_lab.report.tables import LEARNING_SPEED, UNSETTLED_BANNER
from frcnn_lab.report.writer import TARGET, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frcnn_lab.report",
                                     description="Results table, statistics and plots of a run or a sweep.")
    parser.add_argument("directory", type=Path, help="a training run's folder, or a multirun (sweep) folder")
    parser.add_argument("--output", type=Path,
                        help="where to write report.md and the plots (default: <directory>/report)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing report")
    parser.add_argument("--plateau-window", type=int, default=convergence.WINDOW, metavar="K",
                        help="validations at the end of a curve that must not beat the best before them "
                             "(default %(default)s)")
    parser.add_argument("--plateau-tolerance", type=float, default=convergence.TOLERANCE, metavar="MAP",
                        help="the gain in val mAP@0.5 a plateau may still show at mAP 0.5, scaled by "
                        "2 sqrt(p (1 - p)) at a run's best mAP p (default %(default)s)")
    parser.add_argument("--plateau-floor", type=float, default=convergence.FLOOR, metavar="MAP",
                        help="best val mAP@0.5 below which a flat curve has not learned the task: 'flat at the "
                             "floor', not plateaued (default %(default)s)")
    parser.add_argument("--target-difference", type=float, default=TARGET, metavar="MAP",
                        help="difference of best val mAP@0.5 whose seed count each comparison gives "
                             "(default %(default)s)")
    parser.add_argument("--rope", type=float, default=ROPE, metavar="MAP",
                        help="half-width of the region of practical equivalence: a difference whose interval lies "
                             "inside +/- MAP is 'equivalent' (default %(default)s)")
    parser.add_argument("--budget", choices=BUDGETS, default=STEPS,
                        help="compare runs at equal steps (their best val mAP@0.5) or at equal training cost "
                             "(their best val mAP@0.5 within the largest cost all runs reached) (default %(default)s)")
    parser.add_argument("--step-costs", type=Path, metavar="FILE",
                        help="with --budget cost: JSON of seconds per step per configuration (step_s, policies), as "
                             "experiments/bench/small_objects_steps.py writes it; default: each run's logged "
                             "training time per step")
    parser.add_argument("--cost-budget", type=float, metavar="SECONDS",
                        help="with --budget cost: compare at this cost instead of the largest common one; runs "
                             "that stopped short of it are left out")
    parser.add_argument("--reference", nargs="+", metavar="KEY=VALUE",
                        help="the configuration failure rates are compared with (default: the one that differs in "
                             "one key from the most others)")
    args = parser.parse_args(argv)
    if args.plateau_window < 1 or args.plateau_tolerance < 0 or args.plateau_floor < 0 or args.target_difference <= 0:
        parser.error(f"--plateau-window must be >= 1 (got {args.plateau_window}), --plateau-tolerance >= 0 "
                     f"(got {args.plateau_tolerance}), --plateau-floor >= 0 (got {args.plateau_floor}) and "
                     f"--target-difference > 0 (got {args.target_difference})")
    if args.rope < 0 or (args.cost_budget is not None and args.cost_budget <= 0):
        parser.error(f"--rope must be >= 0 (got {args.rope}) and --cost-budget > 0 (got {args.cost_budget})")
    if args.budget == STEPS and (args.step_costs or args.cost_budget is not None):
        parser.error("--step-costs and --cost-budget need --budget cost")
    try:
        path = write_report(args.directory, args.output or args.directory / "report", args.overwrite,
                            args.plateau_window, args.plateau_tolerance, args.target_difference, args.plateau_floor,
                            rope=args.rope, budget=args.budget, step_costs=args.step_costs,
                            cost_budget=args.cost_budget, reference=args.reference)
    except (FileNotFoundError, FileExistsError, ValueError) as error:  # the folder, the output, an option's value
        print(f"error: {one_line(error)}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    text = path.read_text()
    print(text)
    if UNSETTLED_BANNER in text:
        print(f"warning: some runs have not plateaued; each comparison that involves them {LEARNING_SPEED}",
              file=sys.stderr)
    print(f"written: {path}")
    return 0
