"""Evaluation metrics: torchmetrics mAP plus the thesis's detection-rate figures."""

from frcnn_lab.metrics.rates import DetectionRates, mean_average_precision, metric_target

__all__ = ["DetectionRates", "mean_average_precision", "metric_target"]
