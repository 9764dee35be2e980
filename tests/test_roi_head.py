"""Tests for the RoI head: label assignment with a background band, sampling, box coding, losses,
post-processing and the class prior's initialisation.

Against the GT box [0, 0, 10, 10], a proposal [0, 0, 10, h] (h <= 10) has IoU h / 10 exactly.
"""

import math

import pytest
import torch
from torch import nn

from frcnn_lab.errors import ConfigError
from frcnn_lab.model.losses import LossWeights, roi_losses, rpn_losses, weighted_total
from frcnn_lab.model.roi_head import RoIHead, RoIHeadConfig, assign_roi_labels
from frcnn_lab.model.roi_pooling import RoIPooler
from frcnn_lab.model.rpn import RPNConfig

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
GT_LABEL = torch.tensor([3])


def strip(heights: list[float]) -> torch.Tensor:
    """Proposals [0, 0, 10, h]: IoU h / 10 with GT."""
    return torch.tensor([[0.0, 0.0, 10.0, h] for h in heights])


FAR = torch.tensor([[50.0, 50.0, 60.0, 60.0]])  # IoU 0


def make_head(num_classes: int = 3, num_rois: int = RPNConfig.num_rois, **fields) -> RoIHead:
    """A head on 2-channel features with a 2 x 2 pooler and a flatten as the tail."""
    pooler = RoIPooler("roi_align", 2, {"c4": 16})
    return RoIHead(pooler, nn.Flatten(), 8, num_classes, RoIHeadConfig(**fields), num_rois)


# --- labels --------------------------------------------------------------------------------------


def test_thesis_band_leaves_proposals_below_bg_iou_lo_unsampled():
    """Band [0.1, 0.5): IoU 0 and 0.05 -> -1, 0.1 and 0.49 -> background, 0.5 -> the GT class."""
    proposals = torch.cat([FAR, strip([0.5, 1.0, 4.9, 5.0, 10.0])])
    labels, matched = assign_roi_labels(proposals, GT, GT_LABEL, fg_iou=0.5, bg_iou_lo=0.1, bg_iou_hi=0.5)
    assert labels.tolist() == [-1, -1, 0, 0, 3, 3]
    assert labels.dtype == torch.long
    assert matched.tolist() == [0] * 6


def test_torchvision_band_makes_zero_iou_proposals_background():
    """Band [0, 0.5): everything under 0.5 is background, including IoU 0."""
    proposals = torch.cat([FAR, strip([0.5, 4.9, 5.0])])
    labels, _ = assign_roi_labels(proposals, GT, GT_LABEL, fg_iou=0.5, bg_iou_lo=0.0, bg_iou_hi=0.5)
    assert labels.tolist() == [0, 0, 0, 3]


def test_foreground_takes_the_class_of_the_best_matching_gt():
    """With two GT boxes, a foreground proposal takes the label of the one it overlaps most."""
    gt = torch.cat([GT, torch.tensor([[100.0, 0.0, 110.0, 10.0]])])
    proposals = torch.tensor([[100.0, 0.0, 110.0, 8.0], [0.0, 0.0, 10.0, 9.0]])
    labels, matched = assign_roi_labels(proposals, gt, torch.tensor([2, 1]), 0.5, 0.0, 0.5)
    assert labels.tolist() == [1, 2]
    assert matched.tolist() == [1, 0]


@pytest.mark.parametrize("bg_iou_lo,expected", [(0.0, 0), (0.1, -1)])
def test_image_without_gt_is_all_background_only_when_the_band_starts_at_zero(bg_iou_lo, expected):
    """Without GT every IoU is 0: background in [0, 0.5), never sampled in [0.1, 0.5)."""
    proposals = torch.cat([FAR, strip([5.0, 10.0])])
    no_boxes, no_labels = torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long)
    labels, matched = assign_roi_labels(proposals, no_boxes, no_labels, 0.5, bg_iou_lo, 0.5)
    assert labels.tolist() == [expected] * 3
    assert matched.shape == (3,)


# --- sampling ------------------------------------------------------------------------------------


def jittered_copies(box: list[float], shifts: range) -> torch.Tensor:
    """The box moved right by each shift (a 40 px box moved by d has IoU (40 - d) / (40 + d))."""
    return torch.tensor([[box[0] + d, box[1], box[2] + d, box[3]] for d in shifts], dtype=torch.float32)


def far_boxes(count: int) -> torch.Tensor:
    """count disjoint 10 x 10 boxes along y = 200: IoU 0 with anything above."""
    return torch.tensor([[12.0 * i, 200.0, 12.0 * i + 10, 210.0] for i in range(count)])


def test_sample_gives_num_rois_per_image_with_at_most_positive_fraction_foreground():
    """16 RoIs per image, at most 4 foreground: 4 + 12 with plenty of foreground, 1 + 15 with only the GT box."""
    torch.manual_seed(0)
    head = make_head(num_rois=16, positive_fraction=0.25)
    gt_box = [20.0, 20.0, 60.0, 60.0]
    proposals = [
        torch.cat([jittered_copies(gt_box, range(0, 10)), far_boxes(30)]),  # 10 (+1 GT) fg, 30 bg candidates
        far_boxes(30),  # only the GT box itself is foreground
    ]
    targets = [{"boxes": torch.tensor([gt_box]), "labels": torch.tensor([2])}] * 2
    rois, labels, target_deltas = head.sample(proposals, targets)
    assert [len(r) for r in rois] == [16, 16]
    assert labels.shape == (32,) and target_deltas.shape == (32, 4)
    first, second = labels[:16], labels[16:]
    assert (first == 2).sum().item() == 4 and (first == 0).sum().item() == 12
    assert (second == 2).sum().item() == 1 and (second == 0).sum().item() == 15
    # the regression targets of the foreground RoIs decode back to the GT box
    foreground = torch.cat(rois)[labels > 0]
    decoded = head.box_coder.decode_single(target_deltas[labels > 0], foreground)
    torch.testing.assert_close(decoded, torch.tensor([gt_box]).expand(5, 4), atol=1e-4, rtol=0)


@pytest.mark.parametrize("add_gt_as_proposals", [True, False])
def test_add_gt_as_proposals_decides_whether_the_gt_box_is_a_candidate(add_gt_as_proposals):
    """With proposals far from the GT box, the GT box is the only possible foreground RoI."""
    head = make_head(num_rois=8, positive_fraction=0.5, add_gt_as_proposals=add_gt_as_proposals)
    gt_box = torch.tensor([[20.0, 20.0, 60.0, 60.0]])
    rois, labels, _ = head.sample([far_boxes(12)], [{"boxes": gt_box, "labels": torch.tensor([1])}])
    gt_among_rois = (rois[0] == gt_box).all(dim=1).any().item()
    assert gt_among_rois is add_gt_as_proposals
    assert (labels == 1).sum().item() == int(add_gt_as_proposals)
    assert len(rois[0]) == 8


def test_sample_with_thesis_band_never_picks_zero_iou_background():
    """Band [0.1, 0.5): the far proposals are not candidates, so only the GT and the banded boxes are."""
    head = make_head(num_rois=16, positive_fraction=0.25, bg_iou_lo=0.1)
    gt_box = [20.0, 20.0, 60.0, 60.0]
    banded = torch.tensor([[20.0, 20.0, 60.0, 30.0], [20.0, 20.0, 60.0, 35.0]])  # IoU 0.25, 0.375
    rois, labels, _ = head.sample(
        [torch.cat([banded, far_boxes(20)])], [{"boxes": torch.tensor([gt_box]), "labels": torch.tensor([1])}]
    )
    assert sorted(labels.tolist()) == [0, 0, 1]
    assert all(any(torch.equal(roi, box) for box in [*banded, torch.tensor(gt_box)]) for roi in rois[0])


def test_sample_image_without_gt_and_thesis_band_contributes_no_rois_and_zero_loss():
    """No GT and band [0.1, 0.5): no candidate RoIs, and the training forward gives zero losses."""
    head = make_head(num_rois=8, bg_iou_lo=0.1)
    targets = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)}]
    features = {"c4": torch.rand(1, 2, 8, 8)}
    detections, losses, _ = head(features, [far_boxes(5)], [(128, 128)], targets)
    assert detections == []
    assert losses["roi_cls"].item() == 0.0 and losses["roi_reg"].item() == 0.0


# --- box coding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights,expected",
    [
        ((10.0, 10.0, 5.0, 5.0), [[2.0, 2.0, 0.0, 0.0], [5.0, 5.0, 5 * math.log(2), 5 * math.log(2)]]),
        ((8.0, 8.0, 4.0, 4.0), [[1.6, 1.6, 0.0, 0.0], [4.0, 4.0, 4 * math.log(2), 4 * math.log(2)]]),
    ],
)
def test_box_coder_encodes_with_the_weights_and_decodes_back(weights, expected):
    """Proposal [0, 0, 10, 20] (centre 5, 10): a GT moved by (2, 4) has (dx, dy) = (0.2, 0.2) x weights;
    a GT twice the size with centre (10, 20) has (0.5, 0.5, log 2, log 2) x weights."""
    head = make_head(box_weights=weights)
    proposals = torch.tensor([[0.0, 0.0, 10.0, 20.0]] * 2)
    gt = torch.tensor([[2.0, 4.0, 12.0, 24.0], [0.0, 0.0, 20.0, 40.0]])
    deltas = head.box_coder.encode_single(gt, proposals)
    torch.testing.assert_close(deltas, torch.tensor(expected))
    torch.testing.assert_close(head.box_coder.decode_single(deltas, proposals), gt, atol=1e-4, rtol=0)


def test_box_coder_round_trip_on_random_boxes():
    """Decoding the encoded GT boxes gives the GT boxes back, for both weightings."""
    torch.manual_seed(0)
    corners = torch.rand(50, 2) * 200
    proposals = torch.cat([corners, corners + 5 + torch.rand(50, 2) * 100], dim=1)
    gt = proposals + torch.randn(50, 4) * 3
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 2)
    for weights in [(10.0, 10.0, 5.0, 5.0), (8.0, 8.0, 4.0, 4.0)]:
        coder = make_head(box_weights=weights).box_coder
        decoded = coder.decode_single(coder.encode_single(gt, proposals), proposals)
        torch.testing.assert_close(decoded, gt, atol=1e-3, rtol=0)


# --- losses --------------------------------------------------------------------------------------


def smooth_l1(d: float, beta: float) -> float:
    return 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta


def cross_entropy(logits: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def test_roi_losses_match_hand_computed_values():
    """3 RoIs, K = 3: background, class 2, class 1. Only each foreground RoI's own class deltas count."""
    beta = 0.1
    logits = [[0.0, 0.0, 0.0], [1.0, 0.0, 2.0], [-1.0, 3.0, 0.5]]
    labels = torch.tensor([0, 2, 1])
    targets = torch.tensor([[9.0, 9.0, 9.0, 9.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    deltas = torch.full((3, 12), 1000.0)  # every other class / RoI: huge, must not count
    deltas[1, 8:12] = torch.tensor([0.05, -0.5, 0.0, 2.0])  # RoI 1, class 2
    deltas[2, 4:8] = torch.tensor([0.1, -1.0, 0.02, 0.0])  # RoI 2, class 1
    losses = roi_losses(torch.tensor(logits), deltas, labels, targets, beta)

    expected_cls = sum(cross_entropy(row, label) for row, label in zip(logits, [0, 2, 1], strict=True)) / 3
    expected_reg = sum(smooth_l1(d, beta) for d in [0.05, -0.5, 0.0, 2.0, 0.1, -1.0, 0.02, 0.0]) / 3
    assert expected_reg == pytest.approx((0.0125 + 0.45 + 1.95 + 0.05 + 0.95 + 0.002) / 3)
    assert losses["roi_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["roi_reg"].item() == pytest.approx(expected_reg, rel=1e-5)


def test_roi_losses_smooth_l1_beta_moves_the_quadratic_zone():
    """A delta error of 0.5 costs 0.5 * 0.5^2 / beta below beta, 0.5 - beta / 2 above."""
    labels = torch.tensor([1])
    deltas = torch.zeros(1, 8)
    deltas[0, 4] = 0.5
    for beta, expected in [(1.0, 0.125), (1 / 9, 0.5 - 1 / 18)]:
        loss = roi_losses(torch.zeros(1, 2), deltas, labels, torch.zeros(1, 4), beta)["roi_reg"]
        assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_roi_losses_without_rois_are_zero_and_still_backprop():
    """No sampled RoIs: zero losses that are still part of the graph."""
    class_logits = torch.zeros((0, 3), requires_grad=True)
    box_deltas = torch.zeros((0, 12), requires_grad=True)
    losses = roi_losses(class_logits, box_deltas, torch.zeros(0, dtype=torch.long), torch.zeros((0, 4)), 1 / 9)
    assert losses["roi_cls"].item() == 0.0 and losses["roi_reg"].item() == 0.0
    assert losses["roi_cls"].requires_grad
    (losses["roi_cls"] + losses["roi_reg"]).backward()
    assert class_logits.grad is not None and class_logits.grad.shape == (0, 3)


def test_rpn_losses_match_hand_computed_values():
    """Sampled: anchors 0 (pos), 1 (neg), 3 (pos), 5 (neg). Anchor 2 is ignored and anchor 4 a positive
    left out of the sample: neither counts. Regression is summed over sampled positives / 4 sampled."""
    beta = 1 / 9
    objectness = torch.tensor([2.0, -1.0, 50.0, 0.5, -50.0, 0.0])
    labels = torch.tensor([1.0, 0.0, -1.0, 1.0, 1.0, 0.0])
    sampled = torch.tensor([True, True, False, True, False, True])
    targets = torch.zeros(6, 4)
    deltas = torch.full((6, 4), 100.0)
    deltas[0] = torch.tensor([0.05, 0.0, -0.3, 1.0])
    deltas[3] = torch.tensor([0.0, 0.0, 0.0, -0.1])
    losses = rpn_losses(objectness, deltas, labels, targets, sampled, beta)

    def bce(logit: float, label: float) -> float:
        p = 1 / (1 + math.exp(-logit))
        return -(label * math.log(p) + (1 - label) * math.log(1 - p))

    expected_cls = (bce(2.0, 1) + bce(-1.0, 0) + bce(0.5, 1) + bce(0.0, 0)) / 4
    expected_reg = sum(smooth_l1(d, beta) for d in [0.05, 0.0, -0.3, 1.0, 0.0, 0.0, 0.0, -0.1]) / 4
    assert losses["rpn_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["rpn_reg"].item() == pytest.approx(expected_reg, rel=1e-5)


def test_weighted_total_sums_the_parts_present_times_their_weights():
    """2 * 1.5 + 4 * 0.25; the weights of absent parts are unused."""
    losses = {"rpn_cls": torch.tensor(1.5), "roi_reg": torch.tensor(0.25)}
    weights = LossWeights(rpn_cls=2.0, rpn_reg=7.0, roi_cls=7.0, roi_reg=4.0)
    assert weighted_total(losses, weights).item() == pytest.approx(4.0)


# --- post-processing -----------------------------------------------------------------------------


def logits_of(probabilities: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is the given rows (each sums to 1)."""
    return torch.tensor(probabilities).log()


def test_postprocess_drops_background_thresholds_nms_per_class_and_keeps_top_detections():
    """K = 3 (background + 2). Per (RoI, class): scores above 0.3 survive, class 1 of RoI 1 is suppressed by
    RoI 0 (IoU 0.75), RoI 3 keeps both classes, the zero-width RoI 5 goes, RoI 4 is clipped to the image."""
    head = make_head(num_classes=3, score_thresh=0.3, nms_iou=0.5, detections_per_image=10)
    proposals = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],
        [0.0, 0.0, 10.0, 11.0],
        [50.0, 50.0, 60.0, 60.0],
        [20.0, 20.0, 30.0, 30.0],
        [100.0, 100.0, 120.0, 130.0],
        [5.0, 5.0, 5.0, 20.0],
    ])
    probabilities = [
        [0.1, 0.85, 0.05],
        [0.07, 0.6, 0.33],
        [0.7, 0.1, 0.2],  # background wins; nothing above 0.3
        [0.2, 0.45, 0.35],
        [0.05, 0.9, 0.05],
        [0.005, 0.99, 0.005],
    ]
    deltas = torch.zeros(6, 12)
    deltas[0, 4] = 1.0  # RoI 0, class 1: dx = 1 / 10 of its width -> moved right by 1 px
    (detections,) = head.postprocess(logits_of(probabilities), deltas, [proposals], [(110, 115)])

    assert detections["labels"].tolist() == [1, 1, 1, 2, 2]
    torch.testing.assert_close(detections["scores"], torch.tensor([0.9, 0.85, 0.45, 0.35, 0.33]))
    torch.testing.assert_close(detections["boxes"], torch.tensor([
        [100.0, 100.0, 115.0, 110.0],
        [1.0, 0.0, 11.0, 10.0],
        [20.0, 20.0, 30.0, 30.0],
        [20.0, 20.0, 30.0, 30.0],
        [0.0, 0.0, 10.0, 11.0],
    ]))

    head.detections_per_image = 3
    (top,) = head.postprocess(logits_of(probabilities), deltas, [proposals], [(110, 115)])
    torch.testing.assert_close(top["scores"], torch.tensor([0.9, 0.85, 0.45]))


def test_postprocess_splits_rois_by_image_and_clips_to_each_image():
    """RoIs are split by image (one image has none) and clipped to that image's size."""
    head = make_head(num_classes=2, score_thresh=0.05)
    box = torch.tensor([[10.0, 10.0, 90.0, 90.0]])
    proposals = [box, torch.zeros((0, 4)), box.clone()]
    logits = logits_of([[0.2, 0.8], [0.4, 0.6]])
    detections = head.postprocess(logits, torch.zeros(2, 8), proposals, [(100, 100), (50, 50), (40, 60)])
    assert [len(d["boxes"]) for d in detections] == [1, 0, 1]
    torch.testing.assert_close(detections[0]["scores"], torch.tensor([0.8]))
    torch.testing.assert_close(detections[2]["scores"], torch.tensor([0.6]))
    assert detections[2]["boxes"].tolist() == [[10.0, 10.0, 60.0, 40.0]]
    assert detections[1]["boxes"].shape == (0, 4)


def test_roi_head_inference_forward_returns_detections_per_image():
    """Without targets the head returns detections per image and no losses."""
    torch.manual_seed(0)
    head = make_head(num_classes=3, score_thresh=0.0).eval()
    proposals = [far_boxes(4), far_boxes(2)]
    detections, losses, stats = head({"c4": torch.rand(2, 2, 16, 16)}, proposals, [(256, 256), (256, 256)])
    assert losses == {} and stats == {}
    assert [len(d["scores"]) for d in detections] == [8, 4]  # every RoI x 2 object classes, no overlaps
    assert all(set(d["labels"].tolist()) == {1, 2} for d in detections)


def test_training_stats_count_the_units_silent_on_every_roi():
    """``head_silent``: the share of the tail's output units at or below 0 on all sampled RoIs; the flatten tail
    passes the pooled features through, so channel 1 set to 0 silences its 4 of the 8 units."""
    torch.manual_seed(0)
    head = make_head(num_classes=4, num_rois=8)
    features = torch.rand(1, 2, 16, 16) + 0.1
    features[:, 1] = 0.0
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 64.0, 64.0]]), "labels": torch.tensor([1])}]
    _, losses, stats = head({"c4": features}, [strip([64.0, 40.0, 20.0]) * 6.4], [(256, 256)], targets)
    assert stats["head_silent"].item() == 0.5
    features[:, 1] = -1.0  # negative outputs are silent too (a ReLU would zero them)
    features[:, 0] = 0.0
    assert head({"c4": features}, [strip([64.0, 40.0])], [(256, 256)], targets)[2]["head_silent"].item() == 1.0


# --- class prior ---------------------------------------------------------------------------------


def test_class_prior_starts_the_head_at_background_one_minus_pi():
    """class_prior=0.01 with K=2 object classes: background's bias 0, the bias's softmax [0.99, 0.005, 0.005]; the
    weights start tiny, so the head gives random pooled RoIs a mean background probability of about 0.99."""
    torch.manual_seed(0)
    head = make_head(num_classes=3, class_prior=0.01)
    bias = head.predictor.cls_score.bias.detach()
    assert bias[0] == 0
    torch.testing.assert_close(torch.softmax(bias, dim=0), torch.tensor([0.99, 0.005, 0.005]))
    pooled = torch.randn(256, 2, 2, 2) * 10  # (R, C, P, P); 8 features of scale 10: the logit spread of ~800 of scale 1
    class_logits, _ = head.predictor(head.tail(pooled))
    assert abs(torch.softmax(class_logits, dim=1)[:, 0].mean().item() - 0.99) < 0.02


def test_without_class_prior_the_class_bias_starts_at_zero():
    assert RoIHeadConfig().class_prior is None
    assert make_head(num_classes=3).predictor.cls_score.bias.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("class_prior", [0, 1, -0.1, "high"])
def test_a_class_prior_outside_zero_to_one_is_refused_naming_the_key(class_prior):
    with pytest.raises(ConfigError, match=r"roi_head\.class_prior=.* must be null or in \(0, 1\)"):
        RoIHeadConfig(class_prior=class_prior)
