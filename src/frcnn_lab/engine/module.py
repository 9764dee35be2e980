"""LightningModule: the detector's weighted four-part loss, diagnostics, evaluation figures, optimiser."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn

from frcnn_lab.checks import Checks, typed
from frcnn_lab.data.config import DataConfig
from frcnn_lab.data.datamodule import Batch
from frcnn_lab.engine.callbacks.nonfinite import nonfinite_names
from frcnn_lab.engine.migration import read_hparams, upgrade_hparams
from frcnn_lab.engine.optim import OptimConfig, warmup_then_decay
from frcnn_lab.inference.slicing import Slicing, detect_images
from frcnn_lab.metrics import DetectionEvaluation, timed_forward
from frcnn_lab.model.backbones import BackboneConfig
from frcnn_lab.model.detection_weights import load_detection_weights, read_detection_weights
from frcnn_lab.model.detector import ModelConfig, build_detector, loss_path
from frcnn_lab.model.losses import LossConfig, weighted_total
from frcnn_lab.model.preprocess import PreprocessConfig
from frcnn_lab.model.roi_head import RoIHeadConfig
from frcnn_lab.model.rpn import RPNConfig

Group = dict[str, Any] | None  # a config group as a mapping (a checkpoint's hyperparameters); None: its defaults


@dataclass
class EvalConfig:
    """``eval.*``: what each validation reports besides mAP."""

    score_threshold: float = 0.9  # detections at or above it count for fn_rate / fp_image_rate (the thesis's 0.9)
    val_images: int = 4  # val images drawn with predicted and GT boxes each evaluation (run dir and W&B)
    losses: bool = False  # also the four loss parts on the val set (val/loss_<part>): a second forward per batch

    def __post_init__(self) -> None:
        check = Checks("eval")
        check.fraction("score_threshold", self.score_threshold)
        check.integer("val_images", self.val_images, 0)
        check.choice("losses", self.losses, (False, True))
        check.done()


class DetectionModule(L.LightningModule):
    """Trains, validates and tests a FasterRCNN built from the config groups.

    Logged names: ``train/<part>`` for the four losses and ``train/loss`` (weighted total), ``train/lr``,
    ``train/epoch_time_s``, ``train/images_per_s``; ``diag/<stat>`` for the detector's diagnostics;
    ``val/map_50``, ``val/map``, ``val/ap_<class>`` (AP@[.5:.95]), ``val/ap50_<class>`` (AP@0.5),
    ``val/fn_rate``, ``val/fp_image_rate``, ``val/detections_per_image`` (the rates at ``score_threshold``),
    ``val/ms_per_image`` (median over the val batches after the first of forward time / images); with
    ``voc07`` also ``val/voc07_map`` and ``val/voc07_ap_<class>`` (VOC07 11-point AP); ``val/tide_<type>``: the
    mAP@0.5 lost to each TIDE error type (``frcnn_lab.metrics.tide``); ``val/map_<area>`` / ``val/mar_<area>``
    (COCO's small / medium / large AP@[.5:.95] and AR@100) and, when the datamodule gives size bins (the tertiles
    of the train boxes' side, ``size_edges``), ``val/map_tertile<i>`` / ``val/map_50_tertile<i>``
    (``frcnn_lab.metrics.sizes``). The figures are ``DetectionEvaluation``'s, as in ``frcnn_lab.evaluate``; a
    class absent from the val set logs NaN. The confusion matrix is in ``val_figures`` for the callbacks
    (``ConfusionMatrixRecorder``). With ``val_losses`` (``eval.losses``) also ``val/loss_<part>`` and
    ``val/loss`` (weighted total): the training losses on the val batches, computed under
    ``frcnn_lab.model.detector.loss_path`` (no gradient, running statistics untouched, the sampling seeded per
    batch so every epoch draws the same and the training's random stream is left as it was), on whole images
    even with slicing, difficult boxes left out as training leaves them out.

    ``test_step`` evaluates each test dataloader with its own ``DetectionEvaluation``: after ``trainer.test``,
    ``test_results[i]`` holds loader i's figures and ``test_outputs[i]`` its (prediction, target) pairs.

    The checkpoint carries what inference needs: the config groups, ``classes`` with their dataset
    ``category_ids`` (the training datamodule's, else as given, else 1..K), the detector's ``preprocess``
    (``frcnn_lab.model.preprocess.PreprocessConfig``: the resize of ``data.resize`` / ``image_size`` / ``max_size`` /
    ``scale`` and the normalisation, the backbone's mean / std unless given) and the ``slicing`` validation ran with
    (``inference.slicing``; None: whole images). ``weights`` / ``init_classes`` (``model.weights`` /
    ``model.init_classes``): a trained detector the model starts from (``frcnn_lab.model.detection_weights``); read
    only with ``pretrained_backbone``, and ``init_classes_from`` then names the source class each class started
    from. ``channels_last`` (``model.channels_last``) keeps the convolution weights in NHWC layout, which changes
    the kernels, not the figures. ``pretrained_backbone=False`` builds the backbone without reading
    pretrained weights, for a state dict that replaces them; ``load_from_checkpoint`` always does so.

    A training batch with a NaN / infinite loss part is neither logged nor back-propagated: its part names
    are left in ``nonfinite_losses`` for the ``NonFiniteGuard`` callback, which stops the run or counts it.
    """

    def __init__(
        self, backbone: Group = None, rpn: Group = None, roi_head: Group = None, loss: Group = None,
        optim: Group = None, classes: list[str] | None = None, mode: str = ModelConfig.mode,
        score_threshold: float = EvalConfig.score_threshold, voc07: bool = False, category_ids: list[int] | None = None,
        preprocess: Group = None, pretrained_backbone: bool = True, slicing: dict[str, Any] | None = None,
        channels_last: bool = ModelConfig.channels_last, weights: str = ModelConfig.weights,
        init_classes: str = ModelConfig.init_classes, val_losses: bool = EvalConfig.losses,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["pretrained_backbone"])
        parts = {"backbone": typed(BackboneConfig, backbone, "backbone"), "rpn": typed(RPNConfig, rpn, "rpn"),
                 "roi_head": typed(RoIHeadConfig, roi_head, "roi_head"), "loss": typed(LossConfig, loss, "loss"),
                 "optim": typed(OptimConfig, optim, "optim")}
        # The checkpoint records every value, defaults included: it rebuilds this model whatever the defaults become.
        self.hparams.update({name: asdict(config) for name, config in parts.items()})
        self.classes = list(classes) if classes is not None else list(DataConfig().classes)
        self.category_ids = list(category_ids) if category_ids is not None else list(range(1, len(self.classes) + 1))
        if len(self.category_ids) != len(self.classes):
            raise ValueError(f"category_ids={self.category_ids} must give one id per class of {self.classes}")
        self.detector = build_detector(parts["backbone"], parts["rpn"], parts["roi_head"], parts["loss"],
                                       len(self.classes), mode, pretrained=pretrained_backbone,
                                       detection_weights=weights != "none", preprocess=preprocess)
        self.init_classes_from: dict[str, str] = {}
        if pretrained_backbone and weights != "none":
            name = parts["backbone"].name
            self.init_classes_from = load_detection_weights(
                self.detector, read_detection_weights(weights, name), name, self.classes, init_classes)
        if channels_last:
            # oneDNN and cuDNN pick faster kernels for NHWC weights; the inputs follow the weights' layout.
            self.detector.to(memory_format=torch.channels_last)
        self.hparams.update(classes=self.classes, category_ids=self.category_ids,
                            preprocess=asdict(self.detector.preprocess.config))
        self.loss_weights, self.optim = parts["loss"].weights, parts["optim"]
        self.score_threshold, self.voc07, self.val_losses = score_threshold, voc07, val_losses
        self.slicing = Slicing.from_config(slicing)
        self.size_edges: list[float] | None = None  # size bins of the train boxes, from the datamodule at setup
        self.val_metrics = DetectionEvaluation(self.classes, score_threshold, voc07)
        self.val_figures: dict[str, Any] = {}
        self.test_metrics = nn.ModuleList()
        self.test_results: list[dict[str, Any]] = []
        self.test_outputs: list[list[tuple[dict[str, torch.Tensor], dict[str, Any]]]] = []
        self.best_map_50, self.best_epoch = float("-inf"), -1
        self._epoch_start, self._epoch_images = 0.0, 0
        self.nonfinite_losses: list[str] = []

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only=None, **kwargs: Any) -> DetectionModule:
        """Lightning's loader, for a checkpoint of any layout (``frcnn_lab.engine.migration``), with the backbone
        built without pretrained weights: the checkpoint's own state dict replaces them, so no ImageNet file is
        read or downloaded. ``kwargs`` replace the checkpoint's hyperparameters."""
        hparams = upgrade_hparams(read_hparams(checkpoint_path), checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, weights_only=weights_only,
                                            **{**hparams, "pretrained_backbone": False, **kwargs})

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if stage == "fit" and datamodule is not None and hasattr(datamodule, "category_ids"):
            # The dataset's own category ids (e.g. COCO's), known once the data is read, go into the checkpoint.
            self.category_ids = [int(i) for i in datamodule.category_ids]
            self.hparams.update(category_ids=self.category_ids)
        if datamodule is not None and hasattr(datamodule, "size_bin_edges"):
            self.size_edges = datamodule.size_bin_edges()
            self.val_metrics.set_size_edges(self.size_edges)

    def forward(self, images: list[torch.Tensor], original_sizes: list[tuple[int, int]] | None = None,
                proposals_per_image: int | None = None) -> list[dict[str, torch.Tensor]]:
        return self.detector(images, original_sizes=original_sizes, proposals_per_image=proposals_per_image).detections

    @property
    def preprocess(self) -> PreprocessConfig:
        """How a photo becomes this detector's input (its resize and normalisation)."""
        return self.detector.preprocess.config

    @property
    def proposals_per_image(self) -> int:
        """The RPN's post-NMS top-N at inference: the budget a whole image gets."""
        return self.detector.rpn.post_nms_top_n["test"]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        images, targets = batch
        output = self.detector(images, targets)
        self.nonfinite_losses = nonfinite_names(output.losses.items())
        if self.nonfinite_losses:
            return None  # Lightning runs no backward and no optimiser step; NonFiniteGuard stops or counts
        total = weighted_total(output.losses, self.loss_weights)
        size = len(images)
        self.log_dict({f"train/{k}": v for k, v in output.losses.items()}, on_step=True, on_epoch=True, batch_size=size)
        self.log("train/loss", total, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log_dict({f"diag/{k}": v for k, v in output.stats.items()}, on_step=True, on_epoch=True, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=size)
        self._epoch_images += size
        return total

    def on_train_start(self) -> None:
        self.on_train_epoch_start()  # Lightning calls none for an epoch resumed midway: timed from the resume

    def on_train_epoch_start(self) -> None:
        self._epoch_start, self._epoch_images = time.perf_counter(), 0

    def on_train_epoch_end(self) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        self.log("train/epoch_time_s", elapsed)
        self.log("train/images_per_s", self._epoch_images / max(elapsed, 1e-9))

    def evaluation_step(self, batch: Batch, metrics: DetectionEvaluation) -> list[dict[str, torch.Tensor]]:
        """Timed detections of a batch (whole images, or tile by tile with ``slicing``), added to ``metrics``;
        predictions and targets stay on the device."""
        images, targets = batch
        budget = self.proposals_per_image if self.slicing is not None else None  # shared out over the tiles
        preds, ms_per_image = timed_forward(lambda inputs: detect_images(self, inputs, self.slicing, budget=budget),
                                            images)
        metrics.update(preds, targets, ms_per_image)
        return preds

    def validation_step(self, batch: Batch, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        preds = self.evaluation_step(batch, self.val_metrics)
        if self.val_losses:
            losses = self.losses_without_training(batch, VAL_LOSS_SEED + batch_idx)
            size = len(batch[0])
            self.log_dict({f"val/loss_{k}": v for k, v in losses.items()}, on_epoch=True, batch_size=size,
                          sync_dist=True)
            self.log("val/loss", weighted_total(losses, self.loss_weights), on_epoch=True, batch_size=size,
                     sync_dist=True)
        return preds

    def losses_without_training(self, batch: Batch, seed: int) -> dict[str, torch.Tensor]:
        """The detector's loss parts on ``batch`` (``loss_path``: nothing a training step reads is changed)."""
        images, targets = batch
        kept = [~t["difficult"].bool() if "difficult" in t else torch.ones_like(t["labels"], dtype=torch.bool)
                for t in targets]
        targets = [{"boxes": t["boxes"][keep], "labels": t["labels"][keep]} for t, keep in zip(targets, kept,
                                                                                                strict=True)]
        with loss_path(self.detector, seed):
            return self.detector(images, targets).losses

    def on_validation_epoch_end(self) -> None:
        figures = self.val_metrics.compute()
        self.val_metrics.reset()
        self.val_figures = figures
        self.log_dict(validation_logs(figures, self.classes), prog_bar=False)
        self.log("val/map_50", nan_for_none(figures["map_50"]), prog_bar=True)
        map_50 = nan_for_none(figures["map_50"])
        if not self.trainer.sanity_checking and map_50 > self.best_map_50:
            self.best_map_50, self.best_epoch = map_50, self.current_epoch

    def on_test_epoch_start(self) -> None:
        self.test_metrics = nn.ModuleList()
        self.test_results, self.test_outputs = [], []

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, torch.Tensor]]:
        while len(self.test_metrics) <= dataloader_idx:
            metrics = DetectionEvaluation(self.classes, self.score_threshold, self.voc07, self.size_edges)
            self.test_metrics.append(metrics.to(self.device))
            self.test_outputs.append([])
        preds = self.evaluation_step(batch, self.test_metrics[dataloader_idx])
        self.test_outputs[dataloader_idx] += [(on_cpu(pred), on_cpu(target)) for pred, target in zip(preds, batch[1],
                                                                                                  strict=True)]
        return preds

    def on_test_epoch_end(self) -> None:
        self.test_results = [metrics.compute() for metrics in self.test_metrics]

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = instantiate(self.optim.optimizer, params=params)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = warmup_then_decay(self.optim, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


VAL_LOSS_SEED = 0  # the val losses' sampling draws from seed + batch index


def on_cpu(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cpu() if torch.is_tensor(v) else v for k, v in values.items()}


def nan_for_none(value: float | None) -> float:
    return float("nan") if value is None else value


def validation_logs(figures: dict[str, Any], classes: list[str]) -> dict[str, float]:
    """DetectionEvaluation figures -> the logged ``val/*`` names (all but ``val/map_50``); None logs NaN."""
    logs = {"val/map": figures["map"], "val/fn_rate": figures["fn_rate"], "val/fp_image_rate": figures["fp_image_rate"],
            "val/detections_per_image": figures["detections_per_image"],
            "val/ms_per_image": figures["ms_per_image_median"]}
    logs.update({f"val/ap_{name}": figures["ap_per_class"][name] for name in classes})
    logs.update({f"val/ap50_{name}": figures["ap_50_per_class"][name] for name in classes})
    logs.update({f"val/tide_{key}": value for key, value in figures["error_analysis"]["delta_ap"].items()})
    for area, found in figures["ap_by_area"].items():
        logs.update({f"val/map_{area}": found["map"], f"val/mar_{area}": found["mar"]})
    for index, found in enumerate((figures["ap_by_size"] or {}).get("bins", ()), start=1):
        logs.update({f"val/map_tertile{index}": found["map"], f"val/map_50_tertile{index}": found["map_50"]})
    if figures["voc07"] is not None:
        logs["val/voc07_map"] = figures["voc07"]["map"]
        logs.update({f"val/voc07_ap_{name}": figures["voc07"]["ap_per_class"][name] for name in classes})
    return {key: nan_for_none(value) for key, value in logs.items()}
