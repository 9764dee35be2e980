"""The best checkpoint as the W&B model artifact of the run (``callbacks.wandb_model.enabled=true``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger


class WandbModelArtifact(L.Callback):
    """With ``enabled``, at the end of training, the best checkpoint becomes the W&B model artifact
    ``model-<run id>`` (alias ``best``) of every W&B logger."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if not self.enabled or checkpoint is None or not Path(checkpoint.best_model_path or "").is_file():
            return
        import wandb

        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)] if trainer.is_global_zero else []
        for logger in wandb_loggers:
            score = checkpoint.best_model_score
            artifact = wandb.Artifact(f"model-{logger.experiment.id}", type="model", metadata={
                "monitor": checkpoint.monitor, "score": None if score is None else float(score)})
            artifact.add_file(checkpoint.best_model_path, name="best.ckpt")
            logger.experiment.log_artifact(artifact, aliases=["best"])
