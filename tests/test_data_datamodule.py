"""The data module on file fixtures: bad input counted, class merging, splits, curation, negatives, batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_lab.config import group_option
from frcnn_lab.data.datamodule import DetectionDataModule, source_label, synthetic_splits
from frcnn_lab.data.records import DataError
from frcnn_lab.data.samplers import GroupedBatchSampler
from frcnn_lab.data.summary import summarize
from frcnn_lab.data.synthetic import SyntheticScenes
from test_data_formats import write_csv_dataset, write_voc_dataset

AUGMENT = {"hflip": 0.0, "vflip": 0.0, "rot90": 0.0, "extra": []}


def datamodule(name, source, classes=("camera", "phone"), **overrides) -> DetectionDataModule:
    args = {"name": name, "classes": list(classes), "source": source, "image_size": 96, "max_size": 160,
            "batch_size": 2, "num_workers": 0, "augment": AUGMENT, "split": "random",
            "split_fractions": [0.5, 0.5, 0.0], **overrides}
    module = DetectionDataModule(args)
    module.setup()
    return module


def ids(module, split) -> list[str]:
    return [s.image_id for s in module.datasets[split].source.samples]


def test_every_bad_input_is_counted_with_its_reason_and_kept_out(tmp_path):
    write_csv_dataset(tmp_path, count=6)
    (tmp_path / "images" / "empty.jpg").write_bytes(b"")
    (tmp_path / "images" / "corrupt.jpg").write_bytes(b"garbage")
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "ok.jpg")
    data = (tmp_path / "images" / "0_0.jpg").read_bytes()
    (tmp_path / "images" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    bad = [
        "images/missing.jpg,1,1,5,5,camera", "images/empty.jpg,1,1,5,5,camera", "images/corrupt.jpg,1,1,5,5,camera",
        "images/truncated.jpg,1,1,5,5,camera",
        "images/ok.jpg,nan,1,5,5,camera", "images/ok.jpg,5,5,5,9,camera", "images/ok.jpg,50,50,60,60,camera",
        "images/ok.jpg,30,20,50,40,camera", "images/ok.jpg,1,1,9,9,tripod", "images/ok.jpg,2,2,12,12,phone",
    ]
    with open(tmp_path / "train.csv", "a") as csv_file:
        csv_file.write("\n".join(bad) + "\n")
    module = datamodule("csv", {"train": str(tmp_path / "train.csv")}, split_fractions=[1.0, 0.0, 0.0])
    counts = summarize(module)["skipped_or_changed"]
    assert counts["image: missing file"] == 1
    assert counts["image: empty file (0 bytes)"] == 1
    assert counts["image: not a readable image (unknown or corrupt format)"] == 1
    assert counts["box: NaN or infinite coordinate"] == 1
    assert counts["box: zero or negative size"] == 1
    assert counts["box: entirely outside the image"] == 1
    assert counts["box: clipped to the image (kept)"] == 1
    assert counts["box: class 'tripod' not in data.classes / data.class_map"] == 1
    assert any(reason.startswith("image: corrupt or truncated image") for reason in counts)
    samples = {s.image_id: s for s in module.datasets["train"].source.samples}
    assert not {"images/missing.jpg", "images/empty.jpg", "images/corrupt.jpg", "images/truncated.jpg"} & set(samples)
    np.testing.assert_array_equal(samples["images/ok.jpg"].boxes, [[30, 20, 40, 30], [2, 2, 12, 12]])
    assert samples["images/ok.jpg"].labels.tolist() == [1, 2]
    examples = summarize(module)["examples"]["box: class 'tripod' not in data.classes / data.class_map"]
    tripod_line = (tmp_path / "train.csv").read_text().splitlines().index("images/ok.jpg,1,1,9,9,tripod") + 1
    assert examples == [f"[train] {tmp_path / 'train.csv'}:{tripod_line}"]


def test_class_map_merges_source_classes_into_one_label(tmp_path):
    write_csv_dataset(tmp_path, count=10)
    module = datamodule("csv", {"train": str(tmp_path / "train.csv")}, classes=["device"],
                        class_map={"camera": "device", "phone": "device"}, split_fractions=[1.0, 0.0, 0.0])
    labels = np.concatenate([s.labels for s in module.datasets["train"].source.samples])
    assert len(labels) > 5 and set(labels.tolist()) == {1}


def test_unknown_class_name_in_the_config_lists_the_source_classes(tmp_path):
    write_csv_dataset(tmp_path, count=4)
    with pytest.raises(DataError, match=r"name \['Camra'\].*its classes: \['camera', 'phone'\]"):
        datamodule("csv", {"train": str(tmp_path / "train.csv")}, classes=["Camra"])


def test_random_split_is_seeded_disjoint_and_ignores_line_order(tmp_path):
    write_csv_dataset(tmp_path, count=20)
    first = datamodule("csv", {"train": str(tmp_path / "train.csv")}, split_fractions=[0.8, 0.2, 0.0])
    lines = (tmp_path / "train.csv").read_text().splitlines()
    (tmp_path / "reversed.csv").write_text("\n".join(reversed(lines)) + "\n")
    second = datamodule("csv", {"train": str(tmp_path / "reversed.csv")}, split_fractions=[0.8, 0.2, 0.0])
    other_seed = datamodule("csv", {"train": str(tmp_path / "train.csv")}, split_fractions=[0.8, 0.2, 0.0],
                            split_seed=1)
    assert len(ids(first, "train")) == 16 and len(ids(first, "val")) == 4
    assert not set(ids(first, "train")) & set(ids(first, "val"))
    assert set(ids(first, "val")) == set(ids(second, "val"))
    assert set(ids(first, "val")) != set(ids(other_seed, "val"))


def test_curation_lists_and_limit(tmp_path):
    write_csv_dataset(tmp_path, count=10)
    (tmp_path / "keep.txt").write_text("# Model-5 style curation\nimages/0_1.jpg  # good\nimages/0_2.jpg\n"
                                       "images/0_3.jpg\nimages/0_4.jpg\nimages/not_there.jpg\n")
    (tmp_path / "drop.txt").write_text("images/0_2.jpg\n")
    module = datamodule("csv", {"train": str(tmp_path / "train.csv")}, include=str(tmp_path / "keep.txt"),
                        exclude=[str(tmp_path / "drop.txt")], split_fractions=[1.0, 0.0, 0.0], limit=2)
    kept = set(ids(module, "train"))
    assert len(kept) == 2 and kept <= {"images/0_1.jpg", "images/0_3.jpg", "images/0_4.jpg"}
    counts = module.issues.counts()
    assert counts["image: in the exclude list"] == 1 and counts["image: not in the include list"] == 6
    assert any("1 ids of the include list are not in the source" in n for n in module.notes)
    assert any("train: 2 of 3 images used (limit)" in n for n in module.notes)


def test_negatives_are_images_without_a_box_of_the_classes(tmp_path):
    write_csv_dataset(tmp_path, count=8)
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "n1.jpg")
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "n2.jpg")
    (tmp_path / "negatives.csv").write_text(
        "images/n1.jpg,,,,,bg\nimages/n2.jpg,1,1,20,20,book\nimages/0_1.jpg,1,1,20,20,camera\n")
    module = datamodule("csv", {"train": str(tmp_path / "train.csv"), "negatives": str(tmp_path / "negatives.csv")})
    loader = module.negatives_dataloader()
    images, targets = next(iter(loader))
    assert sorted(t["image_id"] for t in targets) == ["images/n1.jpg", "images/n2.jpg"]
    assert all(len(t["boxes"]) == 0 for t in targets) and images[0].shape[-2:] == (96, 128)
    assert module.issues.counts()["image: has a box of data.classes, not a negative"] == 1
    without = datamodule("csv", {"train": str(tmp_path / "train.csv")})
    assert without.negatives_dataloader() is None


def test_voc_difficult_boxes_leave_training_and_are_marked_in_validation(tmp_path):
    write_voc_dataset(tmp_path, {"trainval": 8, "test": 6}, difficult_every=2)
    source = {"root": str(tmp_path), "train": ["2007/trainval"], "val": ["2007/test"], "negatives": None}
    module = datamodule("voc", source, classes=["car", "person"], split="official")
    train_difficult = sum(int(s.difficult.sum()) for s in module.datasets["train"].source.samples)
    val_difficult = sum(int(s.difficult.sum()) for s in module.datasets["val"].source.samples)
    assert train_difficult == 0 and val_difficult > 0
    assert module.issues.counts()["box: difficult, left out of training"] > 0
    _, targets = next(iter(module.val_dataloader()))
    assert all(t["difficult"].dtype == torch.bool and len(t["difficult"]) == len(t["boxes"]) for t in targets)
    with_difficult = datamodule("voc", source, classes=["car", "person"], split="official", use_difficult=True)
    assert sum(int(s.difficult.sum()) for s in with_difficult.datasets["train"].source.samples) > 0


def test_voc_class_subset_sends_other_images_to_the_negatives(tmp_path):
    write_voc_dataset(tmp_path, {"trainval": 10, "test": 10})
    source = {"root": str(tmp_path), "train": "2007/trainval", "val": "2007/test", "negatives": "2007/test"}
    module = datamodule("voc", source, classes=["car"], split="official")
    negatives = module.datasets["negatives"].source.samples
    val_ids = set(ids(module, "val"))
    assert negatives and all(len(s.boxes) == 0 for s in negatives)
    assert not {s.image_id for s in negatives} & val_ids
    assert all((s.labels == 1).all() for s in module.datasets["train"].source.samples)


def test_large_jpeg_boxes_follow_the_reduced_decode(tmp_path):
    image = np.zeros((1600, 2400, 3), np.uint8)
    image[400:800, 600:1200] = 255
    Image.fromarray(image).save(tmp_path / "big.jpg", quality=95)
    (tmp_path / "train.csv").write_text("big.jpg,600,400,1200,800,camera\n")
    module = datamodule("csv", {"train": str(tmp_path / "train.csv")}, classes=["camera"],
                        split_fractions=[1.0, 0.0, 0.0])
    tensor, target = module.datasets["train"][0]
    assert tuple(tensor.shape) == (3, 96, 144) and target["original_size"] == (1600, 2400)
    # scale min(96 / 1600, 160 / 2400) = 0.06, whatever factor the JPEG was decoded at
    np.testing.assert_allclose(target["boxes"].numpy(), [[36, 24, 72, 48]], atol=0.01)
    assert tensor[:, 28:44, 40:68].mean() > 0.9 and tensor[:, 52:, :].mean() < 0.05


def test_grouped_batches_share_an_orientation_and_cover_every_index_once():
    groups = [0, 1, 1, 0, 0, 1, 0, 1, 1]
    sampler = GroupedBatchSampler(range(len(groups)), groups, batch_size=2)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(groups)))
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    assert len(sampler) == len(batches) == 5


def test_train_loader_groups_landscape_and_portrait_images(tmp_path):
    write_csv_dataset(tmp_path, count=16)
    module = datamodule("csv", {"train": str(tmp_path / "train.csv")}, split_fractions=[1.0, 0.0, 0.0])
    shapes = [{tuple(image.shape[-2:]) for image in images} for images, _ in module.train_dataloader()]
    assert all(len(s) == 1 for s in shapes) and {next(iter(s)) for s in shapes} == {(96, 128), (128, 96)}


def test_summary_is_written_as_json_and_never_overwritten(tmp_path):
    write_csv_dataset(tmp_path / "data", count=6)
    module = datamodule("csv", {"train": str(tmp_path / "data" / "train.csv")}, split_fractions=[0.5, 0.5, 0.0])
    first = module.write_summary(tmp_path / "run")
    second = module.write_summary(tmp_path / "run")
    assert first.name == "data_summary.json" and second.name == "data_summary-1.json"
    summary = json.loads(first.read_text())
    assert summary["splits"]["train"]["images"] + summary["splits"]["val"]["images"] == 6
    for split in ("train", "val"):
        stats = summary["splits"][split]
        assert stats["boxes"] == stats["boxes_per_class"]["camera"] + stats["boxes_per_class"]["phone"]
    assert summary["splits"]["train"]["box_side_input_px"]["min"] > 0


def test_synthetic_negatives_are_distractor_scenes_apart_from_the_splits():
    source = {"num_train": 4, "num_val": 2, "num_test": 2, "seed": 3}
    module = DetectionDataModule({"source": source, "image_size": 96, "max_size": 160, "batch_size": 2,
                                  "augment": AUGMENT, "num_negatives": 6})
    module.setup()
    negatives = module.datasets["negatives"].source
    items = [negatives[i] for i in range(len(negatives))]
    assert len(items) == 6 and all(len(item["boxes"]) == 0 for item in items)
    train_ids = {module.datasets["train"].source[i]["image_id"] for i in range(4)}
    assert not {item["image_id"] for item in items} & train_ids
    # Distractors are drawn: the scenes are not flat backgrounds.
    assert all(item["image"].std() > 10 for item in items)
    again = DetectionDataModule({"source": source, "image_size": 96, "max_size": 160, "batch_size": 2,
                                  "augment": AUGMENT, "num_negatives": 6})
    again.setup()
    np.testing.assert_array_equal(again.datasets["negatives"].source[2]["image"], items[2]["image"])


def test_limit_caps_each_synthetic_split_at_its_first_scenes():
    """data.limit on the synthetic data: each split keeps its first scenes, the same as without the limit (the val
    scenes do not move with the train split's size), and the summary's notes say so."""
    source = {"num_train": 6, "num_val": 3, "num_test": 2, "seed": 3}
    whole = DetectionDataModule({"source": source, "image_size": 96, "max_size": 160, "num_negatives": 2})
    limited = DetectionDataModule({"source": source, "image_size": 96, "max_size": 160, "num_negatives": 2,
                                   "limit": 2})
    whole.setup()
    limited.setup()
    assert {split: len(limited.datasets[split]) for split in limited.datasets} == {
        "train": 2, "val": 2, "test": 2, "negatives": 2}
    for split in ("train", "val"):
        assert [limited.datasets[split].source[i]["image_id"] for i in range(2)] == \
            [whole.datasets[split].source[i]["image_id"] for i in range(2)]
    assert limited.notes == ["train: 2 of 6 images used (limit)", "val: 2 of 3 images used (limit)"]
    assert summarize(limited)["splits"]["train"]["images"] == 2


@pytest.mark.parametrize("option,label", [
    ("synthetic", "synthetic"),
    ("synthetic_hard", "synthetic (hard)"),
    ("synthetic_large", "synthetic (hard, canvases up to 2000 x 1500)"),
    ("csv", "csv"),
])
def test_the_data_options_are_named_by_their_variant(option, label):
    """What the data summary and evaluate's table call each data= option: all synthetic ones are name: synthetic."""
    data = group_option("data", option)
    assert source_label(data["name"], data["source"]) == label


def count_draws(monkeypatch) -> list[int]:
    """The indices SyntheticScenes draws from now on, in order."""
    draws, draw = [], SyntheticScenes.__getitem__

    def counted(self, index):
        draws.append(index)
        return draw(self, index)

    monkeypatch.setattr(SyntheticScenes, "__getitem__", counted)
    return draws


def test_kept_scenes_are_the_scenes_drawn_once(monkeypatch):
    """With cache_mb, a second read of a scene draws nothing and gives the same arrays as a fresh draw; changing
    what a read returned does not change the next read."""
    args = {"num_train": 3, "num_val": 1, "num_test": 1, "seed": 4}
    fresh = synthetic_splits(**args)["train"]
    kept = synthetic_splits(**args, cache_mb=8)["train"]
    draws = count_draws(monkeypatch)
    for _ in range(2):
        for item in (kept[i] for i in range(3)):  # drawn, then kept ones
            item["image"][:] = 0
            item["boxes"][:] = -1
    assert draws == [0, 1, 2]  # nothing drawn again
    again = [kept[i] for i in (2, 0, 1)]
    for i, item in zip((2, 0, 1), again, strict=True):
        reference = fresh[i]
        for key in ("image", "boxes", "labels", "difficult"):
            assert np.array_equal(item[key], reference[key]), (i, key)


def test_the_kept_scenes_stay_within_their_bound(monkeypatch):
    """Room for one 320 x 320 scene: the least recently read one makes way, and is drawn again when read."""
    train = synthetic_splits(3, 1, 1, seed=0, cache_mb=0.4, image_sizes=((320, 320),))["train"]
    draws = count_draws(monkeypatch)
    for i in (0, 0, 1, 0, 1, 1):
        train[i]
    assert draws == [0, 1, 0, 1]
    assert train.drawn.bytes == 320 * 320 * 3 <= train.drawn.max_bytes


@pytest.mark.parametrize("bad", [-1, "lots"])
def test_a_bad_cache_size_is_named(bad):
    with pytest.raises(ValueError, match=f"data.source.cache_mb={bad!r} must be a number >= 0"):
        synthetic_splits(2, 1, 1, seed=0, cache_mb=bad)
