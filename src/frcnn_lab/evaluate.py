"""Evaluate a checkpoint: ``python -m frcnn_lab.evaluate ckpt_path=<run>/checkpoints/best.ckpt [data=...]``.

Figures (DESIGN §2): mAP@0.5, COCO mAP@[.5:.95], per-class AP at both, VOC07 11-point AP for VOC, the
share of images with objects where nothing scores >= the threshold (the thesis's false negatives), the
share of negative images with a detection >= the threshold (false positives on the negatives set),
detections per image and the median inference time per image (batch of one, warm, on the device used).
Printed as a table and written to ``<output dir>/evaluation.json``; the output directory is
``<run>/evaluate/<date_time>/`` for a checkpoint inside a training run's ``checkpoints/`` folder (so
``frcnn_lab.report`` finds it), else ``outputs/evaluate/runs/<date_time>/``.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torchmetrics.detection import MeanAveragePrecision

from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.lit_module import DetectionModule
from frcnn_lab.metrics import DetectionRates, mean_average_precision, metric_target
from frcnn_lab.metrics.voc import voc07_ap
from frcnn_lab.train import CONFIG_DIR

log = logging.getLogger(__name__)
SPLITS = ("val", "test")


def training_run_dir(ckpt_path: str | Path) -> Path | None:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>`` when ``<run>/.hydra/config.yaml`` exists, else None."""
    path = Path(ckpt_path).resolve()
    run = path.parent.parent
    if path.parent.name == "checkpoints" and (run / ".hydra" / "config.yaml").is_file():
        return run
    return None


def evaluation_dir(ckpt_path: str, log_dir: str) -> str:
    """Hydra resolver for the output folder's parent: the training run's ``evaluate/``, else
    ``<log_dir>/evaluate/runs``."""
    run = training_run_dir(ckpt_path)
    return str(run / "evaluate") if run else str(Path(log_dir) / "evaluate" / "runs")


OmegaConf.register_new_resolver("frcnn_evaluation_dir", evaluation_dir, replace=True)


def data_config(cfg: DictConfig) -> dict[str, Any]:
    """The ``data`` group given on the command line, else the checkpoint's training run's."""
    if cfg.get("data") is not None:
        return OmegaConf.to_container(cfg.data, resolve=True)
    run = training_run_dir(cfg.ckpt_path)
    if run is None:
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path} is not inside a training run (<run>/checkpoints/ beside "
            "<run>/.hydra/config.yaml): "
            "name the data, e.g. data=synthetic"
        )
    run_cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    return OmegaConf.to_container(run_cfg.data, resolve=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_module(ckpt_path: str | Path, device: torch.device) -> DetectionModule:
    """The trained DetectionModule in eval mode on ``device``; a missing file is named."""
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    module = DetectionModule.load_from_checkpoint(ckpt_path, map_location=device, weights_only=True)
    return module.eval().to(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@torch.inference_mode()
def predict_images(
    module: DetectionModule, batches: Iterable, device: torch.device, limit: int | None = None,
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]], list[float]]:
    """One image at a time (the thesis's test protocol) -> (predictions, targets, ms per image)."""
    preds, targets, times = [], [], []
    for images, batch_targets in batches:
        for image, target in zip(images, batch_targets, strict=True):
            if limit is not None and len(preds) >= limit:
                return preds, targets, times
            image = image.to(device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            (pred,) = module([image])
            pred = {k: v.cpu() for k, v in pred.items()}  # .cpu() waits for the GPU
            times.append(1000 * (time.perf_counter() - start))
            preds.append(pred)
            targets.append(metric_target(target))
    return preds, targets, times


def per_class(results: dict[str, torch.Tensor], classes: list[str]) -> dict[str, float | None]:
    """torchmetrics' ``map_per_class`` -> {class name: AP}; a class absent from the split is None."""
    ap = {int(c): float(v) for c, v in zip(results["classes"].reshape(-1), results["map_per_class"].reshape(-1),
                                           strict=True)}
    return {name: finite(ap.get(i + 1)) for i, name in enumerate(classes)}


def finite(value: float | None) -> float | None:
    """NaN and torchmetrics' -1 ("no such object") become None, which JSON writes as null."""
    return None if value is None or math.isnan(value) or value < 0 else value


def voc07_map(preds: list[dict], targets: list[dict], classes: list[str]) -> dict[str, Any]:
    """VOC07 11-point AP (difficult boxes neither count nor penalise) -> {"map", "ap_per_class"}."""
    results = voc07_ap(preds, targets, len(classes))
    return {"map": finite(float(results["map"])),
            "ap_per_class": {name: finite(float(ap)) for name, ap in zip(classes, results["ap"], strict=True)}}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the checkpoint on ``cfg.split`` (and the negatives set) -> the figures, as written to JSON."""
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split!r} is unknown; choose one of {list(SPLITS)}")
    device = resolve_device(cfg.device)
    module = load_module(cfg.ckpt_path, device)
    data = data_config(cfg)
    if list(data["classes"]) != module.classes:
        raise ValueError(f"data.classes={list(data['classes'])} differ from the checkpoint's classes {module.classes}")
    threshold = cfg.score_threshold if cfg.score_threshold is not None else module.hparams.score_threshold
    datamodule = DetectionDataModule(**data)
    datamodule.setup("test")
    preds, targets, times = predict_images(module, datamodule.loader(cfg.split), device, cfg.limit)
    if not preds:
        raise ValueError(f"data={data['name']} split={cfg.split} has no images to evaluate")

    coco = mean_average_precision()
    # Per-class AP@0.5: torchmetrics' per-class figures average over its IoU thresholds.
    at_50 = MeanAveragePrecision(box_format="xyxy", class_metrics=True, backend="faster_coco_eval",
                                 iou_thresholds=[0.5])
    rates = DetectionRates(threshold)
    for metric in (coco, at_50, rates):
        metric.update(preds, targets)
    coco_results, results_50, split_rates = coco.compute(), at_50.compute(), rates.compute()

    negatives = None
    negatives_loader = datamodule.negatives_dataloader()
    if negatives_loader is not None:
        negative_preds, negative_targets, _ = predict_images(module, negatives_loader, device, cfg.limit)
        negative_rates = DetectionRates(threshold)
        negative_rates.update(negative_preds, negative_targets)
        fp_rate = finite(float(negative_rates.compute()["fp_image_rate"]))
        negatives = {"images": len(negative_preds), "fp_image_rate": fp_rate}

    warm = times[1:] or times  # the first image pays for lazy initialisation
    return {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "data": data["name"],
        "split": cfg.split,
        "images": len(preds),
        "classes": module.classes,
        "score_threshold": threshold,
        "map_50": finite(float(coco_results["map_50"])),
        "map": finite(float(coco_results["map"])),
        "ap_50_per_class": per_class(results_50, module.classes),
        "ap_per_class": per_class(coco_results, module.classes),
        "voc07": voc07_map(preds, targets, module.classes) if data["name"] == "voc" else None,
        "fn_rate": finite(float(split_rates["fn_rate"])),
        "fp_image_rate": finite(float(split_rates["fp_image_rate"])),
        "detections_per_image": finite(float(split_rates["detections_per_image"])),
        "negatives": negatives,
        "ms_per_image_median": statistics.median(warm),
        "device": device_name(device),
    }


def format_table(results: dict[str, Any]) -> str:
    """The figures as a two-column Markdown table."""

    def show(value: Any) -> str:
        return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    threshold = results["score_threshold"]
    rows = [
        ("checkpoint", results["checkpoint"]),
        ("data / split / images", f"{results['data']} / {results['split']} / {results['images']}"),
        ("mAP@0.5", show(results["map_50"])),
        ("mAP@[.5:.95] (COCO)", show(results["map"])),
    ]
    for name in results["classes"]:
        ap_50, ap = results["ap_50_per_class"][name], results["ap_per_class"][name]
        rows.append((f"AP {name} (@0.5 / @[.5:.95])", f"{show(ap_50)} / {show(ap)}"))
    if results["voc07"] is not None:
        rows.append(("VOC07 11-point mAP", show(results["voc07"].get("map"))))
    rows += [
        (f"images with objects, nothing >= {threshold} (FN share)", show(results["fn_rate"])),
        (f"images without objects, a detection >= {threshold}", show(results["fp_image_rate"])),
        (f"detections >= {threshold} per image", show(results["detections_per_image"])),
    ]
    negatives = results["negatives"]
    rows.append((
        f"negatives set, a detection >= {threshold} (FP share)",
        f"{show(negatives['fp_image_rate'])} of {negatives['images']} images" if negatives else "– (no negatives set)",
    ))
    rows.append((f"median ms per image ({results['device']})", f"{results['ms_per_image_median']:.1f}"))
    lines = ["| figure | value |", "| --- | --- |"] + [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def write_results(results: dict[str, Any], output_dir: str | Path) -> Path:
    """``<output_dir>/evaluation.json``; an existing file is never replaced."""
    path = Path(output_dir) / "evaluation.json"
    if path.exists():
        raise FileExistsError(f"{path} exists already; evaluate writes each result to a new folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    results = evaluate(cfg)
    path = write_results(results, cfg.paths.output_dir)
    print(format_table(results))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
