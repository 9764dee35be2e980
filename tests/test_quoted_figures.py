"""The figures that README.md, the studies' pages (experiments/findings/README.md, experiments/small_objects/README.md)
and the docs that cite them quote, recomputed from the committed run folders (``runs/*/csv/metrics.csv``,
``status.json``, the drivers' ``run_log.txt``): when a page and its runs drift apart, a test names the quote.

Tables are read from the markdown and every cell compared with its recomputation; figures in sentences are an
explicit list of (page, the quoted text, how it is recomputed). Statistics as the report computes them: best val
mAP@0.5 per run; mean ± sample sd over seeds; paired differences per seed with a t interval at 1 - 0.05 / m,
Bonferroni-adjusted for the m comparisons of the report's family that holds them (docs/statistics.md).
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import pytest
from scipy import stats

from support import REPO_ROOT

EXPERIMENTS = REPO_ROOT / "experiments"
STUDY = EXPERIMENTS / "findings" / "study" / "runs"  # 15 runs of 20 epochs
SPEED = EXPERIMENTS / "findings" / "runs"  # 33 runs of 152 steps
CONVERGENCE = EXPERIMENTS / "findings" / "convergence" / "runs"
SMALL = EXPERIMENTS / "small_objects" / "runs"
EQUAL_COST = EXPERIMENTS / "small_objects" / "equal_cost" / "runs"  # fixed_s* copied beside tiles_equal_s*
STEP_COSTS = EXPERIMENTS / "bench" / "small_objects_steps_cpu.json"
RARE = EXPERIMENTS / "rare_classes" / "runs"
TRANSFER = EXPERIMENTS / "transfer" / "runs"
SEEDS = (0, 1, 2)

# The report's families (docs/statistics.md): how many comparisons each Bonferroni interval is adjusted for.
STUDY_MAIN_EFFECTS = 3  # rpn.num_rois, data.image_size, roi_head.bg_iou_lo
STUDY_PAIRS = 5  # 4-16, 4-64, 16-64 RoIs; 300-600 px; the background band
SPEED_FACTORIAL = 5  # four main effects and the image size x RoIs interaction
SPEED_PAIRS = 20
SMALL_PAIRS = 3
RARE_PAIRS = 1  # data.sampler: random -> repeat_factor
TRANSFER_PAIRS = 1  # model.weights: the ImageNet trunk -> a detector


@cache
def validations(run: Path) -> tuple[tuple[int, int, float], ...]:
    """(epoch, step, val mAP@0.5) of every validation of a run, in order."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/map_50")]
    return tuple((int(row["epoch"]), int(row["step"]), float(row["val/map_50"])) for row in rows)


@cache
def best(run: Path) -> float:
    """A run's best val mAP@0.5, which its status.json names too."""
    value = max(m for _, _, m in validations(run))
    status = json.loads((run / "status.json").read_text())
    assert status["best_map_50"] == pytest.approx(value, abs=1e-6), run
    return value


def cell(root: Path, name: str) -> list[float]:
    return [best(root / f"{name}_s{seed}") for seed in SEEDS]


def mean_sd(values: Sequence[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def signed(value: float) -> str:
    return f"{value:+.3f}"


def interval(differences: Sequence[float], m: int) -> str:
    """``+0.348 [+0.276, +0.421]``: the mean of per-seed differences and its t interval at 1 - 0.05 / m."""
    n, mean = len(differences), statistics.mean(differences)
    half = stats.t.ppf(1 - 0.05 / (2 * m), n - 1) * statistics.stdev(differences) / n**0.5
    return f"{signed(mean)} [{signed(mean - half)}, {signed(mean + half)}]"


def paired(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-seed differences b - a."""
    return [y - x for x, y in zip(a, b, strict=True)]


def normal(text: str) -> str:
    """Markdown as the quotes are compared: one space for any whitespace, ASCII minus, no bold."""
    return " ".join(text.replace("−", "-").replace("–", "-").replace("**", "").split())


def page(relative: str) -> str:
    return normal((REPO_ROOT / relative).read_text())


def table(relative: str, header_start: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table in ``relative`` whose header row starts with ``header_start``."""
    lines = (REPO_ROOT / relative).read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header_start):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([normal(c) for c in row.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"{relative}: no table starting {header_start!r}")


# --- tables -------------------------------------------------------------------------------------------------------

STUDY_CELLS = {"64 RoIs, 600 px (default)": "rois64_px600", "64 RoIs, 300 px": "rois64_px300",
               "16 RoIs, 600 px": "rois16_px600", "4 RoIs, 600 px": "rois4_px600",
               "64 RoIs, 600 px, `bg_iou_lo=0.1`": "bglo01"}


def test_converged_study_table():
    rows = table("experiments/findings/README.md", "| cell | seed 0 | seed 1 | seed 2 | mean ± std")
    assert sorted(row[0] for row in rows) == sorted(STUDY_CELLS)
    for row in rows:
        values = cell(STUDY, STUDY_CELLS[row[0]])
        assert row[1:5] == [f"{v:.3f}" for v in values] + [mean_sd(values)], row


FIVE_SEEDS = EXPERIMENTS / "findings" / "five_seeds" / "runs"


def test_five_seed_table():
    rows = table("experiments/findings/README.md", "| cell | seed 0 | seed 1 | seed 2 | seed 3 | seed 4 |")
    assert sorted(row[0] for row in rows) == sorted(name for name, key in STUDY_CELLS.items()
                                                     if key in ("rois64_px600", "rois16_px600", "bglo01"))
    for row in rows:
        values = [best(FIVE_SEEDS / f"{STUDY_CELLS[row[0]]}_s{seed}") for seed in range(5)]
        failed = sum(value < 0.05 for value in values)
        assert row[1:8] == [f"{v:.3f}" for v in values] + [mean_sd(values), f"{failed}/5"], row


def test_learning_speed_grid_table():
    rows = table("experiments/findings/README.md", "| `rpn.num_rois` | 300 px | 600 px |")
    assert [row[0] for row in rows] == ["4", "16", "64 (default)", "256"]
    for row in rows:
        rois = row[0].split()[0]
        assert row[1:3] == [mean_sd(cell(SPEED, f"rois{rois}_px{px}")) for px in (300, 600)], row


def test_learning_speed_default_table():
    rows = table("experiments/findings/README.md", "| at the default (64 RoIs, 600 px) | mAP@0.5 |")
    names = {"`roi_head.pooler=roi_align`, `bg_iou_lo=0` (default)": "rois64_px600",
             "`roi_head.pooler=roi_pool`": "roipool", "`roi_head.pooler=crop_resize`": "cropresize",
             "`roi_head.bg_iou_lo=0.1` (the thesis's band)": "bglo01"}
    default = cell(SPEED, "rois64_px600")
    assert sorted(row[0] for row in rows) == sorted(names)
    for row in rows:
        values = cell(SPEED, names[row[0]])
        assert row[1] == mean_sd(values), row
        expected = "" if names[row[0]] == "rois64_px600" else interval(paired(default, values), SPEED_PAIRS)
        assert row[2] == expected, row


def test_convergence_curve_table():
    """The mean over the three seeds of val mAP@0.5 at each of the 20 epochs."""
    (row,) = table("experiments/findings/README.md", "| epochs | 1–5 |")
    quoted = " ".join(row[1:]).split()
    curves = [{epoch: value for epoch, _, value in validations(CONVERGENCE / f"default_e20_s{s}")} for s in SEEDS]
    assert quoted == [f"{statistics.mean(c[e] for c in curves):.3f}" for e in range(20)]


SMALL_POLICIES = {"shortest-side resize to 600 px": "resize", "fixed scale 1.0, whole canvases": "fixed",
                  "tiles at training (400 px, overlap 0.2)": "tiles",
                  "tiles at training and 400 px slices at validation": "sliced"}


def test_small_objects_policy_table():
    rows = table("docs/small_objects.md", "| policy | best val mAP@0.5, seeds 0 / 1 / 2 |")
    assert sorted(row[0] for row in rows) == sorted(SMALL_POLICIES)
    for row in rows:
        name = SMALL_POLICIES[row[0]]
        values = cell(SMALL, name)
        at_500 = statistics.mean(validations(SMALL / f"{name}_s{s}")[0][2] for s in SEEDS)
        assert validations(SMALL / f"{name}_s0")[0][1] == 499  # the first validation, after step 500
        assert row[1:4] == [" / ".join(f"{v:.3f}" for v in values), mean_sd(values), f"{at_500:.3f}"], row
        steps = json.loads((EXPERIMENTS / "bench" / "small_objects_steps_cpu.json").read_text())
        if name in steps["step_s"]:  # the step times, measured apart (experiments/bench/small_objects_steps.py)
            ratio = steps["ratio_to_tiles"][name]
            assert row[4] == f"{statistics.median(steps['step_s'][name]):.2f} ({ratio:.2g})", row


def test_small_objects_pairs_table():
    rows = {row[0]: row[1] for row in table("docs/small_objects.md", "| change | Δ val mAP@0.5 [adjusted CI] |")}
    fixed, resize, tiles, sliced = (cell(SMALL, n) for n in ("fixed", "resize", "tiles", "sliced"))
    assert rows == {
        "fixed scale → shortest-side resize (whole canvases)": interval(paired(fixed, resize), SMALL_PAIRS),
        "tiles → whole canvases (fixed scale, validated on whole canvases)": interval(paired(tiles, fixed),
                                                                                      SMALL_PAIRS),
        "400 px slices → whole canvases at validation (tiled training)": interval(paired(sliced, tiles),
                                                                                  SMALL_PAIRS),
    }


def step_seconds(policy: str) -> float:
    """The step-cost benchmark's mean seconds per step of a policy, as ``report --step-costs`` reads it."""
    return statistics.fmean(json.loads(STEP_COSTS.read_text())["step_s"][policy])


def equal_cost_tiles() -> list[float]:
    """Per seed, the equal-cost tiles run's best val mAP@0.5 among its validations within the cost of the whole
    canvases' 1,500 steps (a validation within 1 % of the budget counts as at it, as in the report)."""
    budget = 1500 * step_seconds("fixed")
    return [max(m for _, step, m in validations(EQUAL_COST / f"tiles_equal_s{s}")
                if (step + 1) * step_seconds("tiles") <= budget * 1.01) for s in SEEDS]


def test_small_objects_equal_cost_table():
    rows = table("docs/small_objects.md", "| policy at equal cost |")
    values = {"fixed scale 1.0, whole canvases, 1,500 steps": cell(EQUAL_COST, "fixed"),
              "tiles at training (400 px, overlap 0.2), 7,860 steps": equal_cost_tiles()}
    assert sorted(row[0] for row in rows) == sorted(values)
    assert cell(EQUAL_COST, "fixed") == cell(SMALL, "fixed")  # the copies are the benchmark's runs
    for row in rows:
        assert row[1:3] == [" / ".join(f"{v:.3f}" for v in values[row[0]]), mean_sd(values[row[0]])], row


COLLAPSE = EXPERIMENTS / "findings" / "collapse"


def per_epoch(run: Path, column: str) -> list[float]:
    """A run's value of ``column`` at each epoch that logged it (the last row of the epoch), in order."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        values = {int(row["epoch"]): float(row[column]) for row in csv.DictReader(f) if row.get(column)}
    return [values[epoch] for epoch in sorted(values)]


def test_collapse_study_table():
    """Per short run: the head's foreground accuracy and val mAP@0.5 at each of its six epochs."""
    rows = table("experiments/findings/collapse/README.md", "| run | foreground accuracy, epochs 1–6 |")
    names = [row[0].strip("`") for row in rows]
    assert sorted(names) == sorted(p.name for p in (COLLAPSE / "runs").iterdir())  # every run, once
    for name, row in zip(names, rows, strict=True):
        run = COLLAPSE / "runs" / name
        assert row[1:3] == [", ".join(f"{v:.2f}" for v in per_epoch(run, "diag/cls_accuracy_fg_epoch")),
                            ", ".join(f"{v:.3f}" for v in per_epoch(run, "val/map_50"))], row


def silent_at(run: str, step: int) -> str:
    """``diag/head_silent`` of the logged step ``step`` (1-based) of a trace run, as a percentage."""
    with open(COLLAPSE / "trace" / run / "csv" / "metrics.csv", newline="") as f:
        value = next(float(row["diag/head_silent_step"]) for row in csv.DictReader(f)
                     if row.get("diag/head_silent_step") and int(row["step"]) == step - 1)
    return f"{100 * value:.0f} %" if value >= 0.01 else f"{100 * value:.1f} %"


# --- sentences ----------------------------------------------------------------------------------------------------

def study(name: str) -> list[float]:
    return cell(STUDY, name)


def speed(name: str) -> list[float]:
    return cell(SPEED, name)


def small(name: str) -> list[float]:
    return cell(SMALL, name)


def rare(name: str) -> list[float]:
    return cell(RARE, name)


def evaluated_ap50(root: Path, name: str, class_name: str) -> list[float]:
    """AP@0.5 of ``class_name`` per seed, from each run's latest ``evaluate`` (its best checkpoint on val)."""
    files = [sorted((root / f"{name}_s{seed}" / "evaluate").glob("*/evaluation.json"))[-1] for seed in SEEDS]
    return [json.loads(f.read_text())["ap_50_per_class"][class_name] for f in files]


def mean_diff(a: Sequence[float], b: Sequence[float]) -> str:
    return signed(statistics.mean(paired(a, b)))


def speed_main_effect_image_size() -> str:
    """The 4 x 2 grid's main effect of the input size: per seed, the mean over the RoI levels of 600 - 300 px."""
    levels = (4, 16, 64, 256)
    per_seed = [statistics.mean(speed(f"rois{r}_px600")[s] - speed(f"rois{r}_px300")[s] for r in levels)
                for s in SEEDS]
    return interval(per_seed, SPEED_FACTORIAL)


def speed_main_effect_rois() -> str:
    """The spread of the RoI levels' marginal means (over both sizes): per seed, 64 RoIs minus 4."""
    per_seed = [statistics.mean(speed(f"rois64_px{p}")[s] - speed(f"rois4_px{p}")[s] for p in (300, 600))
                for s in SEEDS]
    return interval(per_seed, SPEED_FACTORIAL)


def small_objects_ranking() -> str:
    """The report's |#1| - |#2| per seed (resize's effect against the tiles'), an unadjusted 95 % interval."""
    resize_effect = [abs(d) for d in paired(small("fixed"), small("resize"))]
    tiles_effect = [abs(d) for d in paired(small("tiles"), small("fixed"))]
    return interval(paired(tiles_effect, resize_effect), 1)


def curve(root: Path, run: str) -> list[float]:
    return [value for _, _, value in validations(root / run)]


def log_seconds(log: Path) -> list[int]:
    return [int(s) for s in re.findall(r" done +\S+ in (\d+) s", log.read_text())]


def diff(a: Sequence[float], b: Sequence[float], m: int) -> str:
    """``+0.348 [+0.276, +0.421]``: b - a per seed, its mean and adjusted interval."""
    return interval(paired(a, b), m)


def bracket(a: Sequence[float], b: Sequence[float], m: int) -> str:
    """``[+0.276, +0.421]``: the adjusted interval of b - a alone."""
    return diff(a, b, m).split(" ", 1)[1]


def convergence_bests() -> list[float]:
    return [best(CONVERGENCE / f"default_e20_s{s}") for s in SEEDS]


FINDINGS, SMALL_PAGE = "experiments/findings/README.md", "experiments/small_objects/README.md"
QUOTES: list[tuple[str, Callable[[], str]]] = [
    # experiments/findings/README.md: the converged study
    (FINDINGS, lambda: "600 px instead of 300 at the default: {} val mAP@0.5, adjusted interval {}".format(
        mean_diff(study("rois64_px300"), study("rois64_px600")),
        bracket(study("rois64_px300"), study("rois64_px600"), STUDY_MAIN_EFFECTS))),
    (FINDINGS, lambda: "adjusted interval {} as the main-effect contrast, {} as the one-key pair".format(
        bracket(study("rois4_px600"), study("rois64_px600"), STUDY_MAIN_EFFECTS),
        bracket(study("rois4_px600"), study("rois64_px600"), STUDY_PAIRS))),
    (FINDINGS, lambda: "The paired difference, {} (adjusted interval {}".format(
        mean_diff(study("rois64_px600"), study("bglo01")),
        bracket(study("rois64_px600"), study("bglo01"), STUDY_MAIN_EFFECTS))),
    (FINDINGS, lambda: "Seeds 0 and 1 take off (in epochs 4 and 12) and are still gaining 0.05-0.07 in their last "
     "three epochs at {:.3f} and {:.3f}".format(*study("rois16_px600")[:2])),
    # the convergence runs
    (FINDINGS, lambda: "Best val mAP@0.5 {:.3f}, {:.3f} and {:.3f}".format(*convergence_bests())),
    (FINDINGS, lambda: f"{mean_sd(convergence_bests())}, against {mean_sd(speed('rois64_px600'))} after the 152 steps"),
    (FINDINGS, lambda: "Wall time: {:,}-{:,} s per run".format(min(log_seconds(CONVERGENCE.parent / "run_log.txt")),
                                                              max(log_seconds(CONVERGENCE.parent / "run_log.txt")))),
    # the 152-step study
    (FINDINGS, lambda: "costs {}, all three seeds alike: adjusted interval {} as a main effect (Holm p = 0.001), {} as "
     "one of the 20 one-key pairs".format(mean_diff(speed("rois64_px600"), speed("bglo01")),
                                          bracket(speed("rois64_px600"), speed("bglo01"), SPEED_FACTORIAL),
                                          bracket(speed("rois64_px600"), speed("bglo01"), SPEED_PAIRS))),
    (FINDINGS, lambda: "input size " + speed_main_effect_image_size()),
    (FINDINGS, lambda: "RoIs, the spread of their marginal means, " + speed_main_effect_rois()),
    (FINDINGS, lambda: "600 px instead of 300 adds {} at 4 RoIs, {} at 16, {} at 64 and {} at 256".format(
        *(mean_diff(speed(f"rois{r}_px300"), speed(f"rois{r}_px600")) for r in (4, 16, 64, 256)))),
    (FINDINGS, lambda: "64 RoIs instead of 4 add {} at 300 px and {} at 600 px".format(
        *(mean_diff(speed(f"rois4_px{p}"), speed(f"rois64_px{p}")) for p in (300, 600)))),
    (FINDINGS, lambda: "(adjusted intervals {} and {})".format(
        bracket(speed("rois4_px600"), speed("rois64_px600"), SPEED_PAIRS),
        bracket(speed("rois64_px300"), speed("rois64_px600"), SPEED_PAIRS))),
    # experiments/small_objects/README.md
    (SMALL_PAGE, lambda: "shortest-side resize {}, fixed scale {}, tiles {}, tiles and slices {}; fixed scale → resize "
     "{}, tiles → whole canvases {}, slices → whole canvases at validation {}".format(
         *(mean_sd(small(n)) for n in ("resize", "fixed", "tiles", "sliced")),
         diff(small("fixed"), small("resize"), SMALL_PAIRS), diff(small("tiles"), small("fixed"), SMALL_PAIRS),
         diff(small("sliced"), small("tiles"), SMALL_PAIRS))),
    (SMALL_PAGE, lambda: "Best val mAP@0.5: resize {:.3f}, {:.3f} and {:.3f} (seeds 0, 1, 2), tiles {:.3f}, {:.3f} "
     "and {:.3f}".format(*small("resize"), *small("tiles"))),
    (SMALL_PAGE, lambda: "tiles {:.3f}, {:.3f} and {:.3f} (seeds 0, 1, 2; {}) against whole canvases {:.3f}, {:.3f} "
     "and {:.3f} ({}). Whole canvases - tiles: {}".format(
         *equal_cost_tiles(), mean_sd(equal_cost_tiles()), *small("fixed"), mean_sd(small("fixed")),
         diff(equal_cost_tiles(), small("fixed"), 1))),
    ("docs/small_objects.md", lambda: "tiles → whole canvases {}, p 0.073".format(
        diff(equal_cost_tiles(), small("fixed"), 1))),
    ("docs/small_objects.md", lambda: "the tiles reached {:.3f} against {:.3f}".format(
        statistics.mean(equal_cost_tiles()), statistics.mean(small("fixed")))),
    ("experiments/findings/collapse/README.md", lambda: "at seed 2, {} of the units are silent on a batch at step "
     "10, {} at step 20".format(silent_at("band_s2", 10), silent_at("band_s2", 20))),
    ("experiments/findings/collapse/README.md", lambda: "and {} at step 60, once the rate".format(
        silent_at("band_s2", 60))),
    ("experiments/findings/collapse/README.md", lambda: "goes as far ({} at step 70)".format(silent_at("band_s3", 70))),
    ("README.md", lambda: "600 px instead of 300 adds {} val mAP@0.5 {}".format(
        mean_diff(study("rois64_px300"), study("rois64_px600")),
        bracket(study("rois64_px300"), study("rois64_px600"), STUDY_MAIN_EFFECTS))),
    ("README.md", lambda: "shrinking them to a 600 px side: {})".format(diff(small("fixed"), small("resize"),
                                                                             SMALL_PAIRS))),
    ("README.md", lambda: "at equal training cost tiles reached {:.3f} against {:.3f} for whole canvases".format(
        statistics.mean(equal_cost_tiles()), statistics.mean(small("fixed")))),
    (SMALL_PAGE, lambda: "`resize_s0` fell from {:.4f} to {:.4f}, its best at step 1,000".format(
        *curve(SMALL, "resize_s0")[1:])),
    (SMALL_PAGE, lambda: "`fixed_s2` gained {}, under its tolerance".format(
        signed(curve(SMALL, "fixed_s2")[2] - curve(SMALL, "fixed_s2")[1]))),
    # experiments/rare_classes/README.md
    ("experiments/rare_classes/README.md", lambda: "phone's AP@0.5 from {} to {}".format(
        mean_sd(evaluated_ap50(RARE, "random", "phone")), mean_sd(evaluated_ap50(RARE, "repeat", "phone")))),
    ("experiments/rare_classes/README.md", lambda: "random {}, repeat-factor {}; random → repeat_factor {}".format(
        mean_sd(rare("random")), mean_sd(rare("repeat")), diff(rare("random"), rare("repeat"), RARE_PAIRS))),
    # experiments/transfer/README.md
    ("experiments/transfer/README.md", lambda: "reached best val mAP@0.5 {} (seeds 0, 1, 2: {:.3f}, {:.3f}, {:.3f}) "
     "against {} ({:.3f}, {:.3f}, {:.3f}) from the ImageNet trunk: {} for the detector start".format(
         mean_sd(cell(TRANSFER, "detector")), *cell(TRANSFER, "detector"), mean_sd(cell(TRANSFER, "imagenet")),
         *cell(TRANSFER, "imagenet"), diff(cell(TRANSFER, "imagenet"), cell(TRANSFER, "detector"), TRANSFER_PAIRS))),
    ("experiments/transfer/README.md", lambda: "the converged study's ImageNet start reaches {} after 20 epochs".format(
        mean_sd(study("rois64_px600")))),
    # docs that cite the studies
    ("docs/fine_tuning.md", lambda: "as the start of the hard benchmark gave {} val mAP@0.5 over the ImageNet "
     "trunk".format(diff(cell(TRANSFER, "imagenet"), cell(TRANSFER, "detector"), TRANSFER_PAIRS))),
    ("docs/small_objects.md", lambda: "`resize_s0` fell from {:.4f} at step 1,000 (its best) to {:.4f} at step "
     "1,500".format(*curve(SMALL, "resize_s0")[1:])),
    ("docs/small_objects.md", lambda: "`fixed_s2` gained {} there".format(
        signed(curve(SMALL, "fixed_s2")[2] - curve(SMALL, "fixed_s2")[1]))),
    ("docs/small_objects.md", lambda: "ahead of the tiles by " + small_objects_ranking()),
    ("docs/datasets.md", lambda: "the default cell reaches val mAP@0.5 {} over three seeds in the convergence runs, "
     "all three plateaued, and {} in the converged study".format(mean_sd(convergence_bests()),
                                                                 mean_sd(study("rois64_px600")))),
    ("docs/datasets.md", lambda: "600 px instead of 300 adds {} (adjusted interval {})".format(
        mean_diff(study("rois64_px300"), study("rois64_px600")),
        bracket(study("rois64_px300"), study("rois64_px600"), STUDY_MAIN_EFFECTS))),
]


@pytest.mark.parametrize(("relative", "quote"), QUOTES,
                         ids=[f"{relative}#{i}" for i, (relative, _) in enumerate(QUOTES)])
def test_quoted_figure_matches_the_runs(relative: str, quote: Callable[[], str]):
    expected = normal(quote())
    assert expected in page(relative), f"{relative} should say: {expected}"


# --- the quickstart ---------------------------------------------------------------------------------------------

def test_readme_quickstart_figures_are_the_benchmark_tables():
    """The README quotes the quickstart's time and mAP as ranges over the machines measured and links to their
    home, the benchmark page's table (machine, commit, command)."""
    rows = table("experiments/bench/README.md", "| machine | commit | wall time | best val mAP@0.5 |")
    assert rows and all(re.fullmatch(r"[0-9a-f]{7,40}", row[1]) for row in rows), rows
    seconds = [int(s) for row in rows for s in re.findall(r"(\d+) s\b", row[2].split("(")[0])]
    maps = [re.match(r"(\d\.\d{3})", row[3]).group(1) for row in rows]
    readme = page("README.md")
    sentence = re.search(r"On the 2-core CPUs measured it takes (.*?)\)", readme).group(0)
    assert f"{min(seconds)} s to about {round(max(seconds) / 60)} minutes" in sentence, sentence
    assert f"val mAP@0.5 {min(maps)} to {max(maps)}" in sentence, sentence
    assert "(experiments/bench/README.md#the-quickstart)" in sentence
