"""The assembled detector: every backbone x pooler trains, RoI counts follow rpn.num_rois, the RPN alone
is a one-class detector, and one batch can be learned by heart."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.model.detector import build_detector
from frcnn_lab.model.losses import LOSS_PARTS
from support import OFFLINE_WEIGHTS, OFFLINE_WEIGHTS_INSTALL, require_modules


def groups(make_config, *overrides):
    """The detector's config groups as plain dicts, from the project's own defaults."""
    cfg = make_config(list(overrides))
    from omegaconf import OmegaConf

    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("backbone", "rpn", "roi_head", "loss")}


def scene_batch(n: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    scenes = SyntheticScenes(n, seed=seed, empty_fraction=0.0)
    images, targets = [], []
    for sample in scenes:
        images.append(torch.from_numpy(sample["image"]).permute(2, 0, 1).float() / 255)
        targets.append({"boxes": torch.from_numpy(sample["boxes"]), "labels": torch.from_numpy(sample["labels"])})
    return images, targets


def sgd_steps(detector, images, targets, steps: int, lr: float) -> None:
    """``steps`` SGD steps on one batch, checking that every step gives the four finite loss parts."""
    optimizer = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        output = detector(images, targets)
        assert set(output.losses) == set(LOSS_PARTS)
        total = sum(output.losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()


# ResNet50 takes about 40 s a pooler on two CPU cores and VGG16 about 13 s: the fast suite trains every pooler with
# MobileNetV2 and VGG16 with RoI Align; the others are slow (run by .ci/run, not by the fast suite).
@pytest.mark.parametrize("backbone,pooler", [
    pytest.param(backbone, pooler, marks=pytest.mark.slow)
    if backbone == "resnet50" or (backbone == "vgg16" and pooler != "roi_align") else (backbone, pooler)
    for backbone in ("vgg16", "resnet50", "mobilenet_v2") for pooler in ("roi_pool", "roi_align", "crop_resize")
])
def test_every_backbone_and_pooler_trains(make_config, backbone, pooler):
    torch.manual_seed(0)
    cfg = groups(make_config, f"backbone={backbone}", "backbone.weights=none", f"roi_head.pooler={pooler}")
    detector = build_detector(**cfg, num_classes=2).train()
    images, targets = scene_batch(2)
    images = [torch.nn.functional.interpolate(i[None], scale_factor=0.5)[0] for i in images]
    targets = [{"boxes": t["boxes"] * 0.5, "labels": t["labels"]} for t in targets]
    head_before = detector.roi_head.predictor.cls_score.weight.detach().clone()
    trunk_param = next(p for p in detector.trunk[-1].parameters() if p.requires_grad)
    trunk_before = trunk_param.detach().clone()
    sgd_steps(detector, images, targets, steps=2, lr=1e-3)
    # Gradients reached both the head and the (unfrozen) trunk.
    assert not torch.equal(detector.roi_head.predictor.cls_score.weight, head_before)
    assert not torch.equal(trunk_param, trunk_before)
    detector.eval()
    with torch.no_grad():
        detections = detector(images).detections
    assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)


@pytest.mark.parametrize("backbone", ["resnet50_fpn", "mobilenet_v2_fpn"])
def test_fpn_backbones_train_and_gradients_reach_trunk_fpn_and_heads(make_config, backbone):
    """A few SGD steps change the trunk's last stage, the FPN's lateral and output convs, the RPN head and
    the MLP box head; the anchors have one size per level and RoIs are pooled from every level but "pool"."""
    torch.manual_seed(0)
    cfg = groups(make_config, f"backbone={backbone}", "backbone.weights=none")
    detector = build_detector(**cfg, num_classes=2).train()
    levels = ["0", "1", "2", "3"] if backbone == "resnet50_fpn" else ["0", "1", "2"]
    assert all(len(sizes) == 1 for sizes in detector.rpn.anchor_generator.sizes)
    assert len(detector.rpn.anchor_generator.sizes) == len(levels) + 1
    assert list(detector.roi_head.pooler.strides) == levels
    images, targets = scene_batch(2)
    images = [torch.nn.functional.interpolate(i[None], scale_factor=0.5)[0] for i in images]
    targets = [{"boxes": t["boxes"] * 0.5, "labels": t["labels"]} for t in targets]
    watched = {
        "trunk": detector.trunk.body[list(detector.trunk.body)[-1]],
        "fpn lateral": detector.trunk.fpn.inner_blocks[0],
        "fpn output": detector.trunk.fpn.layer_blocks[0],
        "rpn head": detector.rpn.head.conv,
        "box head": detector.roi_head.tail.fc6,
    }
    before = {name: [p.detach().clone() for p in module.parameters()] for name, module in watched.items()}
    sgd_steps(detector, images, targets, steps=3, lr=1e-2)
    for name, module in watched.items():
        changed = [not torch.equal(p, old) for p, old in zip(module.parameters(), before[name], strict=True)]
        assert any(changed), f"no gradient reached the {name}"
    detector.eval()
    with torch.no_grad():
        detections = detector(images).detections
    assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)


def test_anchor_sizes_that_do_not_split_over_the_levels_are_named(make_config):
    """Four sizes cannot be shared out over resnet50_fpn's five levels: the error names the key and the levels."""
    cfg = groups(make_config, "backbone=resnet50_fpn", "backbone.weights=none", "rpn.anchor_sizes=[32,64,128,256]")
    with pytest.raises(ValueError, match=r"rpn.anchor_sizes=\[32, 64, 128, 256\] has 4 sizes for the 5 levels"):
        build_detector(**cfg, num_classes=2)


def test_two_sizes_per_level_split_in_order(make_config):
    """Eight sizes over mobilenet_v2_fpn's four levels: two per level, finest level first."""
    cfg = groups(make_config, "backbone=mobilenet_v2_fpn", "backbone.weights=none",
                 "rpn.anchor_sizes=[8,16,32,64,128,256,512,1024]")
    detector = build_detector(**cfg, num_classes=2, mode="rpn_only")
    assert detector.rpn.anchor_generator.sizes == ((8, 16), (32, 64), (128, 256), (512, 1024))


@pytest.mark.parametrize("num_rois", [4, 50])
def test_num_rois_is_the_number_of_rois_sampled_per_image(make_config, num_rois):
    cfg = groups(make_config, "backbone.weights=none", f"rpn.num_rois={num_rois}", "roi_head.positive_fraction=0.5")
    detector = build_detector(**cfg, num_classes=2).train()
    images, targets = scene_batch(2)
    stats = detector(images, targets).stats
    assert float(stats["roi_fg"] + stats["roi_bg"]) == num_rois
    assert float(stats["roi_fg"]) <= num_rois * 0.5


def test_rpn_only_is_a_single_class_detector_trained_by_rpn_losses(make_config):
    cfg = groups(make_config, "backbone.weights=none", "rpn.post_nms_top_n_test=20")
    detector = build_detector(**cfg, num_classes=2, mode="rpn_only").train()
    assert detector.roi_head is None
    images, targets = scene_batch(2)
    output = detector(images, targets)
    assert set(output.losses) == {"rpn_cls", "rpn_reg"}
    detector.eval()
    with torch.no_grad():
        detections = detector(images).detections
    for detection in detections:
        assert len(detection["boxes"]) == 20
        assert set(detection["labels"].tolist()) == {1}
        assert detection["scores"].min() >= 0 and detection["scores"].max() <= 1
        assert torch.all(detection["scores"][:-1] >= detection["scores"][1:])  # sorted by objectness


def test_boxes_come_back_in_the_original_image_coordinates(make_config):
    cfg = groups(make_config, "backbone.weights=none")
    detector = build_detector(**cfg, num_classes=2).eval()
    images, _ = scene_batch(1)
    with torch.no_grad():
        resized = detector(images).detections[0]["boxes"]
        original = detector(images, original_sizes=[(2 * images[0].shape[1], 3 * images[0].shape[2])]).detections[0]
    assert len(resized) > 0
    torch.testing.assert_close(original["boxes"], resized * torch.tensor([3.0, 2.0, 3.0, 2.0]))


@pytest.mark.slow  # 150 training steps: about 90 s on one thread
def test_overfitting_one_batch_drives_the_loss_near_zero_and_detects_its_objects(make_config):
    require_modules(OFFLINE_WEIGHTS, install=OFFLINE_WEIGHTS_INSTALL)
    torch.manual_seed(0)
    cfg = groups(make_config)
    detector = build_detector(**cfg, num_classes=2).train()
    images, targets = scene_batch(2, seed=1)
    parameters = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=0.005, momentum=0.9)
    losses = []
    for _ in range(150):
        total = sum(detector(images, targets).losses.values())
        losses.append(total.item())
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 10.0)
        optimizer.step()
    assert max(losses[-5:]) < 0.05 * losses[0] and max(losses[-5:]) < 0.1, losses[::10]
    detector.eval()
    with torch.no_grad():
        detections = detector(images).detections
    for detection, target in zip(detections, targets, strict=True):
        confident = detection["scores"] > 0.5
        iou = box_iou(target["boxes"], detection["boxes"][confident])
        best = iou.max(dim=1)
        assert torch.all(best.values > 0.7), best.values
        assert torch.equal(detection["labels"][confident][best.indices], target["labels"])


def test_channels_last_changes_the_weights_layout_not_the_losses(make_config):
    """With the pretrained trunk (frozen BatchNorm): with random weights and batch statistics, the kernels' different
    summation orders are amplified layer by layer and the losses drift apart by ~0.1 %."""
    require_modules(OFFLINE_WEIGHTS, install=OFFLINE_WEIGHTS_INSTALL)
    from frcnn_lab.train import build_module

    def module(channels_last: bool):
        torch.manual_seed(0)
        return build_module(make_config([f"model.channels_last={channels_last}"]))

    nchw, nhwc = module(False), module(True)
    nhwc.load_state_dict(nchw.state_dict())
    convs = [m for m in nhwc.detector.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    conv = next(m.weight for m in convs if m.kernel_size != (1, 1))
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    images, targets = scene_batch(2)
    losses = {}
    for name, m in (("nchw", nchw), ("nhwc", nhwc)):
        torch.manual_seed(1)  # the RPN and RoI samplers draw from torch's generator
        losses[name] = m.detector(images, targets).losses
    assert set(losses["nchw"]) == set(LOSS_PARTS)
    for part in LOSS_PARTS:
        torch.testing.assert_close(losses["nhwc"][part], losses["nchw"][part], rtol=1e-4, atol=1e-5)
