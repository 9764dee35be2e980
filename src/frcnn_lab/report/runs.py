"""Training runs read from their folders: config, status, per-epoch metrics, evaluation, TIDE and size figures.

A run is a folder with ``.hydra/config.yaml`` (with a ``trainer`` section), ``status.json`` (written by
``frcnn_lab.train``), ``csv/metrics.csv`` (Lightning's CSVLogger) and, when ``frcnn_lab.evaluate`` ran on
it, ``evaluate/<time>/evaluation.json``. Runs group into configurations by the config keys that differ
between them, the seed and bookkeeping aside.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from frcnn_lab.metrics.coco_json import GROUND_TRUTH_FILE, PREDICTIONS_FILE
from frcnn_lab.metrics.sizes import COCO_AREAS
from frcnn_lab.metrics.tide import ERROR_TYPES as TIDE_ERROR_TYPES
from frcnn_lab.metrics.tide import SPECIAL_TYPES as TIDE_SPECIAL_TYPES
from frcnn_lab.runs.folders import EVALUATION_FILE
from frcnn_lab.runs.tracking import flat_config

TIDE_TYPES = (*TIDE_ERROR_TYPES, *TIDE_SPECIAL_TYPES)
TERTILES = (1, 2, 3)
SIZE_COLUMNS = {**{f"COCO {area}": f"val/map_{area}" for area in COCO_AREAS},
                **{f"train tertile {i}": f"val/map_tertile{i}" for i in TERTILES}}
"""The report's size columns (AP@[.5:.95]) -> the logged name they are read from."""
IGNORED_KEYS = ("seed", "tags", "ckpt_path", "task_name")
IGNORED_PREFIXES = ("paths.", "logger.", "callbacks.progress_bar.", "hydra.", "trainer.default_root_dir")
INERT_WHEN_OFF = {"data.tiles.": "data.tiles.size", "inference.slicing.": "inference.slicing.size"}
"""A group's keys do nothing while its switch is null (no tiles, no slicing): runs that differ only there (say, a
default changed between two commits) are one configuration, and a key that differs only there tells none apart."""
# How long a run trains: at equal training cost (``report --budget cost``) the budget sets it, so these keys do not
# tell configurations apart in the comparisons there.
RUN_LENGTH_KEYS = ("trainer.max_steps", "trainer.max_epochs", "optim.schedule_steps")
SIGNIFICANT_DIGITS = 4  # floats equal to this many digits are one setting (0.1111 written out, 1/9 computed)


@dataclass
class Run:
    """One training run's files, read."""

    path: Path
    config: dict[str, Any]
    status: str                      # completed | failed | interrupted | unknown
    error: str | None = None
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)  # 0-based epoch -> column -> value
    evaluation: dict[str, Any] | None = None
    recorded_train_time_s: float | None = None  # status.json train_time_s: the fit timer, over every resume
    validation_steps: dict[int, int] = field(default_factory=dict)  # 0-based epoch -> optimiser steps done at its
    # validation
    steps: int | None = None          # optimiser steps done when the run's metrics end
    detections: Path | None = None    # the latest evaluate/<time>/ with predictions_coco.json and ground truth

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    def series(self, column: str) -> tuple[list[int], list[float]]:
        """(1-based epochs, values) where ``column`` was logged."""
        points = [(e + 1, row[column]) for e, row in sorted(self.epochs.items()) if column in row]
        return [p[0] for p in points], [p[1] for p in points]

    @property
    def curve(self) -> list[float]:
        """val mAP@0.5 per validation, in epoch order."""
        return self.series("val/map_50")[1]

    @property
    def best_epoch(self) -> int | None:
        """0-based epoch of the highest val/map_50 (the one best.ckpt holds), or None without validation."""
        scored = [(row["val/map_50"], -e) for e, row in self.epochs.items() if "val/map_50" in row]
        return -max(scored)[1] if scored else None

    def at_best(self, column: str) -> float | None:
        best = self.best_epoch
        return None if best is None else self.epochs[best].get(column)

    @property
    def train_time_s(self) -> float | None:
        """The fit's time (validations included) over all the run's processes; runs that predate the fit timer:
        the sum of their epoch times, which misses a process's time before a mid-epoch resume."""
        if self.recorded_train_time_s is not None:
            return self.recorded_train_time_s
        times = self.series("train/epoch_time_s")[1]
        return sum(times) if times else None

    @property
    def note(self) -> str:
        if self.status == "failed":
            return f"failed: {self.error or 'no error recorded'}"
        if self.status == "interrupted":
            return "interrupted (status.json still says running)"
        if not self.epochs:
            return "no metrics (csv/metrics.csv missing or empty)"
        if self.best_epoch is None:
            return "no validation logged"
        return ""


@dataclass
class Metrics:
    epochs: dict[int, dict[str, float]]  # 0-based epoch -> {column: value}
    validation_steps: dict[int, int]     # 0-based epoch -> optimiser steps done at its val/map_50
    steps: int | None                    # optimiser steps done at the last row


def read_metrics(path: Path) -> Metrics:
    """metrics.csv -> per epoch its columns, merging the rows Lightning writes per epoch, and the steps done at each
    validation (Lightning's ``step`` column counts from 0: the row of step s follows s + 1 optimiser steps)."""
    metrics = Metrics({}, {}, None)
    if not path.is_file():
        return metrics
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            merged = metrics.epochs.setdefault(epoch, {})
            if row.get("step"):
                done = int(float(row["step"])) + 1
                metrics.steps = max(metrics.steps or 0, done)
                if row.get("val/map_50"):
                    metrics.validation_steps[epoch] = done
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, ""):
                    continue
                number = float(value)
                # torchmetrics reports -1 for an AP without ground truth to measure it on: not a result.
                if not (key.startswith(("val/map", "val/ap_")) and number < 0):
                    merged[key] = number
    return metrics


def read_status(run: Path) -> tuple[str, str | None, float | None]:
    """(status, error, training time) from status.json; "running" there means the process died mid-run."""
    path = run / "status.json"
    if not path.is_file():
        return "unknown", None, None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        return "unknown", f"unreadable status.json ({error})", None
    status = {"running": "interrupted"}.get(record.get("status"), record.get("status", "unknown"))
    return status, record.get("error"), record.get("train_time_s")


def latest_evaluation(run: Path) -> dict[str, Any] | None:
    files = sorted((run / "evaluate").glob(f"*/{EVALUATION_FILE}"))
    return json.loads(files[-1].read_text()) if files else None


def latest_detections(run: Path) -> Path | None:
    """The latest ``evaluate/<time>/`` folder that holds both COCO files ``evaluate`` writes."""
    folders = [f.parent for f in sorted((run / "evaluate").glob(f"*/{PREDICTIONS_FILE}"))
               if (f.parent / GROUND_TRUTH_FILE).is_file()]
    return folders[-1] if folders else None


def read_run(run: Path) -> Run:
    config = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"), resolve=False)
    status, error, train_time_s = read_status(run)
    metrics = read_metrics(run / "csv" / "metrics.csv")
    return Run(run, flat_config(config), status, error, metrics.epochs, latest_evaluation(run), train_time_s,
               metrics.validation_steps, metrics.steps, latest_detections(run))


def find_runs(root: Path) -> list[Run]:
    """Training runs at or below ``root``: folders with a ``.hydra/config.yaml`` that has a ``trainer``."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    runs = []
    for config in sorted(root.rglob(".hydra/config.yaml"), key=lambda p: natural_key(str(p))):
        if "trainer" in (OmegaConf.load(config) or {}):
            runs.append(read_run(config.parent.parent))
    if not runs:
        raise FileNotFoundError(f"{root}: no training run (a folder with .hydra/config.yaml) at or below it")
    return runs


def natural_key(text: str) -> list[Any]:
    """Sort "10" after "9"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def expected_jobs(root: Path) -> int | None:
    """Number of jobs the sweep in ``root/multirun.yaml`` launches, or None when there is none."""
    path = root / "multirun.yaml"
    if not path.is_file():
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = OmegaConf.load(path).hydra
    arguments = [f"{k}={v}" for k, v in (OmegaConf.select(hydra_cfg, "sweeper.params") or {}).items()]
    arguments += list(hydra_cfg.overrides.task)
    sizes: dict[str, int] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [None]
        sizes[override.get_key_element()] = len(values)  # a command-line sweep replaces the preset's
    return math.prod(sizes.values())


def is_inert(config: dict[str, Any], key: str) -> bool:
    """Whether ``key`` does nothing in a run with this flat config: its switch (INERT_WHEN_OFF) is null."""
    return any(key.startswith(prefix) and key != switch and switch in config and config[switch] is None
               for prefix, switch in INERT_WHEN_OFF.items())


def setting(value: Any) -> str:
    """A config value as the identity of a setting: floats to SIGNIFICANT_DIGITS digits, anything else as JSON."""
    if isinstance(value, float):
        return f"{value:.{SIGNIFICANT_DIGITS}g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(setting(v) for v in value) + "]"
    return json.dumps(value, sort_keys=True, default=str)


def configuration_keys(runs: list[Run], ignored: tuple[str, ...] = ()) -> list[str]:
    """The config keys whose values differ between the runs that have them and where they act, apart from the seed,
    bookkeeping and ``ignored``. A key only some runs have (one their code version added) differs only if those runs
    disagree on it; which class implements a callback (``callbacks.<name>._target_``) is bookkeeping too; floats
    differ only beyond SIGNIFICANT_DIGITS digits."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.config if k not in keys]
    return [
        k for k in keys
        if k not in IGNORED_KEYS and k not in ignored and not k.startswith(IGNORED_PREFIXES)
        and not (k.startswith("callbacks.") and k.endswith("._target_"))
        and len({setting(r.config[k]) for r in runs if k in r.config and not is_inert(r.config, k)}) > 1
    ]


def holds(config: dict[str, Any], override: str) -> bool:
    """Whether a flat config has ``key=value`` (the value read as YAML, as Hydra reads an override: ``400``,
    ``0.2``, ``null``, ``fixed_scale``)."""
    key, sep, value = override.partition("=")
    if not sep or key not in config:
        return False
    return config[key] == yaml.safe_load(value) or str(config[key]) == value


def configuration(run: Run, keys: list[str]) -> dict[str, Any]:
    """The run's values of ``keys``, those that do nothing in it left out."""
    return {k: run.config.get(k) for k in keys if not is_inert(run.config, k)}


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Configuration label ("backbone.name=vgg16 rpn.num_rois=4") -> its runs (seeds), in first-seen order."""
    keys = configuration_keys(runs)
    groups: dict[str, list[Run]] = {}
    labels: dict[str, str] = {}  # the settings -> the label, written with the first run's values
    for run in runs:
        values = configuration(run, keys)
        label = labels.setdefault(setting(sorted(values.items())),
                                  " ".join(f"{k}={v}" for k, v in values.items()) or "all runs")
        groups.setdefault(label, []).append(run)
    return groups


def run_figures(run: Run) -> dict[str, float | None]:
    """FN share, FP share and ms/img of a run: from its evaluation when there is one, else its best epoch."""
    evaluation = run.evaluation
    if evaluation:
        negatives = evaluation.get("negatives") or {}
        return {"fn": evaluation.get("fn_rate"), "fp": negatives.get("fp_image_rate", evaluation.get("fp_image_rate")),
                "ms": evaluation.get("ms_per_image_median"), "source": "evaluate"}
    return {"fn": run.at_best("val/fn_rate"), "fp": run.at_best("val/fp_image_rate"),
            "ms": run.at_best("val/ms_per_image"), "source": "val"}


def configuration_scores(groups: dict[str, list[Run]], ignored: tuple[str, ...] = ()
                         ) -> tuple[dict[str, dict[str, Any]], dict[str, dict]]:
    """label -> {key: value} of the keys that tell the configurations apart (``ignored`` aside), and label ->
    {seed: best mAP@0.5}."""
    runs = [run for group in groups.values() for run in group]
    keys = configuration_keys(runs, ignored)
    configurations = {label: configuration(group[0], keys) for label, group in groups.items()}
    scores = {label: {r.seed: r.at_best("val/map_50") for r in group if r.best_epoch is not None}
              for label, group in groups.items()}
    return configurations, scores


def tide_figures(run: Run) -> tuple[dict[str, float | None], str] | None:
    """A run's TIDE dAPs ({type: dAP}) and their source: its latest evaluation's ``error_analysis``, else
    the best epoch's ``val/tide_<type>``; None when neither has them."""
    analysis = (run.evaluation or {}).get("error_analysis")
    if analysis:
        return dict(analysis["delta_ap"]), "evaluate"
    values = {key: run.at_best(f"val/tide_{key}") for key in TIDE_TYPES}
    return (values, "val") if any(v is not None for v in values.values()) else None


def tide_means(groups: dict[str, list[Run]]) -> dict[str, tuple[dict[str, float | None], str]]:
    """Configuration -> (mean dAP per TIDE type over its runs, sources); configurations without figures left out."""
    means = {}
    for label, runs in groups.items():
        found = [f for f in (tide_figures(r) for r in runs) if f is not None]
        if found:
            means[label] = ({key: finite_mean([values.get(key) for values, _ in found]) for key in TIDE_TYPES},
                            " + ".join(sorted({source for _, source in found})))
    return means


def finite_mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.mean(present) if present else None




def size_figures(run: Run) -> tuple[dict[str, float | None], str] | None:
    """A run's AP@[.5:.95] per size bin ({SIZE_COLUMNS name: AP}) and their source: its latest evaluation's
    ``ap_by_area`` / ``ap_by_size``, else the best epoch's logged ``val/map_<area>`` / ``val/map_tertile<i>``;
    None when neither has them."""
    evaluation = run.evaluation or {}
    if evaluation.get("ap_by_area"):
        values = {f"COCO {area}": evaluation["ap_by_area"][area]["map"] for area in COCO_AREAS}
        bins = (evaluation.get("ap_by_size") or {}).get("bins", [])
        values.update({f"train tertile {i}": found["map"] for i, found in enumerate(bins, start=1)})
        return values, "evaluate"
    values = {name: run.at_best(column) for name, column in SIZE_COLUMNS.items()}
    return (values, "val") if any(v is not None for v in values.values()) else None


def class_figures(run: Run, classes: list[str]) -> tuple[dict[str, float | None], str] | None:
    """A run's AP@0.5 per class: its latest evaluation's ``ap_50_per_class``, else the best epoch's
    ``val/ap50_<class>``; None when neither has them."""
    evaluation = run.evaluation or {}
    if evaluation.get("ap_50_per_class"):
        return {name: evaluation["ap_50_per_class"].get(name) for name in classes}, "evaluate"
    values = {name: run.at_best(f"val/ap50_{name}") for name in classes}
    return (values, "val") if any(v is not None for v in values.values()) else None


def figure_means(groups: dict[str, list[Run]], figures) -> dict[str, tuple[dict[str, list[float]], str]]:
    """Configuration -> ({column: the values of its runs}, sources) of ``figures(run)`` (``size_figures``,
    ``class_figures``...); configurations without figures left out."""
    found_by_label = {}
    for label, runs in groups.items():
        found = [f for f in (figures(r) for r in runs) if f is not None]
        if found:
            columns = list(dict.fromkeys(key for values, _ in found for key in values))
            found_by_label[label] = ({key: [v for values, _ in found if (v := values.get(key)) is not None
                                            and not math.isnan(v)] for key in columns},
                                     " + ".join(sorted({source for _, source in found})))
    return found_by_label
