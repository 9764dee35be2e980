"""Evaluation metrics: torchmetrics mAP plus the thesis's detection-rate figures, gathered in one collection."""

from frcnn_lab.metrics.evaluation import DetectionEvaluation, finite, per_class, timed_forward
from frcnn_lab.metrics.rates import DetectionRates, mean_average_precision, metric_target

__all__ = ["DetectionEvaluation", "DetectionRates", "finite", "mean_average_precision", "metric_target", "per_class",
           "timed_forward"]
