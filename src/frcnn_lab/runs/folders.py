"""Each run owns its output directory: a second run pointed at a used directory stops before writing anything.

The one exception is a run resumed in place: ``ckpt_path=<dir>/checkpoints/last.ckpt hydra.run.dir=<dir>``
continues an interrupted run in its own directory (the owner's process has ended and the run did not
complete); its metrics CSV is appended to and the earlier ``.hydra/`` files are kept beside the new ones.
An evaluation of a checkpoint gets its folder beside the checkpoint's training run.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, read_write

from frcnn_lab.errors import MissingInputError, OutputExistsError, UserError, exit_for_user_error

EVALUATION_FILE = "evaluation.json"
"""An evaluation's figures, in its run folder (``<run>/evaluate/<time>/``)."""

CLAIM_FILE = ".frcnn_lab_run"
"""Created exclusively (O_EXCL) by the run that owns the directory; holds its pid, host and start time."""


class OutputDirInUseError(UserError, RuntimeError):
    """The output directory already belongs to another run (earlier, or started in the same instant)."""


_reserved: set[Path] = set()
"""Directories this process claimed ahead of the run that will use them (see reserve_output_dir)."""

_created: dict[Path, list[Path]] = {}
"""Run directory -> the directories this process created for it (itself and missing parents, deepest first)."""

START_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", CLAIM_FILE, "status.json")
"""What a run's directory holds before its work begins (besides Hydra's ``<task>.log``)."""


def make_run_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` (and its missing parents), remembering what this process created, so that a start
    refused for a user error can take it away again (remove_refused_run_dir)."""
    directory = Path(output_dir).resolve()
    missing = [path for path in (directory, *directory.parents) if not path.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    if missing and directory not in _created:
        _created[directory] = missing
    return directory


def remove_refused_run_dir(output_dir: str | os.PathLike) -> bool:
    """Remove the run directory of a start refused for a user error -> whether it was removed.

    Only a directory this process created (make_run_dir) that holds nothing but what a start writes (START_FILES
    and Hydra's log) goes, then the parents created with it that are empty; a directory that existed before, or
    where the run began writing its results, is left as it is.
    """
    directory = Path(output_dir).resolve()
    created = _created.get(directory)
    if not created or not directory.is_dir():
        return False
    for path in directory.rglob("*"):
        name = path.relative_to(directory).as_posix()
        started = name in START_FILES or (path.parent == directory and path.suffix == ".log") or name == ".hydra"
        if not started:
            return False
    shutil.rmtree(directory)
    del _created[directory]
    _reserved.discard(directory)
    for parent in created[1:]:
        try:
            parent.rmdir()
        except OSError:  # another run's directory is in it now
            break
    return True


def claim_output_dir(output_dir: str | os.PathLike, resume_from: str | os.PathLike | None = None) -> Path:
    """Create ``output_dir`` if needed and claim it for this run; raise OutputDirInUseError if already claimed.

    The claim is one atomic file creation, so of two runs racing for the same directory exactly one wins.
    A directory that this process reserved for this run (reserve_output_dir) is handed over, once.
    ``resume_from`` (the run's ``ckpt_path``) inside ``<output_dir>/checkpoints/`` takes over the directory of an
    interrupted run instead (see is_resume_in_place).
    Only the global rank 0 process claims: the other ranks of a multi-device run share rank 0's directory.
    """
    directory = make_run_dir(output_dir)
    if rank_zero_only.rank != 0:
        return directory
    if directory in _reserved:
        _reserved.discard(directory)
        return directory
    if is_resume_in_place(directory, resume_from):
        return _take_over_claim(directory, Path(resume_from))
    return _create_claim(directory)


def reserve_output_dir(output_dir: str | os.PathLike, resume_from: str | os.PathLike | None = None) -> Path:
    """Claim ``output_dir`` now, before an entry point writes its own files there, for the run it starts next.

    Reserving a directory this process already reserved is a no-op.
    """
    directory = Path(output_dir).resolve()
    if directory not in _reserved:
        claim_output_dir(directory, resume_from)
        if rank_zero_only.rank == 0:
            _reserved.add(directory)
    return directory


def _create_claim(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    claim = directory / CLAIM_FILE
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        owner = claim.read_text().strip() or "unknown"
        raise OutputDirInUseError(
            f"{directory} already holds the outputs of another run ({owner}); a run never writes into another "
            "run's directory. Start a new run (it gets a new directory), or point hydra.run.dir / hydra.sweep.dir "
            "at an unused directory; to continue training, pass ckpt_path=<its checkpoint> to a new run."
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {datetime.now().isoformat()}\n")
    return directory


def is_resume_in_place(output_dir: str | os.PathLike, ckpt_path: str | os.PathLike | None) -> bool:
    """Whether ``ckpt_path`` is a checkpoint of the run that already owns ``output_dir`` (``<dir>/checkpoints/``)."""
    if not ckpt_path:
        return False
    directory = Path(output_dir).resolve()
    return Path(ckpt_path).resolve().parent == directory / "checkpoints" and (directory / CLAIM_FILE).is_file()


def _take_over_claim(directory: Path, ckpt_path: Path) -> Path:
    """Hand an interrupted run's directory to the run that continues it; refuse a live or completed owner."""
    claim = directory / CLAIM_FILE
    owner = claim.read_text().strip().splitlines()[-1]
    match = re.match(r"(?:pid|resumed by pid) (\d+) on (\S+),", owner)
    if match and match[2] == socket.gethostname() and _process_alive(int(match[1])):
        raise OutputDirInUseError(
            f"{directory} belongs to a run that is still going ({owner}); resume it once that process has ended."
        )
    status = directory / "status.json"
    if status.is_file() and json.loads(status.read_text()).get("status") == "completed":
        raise OutputDirInUseError(
            f"{directory} holds a completed run; to train it further, start a new run with ckpt_path={ckpt_path}."
        )
    if not ckpt_path.is_file():
        raise MissingInputError(f"ckpt_path={ckpt_path} does not exist: nothing to resume {directory} from")
    hydra_files = directory / ".hydra"
    if hydra_files.is_dir():  # Hydra rewrites .hydra/ for the resumed run (a requeued job's already has): keep a copy
        shutil.copytree(hydra_files, directory / f".hydra.before_resume_{datetime.now():%Y%m%d-%H%M%S}")
    with claim.open("a") as f:
        f.write(f"resumed by pid {os.getpid()} on {socket.gethostname()}, {datetime.now().isoformat()}, "
                f"from {ckpt_path.name}\n")
    return directory


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's live process
        return True
    return True


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued instead of deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` for a run directory that a resumed run continues: rows are appended to the
    interrupted run's ``metrics.csv`` (the resumed epochs and steps carry on from the checkpoint's)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class OutputDirGuard(Callback):
    """Hydra callback: claims a run's directory, or a sweep's, before Hydra writes ``.hydra/`` and logs there.

    Hydra saves the composed config into the output directory before the task starts; without this guard a
    run or sweep pointed at a used directory would overwrite the earlier one's ``.hydra/`` files first.
    A refusal exits the process with the one-line error (Hydra turns callback exceptions into warnings).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            reserve_output_dir(config.hydra.run.dir, config.get("ckpt_path"))
        except UserError as error:
            exit_for_user_error(error)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            _create_claim(Path(config.hydra.sweep.dir).resolve())  # each job then claims its own subdirectory
        except UserError as error:
            exit_for_user_error(error)


class NewRunDir(Callback):
    """Hydra callback of every entry point (``conf/hydra/default.yaml``): creates the run's directory before Hydra
    writes ``.hydra/`` there, remembering whether this process created it (make_run_dir), so that a start refused
    for a user error leaves no run folder behind."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        make_run_dir(config.hydra.run.dir)


def training_run_dir(ckpt_path: str | Path) -> Path | None:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>`` when ``<run>/.hydra/config.yaml`` exists, else None."""
    path = Path(ckpt_path).resolve()
    run = path.parent.parent
    if path.parent.name == "checkpoints" and (run / ".hydra" / "config.yaml").is_file():
        return run
    return None


def run_data_config(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The ``data`` group of the checkpoint's training run, or None outside a run folder."""
    run = training_run_dir(ckpt_path)
    if run is None:
        return None
    return OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml").data, resolve=True)


def evaluation_dir(ckpt_path: str, log_dir: str) -> str:
    """Parent of an evaluation's output folder: the training run's ``evaluate/``, else ``<log_dir>/evaluate/runs``."""
    run = training_run_dir(ckpt_path)
    return str(run / "evaluate") if run else str(Path(log_dir) / "evaluate" / "runs")


class EvaluationRunDir(Callback):
    """Hydra callback of ``conf/evaluate.yaml``: puts the run folder under ``evaluation_dir`` (beside the
    checkpoint's training run, where ``frcnn_lab.report`` looks) before Hydra creates it; a folder given on the
    command line that holds an evaluation already is refused before Hydra writes there."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        given = any(o.startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra)
        if not given and not OmegaConf.is_missing(config, "ckpt_path"):  # else the task names the missing key
            parent = evaluation_dir(str(config.ckpt_path), str(config.paths.log_dir))
            with read_write(config.hydra.run):
                config.hydra.run.dir = f"{parent}/{Path(config.hydra.run.dir).name}"
        results = Path(config.hydra.run.dir) / EVALUATION_FILE
        if results.exists():
            exit_for_user_error(OutputExistsError(
                f"{results} exists already; evaluate writes each result to a new folder (leave hydra.run.dir out, "
                "or name an unused folder)"))
