"""CSV, Pascal VOC and COCO readers on fixtures in each format's on-disk layout; malformed files name file and line.

The ``write_*`` helpers build small datasets from the synthetic scenes; other data tests import them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frcnn_lab.data.coco import read_coco
from frcnn_lab.data.csv_source import read_csv
from frcnn_lab.data.records import DataError, IssueLog
from frcnn_lab.data.synthetic import CLASSES, SyntheticScenes
from frcnn_lab.data.voc import parse_annotation, read_image_set

SMALL_SCENES = {"image_sizes": ((96, 128), (128, 96)), "object_size": (24, 48), "empty_fraction": 0.1}


def scenes(count: int, seed: int = 0) -> list[dict]:
    generator = SyntheticScenes(count, seed=seed, **SMALL_SCENES)
    return [generator[i] for i in range(count)]


def write_csv_dataset(root: Path, count: int = 12, seed: int = 0, name: str = "train.csv") -> list[dict]:
    """JPEGs under root/images and root/<name> in the thesis format; class names 'camera' / 'phone'."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    items = scenes(count, seed)
    for i, item in enumerate(items):
        file = f"images/{seed}_{i}.jpg"
        Image.fromarray(item["image"]).save(root / file, quality=92)
        for box, label in zip(item["boxes"], item["labels"], strict=True):
            lines.append(f"{file},{box[0]:.0f},{box[1]:.0f},{box[2]:.0f},{box[3]:.0f},{CLASSES[label - 1]}")
        if not len(item["boxes"]):
            lines.append(f"{file},,,,,bg")
    (root / name).write_text("\n".join(lines) + "\n")
    return items


def voc_xml(filename: str, size: tuple[int, int], objects: list[tuple[str, list[float], int]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{difficult}"
        f"</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
        f"</bndbox></object>\n"
        for name, b, difficult in objects
    )
    return (f"<annotation>\n<folder>VOC2007</folder>\n<filename>{filename}</filename>\n<size><width>{size[1]}"
            f"</width><height>{size[0]}</height><depth>3</depth></size>\n{body}</annotation>\n")


def write_voc_dataset(root: Path, sets: dict[str, int], difficult_every: int = 0) -> None:
    """VOCdevkit/VOC2007 with image sets {name: count}; synthetic cameras are 'car', phones 'person'."""
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    names = {1: "car", 2: "person"}
    start = 0
    for image_set, count in sets.items():
        ids = []
        for i, item in enumerate(scenes(count, seed=start + 1)):
            image_id = f"{start + i:06d}"
            ids.append(image_id)
            Image.fromarray(item["image"]).save(base / "JPEGImages" / f"{image_id}.jpg", quality=92)
            objects = [(names[int(label)], [box[0] + 1, box[1] + 1, box[2], box[3]],
                        int(difficult_every > 0 and j % difficult_every == difficult_every - 1))
                       for j, (box, label) in enumerate(zip(item["boxes"], item["labels"], strict=True))]
            (base / "Annotations" / f"{image_id}.xml").write_text(
                voc_xml(f"{image_id}.jpg", item["image"].shape[:2], objects))
        (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(ids) + "\n")
        start += count


def write_coco_dataset(root: Path, count: int = 12, seed: int = 0, name: str = "train.json",
                       category_ids: tuple[int, int] = (1, 2)) -> list[dict]:
    """PNGs under root/images and root/<name>; synthetic cameras and phones get ``category_ids``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    items = scenes(count, seed)
    images, annotations = [], []
    for i, item in enumerate(items):
        file = f"{seed}_{i}.png"
        Image.fromarray(item["image"]).save(root / "images" / file)
        images.append({"id": i + 1, "file_name": file, "height": item["image"].shape[0],
                       "width": item["image"].shape[1]})
        for box, label in zip(item["boxes"], item["labels"], strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": category_ids[int(label) - 1],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": category_ids[0], "name": "camera"}, {"id": category_ids[1], "name": "phone"}]}
    (root / name).write_text(json.dumps(document))
    return items


# ------------------------------------------------------------------------------------------------ CSV


def test_csv_groups_lines_per_image_and_reads_bg_as_an_image_without_boxes(tmp_path):
    (tmp_path / "a.jpg").touch()
    (tmp_path / "b.jpg").touch()
    (tmp_path / "train.csv").write_text("a.jpg,1,2,30,40,camera\nb.jpg,,,,,bg\na.jpg,5,6,7,8,phone\n")
    records = read_csv(tmp_path / "train.csv")
    assert [r.image_id for r in records] == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(records[0].boxes, [[1, 2, 30, 40], [5, 6, 7, 8]])
    assert records[0].names == ["camera", "phone"]
    assert records[0].box_where == [f"{tmp_path / 'train.csv'}:1", f"{tmp_path / 'train.csv'}:3"]
    assert records[1].boxes.shape == (0, 4) and records[1].path == (tmp_path / "b.jpg").resolve()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a.jpg,1,2,3,4,camera\na.jpg,1,2,3,camera\n", "train.csv:2: expected 6 fields"),
        ("a.jpg,1,2,x,4,camera\n", "train.csv:1: x2='x' is not a number"),
        ("a.jpg,1,2,3,4,\n", "train.csv:1: empty class name"),
        ("../outside.jpg,1,2,3,4,camera\n", "train.csv:1: path '../outside.jpg' points outside the data root"),
        ("/etc/passwd,1,2,3,4,camera\n", "train.csv:1: path '/etc/passwd' points outside the data root"),
        ("\n\n", "train.csv: no images in the annotation file"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, content, message):
    (tmp_path / "train.csv").write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_csv(tmp_path / "train.csv")


def test_csv_nan_coordinates_parse_and_are_left_to_the_box_checks(tmp_path):
    (tmp_path / "train.csv").write_text("a.jpg,nan,2,3,4,camera\n")
    assert np.isnan(read_csv(tmp_path / "train.csv")[0].boxes[0, 0])


# ------------------------------------------------------------------------------------------------ VOC


def test_voc_boxes_become_zero_based_and_keep_difficult(tmp_path):
    xml = tmp_path / "000001.xml"
    xml.write_text(voc_xml("000001.jpg", (100, 200), [("dog", [1, 1, 50, 60], 0), ("cat", [10, 20, 30, 40], 1)]))
    record = parse_annotation(xml, tmp_path)
    np.testing.assert_array_equal(record.boxes, [[0, 0, 50, 60], [9, 19, 30, 40]])
    assert record.names == ["dog", "cat"] and record.difficult.tolist() == [False, True]
    assert record.path == tmp_path / "000001.jpg"
    assert record.box_where[1] == f"{xml}:6"  # <annotation>, folder, filename, size, object, object


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<annotation>\n<object><name>dog</name>\n<bndbox><xmin>1</xmin></annotation>", r"a\.xml:3: malformed XML"),
        ("<annotation>\n<object><name>dog</name>\n<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox>"
         "</object></annotation>", r"a\.xml:3: <bndbox> has no <ymax>"),
        ("<annotation>\n<object>\n<name>dog</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>"
         "</bndbox></object></annotation>", r"a\.xml:3: <xmin>a</xmin> is not a number"),
        ("<annotation><filename>../../etc/x.jpg</filename></annotation>", "points outside the data root"),
        ("<Annotation><object/></Annotation>", r"a\.xml:1: not a Pascal VOC annotation"),
    ],
)
def test_malformed_voc_xml_names_file_and_line(tmp_path, xml, message):
    (tmp_path / "a.xml").write_text(xml)
    with pytest.raises(DataError, match=message):
        parse_annotation(tmp_path / "a.xml", tmp_path)


def test_voc_image_set_reads_ids_and_logs_a_missing_annotation(tmp_path):
    write_voc_dataset(tmp_path, {"trainval": 4})
    listing = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "trainval.txt"
    listing.write_text(listing.read_text() + "999999\n")
    issues = IssueLog()
    records = read_image_set(tmp_path, "2007/trainval", "train", issues)
    assert [r.image_id for r in records] == ["2007/000000", "2007/000001", "2007/000002", "2007/000003"]
    assert issues.counts() == {"annotation: missing file": 1}


def test_voc_missing_image_set_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=r"ImageSets/Main/test\.txt not found.*download=true"):
        read_image_set(tmp_path, "2007/test", "val", IssueLog())


def test_voc_path_traversal_in_an_image_set_is_refused(tmp_path):
    write_voc_dataset(tmp_path, {"trainval": 1})
    (tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "evil.txt").write_text("../../secret\n")
    with pytest.raises(DataError, match=r"evil\.txt:1: image id '\.\./\.\./secret' is not a plain file name"):
        read_image_set(tmp_path, "2007/evil", "train", IssueLog())


# ------------------------------------------------------------------------------------------------ COCO


def test_coco_boxes_become_xyxy_and_crowd_becomes_difficult(tmp_path):
    document = {
        "images": [{"id": 7, "file_name": "a.png", "width": 50, "height": 40}, {"id": 8, "file_name": "b.png"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [5, 5, 4, 4], "iscrowd": 1},
            {"id": 3, "image_id": 99, "category_id": 3, "bbox": [5, 5, 4, 4]},
            {"id": 4, "image_id": 7, "category_id": 42, "bbox": [5, 5, 4, 4]},
        ],
        "categories": [{"id": 3, "name": "camera"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(document))
    issues = IssueLog()
    (first, second), category_ids = read_coco(tmp_path / "train.json", None, "train", issues)
    assert category_ids == {"camera": 3}
    assert first.size == (40, 50) and second.size is None
    np.testing.assert_array_equal(first.boxes, [[1, 2, 11, 22], [5, 5, 9, 9]])
    assert first.names == ["camera", "camera"] and first.difficult.tolist() == [False, True]
    assert second.image_id == "8" and second.boxes.shape == (0, 4)
    assert issues.counts() == {"annotation: unknown image_id": 1, "annotation: unknown category_id": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"images": [\n{"id": 1,, }]}', r"train\.json:2: malformed JSON"),
        ('{"images": [], "annotations": [], "categories": []}', r"train\.json: no images in the annotation file"),
        ('{"annotations": [], "categories": []}', r"train\.json: key 'images' is missing"),
        ('{"images": [{"id": 1, "file_name": "../../x.png"}], "categories": []}', "points outside the data root"),
        ('{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "c"}], '
         '"annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2]}]}', r"annotations\[0\]: bbox must be"),
    ],
)
def test_malformed_coco_names_file_and_entry(tmp_path, text, message):
    (tmp_path / "train.json").write_text(text)
    with pytest.raises(DataError, match=message):
        read_coco(tmp_path / "train.json", None, "train", IssueLog())
