"""Evaluate a checkpoint: ``python -m frcnn_lab.evaluate ckpt_path=<run>/checkpoints/best.ckpt [data=...]``.

Figures (DESIGN §2): mAP@0.5, COCO mAP@[.5:.95], per-class AP at both, VOC07 11-point AP for VOC, the
share of images with objects where nothing scores >= the threshold (the thesis's false negatives), the
share of negative images with a detection >= the threshold (false positives on the negatives set),
detections per image, the median inference time per image (batch of one, warm, on the device used) and
the TIDE error breakdown (``error_analysis``: the mAP@0.5 lost to each error type), AP by object size
(``ap_by_area``: COCO's small / medium / large AP and AR; ``ap_by_size``: bins at the tertiles of the train
split's box sides at the model's input, with their pixel ranges) and the confusion matrix over the classes and
background at IoU >= 0.5 and the score threshold (``confusion``; rows: ground truth, columns: prediction;
``frcnn_lab.metrics.confusion`` has the matching rule), also written beside ``evaluation.json`` as
``confusion.json`` and ``confusion.png``. They are
``DetectionEvaluation``'s, computed by ``DetectionModule.test_step`` through ``trainer.test``, as in
validation. Printed as tables and written to ``<output dir>/evaluation.json``, beside the scored predictions
and ground truth as COCO JSON (``predictions_coco.json``, ``ground_truth_coco.json``: the checkpoint's
category ids, difficult / crowd boxes as ``iscrowd: 1``), so pycocotools and other COCO tools can check the
figures. The output directory is
``<run>/evaluate/<date_time>/`` for a checkpoint inside a training run's ``checkpoints/`` folder (so
``frcnn_lab.report`` finds it), else ``outputs/evaluate/runs/<date_time>/``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from frcnn_lab.cli import hydra_main
from frcnn_lab.data.datamodule import DetectionDataModule, source_label
from frcnn_lab.data.records import DataError
from frcnn_lab.engine.checkpoints import device_name, load_module, resolve_device
from frcnn_lab.errors import ConfigError, OutputExistsError
from frcnn_lab.inference.slicing import Slicing
from frcnn_lab.metrics.coco_json import write_coco_files
from frcnn_lab.metrics.confusion import confusion_png, format_confusion
from frcnn_lab.metrics.sizes import format_sizes
from frcnn_lab.metrics.tide import format_tide
from frcnn_lab.model.preprocess import RESIZE_KEYS
from frcnn_lab.runs.folders import EVALUATION_FILE, run_data_config

log = logging.getLogger(__name__)
SPLITS = ("val", "test")


def data_config(cfg: DictConfig) -> dict[str, Any]:
    """The ``data`` group given on the command line, else the checkpoint's training run's."""
    if cfg.get("data") is not None:
        return OmegaConf.to_container(cfg.data, resolve=True)
    data = run_data_config(cfg.ckpt_path)
    if data is None:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is not inside a training run (<run>/checkpoints/ beside "
            "<run>/.hydra/config.yaml): name the data, e.g. data=synthetic"
        )
    return data


def evaluate(cfg: DictConfig, coco_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the checkpoint on ``cfg.split`` (and the negatives set) -> the figures, as written to JSON.
    With ``coco_dir``, the scored predictions and ground truth are written there as COCO JSON."""
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r} is unknown; choose one of {list(SPLITS)}")
    device = resolve_device(cfg.device)
    slicing = Slicing.from_config(cfg.inference.slicing)
    module = load_module(cfg.ckpt_path, device)
    module.slicing = slicing
    data = data_config(cfg)
    if list(data["classes"]) != module.classes:
        raise ConfigError(f"data.classes={list(data['classes'])} differ from the checkpoint's classes {module.classes}")
    # The detector's resize, at the input size it was trained at unless image_size / max_size say otherwise; one
    # image per batch (the thesis's test protocol).
    preprocess = module.preprocess.at(cfg.image_size, cfg.max_size)
    data.update({key: getattr(preprocess, key) for key in RESIZE_KEYS}, batch_size=1)
    module.score_threshold = cfg.score_threshold if cfg.score_threshold is not None else module.score_threshold
    module.voc07 = data["name"] == "voc"
    datamodule = DetectionDataModule(data)
    datamodule.setup("test")
    module.size_edges = datamodule.size_bin_edges()  # the train split's, at the input size evaluated
    loaders = [datamodule.loader(cfg.split)]
    negatives_loader = datamodule.negatives_dataloader()
    if negatives_loader is not None:
        loaders.append(negatives_loader)
    if not len(loaders[0].dataset):
        raise DataError(f"data={data['name']} split={cfg.split} has no images to evaluate")

    trainer = L.Trainer(
        accelerator=device.type, devices=[device.index] if device.index is not None else 1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_test_batches=cfg.limit or 1.0, default_root_dir=cfg.paths.output_dir,
    )
    trainer.test(module, dataloaders=loaders, verbose=False)
    # One place with the whole set: module.test_outputs[i] holds loader i's (prediction, target) pairs.
    figures = module.test_results[0]
    if coco_dir is not None:
        preds, targets = zip(*module.test_outputs[0], strict=True)
        write_coco_files(coco_dir, preds, targets, module.classes, module.category_ids)
    negatives = None
    if negatives_loader is not None:
        negatives = {"images": module.test_results[1]["images"],
                     "fp_image_rate": module.test_results[1]["fp_image_rate"]}
    return {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "data": source_label(data["name"], data.get("source") or {}),
        "split": cfg.split,
        "images": figures["images"],
        "classes": module.classes,
        "score_threshold": module.score_threshold,
        "image_size": data["image_size"],
        "max_size": data["max_size"],
        "slicing": asdict(slicing) if slicing is not None else None,
        **{key: figures[key] for key in ("map_50", "map", "ap_50_per_class", "ap_per_class", "voc07", "fn_rate",
                                         "fp_image_rate", "detections_per_image", "ms_per_image_median",
                                         "error_analysis", "ap_by_area", "ap_by_size", "confusion")},
        "negatives": negatives,
        "device": device_name(device),
    }


def slicing_line(slicing: dict[str, Any] | None) -> str:
    if slicing is None:
        return "off (whole images)"
    whole = " + whole image" if slicing["whole_image"] else ""
    return (f"{slicing['size']} px tiles, overlap {slicing['overlap']}{whole}, {slicing['merge']} at "
            f"{slicing['match_metric']} >= {slicing['match_threshold']}")


def format_table(results: dict[str, Any]) -> str:
    """The figures as a two-column Markdown table."""

    def show(value: Any) -> str:
        return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    threshold = results["score_threshold"]
    rows = [
        ("checkpoint", results["checkpoint"]),
        ("data / split / images", f"{results['data']} / {results['split']} / {results['images']}"),
        ("slicing (inference.slicing)", slicing_line(results["slicing"])),
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
    """``<output_dir>/evaluation.json``, with the confusion matrix beside it as ``confusion.json`` and
    ``confusion.png``; an existing ``evaluation.json`` is never replaced."""
    path = Path(output_dir) / EVALUATION_FILE
    if path.exists():
        raise OutputExistsError(f"{path} exists already; evaluate writes each result to a new folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    (path.parent / "confusion.json").write_text(json.dumps(results["confusion"], indent=2))
    confusion_png(results["confusion"], path.parent / "confusion.png")
    return path


@hydra_main("evaluate")
def main(cfg: DictConfig) -> None:
    results = evaluate(cfg, coco_dir=cfg.paths.output_dir)
    path = write_results(results, cfg.paths.output_dir)
    print(format_table(results))
    print()
    print(format_tide(results["error_analysis"]))
    print()
    print(format_sizes(results["ap_by_area"], results["ap_by_size"]))
    print()
    print(format_confusion(results["confusion"]))
    print(f"written: {path} (and beside it the confusion matrix as JSON and PNG, the scored detections as COCO JSON)")


if __name__ == "__main__":
    main()
