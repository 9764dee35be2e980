"""Parity with torchvision: the project's Faster R-CNN and torchvision's, configured alike and sharing
every weight, give the same proposals and detections at inference.

Two layouts: the C4 ``mobilenet_v2`` (this project's trunk and tail inside ``torchvision.models.detection
.FasterRCNN``) and ``resnet50_fpn`` against torchvision's own ``fasterrcnn_resnet50_fpn(weights=None,
weights_backbone=None)``, into which our weights are loaded key for key (strict). Weights are random
(``weights="none"``, seeded). With random weights and BatchNorm's default statistics the activations
shrink or blow up through the trunk and every class score ties at 1/K, which would make the comparison
empty; so the BatchNorm statistics are estimated on the test images and the RPN head and box predictor
get larger random weights. The images are given at their final size: torchvision's transform is set so
that it does not resize.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from frcnn_lab.config import group_option
from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.model.detector import FasterRCNN, build_detector
from frcnn_lab.model.reference import torchvision_equivalent

IMAGE_SIZES = ((320, 320), (240, 320), (320, 240))
NUM_CLASSES = 2
RPN = {"pre_nms_top_n_test": 300, "post_nms_top_n_test": 100, "nms_iou": 0.7}
HEAD = {"pooler": "roi_align", "sampling_ratio": 2, "aligned": False, "score_thresh": 0.3, "nms_iou": 0.5,
        "detections_per_image": 100}


def config_group(group: str, **overrides) -> dict:
    return {**group_option(group), **overrides}


def scene(height: int, width: int, seed: int) -> Tensor:
    """A synthetic scene as (3, H, W) RGB in [0, 1]."""
    image = SyntheticScenes(1, seed=seed, image_sizes=((height, width),))[0]["image"]
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def estimate_batchnorm_statistics(module: nn.Module, inputs: Tensor) -> Tensor:
    """Reset every BatchNorm's running statistics to the (cumulative) statistics of ``inputs``."""
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None
    module.train()
    with torch.no_grad():
        outputs = module(inputs)
    module.eval()
    return outputs


def center_logits(layer: nn.Module, logits: Tensor, spread: float) -> None:
    """Rescale ``layer`` so that its ``logits`` get mean 0 and standard deviation ``spread``."""
    scale = spread / logits.std()
    layer.weight.mul_(scale)
    layer.bias.copy_((layer.bias - logits.mean(dim=0)) * scale)


class Models:
    """The two detectors, sharing trunk, tail and weights, and the test images."""

    def __init__(self, ours: FasterRCNN, theirs: TorchvisionFasterRCNN, images: list[Tensor]) -> None:
        self.ours, self.theirs, self.images = ours, theirs, images


@pytest.fixture(scope="module", params=["mobilenet_v2", "resnet50_fpn"])
def models(request) -> Models:
    return build_models(request.param)


def build_models(backbone: str) -> Models:
    torch.manual_seed(0)
    rpn_config = config_group("rpn", **RPN)
    if backbone == "resnet50_fpn":  # conf/backbone/resnet50_fpn.yaml: torchvision's FPN anchors
        rpn_config["anchor_sizes"] = [32, 64, 128, 256, 512]
    ours = build_detector(
        {"name": backbone, "weights": "none", "freeze_stages": 0, "frozen_bn": True},
        rpn_config, config_group("roi_head", **HEAD), config_group("loss"), num_classes=NUM_CLASSES,
    ).eval()
    images = [scene(h, w, seed) for seed, (h, w) in enumerate(IMAGE_SIZES)]

    features = estimate_batchnorm_statistics(ours.trunk, ours.preprocess(images).tensors)
    corners = torch.rand(64, 2) * 200
    boxes = torch.cat([corners, corners + 16 + torch.rand(64, 2) * 100], dim=1)
    estimate_batchnorm_statistics(ours.roi_head.tail, ours.roi_head.pooler(features, [boxes] * len(images)))
    head, predictor = ours.rpn.head, ours.roi_head.predictor
    with torch.no_grad():
        for layer in (head.conv, head.cls_logits, head.bbox_pred, predictor.cls_score):
            layer.weight.normal_(std=0.05)
        predictor.bbox_pred.weight.normal_(std=0.01)
        if backbone == "resnet50_fpn":  # FPN features are larger: objectness and class logits would saturate
            hidden = [torch.relu(head.conv(level)) for level in features.values()]
            center_logits(head.cls_logits, torch.cat([head.cls_logits(h).flatten() for h in hidden]), spread=0.5)
            pooled = ours.roi_head.tail(ours.roi_head.pooler(features, [boxes] * len(images)))
            center_logits(predictor.cls_score, predictor.cls_score(pooled), spread=2.0)

    theirs = torchvision_equivalent(ours, rpn_config, config_group("roi_head", **HEAD), 320, share_modules=True)
    if backbone == "resnet50_fpn":
        theirs = torchvisions_resnet50_fpn(theirs)
    theirs.eval()
    assert theirs.transform.size_divisible == ours.preprocess.size_divisible == 32
    assert theirs.roi_heads.box_coder.weights == ours.roi_head.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert theirs.rpn.box_coder.weights == ours.rpn.box_coder.weights
    assert ours.rpn.min_size == theirs.rpn.min_size and ours.roi_head.min_size == 1e-2  # torchvision's fixed values
    return Models(ours, theirs, images)


def torchvisions_resnet50_fpn(equivalent: TorchvisionFasterRCNN) -> TorchvisionFasterRCNN:
    """torchvision's ``fasterrcnn_resnet50_fpn`` with the settings and (strictly loaded) weights of ``equivalent``."""
    rpn, heads = equivalent.rpn, equivalent.roi_heads
    model = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1, min_size=320, max_size=3200,
        rpn_pre_nms_top_n_test=rpn._pre_nms_top_n["testing"], rpn_post_nms_top_n_test=rpn._post_nms_top_n["testing"],
        rpn_nms_thresh=rpn.nms_thresh, rpn_score_thresh=rpn.score_thresh, box_score_thresh=heads.score_thresh,
        box_nms_thresh=heads.nms_thresh, box_detections_per_img=heads.detections_per_img,
    )
    model.load_state_dict(equivalent.state_dict(), strict=True)
    # the defaults of fasterrcnn_resnet50_fpn are the layout ours was built with
    assert model.rpn.anchor_generator.sizes == equivalent.rpn.anchor_generator.sizes
    assert model.roi_heads.box_roi_pool.featmap_names == equivalent.roi_heads.box_roi_pool.featmap_names
    assert model.roi_heads.box_roi_pool.output_size == equivalent.roi_heads.box_roi_pool.output_size
    return model


def without_resizing(model: TorchvisionFasterRCNN, images: list[Tensor]) -> TorchvisionFasterRCNN:
    """Set torchvision's resize target to the images' (shared) short side: a scale of exactly 1."""
    short_sides = {min(image.shape[-2:]) for image in images}
    assert len(short_sides) == 1, "torchvision resizes every image of a batch to one short side"
    model.transform.min_size = (short_sides.pop(),)
    return model


CASES = {"320x320": [0], "240x320": [1], "320x240": [2], "batch of 240x320 and 320x240": [1, 2]}


@pytest.mark.parametrize("case", CASES)
def test_batched_images_match_torchvisions_transform(models, case):
    """Normalisation and zero padding to a multiple of 32 agree (torchvision's resize is a no-op here)."""
    images = [models.images[i] for i in CASES[case]]
    with torch.no_grad():
        theirs, _ = without_resizing(models.theirs, images).transform(images)
    ours = models.ours.preprocess(images)
    assert ours.image_sizes == theirs.image_sizes
    torch.testing.assert_close(ours.tensors, theirs.tensors, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_rpn_proposals_match_torchvision(models, case):
    """The RPN stage alone: same proposals, in the same order, from the same features."""
    images = [models.images[i] for i in CASES[case]]
    with torch.no_grad():
        theirs_model = without_resizing(models.theirs, images)
        image_list, _ = theirs_model.transform(images)
        theirs, _ = theirs_model.rpn(image_list, theirs_model.backbone(image_list.tensors))
        batch = models.ours.preprocess(images)
        ours, scores, _, _ = models.ours.rpn(batch, models.ours.trunk(batch.tensors))
    for our_boxes, their_boxes, our_scores in zip(ours, theirs, scores, strict=True):
        assert len(our_boxes) == len(their_boxes) == RPN["post_nms_top_n_test"]
        assert our_scores.max() - our_scores.min() > 0.1  # distinct objectness, not ties
        torch.testing.assert_close(our_boxes, their_boxes, atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_detections_match_torchvision(models, case):
    """The whole detector in eval mode: same boxes, scores and labels, in the same order."""
    images = [models.images[i] for i in CASES[case]]
    with torch.no_grad():
        theirs = without_resizing(models.theirs, images)(images)
        ours = models.ours(images).detections
    assert len(ours) == len(theirs) == len(images)
    for our, their in zip(ours, theirs, strict=True):
        assert len(our["boxes"]) > 10
        assert len(our["boxes"]) == len(their["boxes"])
        assert our["scores"].max() - our["scores"].min() > 0.05  # distinct class scores, not ties
        assert set(our["labels"].tolist()) == {1, 2}
        torch.testing.assert_close(our["boxes"], their["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(our["scores"], their["scores"], atol=1e-5, rtol=0)
        assert torch.equal(our["labels"], their["labels"])


def test_detections_map_to_original_sizes_as_torchvisions_postprocess_does(models):
    """Given the size before resizing, boxes are scaled back exactly as torchvision's transform scales them."""
    image, original = models.images[1], (150, 400)
    with torch.no_grad():
        plain = models.ours([image]).detections
        rescaled = models.ours([image], original_sizes=[original]).detections
    expected = models.theirs.transform.postprocess(
        [{key: value.clone() for key, value in plain[0].items()}], [tuple(image.shape[-2:])], [original]
    )
    assert len(rescaled[0]["boxes"]) > 10
    assert not torch.allclose(rescaled[0]["boxes"], plain[0]["boxes"])
    torch.testing.assert_close(rescaled[0]["boxes"], expected[0]["boxes"], atol=1e-4, rtol=0)
    torch.testing.assert_close(rescaled[0]["scores"], plain[0]["scores"])
