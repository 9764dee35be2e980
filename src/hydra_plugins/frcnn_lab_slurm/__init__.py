"""frcnn_lab's SLURM launcher (``hydra/launcher=slurm``, ``slurm_cpu``). Hydra loads launchers from the
``hydra_plugins`` package only; without hydra-submitit-launcher (the ``slurm`` extra) this defines nothing."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
    from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob
except ImportError:
    SubmititSlurmLauncher = None

log = logging.getLogger(__name__)


def sacct_answers() -> bool:
    """Whether SLURM's accounting (``sacct``) answers: clusters without an accounting database refuse every query."""
    try:
        return subprocess.run(["sacct", "-n", "-X", "-o", "JobID"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


if SubmititSlurmLauncher is not None:

    class ResultFileWatcher(SlurmInfoWatcher):
        """submitit's job-state watcher without its sacct calls: a job counts as done once its result file exists."""

        def _make_command(self) -> None:
            return None

    class SlurmLauncher(SubmititSlurmLauncher):
        """hydra-submitit-launcher's SLURM launcher: on a cluster without accounting, sacct is not asked (instead of
        a "Bypassing sacct error" warning and sacct's own error per poll, one line says so), and a signalled job is
        requeued to resume from its ``last.ckpt``."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            if sacct_answers():
                return super().launch(job_overrides, initial_job_idx)
            log.info("sacct does not answer (no accounting database): job states come from the jobs' result files")
            watcher = SlurmJob.watcher
            SlurmJob.watcher = ResultFileWatcher(delay_s=watcher._delay_s)
            try:
                return super().launch(job_overrides, initial_job_idx)
            finally:
                SlurmJob.watcher = watcher

        def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
            """Called by submitit inside a job that SLURM signalled, before it requeues the job: the requeued job
            continues this one in its directory from ``checkpoints/last.ckpt`` (SaveLastOnExit writes it as this
            one exits)."""
            last = Path(HydraConfig.get().runtime.output_dir) / "checkpoints" / "last.ckpt"
            resumed = [o for o in sweep_overrides if not o.startswith("ckpt_path=")] + [f"ckpt_path={last}"]
            return super().checkpoint(resumed, *args, **kwargs)
