"""Tests for the procedurally drawn camera / phone detection scenes."""

import numpy as np
import pytest

from frcnn_lab.data import synthetic
from frcnn_lab.data.synthetic import CLASSES, SyntheticScenes

# Small images keep the statistical tests fast; the drawing code is the same at any size.
SMALL = {"image_sizes": ((96, 96), (64, 96)), "object_size": (16, 40)}


def _assert_boxes_inside_with_positive_size(dataset: SyntheticScenes) -> None:
    for index in range(len(dataset)):
        item = dataset[index]
        height, width = item["image"].shape[:2]
        x1, y1, x2, y2 = item["boxes"].T
        assert np.all(x1 >= 0) and np.all(y1 >= 0) and np.all(x2 <= width) and np.all(y2 <= height)
        assert np.all(x2 > x1) and np.all(y2 > y1)


def _assert_items_equal(first: dict, second: dict) -> None:
    np.testing.assert_array_equal(first["image"], second["image"])
    np.testing.assert_array_equal(first["boxes"], second["boxes"])
    np.testing.assert_array_equal(first["labels"], second["labels"])
    assert first["image_id"] == second["image_id"]


def test_classes_are_camera_then_phone():
    assert CLASSES == ("camera", "phone")


def test_same_seed_and_index_give_identical_items():
    first, second = SyntheticScenes(10, seed=7), SyntheticScenes(10, seed=7)
    for index in range(10):
        _assert_items_equal(first[index], second[index])


def test_access_order_does_not_matter():
    forward = [SyntheticScenes(8, seed=3)[index] for index in range(8)]
    backward_dataset = SyntheticScenes(8, seed=3)
    backward = [backward_dataset[index] for index in reversed(range(8))][::-1]
    for item_forward, item_backward in zip(forward, backward, strict=True):
        _assert_items_equal(item_forward, item_backward)


def test_different_seeds_give_different_images():
    for index in range(5):
        first, second = SyntheticScenes(5, seed=0)[index], SyntheticScenes(5, seed=1)[index]
        assert first["image"].shape != second["image"].shape or not np.array_equal(first["image"], second["image"])


def test_different_indices_give_different_images():
    dataset = SyntheticScenes(2, seed=0, image_sizes=((64, 64),))
    assert not np.array_equal(dataset[0]["image"], dataset[1]["image"])


def test_items_have_documented_shapes_and_dtypes():
    sizes = ((96, 96), (64, 96), (96, 64))
    dataset = SyntheticScenes(40, seed=11, image_sizes=sizes, object_size=(16, 40))
    for index in range(len(dataset)):
        item = dataset[index]
        image, boxes, labels = item["image"], item["boxes"], item["labels"]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[:2] in sizes
        assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
        assert labels.dtype == np.int64 and labels.shape == (len(boxes),)
        assert item["image_id"] == f"synthetic-11-{index}"


def test_empty_images_have_empty_but_well_shaped_arrays():
    item = SyntheticScenes(1, empty_fraction=1.0)[0]
    assert item["boxes"].shape == (0, 4) and item["boxes"].dtype == np.float32
    assert item["labels"].shape == (0,) and item["labels"].dtype == np.int64


def test_boxes_lie_inside_the_image_with_positive_size_and_valid_labels():
    dataset = SyntheticScenes(100, seed=5, **SMALL)
    _assert_boxes_inside_with_positive_size(dataset)
    for index in range(len(dataset)):
        assert set(dataset[index]["labels"].tolist()) <= {1, 2}


def test_box_sizes_follow_object_size():
    dataset = SyntheticScenes(60, seed=2, empty_fraction=0.0, object_size=(30, 50), image_sizes=((128, 128),))
    longest_sides = np.concatenate([
        np.maximum(item["boxes"][:, 2] - item["boxes"][:, 0], item["boxes"][:, 3] - item["boxes"][:, 1])
        for item in (dataset[index] for index in range(len(dataset)))
    ])
    assert longest_sides.min() >= 30 and longest_sides.max() <= 50


def test_empty_fraction_is_respected_over_many_images():
    dataset = SyntheticScenes(400, seed=9, empty_fraction=0.3, distractors=False, **SMALL)
    empty = np.mean([len(dataset[index]["labels"]) == 0 for index in range(len(dataset))])
    assert abs(empty - 0.3) < 0.07


def test_zero_empty_fraction_gives_no_empty_images():
    dataset = SyntheticScenes(150, seed=4, empty_fraction=0.0, **SMALL)
    assert all(len(dataset[index]["labels"]) > 0 for index in range(len(dataset)))


def test_both_classes_occur_in_similar_numbers():
    dataset = SyntheticScenes(150, seed=6, distractors=False, **SMALL)
    labels = np.concatenate([dataset[index]["labels"] for index in range(len(dataset))])
    cameras, phones = np.sum(labels == 1), np.sum(labels == 2)
    assert cameras > 0.35 * len(labels) and phones > 0.35 * len(labels)


@pytest.mark.parametrize("max_objects", [1, 5])
def test_max_objects_bounds_the_targets_per_image(max_objects):
    dataset = SyntheticScenes(150, seed=8, max_objects=max_objects, empty_fraction=0.0,
                              image_sizes=((128, 128),), object_size=(16, 40))
    counts = [len(dataset[index]["labels"]) for index in range(len(dataset))]
    assert max(counts) == max_objects and min(counts) >= 1


def test_distractors_flag_changes_the_scenes():
    with_clutter = SyntheticScenes(20, seed=1, distractors=True, **SMALL)
    without_clutter = SyntheticScenes(20, seed=1, distractors=False, **SMALL)
    differing = sum(not np.array_equal(with_clutter[i]["image"], without_clutter[i]["image"]) for i in range(20))
    assert differing > 0


def test_box_regions_stand_out_from_their_surroundings():
    """Pixels inside a box differ from a thin ring around it, so boxes sit on drawn objects."""
    dataset = SyntheticScenes(80, seed=12)
    contrasts = []
    for index in range(len(dataset)):
        item = dataset[index]
        image = item["image"].astype(np.float32)
        height, width = image.shape[:2]
        for x1, y1, x2, y2 in item["boxes"].astype(int):
            ring = np.zeros((height, width), dtype=bool)
            ring[max(0, y1 - 4):y2 + 4, max(0, x1 - 4):x2 + 4] = True
            ring[y1:y2, x1:x2] = False
            if not ring.any():
                continue
            inside, around = image[y1:y2, x1:x2].reshape(-1, 3), image[ring]
            mean_gap = np.abs(inside.mean(0) - around.mean(0)).max()
            std_gap = np.abs(inside.std(0) - around.std(0)).max()
            contrasts.append(max(mean_gap, std_gap))
    assert len(contrasts) > 80
    assert np.mean(np.array(contrasts) > 15) > 0.97


def test_boxes_tightly_enclose_what_is_drawn(monkeypatch):
    """On a flat background without noise, every box edge touches the object and nothing lies outside boxes."""
    flat = np.array([255, 0, 255], dtype=np.uint8)
    monkeypatch.setattr(synthetic, "_draw_background",
                        lambda rng, height, width: np.broadcast_to(flat, (height, width, 3)).copy())
    monkeypatch.setattr(synthetic, "_add_sensor_noise", lambda rng, pixels: np.array(pixels))
    dataset = SyntheticScenes(60, seed=13, distractors=False, **SMALL)
    for index in range(len(dataset)):
        item = dataset[index]
        drawn = np.any(item["image"] != flat, axis=2)
        covered = np.zeros_like(drawn)
        for x1, y1, x2, y2 in item["boxes"].astype(int):
            covered[y1:y2, x1:x2] = True
            assert drawn[y1, x1:x2].any() and drawn[y2 - 1, x1:x2].any()
            assert drawn[y1:y2, x1].any() and drawn[y1:y2, x2 - 1].any()
        assert not np.any(drawn & ~covered)


def test_negative_indices_wrap_like_a_list():
    dataset = SyntheticScenes(5, seed=0)
    _assert_items_equal(dataset[-1], dataset[4])


@pytest.mark.parametrize("index", [5, 6, -6, 100])
def test_out_of_range_index_raises_index_error(index):
    with pytest.raises(IndexError):
        SyntheticScenes(5)[index]


def test_length_and_zero_images():
    assert len(SyntheticScenes(17)) == 17
    with pytest.raises(IndexError):
        SyntheticScenes(0)[0]


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"num_images": -1}, "num_images"),
        ({"seed": -3}, "seed"),
        ({"empty_fraction": -0.1}, "empty_fraction"),
        ({"empty_fraction": 1.5}, "empty_fraction"),
        ({"max_objects": 0}, "max_objects"),
        ({"object_size": (0, 10)}, "object_size"),
        ({"object_size": (50, 40)}, "object_size"),
        ({"object_size": (10,)}, "object_size"),
        ({"image_sizes": ()}, "image_sizes"),
        ({"image_sizes": ((0, 32),)}, "image_sizes"),
        ({"image_sizes": (320, 320)}, "image_sizes"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(arguments, name):
    arguments = {"num_images": 4, **arguments}
    with pytest.raises(ValueError, match=name):
        SyntheticScenes(**arguments)


def test_tiny_objects_and_images_still_draw_valid_items():
    dataset = SyntheticScenes(30, seed=21, object_size=(1, 6), max_objects=3, image_sizes=((8, 8), (5, 12)))
    _assert_boxes_inside_with_positive_size(dataset)


def test_image_size_matches_the_drawn_image_without_drawing_it():
    dataset = SyntheticScenes(12, seed=4, image_sizes=((64, 96), (96, 64), (80, 80)))
    assert [dataset.image_size(i) for i in range(12)] == [dataset[i]["image"].shape[:2] for i in range(12)]


def test_another_stream_gives_other_scenes_and_ids_for_the_same_seed():
    first, second = SyntheticScenes(3, seed=2, **SMALL), SyntheticScenes(3, seed=2, stream=1, **SMALL)
    assert not np.array_equal(first[0]["image"], second[0]["image"])
    assert second[0]["image_id"] == "synthetic-2-s1-0" and first[0]["image_id"] == "synthetic-2-0"


def test_min_distractors_puts_look_alikes_in_every_empty_scene(monkeypatch):
    flat = np.array([255, 0, 255], dtype=np.uint8)
    monkeypatch.setattr(synthetic, "_draw_background",
                        lambda rng, height, width: np.broadcast_to(flat, (height, width, 3)).copy())
    monkeypatch.setattr(synthetic, "_add_sensor_noise", lambda rng, pixels: np.array(pixels))
    drawn = [np.any(item["image"] != flat) for item in (SyntheticScenes(30, seed=1, empty_fraction=1.0, **SMALL)[i]
                                                        for i in range(30))]
    assert not all(drawn)  # without the minimum, some empty scenes hold nothing at all
    busy = SyntheticScenes(30, seed=1, empty_fraction=1.0, min_distractors=1, **SMALL)
    assert all(np.any(busy[i]["image"] != flat) and len(busy[i]["boxes"]) == 0 for i in range(30))
