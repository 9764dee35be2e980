"""Comparisons at equal training cost (``report --budget cost``) instead of equal steps.

A run's training cost after s optimiser steps is s x its configuration's cost per step. Every run is read at one
**budget**: by default the largest cost that every completed run with a cost reached (the smallest of their
final costs; runs that crashed or were stopped early do not set it), or ``--cost-budget``; a run that stopped
short of the budget is left out. A run's score is its best val mAP@0.5 among the validations at or below the
budget (costs within 1 % of it count as at it: ``RELATIVE``). A run without a validation within the budget is
left out, and the report says so. How long a run trains (``RUN_LENGTH_KEYS``: ``trainer.max_steps`` ...) is the
budget's to set, so it does not tell configurations apart here: where configurations differ in it alone (tiles at
1,500 steps and at the 7,860 steps that cost as much as 1,500 whole-canvas steps), the one whose runs train longest
is compared and the others' runs are left out. Convergence and failures stay those of the whole run; the
comparisons then rank what each configuration reaches for the same cost.

Cost per step:

- ``--step-costs FILE``: a JSON file with ``step_s`` (name -> seconds per step, or a list of measurements, whose
  mean is taken) and, optionally, ``policies`` (name -> the overrides it stands for), the format of
  ``experiments/bench/small_objects_steps.py``'s output. A name without ``policies`` entry stands for the
  overrides in the name itself, separated by spaces (``"data.resize=fixed_scale data.scale=1.0"``). A run takes
  the cost of the name whose overrides all hold in its config (``key=value`` read as YAML, as Hydra does) and,
  when several do, of the one with the most overrides (tiles, which add ``data.tiles.size=400`` to the fixed
  scale, are more specific than fixed scale); two equally specific names that both hold are an error.
- Without a file: each configuration's logged training time per step, the mean over its runs of the time in
  the runs table (``status.json`` ``train_time_s``, else the sum of the epoch times, validations included) over
  their steps. It is only as good as the machine was quiet.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frcnn_lab.report.runs import RUN_LENGTH_KEYS, Run, configuration_scores, holds, setting

STEPS, COST = "steps", "cost"
BUDGETS = (STEPS, COST)
# Step costs are measurements, good to about 1 %: a cost within 1 % of the budget counts as at it (the tiles run
# planned at 5.24 x 1,500 steps from the benchmark's median ratio is not short of a budget set by mean step times).
RELATIVE = 0.01


@dataclass(frozen=True)
class StepCost:
    seconds: float             # per optimiser step
    source: str                # the name in the step-cost file, or "logged"


def read_step_costs(path: Path) -> dict[str, tuple[list[str], float]]:
    """A step-cost file -> name -> (its overrides, mean seconds per step)."""
    data = json.loads(path.read_text())
    if not isinstance(data.get("step_s"), dict) or not data["step_s"]:
        raise ValueError(f"{path}: no 'step_s' object (name -> seconds per step)")
    policies = data.get("policies") or {}
    costs = {}
    for name, seconds in data["step_s"].items():
        values = seconds if isinstance(seconds, list) else [seconds]
        overrides = list(policies.get(name, name.split()))
        if not overrides or not values or any(not isinstance(v, (int, float)) or v <= 0 for v in values):
            raise ValueError(f"{path}: {name!r} needs overrides and positive seconds per step, got {overrides} and "
                             f"{seconds}")
        costs[name] = (overrides, statistics.fmean(values))
    return costs


def file_cost(config: dict[str, Any], costs: Mapping[str, tuple[list[str], float]]) -> StepCost | None:
    """The cost of the most specific name whose overrides all hold in ``config``; None when none does."""
    found = [(len(overrides), name, seconds) for name, (overrides, seconds) in costs.items()
             if all(holds(config, o) for o in overrides)]
    if not found:
        return None
    most = max(size for size, _, _ in found)
    best = [(name, seconds) for size, name, seconds in found if size == most]
    if len(best) > 1:
        raise ValueError(f"step costs {[name for name, _ in best]} all match a run, equally specific")
    return StepCost(best[0][1], best[0][0])


def logged_cost(runs: list[Run]) -> StepCost | None:
    """Mean over the runs of their logged training time per step."""
    per_step = [run.train_time_s / run.steps for run in runs if run.train_time_s and run.steps]
    return StepCost(statistics.fmean(per_step), "logged") if per_step else None


def step_costs(groups: Mapping[str, list[Run]], path: Path | None) -> dict[str, StepCost | None]:
    """Configuration -> its cost per step, from ``path`` when given, else from its runs' logged times."""
    if path is None:
        return {label: logged_cost(runs) for label, runs in groups.items()}
    costs = read_step_costs(path)
    return {label: file_cost(runs[0].config, costs) for label, runs in groups.items()}


@dataclass(frozen=True)
class Budget:
    cost: float | None                     # seconds; None when no run has both a cost and a validation
    chosen: bool                           # given with --cost-budget, not the largest common cost
    scores: dict[str, dict[Any, float]]    # label -> seed -> best val mAP@0.5 within the budget
    steps: dict[str, dict[Any, int]]       # label -> seed -> steps of the validation that gave the score
    left_out: dict[str, list[str]]         # label -> why each of its runs without a score was left out
    costs: dict[str, StepCost | None]


def equal_cost(groups: Mapping[str, list[Run]], costs: dict[str, StepCost | None],
               budget: float | None = None) -> Budget:
    """Each run's best val mAP@0.5 among its validations that cost at most the budget; of the configurations that
    differ in run length alone, only the one with the longest runs."""
    finals = [(run.steps * costs[label].seconds, run.status == "completed") for label, runs in groups.items()
              if costs[label] is not None for run in runs if run.steps and run.validation_steps]
    # a run that crashed or was stopped early does not set the budget; it is left out when short of it
    reached = [cost for cost, completed in finals if completed] or [cost for cost, _ in finals]
    chosen = budget is not None
    if budget is None:
        budget = min(reached) if reached else None
    scores: dict[str, dict[Any, float]] = {}
    steps: dict[str, dict[Any, int]] = {}
    left_out: dict[str, list[str]] = {}
    for label, runs in groups.items():
        scores[label], steps[label], left_out[label] = {}, {}, []
        cost = costs[label]
        for run in runs:
            within = [] if cost is None or budget is None else [
                (run.epochs[e]["val/map_50"], done) for e, done in run.validation_steps.items()
                if "val/map_50" in run.epochs[e] and done * cost.seconds <= budget * (1 + RELATIVE)]
            if cost is None:
                reason = "no cost per step"
            elif not run.steps or budget is None:
                reason = "no validation"
            elif run.steps * cost.seconds < budget * (1 - RELATIVE):
                reason = f"stopped at {run.steps * cost.seconds:,.1f} s, short of the budget"
            elif not within:
                reason = "no validation within the budget"
            else:
                scores[label][run.seed], steps[label][run.seed] = max(within)
                continue
            left_out[label].append(f"`{run.path.name}`: {reason}")
    configurations, _ = configuration_scores(dict(groups), ignored=RUN_LENGTH_KEYS)
    longest: dict[str, str] = {}  # the configuration's settings -> the label compared
    for label in sorted(groups, key=lambda label: -max((run.steps or 0 for run in groups[label]), default=0)):
        identity = setting(sorted(configurations[label].items()))
        if identity not in longest:
            longest[identity] = label
        elif scores[label]:
            left_out[label] += [f"`{run.path.name}`: a longer run of this configuration (`{longest[identity]}`) is "
                                "compared" for run in groups[label] if run.seed in scores[label]]
            scores[label], steps[label] = {}, {}
    return Budget(budget, chosen, scores, steps, left_out, costs)
