"""A guided search's sweep folder (``hparams_search=thesis_optuna``: hydra-optuna-sweeper): its study and trials."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from frcnn_lab.report.runs import Run
from frcnn_lab.report.tables import table

OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


@dataclass
class Study:
    """The search as the trials' ``.hydra/hydra.yaml`` configured it, and the best trial from
    ``optimization_results.yaml`` (None while the study has not finished)."""

    direction: str
    n_trials: int
    space: dict[str, str]  # searched key -> its distribution as configured ("command line" if swept there)
    best_params: dict[str, Any] | None
    best_value: float | None


def read_study(root: Path) -> Study | None:
    """The Optuna study of the sweep folder ``root``, or None when its trials were not an Optuna search."""
    trials = sorted(root.glob("*/.hydra/hydra.yaml"))
    if not trials:
        return None
    sweeper = OmegaConf.load(trials[0]).hydra.sweeper
    if sweeper.get("_target_") != OPTUNA_SWEEPER:
        return None
    configured = {str(k): str(v) for k, v in (sweeper.get("params") or {}).items()}
    results = root / "optimization_results.yaml"
    best = OmegaConf.to_container(OmegaConf.load(results)) if results.is_file() else {}
    # The sampled keys: a fixed command-line value takes a configured key out, a command-line sweep adds one.
    searched = list(best["best_params"]) if best else list(configured)
    space = {key: configured.get(key, "command line") for key in searched}
    return Study(str(sweeper.direction), int(sweeper.n_trials), space, best.get("best_params"),
                 best.get("best_value"))


def shown(value: Any) -> str:
    """A sampled value for the tables: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_value(run: Run) -> float | None:
    """The objective the trial returned: the run's best val mAP@0.5 (None: failed, or no validation)."""
    return max(run.curve) if run.status == "completed" and run.curve else None


def study_section(study: Study, runs: list[Run], root: Path) -> list[str]:
    """"## Optuna study": the search space, the best trial, and one row per trial (job folder = trial number)."""
    keys = list(study.space)
    rows = []
    for run in runs:
        value = trial_value(run)
        rows.append([f"`{run.path.relative_to(root)}`", *(shown(run.config.get(k)) for k in keys), run.status,
                     "–" if value is None else f"{value:.3f}"])
    best = ("the study has not finished (no optimization_results.yaml)" if study.best_params is None else
            f"best {study.best_value:.3f} with " + ", ".join(f"`{k}={shown(v)}`" for k, v in study.best_params.items()))
    return [
        "", "## Optuna study", "",
        f"{len(runs)} of {study.n_trials} trials, {study.direction} best val mAP@0.5; {best}. Search space: "
        + ", ".join(f"`{k}`: `{v}`" for k, v in study.space.items()) + ".", "",
        table(["trial", *(f"`{k}`" for k in keys), "status", "best val mAP@0.5"], rows),
    ]
