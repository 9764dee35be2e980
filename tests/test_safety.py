"""A bad-input corpus, generated here, pushed through the CSV, Pascal VOC and COCO sources and on into training.

Every bad file or box gets the documented handling (left out or clipped, counted with its reason in
data_summary.json) or a clear error naming the file; the images that survive, tiny and huge included, train
without a traceback from inside the model. Open Images subsets go through the same checks (read_subset ->
prepare); their download-side failures are covered in test_data_openimages.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frcnn_lab.data.records import DataError
from frcnn_lab.train import train
from test_data_formats import scenes, voc_xml

CLASSES = ("camera", "phone")
BAD_BOXES = [  # (x1, y1, x2, y2, class) on a good 96 x 128 image
    (float("nan"), 5, 20, 20, "camera"),
    (30, 30, 20, 40, "camera"),  # negative width
    (500, 500, 520, 530, "camera"),  # entirely outside
    (80, 80, 140, 140, "phone"),  # partly outside: clipped and kept
    (10, 10, 30, 30, "toaster"),  # not one of the classes
]
EXPECTED_BOX_REASONS = {  # reason -> how often at least
    "box: NaN or infinite coordinate": 1,
    "box: zero or negative size": 1,
    "box: entirely outside the image": 1,
    "box: clipped to the image (kept)": 1,
    "box: class 'toaster' not in data.classes / data.class_map": 1,
}
VOC_NAMES = {"camera": "car", "phone": "person", "toaster": "toaster"}  # VOC's own class names
RUN = [
    "logger=csv", "backbone.weights=none", "data.image_size=64", "data.max_size=96",
    "data.batch_size=2", "data.num_workers=0", "trainer.max_epochs=1", "callbacks.progress_bar.refresh_rate=0",
]


def write_corpus(images: Path) -> list[tuple[str, tuple[int, int], list[tuple]]]:
    """Image files of every awkward kind under ``images``; returns (file name, (height, width), boxes)."""
    images.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, item in enumerate(scenes(6, seed=7)):
        name = f"good_{i}.png"
        Image.fromarray(item["image"]).save(images / name)
        boxes = [(*box.tolist(), CLASSES[label - 1]) for box, label in zip(item["boxes"], item["labels"], strict=True)]
        entries.append((name, item["image"].shape[:2], boxes + (BAD_BOXES if i == 0 else [])))
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(images / "one_pixel.png")
    entries.append(("one_pixel.png", (1, 1), [(0, 0, 1, 1, "camera")]))
    Image.new("RGB", (10000, 10000), (90, 120, 150)).save(images / "huge.jpg", quality=30)
    entries.append(("huge.jpg", (10000, 10000), [(2000, 3000, 6000, 7000, "phone")]))
    (images / "zero_bytes.jpg").write_bytes(b"")
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    png = (images / "good_1.png").read_bytes()
    (images / "truncated.png").write_bytes(png[: len(png) // 2])
    for name in ("zero_bytes.jpg", "corrupt.jpg", "truncated.png"):
        entries.append((name, (96, 128), [(10, 10, 40, 40, "camera")]))
    return entries


def write_csv(root: Path, entries) -> list[str]:
    lines = [f"images/{name},{x1},{y1},{x2},{y2},{cls}" for name, _, boxes in entries for x1, y1, x2, y2, cls in boxes]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return ["data=csv", f"data.source.train={root / 'train.csv'}", "data.split_fractions=[0.5,0.5,0.0]",
            "data.classes=[camera,phone]"]


def write_voc(root: Path, entries) -> list[str]:
    base = root / "VOCdevkit" / "VOC2007"
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (root / "images").rename(base / "JPEGImages")
    ids = []
    for name, size, boxes in entries:
        image_id = Path(name).stem
        ids.append(image_id)
        objects = [(VOC_NAMES[cls], [x1, y1, x2, y2], 0) for x1, y1, x2, y2, cls in boxes]
        (base / "Annotations" / f"{image_id}.xml").write_text(voc_xml(name, size, objects))
    half = len(ids) // 2
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids[::2]) + "\n")
    (base / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids[1::2][:half]) + "\n")
    return ["data=voc", f"data.source.root={root}", "data.classes=[car,person]"]


def write_coco(root: Path, entries) -> list[str]:
    images, annotations = [], []
    categories = [{"id": 1, "name": "camera"}, {"id": 2, "name": "phone"}, {"id": 3, "name": "toaster"}]
    category_ids = {c["name"]: c["id"] for c in categories}
    for i, (name, (height, width), boxes) in enumerate(entries, start=1):
        images.append({"id": i, "file_name": name, "height": height, "width": width})
        for x1, y1, x2, y2, cls in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": category_ids[cls],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    document = {"images": images, "annotations": annotations, "categories": categories}
    (root / "train.json").write_text(json.dumps(document))  # NaN is written as the bare token NaN
    return ["data=coco", "data.classes=[camera,phone]", f"data.source.train.annotations={root / 'train.json'}",
            f"data.source.train.images={root / 'images'}"]


WRITERS = {"csv": write_csv, "voc": write_voc, "coco": write_coco}


@pytest.mark.parametrize("source", list(WRITERS))
def test_the_bad_input_corpus_is_handled_and_the_rest_trains(make_config, tmp_path, source):
    data = tmp_path / "data"
    overrides = WRITERS[source](data, write_corpus(data / "images"))
    summary = train(make_config([*RUN, *overrides]))

    assert summary["best_map_50"] is not None  # validation ran on what survived, through the model
    data_summary = json.loads((tmp_path / "data_summary.json").read_text())
    reasons = data_summary["skipped_or_changed"]
    for reason, count in EXPECTED_BOX_REASONS.items():
        if reason.startswith("box: class"):
            reason = reason.replace("toaster", VOC_NAMES["toaster"] if source == "voc" else "toaster")
        assert reasons.get(reason, 0) >= count, (reason, reasons)  # VOC reads some images for several sets
    # Zero bytes, not an image, truncated: each left out with its reason.
    image_problems = {r: n for r, n in reasons.items() if r.startswith("image: ") and "negative" not in r}
    assert "image: empty file (0 bytes)" in image_problems and sum(image_problems.values()) >= 3, reasons
    if source != "voc":  # (VOC's official sets reuse images across splits)
        # The six scenes, the 1 x 1 image and the 10000 x 10000 image reached the model.
        assert data_summary["splits"]["train"]["images"] + data_summary["splits"]["val"]["images"] == 8


@pytest.mark.parametrize(
    "source,breaks,message",
    [
        ("csv", lambda root: (root / "train.csv").write_text("images/good_0.png,1,2,3\n"), r"train\.csv:1"),
        ("voc", lambda root: (root / "VOCdevkit/VOC2007/Annotations/good_0.xml").write_text("<annotation><size>"),
         r"good_0\.xml"),
        ("coco", lambda root: (root / "train.json").write_text('{"images": [ {"id": 1,'), r"train\.json"),
    ],
)
def test_a_malformed_annotation_file_stops_the_run_naming_it(make_config, tmp_path, source, breaks, message):
    data = tmp_path / "data"
    overrides = WRITERS[source](data, write_corpus(data / "images"))
    breaks(data)
    with pytest.raises(DataError, match=message):
        train(make_config([*RUN, *overrides]))
    assert not list(tmp_path.rglob("*.ckpt"))
