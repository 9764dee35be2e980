"""One epoch of training on a tiny fixture of every file source, through the composed Hydra config."""

from __future__ import annotations

import json

import pytest
import torch

from frcnn_lab.data import openimages
from frcnn_lab.data.records import DataError
from frcnn_lab.train import train
from support import TINY_RUN
from test_data_folders import write_coco_with_ids, write_voc_folder, write_yolo_export
from test_data_formats import write_coco_dataset, write_csv_dataset, write_voc_dataset
from test_data_openimages import CAMERA, PHONE, box_row, bucket, command, publish  # noqa: F401 (bucket: a fixture)

FILE_RUN = [o for o in TINY_RUN if not o.startswith("data.source.")] + [
    "backbone.weights=none", "data.image_size=96", "data.max_size=128", "data.batch_size=2", "data.num_workers=0",
]


def run_and_check(make_config, tmp_path, overrides: list[str], classes: list[str]) -> dict:
    summary = train(make_config([*FILE_RUN, *overrides]))
    assert summary["best_map_50"] is not None and summary["best_epoch"] == 1
    data_summary = json.loads((tmp_path / "data_summary.json").read_text())
    assert list(data_summary["splits"]["train"]["boxes_per_class"]) == classes
    assert data_summary["splits"]["train"]["boxes"] > 0 and data_summary["splits"]["val"]["images"] > 0
    return data_summary


def test_csv_source_trains(make_config, tmp_path):
    write_csv_dataset(tmp_path / "data", count=12)
    run_and_check(make_config, tmp_path, ["data=csv", "data.classes=[camera,phone]",
                                          f"data.source.train={tmp_path / 'data' / 'train.csv'}"], ["camera", "phone"])


def test_voc_source_trains_with_official_splits(make_config, tmp_path):
    write_voc_dataset(tmp_path / "voc", {"trainval": 8, "test": 4}, difficult_every=3)
    summary = run_and_check(make_config, tmp_path, ["data=voc", "data.classes=[car,person]",
                                                    f"data.source.root={tmp_path / 'voc'}"], ["car", "person"])
    assert summary["splits"]["train"]["images"] == 8 and summary["splits"]["test"]["images"] == 4
    assert summary["splits"]["train"]["difficult_boxes"] == 0 and summary["splits"]["val"]["difficult_boxes"] > 0
    # Validation on VOC also reports the paper's VOC07 11-point AP, per class and averaged.
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/voc07_map", "val/voc07_ap_car", "val/voc07_ap_person"} <= set(header)


def test_coco_source_trains(make_config, tmp_path):
    write_coco_dataset(tmp_path / "coco", count=10)
    run_and_check(make_config, tmp_path, ["data=coco", "data.classes=[camera,phone]",
                                          f"data.source.train.annotations={tmp_path / 'coco' / 'train.json'}",
                                          f"data.source.train.images={tmp_path / 'coco' / 'images'}"],
                  ["camera", "phone"])


def test_openimages_subset_trains_with_merged_classes(make_config, tmp_path, bucket):  # noqa: F811
    images = [f"i{i}" for i in range(8)]
    rows = [box_row(image, CAMERA if i % 2 else PHONE, (0.2, 0.7, 0.3, 0.8)) for i, image in enumerate(images)]
    publish(bucket, rows, images)
    out = tmp_path / "subset"
    assert openimages.main(command(bucket, out, "--classes", "Camera", "Mobile phone", "--per-class", "4")) == 0
    summary = run_and_check(make_config, tmp_path, [
        "data=openimages", "data.classes=[device]", "data.class_map={Camera: device, Mobile phone: device}",
        f"data.source.root={out}", "data.augment.rot90=0", "data.augment.vflip=0",
    ], ["device"])
    assert summary["splits"]["train"]["images"] + summary["splits"]["val"]["images"] == 8
    assert summary["splits"]["train"]["boxes_per_class"]["device"] == summary["splits"]["train"]["images"]


def test_voc_layout_folder_with_its_own_classes_trains(make_config, tmp_path):
    # PNG images, no ImageSets, object names Tree / Alive / Dead merged into one class (as the README shows).
    write_voc_folder(tmp_path / "trees", 12, suffix=".png")
    summary = run_and_check(make_config, tmp_path, [
        "data=voc_folder", f"data.source.root={tmp_path / 'trees'}", "data.classes=[tree]",
        "data.class_map={Tree: tree, Alive: tree, Dead: tree}",
    ], ["tree"])
    assert summary["splits"]["train"]["images"] + summary["splits"]["val"]["images"] == 12
    assert summary["skipped_or_changed"] == {}


def test_yolo_export_trains(make_config, tmp_path):
    write_yolo_export(tmp_path / "yolo", {"train": 10, "val": 4})
    summary = run_and_check(make_config, tmp_path, ["data=yolo", "data.classes=[camera,phone]",
                                                    f"data.source.yaml={tmp_path / 'yolo' / 'data.yaml'}"],
                            ["camera", "phone"])
    assert summary["splits"]["train"]["images"] == 10 and summary["splits"]["val"]["images"] == 4


def test_coco_with_its_own_category_ids_trains(make_config, tmp_path):
    write_coco_with_ids(tmp_path / "coco", count=10)
    run_and_check(make_config, tmp_path, ["data=coco", "data.classes=[phone,smartphone,camera]",
                                          f"data.source.train.annotations={tmp_path / 'coco' / 'train.json'}",
                                          f"data.source.train.images={tmp_path / 'coco' / 'images'}"],
                  ["phone", "smartphone", "camera"])
    # The datamodule's category ids, in data.classes order, reach the checkpoint.
    checkpoint = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["category_ids"] == [3, 7, 42]


@pytest.mark.parametrize(("source", "file"), [("csv", "train.csv"), ("coco", "train.json")])
def test_a_missing_annotation_file_stops_the_run_naming_it(make_config, tmp_path, source, file):
    key = "data.source.train" if source == "csv" else "data.source.train.annotations"
    with pytest.raises(DataError, match=f"{tmp_path / file}: .* not found"):
        train(make_config([*FILE_RUN, f"data={source}", f"{key}={tmp_path / file}"]))
