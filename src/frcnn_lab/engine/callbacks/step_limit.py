"""Validation at the step limit (``trainer.max_steps``), so that the best checkpoint sees what was trained."""

from __future__ import annotations

from typing import Any

import lightning as L


class ValidateAtStepLimit(L.Callback):
    """``trainer.max_steps`` can end fitting inside an epoch: the batch that reaches it asks Lightning to stop, which
    validates there and then (as for early stopping), so the checkpoint callbacks keep ``best.ckpt`` from what was
    trained. That last validation runs even in an epoch that ``check_val_every_n_epoch`` would skip."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if 0 <= trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
            trainer.check_val_every_n_epoch = None  # Lightning then validates whenever fitting is asked to stop
