"""The Lightning callbacks of a training run, one job per module: ``checkpoint_io`` (atomic checkpoint writes),
``nonfinite`` (the non-finite guard), ``step_limit``, ``validation`` (pictures and the console line), ``slurm`` (the
last checkpoint on a requeued job's exit) and ``wandb_artifact`` (the best checkpoint as a W&B artifact)."""
