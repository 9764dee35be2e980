"""Running under SLURM through submitit (``hydra/launcher=slurm`` and ``slurm_cpu``, launcher in
``hydra_plugins.frcnn_lab_slurm``): a signalled job's last.ckpt saved for the requeued job to resume from."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)


class SaveLastOnExit(L.Callback):
    """Saves ``last.ckpt`` when fitting ends by SystemExit: submitit's way out of a job that SLURM signalled
    (``signal_delay_s`` before its time limit, or on preemption) once it has requeued the job, which then resumes
    from that checkpoint. Only the process that exits saves (rank 0 under DDP, the one submitit ends)."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        checkpoint = trainer.checkpoint_callback
        if isinstance(exception, SystemExit) and checkpoint is not None and checkpoint.dirpath is not None:
            path = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
            trainer.save_checkpoint(path)
            log.info("saved %s on the way out (global step %d)", path, trainer.global_step)
