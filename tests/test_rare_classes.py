"""Rare classes: repeat-factor sampling against LVIS's formula, with aspect-ratio grouping and DDP; images per
class and the imbalance warning of the data summary; the imbalanced variant of the embedded data."""

from __future__ import annotations

import math
from collections import Counter

import lightning as L
import numpy as np
import pytest
from torch.utils.data import DataLoader, RandomSampler

from frcnn_lab.data import datamodule as datamodule_module
from frcnn_lab.data import samplers
from frcnn_lab.data.config import synthetic_source
from frcnn_lab.data.datamodule import DetectionDataModule
from frcnn_lab.data.records import DataError
from frcnn_lab.data.samplers import GroupedBatchSampler, RepeatFactorSampler, repeat_factors
from frcnn_lab.data.summary import class_imbalance, imbalance_warning, split_statistics
from frcnn_lab.data.synthetic import SyntheticScenes

# Ten images: class 1 in 8 of them, class 2 in 2, class 3 in 1 (beside class 1), one image without boxes.
LABELS = [[1], [1, 1], [1, 2], [1], [1, 3], [1], [1], [1], [2, 2], []]


def test_repeat_factors_follow_the_lvis_formula():
    factors, per_class = repeat_factors(LABELS, threshold=0.5)
    r2, r3 = math.sqrt(0.5 / 0.2), math.sqrt(0.5 / 0.1)  # f_1 = 0.8 > t: r_1 = 1
    assert per_class == pytest.approx({1: 1.0, 2: r2, 3: r3})
    # An image takes its rarest class's factor; one without boxes keeps 1.
    assert factors.tolist() == pytest.approx([1, 1, r2, 1, r3, 1, 1, 1, r2, 1])
    # LVIS's t = 0.001 repeats nothing here: every class is in far more than 0.1 % of the images.
    assert repeat_factors(LABELS, threshold=0.001)[0].tolist() == [1.0] * 10


def test_stochastic_rounding_repeats_each_image_its_factor_on_average():
    factors = [1.0, 1.5, 2.25, 3.0, 1.1]
    sampler = RepeatFactorSampler(factors, seed=7, num_replicas=1, rank=0)
    totals = np.zeros(len(factors))
    for epoch in range(400):
        sampler.set_epoch(epoch)
        counts = np.bincount(sampler.drawn().numpy(), minlength=len(factors))
        assert ((counts == np.floor(factors)) | (counts == np.ceil(factors))).all()
        totals += counts
    assert totals / 400 == pytest.approx(factors, abs=0.08)
    # Every epoch holds round(sum r) images; the same seed and epoch give the same order, another epoch another.
    sampler.set_epoch(3)
    again = RepeatFactorSampler(factors, seed=7, num_replicas=1, rank=0)
    again.set_epoch(3)
    assert len(list(sampler)) == len(sampler) == round(sum(factors)) and list(sampler) == list(again)
    again.set_epoch(4)
    assert list(sampler) != list(again)


def test_processes_share_one_epoch_in_equal_parts():
    factors, _ = repeat_factors(LABELS, threshold=0.5)
    shards = [RepeatFactorSampler(factors, seed=1, num_replicas=3, rank=rank) for rank in range(3)]
    for shard in shards:
        shard.set_epoch(2)
    parts = [list(shard) for shard in shards]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(shards[0]) == math.ceil(round(sum(factors)) / 3)
    whole = RepeatFactorSampler(factors, seed=1, num_replicas=1, rank=0)
    whole.set_epoch(2)
    interleaved = [index for group in zip(*parts, strict=True) for index in group]
    assert interleaved[:len(whole)] == list(whole)


def test_lightning_keeps_the_sampler_under_ddp_but_not_inside_a_batch_sampler():
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    connector = trainer._data_connector
    data = list(range(10))
    sampler = RepeatFactorSampler(repeat_factors(LABELS, 0.5)[0], num_replicas=2, rank=0)
    assert not connector._requires_distributed_sampler(DataLoader(data, sampler=sampler))
    assert connector._requires_distributed_sampler(DataLoader(data, sampler=RandomSampler(data)))
    # Grouped, the loader's own sampler is the default one: Lightning would swap ours out, hence the refusal.
    grouped = DataLoader(data, batch_sampler=GroupedBatchSampler(sampler, [0] * 10, 2))
    assert connector._requires_distributed_sampler(grouped)


def imbalanced(**overrides) -> DetectionDataModule:
    source = {**synthetic_source(), "num_train": 16, "num_val": 2, "num_test": 0, "cache_mb": 0,
              "train_class_weights": {"phone": 0.2}}
    config = {"source": source, "image_size": 96, "max_size": 128, "batch_size": 3, "num_negatives": 0,
              "sampler": "repeat_factor", "repeat_threshold": 0.5, **overrides}
    module = DetectionDataModule(config)
    module.setup()
    return module


def test_repeat_factor_sampling_composes_with_orientation_groups():
    module = imbalanced()
    loader = module.train_dataloader()
    assert isinstance(loader.batch_sampler, GroupedBatchSampler)
    assert isinstance(loader.batch_sampler.sampler, RepeatFactorSampler)
    sizes = module.datasets["train"].source.sizes()
    labels = [labels for _, _, labels, _ in module.input_annotations("train")]
    factors, per_class = repeat_factors(labels, 0.5)
    assert per_class[2] > 1 and len(loader.batch_sampler.sampler) == round(factors.sum())
    batches = list(loader.batch_sampler)
    assert all(len({sizes[i][0] > sizes[i][1] for i in batch}) == 1 for batch in batches)
    drawn = Counter(i for batch in batches for i in batch)
    assert sum(drawn.values()) == round(factors.sum())
    assert max(drawn[i] for i, f in enumerate(factors) if f > 1) > 1  # an image with a phone came twice


def test_repeat_factor_sampling_under_ddp_shards_itself_or_is_refused_when_grouped(monkeypatch):
    monkeypatch.setattr(datamodule_module, "processes", lambda: (1, 2))
    monkeypatch.setattr(samplers, "processes", lambda: (1, 2))
    with pytest.raises(DataError, match="data.group_aspect_ratio=false"):
        imbalanced().train_dataloader()
    loader = imbalanced(group_aspect_ratio=False).train_dataloader()
    assert isinstance(loader.sampler, RepeatFactorSampler)
    assert (loader.sampler.rank, loader.sampler.num_replicas) == (1, 2)


def test_summary_counts_images_per_class_and_warns_on_imbalance():
    annotations = [((10, 10), np.zeros((len(labels), 4), np.float32), np.array(labels, np.int64),
                    np.zeros(len(labels), bool)) for labels in LABELS]
    stats = split_statistics(annotations, ["a", "b", "c"])
    assert stats["images_per_class"] == {"a": 8, "b": 2, "c": 1} and stats["boxes_per_class"]["a"] == 9
    found = class_imbalance(stats)
    assert (found["rarest"], found["most_frequent"], found["ratio"], found["warn"]) == ("c", "a", 0.125, False)
    stats["images_per_class"]["c"] = 0
    warning = imbalance_warning(class_imbalance(stats), "random")
    assert "class c is in 0 train images" in warning and "data.sampler=repeat_factor" in warning


def test_imbalanced_variant_changes_only_the_train_split_classes():
    module = imbalanced(sampler="random")
    plain = DetectionDataModule({"source": {**synthetic_source(), "num_train": 16, "num_val": 2, "num_test": 0,
                                            "cache_mb": 0}, "image_size": 96, "max_size": 128, "num_negatives": 0})
    plain.setup()
    # Each train scene keeps its size; val is the same scenes.
    assert module.datasets["train"].source.sizes() == plain.datasets["train"].source.sizes()
    for ours, theirs in zip(module.input_annotations("val"), plain.input_annotations("val"), strict=True):
        assert np.array_equal(ours[1], theirs[1]) and np.array_equal(ours[2], theirs[2])
    scenes = SyntheticScenes(200, seed=0, class_weights=[1.0, 0.0])
    assert all((scenes[i]["labels"] == 1).all() for i in range(0, 200, 10))
    with pytest.raises(ValueError, match="class_weights"):
        SyntheticScenes(2, class_weights=[1.0])


def test_rare_class_preset_makes_phones_rare_in_train_only(tmp_path):
    from frcnn_lab.config import validate
    from support import compose_config

    cfg = compose_config("config", ["experiment=rare/phone", "data.sampler=repeat_factor"], tmp_path)
    validate(cfg)
    module = DetectionDataModule(cfg.data)
    module.setup()
    imbalance = class_imbalance(split_statistics(module.input_annotations("train"), module.classes))
    assert (imbalance["rarest"], imbalance["rarest_images"], imbalance["most_frequent_images"]) == ("phone", 21, 251)
    assert imbalance["warn"]
    factors, per_class = repeat_factors([labels for *_, labels, _ in module.input_annotations("train")],
                                        cfg.data.repeat_threshold)
    # The preset's comment: r_phone 2.76, 357 draws per epoch instead of 320.
    assert per_class[2] == pytest.approx(2.76, abs=0.01) and per_class[1] == 1 and round(factors.sum()) == 357
    assert len(module.train_dataloader().batch_sampler.sampler) == 357
