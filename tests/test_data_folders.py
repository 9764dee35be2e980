"""Folders as annotation tools export them: VOC-layout folders with their own classes, YOLO exports with a
data.yaml, COCO files with their own category ids.

The ``write_*`` helpers build them from the synthetic scenes (cameras and phones); other data tests
import them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.data.records import DataError, IssueLog
from frcnn_lab.data.voc import read_folder_set, read_image_set
from frcnn_lab.data.yolo import label_path, read_yolo
from test_data_formats import scenes, voc_xml, write_coco_dataset

TREE_NAMES = {1: ("Tree",), 2: ("Alive", "Dead")}
"""Synthetic cameras are 'Tree'; phones alternate 'Alive' / 'Dead' (the issue's example folder)."""


def datamodule(name: str, source: dict, classes: list[str], **overrides) -> DetectionDataModule:
    args = {"image_size": 96, "max_size": 128, "batch_size": 2, "num_workers": 0, **overrides}
    module = DetectionDataModule({"name": name, "classes": classes, "source": source, **args})
    module.setup()
    return module


def all_boxes(module: DetectionDataModule, split: str = "train") -> dict[str, np.ndarray]:
    return {s.image_id: s.boxes for s in module.datasets[split].source.samples}


# ------------------------------------------------------------------------------------------- VOC folders


def write_voc_folder(root: Path, count: int, layout: str = "annotations", suffix: str = ".png", seed: int = 0,
                     filename_suffix: str | None = None) -> dict[str, np.ndarray]:
    """A VOC-layout folder without ImageSets, objects named as in TREE_NAMES; -> image id: boxes (0-based).

    ``layout``: ``annotations`` (Annotations/ + JPEGImages/), ``label_studio`` (Annotations/ + images/) or
    ``beside`` (XML files beside the images). ``filename_suffix``: write <filename> with another suffix than
    the file has (as tools do after a conversion)."""
    xml_dir, image_dir = {"annotations": ("Annotations", "JPEGImages"), "label_studio": ("Annotations", "images"),
                          "beside": (".", ".")}[layout]
    (root / xml_dir).mkdir(parents=True, exist_ok=True)
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    boxes = {}
    for i, item in enumerate(scenes(count, seed)):
        image_id = f"img_{seed}_{i:03d}"
        Image.fromarray(item["image"]).save(root / image_dir / f"{image_id}{suffix}")
        objects = [(TREE_NAMES[int(label)][j % len(TREE_NAMES[int(label)])], [b[0] + 1, b[1] + 1, b[2], b[3]], 0)
                   for j, (b, label) in enumerate(zip(item["boxes"], item["labels"], strict=True))]
        (root / xml_dir / f"{image_id}.xml").write_text(
            voc_xml(f"{image_id}{filename_suffix or suffix}", item["image"].shape[:2], objects))
        boxes[image_id] = np.asarray(item["boxes"], np.float32).reshape(-1, 4)
    return boxes


TREE_CLASS_MAP = {"Tree": "tree", "Alive": "tree", "Dead": "tree"}


@pytest.mark.parametrize("layout", ["annotations", "label_studio", "beside"])
def test_voc_folder_without_image_sets_reads_its_own_classes(tmp_path, layout):
    expected = write_voc_folder(tmp_path / "trees", 10, layout=layout, filename_suffix=".jpg")
    module = datamodule("voc_folder", {"root": str(tmp_path / "trees"), "train": ["."]}, ["tree"],
                        class_map=TREE_CLASS_MAP, split="random", split_fractions=[0.7, 0.3, 0.0])
    found = {**all_boxes(module, "train"), **all_boxes(module, "val")}
    assert set(found) == set(expected) and any(not len(boxes) for boxes in expected.values())
    for image_id, boxes in expected.items():
        np.testing.assert_allclose(found[image_id], boxes, atol=1e-4)
    assert all(s.path.suffix == ".png" for s in module.datasets["train"].source.samples)  # found by the stem
    assert module.issues.counts() == {}


def test_voc_folder_vocabulary_comes_from_the_xml_files(tmp_path):
    write_voc_folder(tmp_path, 6)
    with pytest.raises(DataError, match=r"name \['Oak'\].*its classes: \['Alive', 'Dead', 'Tree'\]"):
        datamodule("voc_folder", {"root": str(tmp_path), "train": ["."]}, ["tree"], class_map={"Oak": "tree"},
                   split="random")


def test_voc_folder_image_sets_and_subfolders(tmp_path):
    write_voc_folder(tmp_path, 6)
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("img_0_000\nimg_0_001 1\n\nimg_0_404\n")
    issues = IssueLog()
    records = read_folder_set(tmp_path, "train", "train", issues)
    assert [r.image_id for r in records] == ["img_0_000", "img_0_001"]
    assert issues.counts() == {"annotation: missing file": 1}
    # Roboflow's layout: one folder per split, XML beside the images; ids keep the folder.
    write_voc_folder(tmp_path / "export" / "valid", 3, layout="beside", seed=1)
    records = read_folder_set(tmp_path / "export", "valid", "val", IssueLog())
    assert [r.image_id for r in records] == ["valid/img_1_000", "valid/img_1_001", "valid/img_1_002"]
    assert records[0].size == (scenes(1, 1)[0]["image"].shape[:2])


@pytest.mark.parametrize(
    ("entry", "make", "message"),
    [
        ("nothing", None, r"data\.source\.train: 'nothing' is neither an image set list .*nothing\.txt nor a folder"),
        ("empty", "empty", r"data\.source\.train: 'empty': no \.xml annotation files in .*empty"),
        ("../..", None, "points outside the data root"),
    ],
)
def test_voc_folder_bad_sets_name_the_entry(tmp_path, entry, make, message):
    if make:
        (tmp_path / make).mkdir()
    with pytest.raises(DataError, match=message):
        read_folder_set(tmp_path, entry, "train", IssueLog())


def test_official_voc_points_own_folders_to_voc_folder(tmp_path):
    write_voc_folder(tmp_path, 2)
    with pytest.raises(DataError, match=r"VOC image set 'train' must be '<year>/<set>'.*use data=voc_folder"):
        read_image_set(tmp_path, "train", "train", IssueLog())
    with pytest.raises(DataError, match=r"VOC2007/ImageSets/Main/trainval\.txt not found.*use data=voc_folder"):
        read_image_set(tmp_path, "2007/trainval", "train", IssueLog())


def test_voc_folder_missing_image_is_counted(tmp_path):
    write_voc_folder(tmp_path, 8)
    (tmp_path / "JPEGImages" / "img_0_001.png").unlink()
    module = datamodule("voc_folder", {"root": str(tmp_path), "train": ["."]}, ["tree"], class_map=TREE_CLASS_MAP,
                        split="random")
    assert module.issues.counts()["image: missing file"] == 1
    assert any("img_0_001.xml" in e["where"] for e in module.issues.entries if e["reason"] == "image: missing file")


# ------------------------------------------------------------------------------------------------ YOLO


def yolo_line(label: int, box: np.ndarray, height: int, width: int) -> str:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (f"{label} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} {(x2 - x1) / width:.6f} "
            f"{(y2 - y1) / height:.6f}")


def write_yolo_export(root: Path, counts: dict[str, int], layout: str = "ultralytics") -> dict[str, np.ndarray]:
    """A YOLO export with data.yaml; class 0 camera, 1 phone; -> image file name: boxes (pixels).

    ``ultralytics``: images/<split>/, labels/<split>/, ``path: .`` and a names mapping; ``roboflow``:
    <split>/images, <split>/labels, ``train: ../train/images`` and a names list with ``nc``.
    """
    boxes, document = {}, {}
    for seed, (split, count) in enumerate(counts.items()):
        folder = {"ultralytics": f"images/{split}", "roboflow": f"{split}/images"}[layout]
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(scenes(count, seed)):
            image = root / folder / f"{split}_{i:03d}.jpg"
            Image.fromarray(item["image"]).save(image, quality=92)
            height, width = item["image"].shape[:2]
            lines = [yolo_line(int(label) - 1, b, height, width)
                     for b, label in zip(item["boxes"], item["labels"], strict=True)]
            label_path(image).parent.mkdir(parents=True, exist_ok=True)
            label_path(image).write_text("\n".join(lines) + ("\n" if lines else ""))
            boxes[image.name] = np.asarray(item["boxes"], np.float32).reshape(-1, 4)
        document[split] = folder if layout == "ultralytics" else f"../{folder}"
    if layout == "ultralytics":
        document = {"path": ".", **document, "names": {0: "camera", 1: "phone"}}
    else:
        document = {**document, "nc": 2, "names": ["camera", "phone"], "roboflow": {"workspace": "w"}}
    (root / "data.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return boxes


@pytest.mark.parametrize(("layout", "val"), [("ultralytics", "val"), ("roboflow", "valid")])
def test_yolo_export_boxes_come_back_in_pixels(tmp_path, layout, val):
    expected = write_yolo_export(tmp_path, {"train": 8, val: 4}, layout=layout)
    if layout == "roboflow":
        document = yaml.safe_load((tmp_path / "data.yaml").read_text())
        document["val"] = document.pop(val)
        (tmp_path / "data.yaml").write_text(yaml.safe_dump(document))
    module = datamodule("yolo", {"yaml": str(tmp_path / "data.yaml")}, ["camera", "phone"])
    assert len(module.datasets["train"]) == 8 and len(module.datasets["val"]) == 4
    for split in ("train", "val"):
        for sample in module.datasets[split].source.samples:
            np.testing.assert_allclose(sample.boxes, expected[sample.path.name], atol=0.01)
    ids = [s.image_id for s in module.datasets["train"].source.samples]
    assert ids[0] == ("images/train/train_000.jpg" if layout == "ultralytics" else "train/images/train_000.jpg")


def test_yolo_list_files_and_polygons(tmp_path):
    write_yolo_export(tmp_path, {"train": 4})
    (tmp_path / "train.txt").write_text("./images/train/train_000.jpg\nimages/train/train_001.jpg\n")
    label = tmp_path / "labels" / "train" / "train_000.txt"
    label.write_text("0 0.1 0.2 0.5 0.2 0.3 0.6\n")  # a triangle: its bounding box
    (tmp_path / "data.yaml").write_text("names: [camera, phone]\ntrain: train.txt\n")
    records = read_yolo(tmp_path / "data.yaml", IssueLog())["train"]
    assert [r.image_id for r in records] == ["images/train/train_000.jpg", "images/train/train_001.jpg"]
    np.testing.assert_allclose(records[0].boxes, [[0.1, 0.2, 0.5, 0.6]], atol=1e-6)
    assert records[0].normalized and records[0].names == ["camera"]


def test_yolo_bad_labels_are_counted_in_the_summary(tmp_path):
    write_yolo_export(tmp_path, {"train": 6, "val": 2})
    labels = tmp_path / "labels" / "train"
    good = "0 0.5 0.5 0.2 0.2"
    (labels / "train_000.txt").write_text(f"{good}\n{good}\n1 0.5 0.5 0.2\n7 0.5 0.5 0.2 0.2\n0 0.5 0.5 1.5 0.2\n"
                                          "x 0.5 0.5 0.2 0.2\n0 nan 0.5 0.2 0.2\n")
    (labels / "train_001.txt").unlink()
    (labels / "train_002.txt").write_text("")
    (labels / "train_003.txt").write_text("0 0.5 0.5 0.2 0.2 0.9\n")
    module = datamodule("yolo", {"yaml": str(tmp_path / "data.yaml")}, ["camera", "phone"])
    summary = json.loads(module.write_summary(tmp_path / "run").read_text())
    counts = summary["skipped_or_changed"]
    assert counts["label: repeated line, left out"] == 1
    assert counts["label: malformed line (expected 'class cx cy w h')"] == 3
    assert counts["label: class id not in data.yaml names"] == 1
    assert counts["label: coordinate outside [0, 1] (not normalised)"] == 2
    assert counts["label: no label file, image without objects"] == 1
    assert counts["label: no usable line, image left out"] == 1
    assert f"{labels / 'train_000.txt'}:3" in " ".join(summary["examples"]["label: malformed line (expected "
                                                                           "'class cx cy w h')"])
    train = {s.path.name: s for s in module.datasets["train"].source.samples}
    assert "train_003.jpg" not in train  # only bad lines: left out, not taken for an empty image
    assert len(train["train_000.jpg"].boxes) == 1
    assert len(train["train_001.jpg"].boxes) == 0 and len(train["train_002.jpg"].boxes) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("names: [a, b\ntrain: images\n", r"data\.yaml:2: malformed YAML"),
        ("train: images/train\n", r"data\.yaml: key 'names' must be a list"),
        ("names: {zero: a}\ntrain: images/train\n", r"data\.yaml: key 'names': class id 'zero' is not an integer"),
        ("nc: 3\nnames: [a, b]\ntrain: images/train\n", r"data\.yaml: key 'nc' is 3 but key 'names' has 2"),
        ("names: [a]\nval: images/train\n", r"data\.yaml: key 'train' is missing"),
        ("names: [a]\ntrain: images/nope\n", r"data\.yaml: key 'train': 'images/nope' not found"),
        ("names: [a]\npath: elsewhere\ntrain: images/train\n", r"data\.yaml: key 'path': 'elsewhere' is not a folder"),
        ("- a\n- b\n", r"data\.yaml: expected a mapping"),
    ],
)
def test_malformed_data_yaml_names_file_and_key(tmp_path, text, message):
    write_yolo_export(tmp_path, {"train": 1})
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(DataError, match=message):
        read_yolo(tmp_path / "data.yaml", IssueLog())


def test_yolo_without_any_label_file_says_where_labels_go(tmp_path):
    write_yolo_export(tmp_path, {"train": 2})
    for file in (tmp_path / "labels" / "train").iterdir():
        file.unlink()
    with pytest.raises(DataError, match=r"key 'train': none of the 2 images has a label file .*labels/train/"):
        read_yolo(tmp_path / "data.yaml", IssueLog())


# ------------------------------------------------------------------------------------------------ COCO ids


def write_coco_with_ids(root: Path, count: int = 10) -> None:
    """Categories phone 3, smartphone 7, camera 42 (listed in that order); every second phone box is a
    smartphone."""
    write_coco_dataset(root, count=count, category_ids=(42, 3))
    document = json.loads((root / "train.json").read_text())
    phones = [a for a in document["annotations"] if a["category_id"] == 3]
    for annotation in phones[1::2]:
        annotation["category_id"] = 7
    document["categories"] = [{"id": 3, "name": "phone"}, {"id": 7, "name": "smartphone"},
                              {"id": 42, "name": "camera"}]
    (root / "train.json").write_text(json.dumps(document))


def test_coco_category_ids_follow_the_chosen_classes(tmp_path):
    write_coco_with_ids(tmp_path)
    source = {"train": {"annotations": str(tmp_path / "train.json"), "images": str(tmp_path / "images")}}
    module = datamodule("coco", source, ["camera", "smartphone", "phone"], split="random")
    assert module.category_ids == [42, 7, 3]
    merged = datamodule("coco", source, ["camera", "phone"], class_map={"smartphone": "phone"}, split="random")
    assert merged.category_ids == [42, 3]  # merged categories: the first in the file's list
    assert datamodule("csv", {"train": _csv(tmp_path)}, ["camera"], split="random").category_ids == [1]


def _csv(root: Path) -> str:
    image = root / "images" / "0_0.png"
    (root / "a.csv").write_text(f"{image},1,1,20,20,camera\n{image.parent / '0_1.png'},1,1,20,20,camera\n")
    return str(root / "a.csv")


def test_yolo_labels_beside_the_images(tmp_path):
    # CVAT "YOLO 1.1": obj_train_data/ holds images and label files together, whatever the parent folders.
    folder = tmp_path / "images" / "obj_train_data"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 20)).save(folder / "a.png")
    (folder / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (tmp_path / "images" / "data.yaml").write_text("names: [tree, rock]\ntrain: obj_train_data\n")
    (record,) = read_yolo(tmp_path / "images" / "data.yaml", IssueLog())["train"]
    assert record.names == ["rock"]
    np.testing.assert_allclose(record.boxes, [[0.25, 0.25, 0.75, 0.75]])
