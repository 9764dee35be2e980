"""Tests for the Region Proposal Network: anchor labels, sampling, proposal filtering and statistics.

Boxes are built by hand so every IoU is known exactly: against the GT box [0, 0, 10, 10], an anchor
[0, 0, 10, h] (h <= 10) has IoU h / 10.
"""

import math

import pytest
import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from frcnn_lab.model.rpn import RegionProposalNetwork, RPNConfig, assign_anchor_labels, proposal_stats

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0]])


def strip(heights: list[float]) -> torch.Tensor:
    """Anchors [0, 0, 10, h]: IoU h / 10 with GT."""
    return torch.tensor([[0.0, 0.0, 10.0, h] for h in heights])


def grid_anchors(rows: int = 10, cols: int = 10, side: float = 10.0) -> torch.Tensor:
    """Non-overlapping side x side anchors tiling a grid, row-major: the IoU of two of them is 0 or 1."""
    ys, xs = torch.meshgrid(torch.arange(rows) * side, torch.arange(cols) * side, indexing="ij")
    corners = torch.stack([xs.flatten(), ys.flatten()], dim=1).float()
    return torch.cat([corners, corners + side], dim=1)


def make_rpn(**kwargs) -> RegionProposalNetwork:
    return RegionProposalNetwork(in_channels=4, config=RPNConfig(anchor_sizes=((32,),), aspect_ratios=(1.0,), **kwargs))


# --- anchor labels -------------------------------------------------------------------------------


def test_anchor_labels_at_the_threshold_boundaries():
    """IoU == fg_iou is foreground, IoU == bg_iou is ignored, just below bg_iou is background."""
    anchors = torch.cat([strip([10.0, 7.0, 5.0, 3.0, 2.9]), torch.tensor([[50.0, 50.0, 60.0, 60.0]])])
    labels, matched = assign_anchor_labels(anchors, GT, fg_iou=0.7, bg_iou=0.3)
    # IoU:                          1.0  0.7  0.5   0.3   0.29  0.0
    assert labels.tolist() == [1.0, 1.0, -1.0, -1.0, 0.0, 0.0]
    assert labels.dtype == torch.float32
    assert matched.tolist() == [0] * 6


def test_best_anchor_of_each_gt_is_foreground_even_below_fg_iou():
    """A GT box whose best anchor has IoU 0.4 < fg_iou still gets that anchor (and ties) as positives."""
    gt = torch.cat([GT, torch.tensor([[100.0, 0.0, 110.0, 10.0]])])
    anchors = torch.cat([
        strip([4.0, 2.0]),  # IoU 0.4 and 0.2 with GT 0
        # IoU 0.6, 0.6, 0.5 with GT 1
        torch.tensor([[100.0, 0.0, 110.0, 6.0], [100.0, 4.0, 110.0, 10.0], [100.0, 0.0, 110.0, 5.0]]),
    ])
    labels, matched = assign_anchor_labels(anchors, gt, fg_iou=0.7, bg_iou=0.3)
    assert labels.tolist() == [1.0, 0.0, 1.0, 1.0, -1.0]
    assert matched.tolist() == [0, 0, 1, 1, 1]


def test_gt_touching_no_anchor_does_not_make_zero_iou_anchors_positive():
    """A GT box with IoU 0 to every anchor has no best anchor: all anchors stay background."""
    anchors = grid_anchors(2, 2)
    far_gt = torch.tensor([[500.0, 500.0, 520.0, 520.0]])
    labels, _ = assign_anchor_labels(anchors, far_gt, fg_iou=0.7, bg_iou=0.3)
    assert labels.tolist() == [0.0] * 4

    both = torch.cat([torch.tensor([[0.0, 0.0, 10.0, 10.0]]), far_gt])  # the first GT equals anchor 0
    labels, matched = assign_anchor_labels(anchors, both, fg_iou=0.7, bg_iou=0.3)
    assert labels.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert matched[0].item() == 0


def test_image_without_gt_labels_every_anchor_background():
    """No GT boxes: every anchor is a negative."""
    anchors = grid_anchors(3, 4)
    labels, matched = assign_anchor_labels(anchors, torch.zeros((0, 4)), fg_iou=0.7, bg_iou=0.3)
    assert labels.tolist() == [0.0] * 12
    assert matched.shape == (12,) and matched.dtype == torch.long


# --- sampling ------------------------------------------------------------------------------------


def test_targets_sample_batch_size_per_image_with_at_most_positive_fraction_foreground():
    """16 anchors per image, at most 4 (0.25) positive; the rest negatives, when there are enough."""
    torch.manual_seed(0)
    anchors = grid_anchors()  # 100 anchors
    rpn = make_rpn(batch_size_per_image=16, positive_fraction=0.25)
    gt_boxes = [anchors[:10].clone(), anchors[[20, 55]].clone(), torch.zeros((0, 4))]  # 10, 2, 0 positives
    labels, target_deltas, sampled, stats = rpn.targets(anchors, gt_boxes)

    assert labels.shape == (300,) and target_deltas.shape == (300, 4) and sampled.shape == (300,)
    positive = (sampled & (labels == 1)).reshape(3, 100).sum(dim=1)
    negative = (sampled & (labels == 0)).reshape(3, 100).sum(dim=1)
    assert positive.tolist() == [4, 2, 0]
    assert negative.tolist() == [12, 14, 16]
    assert stats["rpn_pos_anchors"].item() == pytest.approx(2.0)
    assert stats["rpn_neg_anchors"].item() == pytest.approx(14.0)
    # positives regress onto the GT box they match exactly: zero deltas
    assert torch.equal(target_deltas[sampled & (labels == 1)], torch.zeros(6, 4))


def test_targets_never_sample_ignored_anchors_even_when_short_of_negatives():
    """1 positive, 1 ignored, 4 negatives and a batch of 16: the batch is 5, without the ignored anchor."""
    anchors = grid_anchors(1, 6)
    gt = torch.tensor([[0.0, 0.0, 18.0, 10.0]])  # IoU 0.56 with anchor 0 (its best), 0.4 with anchor 1
    rpn = make_rpn(batch_size_per_image=16, positive_fraction=0.5)
    labels, target_deltas, sampled, _ = rpn.targets(anchors, [gt])
    assert labels.tolist() == [1.0, -1.0, 0.0, 0.0, 0.0, 0.0]
    assert sampled.tolist() == [True, False, True, True, True, True]
    decoded = rpn.box_coder.decode_single(target_deltas[:1], anchors[:1])
    torch.testing.assert_close(decoded, gt)


# --- proposal filtering --------------------------------------------------------------------------


def filter_one(rpn: RegionProposalNetwork, boxes: list[list[float]], logits: list[float], size=(100, 100)):
    proposals, scores = rpn.filter_proposals(torch.tensor([boxes]), torch.tensor([logits]), [size], [len(boxes)])
    return proposals[0], scores[0]


OVERLAPPING = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 9.0, 10.0], [50.0, 50.0, 60.0, 60.0]]
"""The second and third box overlap the first at IoU 0.9; the fourth is apart."""


@pytest.mark.parametrize("pre_nms_top_n,expected", [(3, [0]), (4, [0, 3])])
def test_filter_proposals_applies_pre_nms_top_n_before_nms(pre_nms_top_n, expected):
    """Only the pre_nms_top_n highest logits reach NMS: with 3, the separate 4th box is never considered."""
    rpn = make_rpn(pre_nms_top_n_test=pre_nms_top_n, post_nms_top_n_test=10, nms_iou=0.7).eval()
    proposals, scores = filter_one(rpn, OVERLAPPING, [4.0, 3.0, 2.0, 1.0])
    assert torch.equal(proposals, torch.tensor([OVERLAPPING[i] for i in expected]))
    torch.testing.assert_close(scores, torch.tensor([4.0, 3.0, 2.0, 1.0])[expected].sigmoid())


def test_filter_proposals_keeps_post_nms_top_n_highest_scoring():
    """After NMS only the post_nms_top_n highest objectness boxes stay, in score order."""
    boxes = grid_anchors(1, 5).tolist()
    rpn = make_rpn(pre_nms_top_n_test=5, post_nms_top_n_test=2).eval()
    proposals, scores = filter_one(rpn, boxes, [0.1, 0.9, 0.3, 0.7, 0.5])
    assert torch.equal(proposals, torch.tensor([boxes[1], boxes[3]]))
    assert torch.all(scores[:-1] >= scores[1:])


def test_filter_proposals_uses_train_top_n_in_training_mode():
    """train() switches to the *_train top-N values, eval() to the *_test ones."""
    boxes = grid_anchors(1, 5).tolist()
    rpn = make_rpn(pre_nms_top_n_train=5, post_nms_top_n_train=4, pre_nms_top_n_test=5, post_nms_top_n_test=1)
    assert len(filter_one(rpn.train(), boxes, [0.0] * 5)[0]) == 4
    assert len(filter_one(rpn.eval(), boxes, [0.0] * 5)[0]) == 1


def test_filter_proposals_drops_boxes_below_min_size_after_clipping():
    """A thin box and a box left of the image (zero width once clipped) go, however high their score."""
    boxes = [[0.0, 0.0, 0.5, 10.0], [-20.0, 0.0, -5.0, 10.0], [20.0, 20.0, 21.5, 21.5]]
    rpn = make_rpn(min_size=1.0, pre_nms_top_n_test=10, post_nms_top_n_test=10).eval()
    proposals, _ = filter_one(rpn, boxes, [5.0, 4.0, 0.0])
    assert torch.equal(proposals, torch.tensor([boxes[2]]))


def test_filter_proposals_score_threshold_is_on_the_probability_inclusive():
    """score_thresh compares sigmoid(logit), keeping a probability equal to it."""
    boxes = grid_anchors(1, 3).tolist()
    rpn = make_rpn(score_thresh=0.5, pre_nms_top_n_test=10, post_nms_top_n_test=10).eval()
    proposals, scores = filter_one(rpn, boxes, [2.0, 0.0, -0.01])  # probabilities 0.88, 0.5, 0.4975
    assert torch.equal(proposals, torch.tensor(boxes[:2]))
    assert scores.tolist() == pytest.approx([1 / (1 + math.exp(-2.0)), 0.5])


def test_filter_proposals_clips_to_each_images_own_size():
    """Image 0 is 40 high and 30 wide, image 1 is 20 x 50: the same box clips differently."""
    rpn = make_rpn(pre_nms_top_n_test=10, post_nms_top_n_test=10).eval()
    boxes = torch.tensor([[[-5.0, -5.0, 35.0, 25.0]]]).repeat(2, 1, 1)
    proposals, _ = rpn.filter_proposals(boxes, torch.zeros(2, 1), [(40, 30), (20, 50)], [1])
    assert proposals[0].tolist() == [[0.0, 0.0, 30.0, 25.0]]
    assert proposals[1].tolist() == [[0.0, 0.0, 35.0, 20.0]]


# --- statistics ----------------------------------------------------------------------------------


def test_proposal_stats_counts_overlapping_proposals_and_recall():
    """Per image: proposals at IoU >= 0.5 to some GT box, and GT boxes covered; empty-GT images skipped."""
    proposals = [
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 6.0], [0.0, 0.0, 10.0, 4.0], [50.0, 50.0, 60.0, 60.0]]),
        torch.tensor([[0.0, 0.0, 10.0, 5.0]]),  # IoU exactly 0.5
        torch.tensor([[0.0, 0.0, 10.0, 10.0]]),  # image without GT: not counted
        torch.zeros((0, 4)),  # image with GT but no proposals
    ]
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), GT, torch.zeros((0, 4)), GT]
    stats = proposal_stats(proposals, gt)
    # overlapping: 2, 1, 0 -> mean 1; covered GT boxes: 1 + 1 + 0 of 2 + 1 + 1
    assert stats["rpn_overlapping_proposals"].item() == pytest.approx(1.0)
    assert stats["rpn_recall"].item() == pytest.approx(0.5)


def test_proposal_stats_are_empty_without_any_gt():
    """Without any GT box there is no recall to report."""
    assert proposal_stats([torch.tensor([[0.0, 0.0, 5.0, 5.0]])], [torch.zeros((0, 4))]) == {}


# --- the whole RPN on a user feature map ---------------------------------------------------------


def images_160x192() -> ImageList:
    """Two images padded to 160 x 192; the second is 150 x 170."""
    return ImageList(torch.zeros(2, 3, 160, 192), [(160, 192), (150, 170)])


def test_rpn_on_an_arbitrary_feature_map_returns_proposals_inside_each_image():
    """A 7-channel 10 x 12 map: per image, at most post_nms_top_n proposals, sorted, inside that image."""
    torch.manual_seed(0)
    rpn = RegionProposalNetwork(in_channels=7, config=RPNConfig(anchor_sizes=((32, 64),), aspect_ratios=(0.5, 1.0, 2.0),
        pre_nms_top_n_test=200, post_nms_top_n_test=50)).eval()
    images = images_160x192()
    with torch.no_grad():
        proposals, scores, losses, stats = rpn(images, {"c4": torch.randn(2, 7, 10, 12)})
    assert losses == {} and stats == {}
    assert len(proposals) == len(scores) == 2
    for boxes, image_scores, (height, width) in zip(proposals, scores, images.image_sizes, strict=True):
        assert boxes.ndim == 2 and boxes.shape[1] == 4 and 10 <= len(boxes) <= 50
        assert image_scores.shape == (len(boxes),)
        assert torch.all((image_scores >= 0) & (image_scores <= 1)) and torch.all(image_scores[:-1] >= image_scores[1:])
        assert torch.all(boxes[:, 0] >= 0) and torch.all(boxes[:, 1] >= 0)
        assert torch.all(boxes[:, 2] <= width) and torch.all(boxes[:, 3] <= height)
        assert torch.all(boxes[:, 2] > boxes[:, 0]) and torch.all(boxes[:, 3] > boxes[:, 1])


class FixedHead(nn.Module):
    """Stands in for RPNHead: returns the given objectness and deltas whatever the features."""

    def __init__(self, objectness: torch.Tensor, deltas: torch.Tensor) -> None:
        super().__init__()
        self.objectness, self.deltas = objectness, deltas

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.objectness, self.deltas


def test_objectness_and_deltas_at_a_location_apply_to_that_locations_anchor():
    """A logit peak at (anchor 2, row 3, col 5) and dx = 0.5 there give the top proposal: that anchor moved right.

    Anchors are ratio-major then size: anchor 2 of sizes (32, 64) x ratios (0.5, 1, 2) is the 32 x 32 square;
    at stride 16 its centre at (row 3, col 5) is (x, y) = (80, 48).
    """
    rpn = RegionProposalNetwork(in_channels=7, config=RPNConfig(anchor_sizes=((32, 64),), aspect_ratios=(0.5, 1.0, 2.0),
        pre_nms_top_n_test=1000, post_nms_top_n_test=5)).eval()
    objectness = torch.zeros(2, 6, 10, 12)
    objectness[:, 2, 3, 5] = 5.0
    deltas = torch.zeros(2, 24, 10, 12)
    deltas[:, 4 * 2 + 0, 3, 5] = 0.5  # dx of anchor 2, in anchor widths
    rpn.head = FixedHead(objectness, deltas)
    proposals, scores, _, _ = rpn(images_160x192(), {"c4": torch.zeros(2, 7, 10, 12)})
    for boxes, image_scores in zip(proposals, scores, strict=True):
        assert boxes[0].tolist() == [80.0, 32.0, 112.0, 64.0]
        assert image_scores[0].item() == pytest.approx(1 / (1 + math.exp(-5.0)))


def test_rpn_training_forward_gives_losses_that_reach_the_head():
    """With targets: both losses, gradients in the head's output layers, and the sampling / recall stats."""
    torch.manual_seed(0)
    rpn = RegionProposalNetwork(
        in_channels=7, config=RPNConfig(anchor_sizes=((32, 64),), aspect_ratios=(1.0,), batch_size_per_image=32)
    )
    rpn.train()
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 70.0, 90.0]])}, {"boxes": torch.zeros((0, 4))}]
    _, _, losses, stats = rpn(images_160x192(), {"c4": torch.randn(2, 7, 10, 12)}, targets)
    assert set(losses) == {"rpn_cls", "rpn_reg"}
    assert losses["rpn_cls"].item() == pytest.approx(math.log(2), abs=0.05)  # logits near 0 at init
    assert losses["rpn_reg"].item() > 0
    (losses["rpn_cls"] + losses["rpn_reg"]).backward()
    assert rpn.head.bbox_pred.weight.grad.abs().sum() > 0 and rpn.head.cls_logits.weight.grad.abs().sum() > 0
    assert stats["rpn_pos_anchors"].item() >= 0.5  # the GT box's best anchor, in 1 of 2 images
    assert set(stats) >= {"rpn_neg_anchors", "rpn_recall", "rpn_overlapping_proposals"}


# --- several feature levels (FPN) -----------------------------------------------------------------


class PeakPerLevel(nn.Module):
    """Stands in for RPNHead on two levels: an objectness peak at one location of each level, told apart
    by the level's width."""

    def __init__(self, peaks: dict[int, tuple[int, int, float]]) -> None:
        super().__init__()
        self.peaks = peaks  # level width -> (row, col, logit)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        objectness = torch.full((features.shape[0], 1, *features.shape[-2:]), -5.0)
        row, col, logit = self.peaks[features.shape[-1]]
        objectness[:, 0, row, col] = logit
        return objectness, torch.zeros(features.shape[0], 4, *features.shape[-2:])


def test_each_level_has_its_own_anchor_sizes_at_its_own_stride():
    """Level "0" (20 x 24 on a 160 x 192 image: stride 8) has 16 px anchors, level "1" (stride 16) 32 px ones.
    A peak at (row 2, col 4) of level 0 is the 16 px box centred at (32, 16); a peak at (row 3, col 5) of
    level 1 the 32 px box centred at (80, 48)."""
    rpn = RegionProposalNetwork(in_channels=3, config=RPNConfig(
        anchor_sizes=((16,), (32,)), aspect_ratios=(1.0,), pre_nms_top_n_test=10, post_nms_top_n_test=2,
    )).eval()
    rpn.head = PeakPerLevel({24: (2, 4, 4.0), 12: (3, 5, 3.0)})
    features = {"0": torch.zeros(2, 3, 20, 24), "1": torch.zeros(2, 3, 10, 12)}
    proposals, scores, _, _ = rpn(images_160x192(), features)
    for boxes in proposals:
        assert boxes.tolist() == [[24.0, 8.0, 40.0, 24.0], [64.0, 32.0, 96.0, 64.0]]
    anchors = rpn.anchor_generator(images_160x192(), list(features.values()))[0]
    assert len(anchors) == 20 * 24 + 10 * 12
    assert set((anchors[:, 2] - anchors[:, 0]).tolist()) == {16.0, 32.0}


def test_filtering_over_levels_matches_torchvisions_rpn():
    """Top-N per level, NMS within each level, top-N overall: the same boxes and scores as torchvision's
    RegionProposalNetwork.filter_proposals on random boxes of three levels."""
    from torchvision.models.detection.rpn import RegionProposalNetwork as TorchvisionRPN

    torch.manual_seed(0)
    per_level = [300, 120, 40]
    corners = torch.rand(2, sum(per_level), 2) * 150
    boxes = torch.cat([corners, corners + 5 + torch.rand(2, sum(per_level), 2) * 60], dim=2)
    logits = torch.randn(2, sum(per_level))
    settings = {"pre_nms_top_n_test": 50, "post_nms_top_n_test": 60, "nms_iou": 0.5, "score_thresh": 0.2}
    ours = make_rpn(**settings).eval()
    theirs = TorchvisionRPN(
        ours.anchor_generator, ours.head, 0.7, 0.3, 256, 0.5, pre_nms_top_n={"training": 1, "testing": 50},
        post_nms_top_n={"training": 1, "testing": 60}, nms_thresh=0.5, score_thresh=0.2,
    ).eval()
    sizes = [(160, 180), (150, 200)]
    our_boxes, our_scores = ours.filter_proposals(boxes, logits, sizes, per_level)
    their_boxes, their_scores = theirs.filter_proposals(boxes, logits, sizes, per_level)
    for ob, tb, os_, ts in zip(our_boxes, their_boxes, our_scores, their_scores, strict=True):
        assert 20 < len(ob) <= 60
        torch.testing.assert_close(ob, tb)
        torch.testing.assert_close(os_, ts)


def test_boxes_of_different_levels_do_not_suppress_each_other():
    """The same box in two levels survives NMS twice; within one level the lower-scoring copy goes."""
    rpn = make_rpn(pre_nms_top_n_test=10, post_nms_top_n_test=10, nms_iou=0.5).eval()
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]] * 3])
    proposals, scores = rpn.filter_proposals(boxes, torch.tensor([[3.0, 2.0, 1.0]]), [(50, 50)], [2, 1])
    assert len(proposals[0]) == 2
    torch.testing.assert_close(scores[0], torch.tensor([3.0, 1.0]).sigmoid())


def test_levels_and_anchor_sizes_must_agree():
    """Features with more levels than anchor sizes, or levels with different numbers of sizes, are refused."""
    rpn = make_rpn().eval()
    with pytest.raises(ValueError, match="anchor sizes for 1 level"):
        rpn(images_160x192(), {"0": torch.zeros(2, 4, 20, 24), "1": torch.zeros(2, 4, 10, 12)})
    with pytest.raises(ValueError, match="same number"):
        RegionProposalNetwork(in_channels=4, config=RPNConfig(anchor_sizes=((16, 32), (64,))))
