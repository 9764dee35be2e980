"""Tests for RoIPooler's three ops on small hand-made feature maps, and the level each box is pooled from.

Feature value at (row, col) is either ``8 * row + col`` (a linear ramp: bilinear sampling of it is exact
at any point) or a fixed permutation of 0..63 (so an average or a max identifies the cells it read).
"""

import pytest
import torch
import torchvision

from frcnn_lab.model.roi_pooling import POOLERS, RoIPooler, crop_and_resize, roi_align_cpu


def ramp(height: int = 8, width: int = 8) -> torch.Tensor:
    """(1, 1, h, w) with value 8 * row + col."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (8 * rows + cols).float()[None, None]


def shuffled(height: int = 8, width: int = 8) -> torch.Tensor:
    """(1, 1, h, w) holding a fixed permutation of 0 .. h*w - 1."""
    generator = torch.Generator().manual_seed(0)
    return torch.randperm(height * width, generator=generator).float().reshape(1, 1, height, width)


def pool(op: str, features: torch.Tensor, box: list[float], output_size: int = 2, spatial_scale: float = 1.0, **kwargs):
    """The (P, P) output of one box on a one-channel map."""
    pooler = RoIPooler(op, output_size=output_size, strides={"c4": 1 / spatial_scale}, **kwargs)
    return pooler({"c4": features}, [torch.tensor([box])])[0, 0]


# --- roi_pool: quantisation ----------------------------------------------------------------------


def test_roi_pool_rounds_fractional_corners_to_the_grid():
    """[1.4, 1.6, 5.6, 6.4] rounds to cells x 1..6, y 2..6 (ends inclusive); 2 x 2 bins of 3 columns and
    rows {2, 3, 4}, {4, 5, 6} (bin height 2.5: floor / ceil). Each output is the max of its bin."""
    features = shuffled()
    grid = features[0, 0]
    expected = torch.tensor([
        [grid[2:5, 1:4].max(), grid[2:5, 4:7].max()],
        [grid[4:7, 1:4].max(), grid[4:7, 4:7].max()],
    ])
    fractional = pool("roi_pool", features, [1.4, 1.6, 5.6, 6.4])
    assert torch.equal(fractional, expected)
    assert torch.equal(fractional, pool("roi_pool", features, [1.0, 2.0, 6.0, 6.0]))


def test_roi_pool_on_the_ramp_takes_each_bins_bottom_right_cell():
    """On the ramp the max of a bin is its bottom-right cell: 8 * 4 + 3, 8 * 4 + 6, 8 * 6 + 3, 8 * 6 + 6."""
    assert pool("roi_pool", ramp(), [1.4, 1.6, 5.6, 6.4]).tolist() == [[35.0, 38.0], [51.0, 54.0]]


def test_roi_pool_and_roi_align_differ_on_a_fractional_box():
    """roi_align samples the exact box; roi_pool reads the rounded one."""
    box = [1.4, 1.6, 5.6, 6.4]
    assert not torch.allclose(pool("roi_pool", ramp(), box), pool("roi_align", ramp(), box), atol=0.5)


# --- roi_align: bilinear averages ----------------------------------------------------------------


def test_roi_align_aligned_on_whole_cells_averages_exactly_those_cells():
    """aligned=True maps pixel box [2, 6) to cells 2..5: with 2 samples per bin side each sample sits on a
    cell centre, so every bin is the plain mean of its 2 x 2 cells."""
    features = shuffled()
    grid = features[0, 0]
    expected = torch.tensor([
        [grid[2:4, 2:4].mean(), grid[2:4, 4:6].mean()],
        [grid[4:6, 2:4].mean(), grid[4:6, 4:6].mean()],
    ])
    out = pool("roi_align", features, [2.0, 2.0, 6.0, 6.0], sampling_ratio=2, aligned=True)
    torch.testing.assert_close(out, expected)


def test_roi_align_unaligned_samples_half_a_cell_later():
    """aligned=False: the samples of bin (0, 0) sit at rows / cols 2.5 and 3.5, each the mean of 4 cells,
    so the bin weighs cells 2..4 by [1, 2, 1] x [1, 2, 1] / 16."""
    features = shuffled()
    grid = features[0, 0]
    weights = torch.tensor([1.0, 2.0, 1.0])
    weights = weights[:, None] * weights[None, :] / 16
    expected = torch.tensor([
        [(grid[2:5, 2:5] * weights).sum(), (grid[2:5, 4:7] * weights).sum()],
        [(grid[4:7, 2:5] * weights).sum(), (grid[4:7, 4:7] * weights).sum()],
    ])
    out = pool("roi_align", features, [2.0, 2.0, 6.0, 6.0], sampling_ratio=2, aligned=False)
    torch.testing.assert_close(out, expected)


def test_roi_align_on_the_ramp_is_the_ramp_at_each_bin_centre():
    """Bin centres of [1.4, 1.6, 5.6, 6.4] (2 x 2 bins, aligned=False): x 2.45, 4.55; y 2.8, 5.2."""
    out = pool("roi_align", ramp(), [1.4, 1.6, 5.6, 6.4], sampling_ratio=2, aligned=False)
    expected = torch.tensor([[8 * y + x for x in (2.45, 4.55)] for y in (2.8, 5.2)])
    torch.testing.assert_close(out, expected)


# --- crop_resize: edge-to-edge bilinear crop, then 2 x 2 max -------------------------------------


def test_crop_resize_samples_run_from_box_edge_to_box_edge():
    """A 5 x 5 map at stride 16 is a padded image of 80 px, and pixel u * 80 maps to cell u * 4, so pixel
    x is cell x / 20. Box [20, 0, 80, 60] with P = 2 is sampled at 4 x 4 points: x 20, 40, 60, 80 and
    y 0, 20, 40, 60 px, i.e. exactly on cells 1..4 and 0..3; the output is the 2 x 2 max of that crop."""
    features = shuffled(5, 5)
    crop = features[0, 0, 0:4, 1:5]
    expected = crop.reshape(2, 2, 2, 2).amax(dim=(1, 3))
    out = pool("crop_resize", features, [20.0, 0.0, 80.0, 60.0], spatial_scale=1 / 16)
    torch.testing.assert_close(out, expected)


def test_crop_resize_interpolates_bilinearly_between_cells():
    """8 x 8 ramp at stride 16 (a 128 px image): pixel x is cell x * 7 / 128. The 4 x 4 samples of box
    [16, 32, 112, 80] sit at x = 16 + 32 k px and y = 32 + 16 k px; the ramp makes each sample exact."""
    xs = [(16 + 32 * k) * 7 / 128 for k in range(4)]
    ys = [(32 + 16 * k) * 7 / 128 for k in range(4)]
    crop = torch.tensor([[8 * y + x for x in xs] for y in ys])
    out = crop_and_resize(ramp(), [torch.tensor([[16.0, 32.0, 112.0, 80.0]])], output_size=2, spatial_scale=1 / 16)
    assert out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out[0, 0], torch.nn.functional.max_pool2d(crop[None], 2)[0])
    torch.testing.assert_close(out[0, 0], crop[1::2, 1::2])  # the ramp grows right and down


def test_crop_resize_reads_zero_outside_the_feature_map():
    """A box wholly outside the map samples zero padding, not the border cells."""
    out = pool("crop_resize", ramp() + 1, [-200.0, -200.0, -100.0, -100.0], spatial_scale=1 / 16)
    assert torch.equal(out, torch.zeros(2, 2))


# --- spatial scale, batches, shapes --------------------------------------------------------------


@pytest.mark.parametrize("op", ["roi_pool", "roi_align"])
def test_boxes_are_in_image_pixels_scaled_by_spatial_scale(op):
    """A box in stride-16 pixels with spatial_scale 1/16 pools the same cells as the box in cells at scale 1."""
    box = [1.4, 1.6, 5.6, 6.4]
    in_pixels = pool(op, shuffled(), [16 * v for v in box], spatial_scale=1 / 16)
    torch.testing.assert_close(in_pixels, pool(op, shuffled(), box, spatial_scale=1.0))


def test_aligned_roi_align_at_stride_16_averages_the_cells_a_pixel_box_covers():
    """Pixel box [32, 32, 96, 96] at stride 16 covers cells 2..5 exactly."""
    features = shuffled()
    out = pool("roi_align", features, [32.0, 32.0, 96.0, 96.0], spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(out[0, 0], features[0, 0, 2:4, 2:4].mean())
    torch.testing.assert_close(out[1, 1], features[0, 0, 4:6, 4:6].mean())


@pytest.mark.parametrize("op", ["roi_pool", "roi_align", "crop_resize"])
def test_output_is_sum_of_boxes_by_channels_by_pool_size_in_image_order(op):
    """Images of all 1, 2 and 3 (3 channels) with 3, 0 and 2 boxes give (5, 3, 4, 4), image by image."""
    features = torch.cat([torch.ones(1, 3, 8, 8), torch.full((1, 3, 8, 8), 2.0), torch.full((1, 3, 8, 8), 3.0)])
    box = [16.0, 16.0, 96.0, 80.0]
    boxes = [torch.tensor([box] * 3), torch.zeros((0, 4)), torch.tensor([box] * 2)]
    out = RoIPooler(op, output_size=4, strides={"c4": 16})({"c4": features}, boxes)
    assert out.shape == (5, 3, 4, 4)
    torch.testing.assert_close(out[:3], torch.ones(3, 3, 4, 4))
    torch.testing.assert_close(out[3:], torch.full((2, 3, 4, 4), 3.0))


@pytest.mark.parametrize("op", ["roi_pool", "roi_align", "crop_resize"])
def test_no_boxes_at_all_gives_an_empty_batch(op):
    """Images without boxes give (0, C, P, P), not an error."""
    out = RoIPooler(op, 3, {"c4": 16})({"c4": torch.rand(2, 5, 8, 8)}, [torch.zeros((0, 4)), torch.zeros((0, 4))])
    assert out.shape == (0, 5, 3, 3)


def test_unknown_op_names_the_config_key():
    """A typo in the op name is reported against the config key."""
    with pytest.raises(ValueError, match=r"roi_head\.pooler"):
        RoIPooler("psroi_align", 7, {"c4": 16})


def test_roi_pool_and_roi_align_equal_torchvisions_ops():
    """roi_pool and roi_align give torchvision.ops' outputs with the pooler's settings."""
    torch.manual_seed(0)
    features = torch.rand(2, 4, 12, 16)
    corners = torch.rand(7, 2) * 150
    boxes = torch.cat([corners, corners + 10 + torch.rand(7, 2) * 100], dim=1)
    per_image = [boxes[:3], boxes[3:]]
    levels = {"c4": features}
    expected = torchvision.ops.roi_pool(features, per_image, 5, 1 / 16)
    torch.testing.assert_close(RoIPooler("roi_pool", 5, {"c4": 16})(levels, per_image), expected)
    for sampling_ratio, aligned in [(2, False), (0, True)]:
        torch.testing.assert_close(
            RoIPooler("roi_align", 5, {"c4": 16}, sampling_ratio, aligned)(levels, per_image),
            torchvision.ops.roi_align(features, per_image, 5, 1 / 16, sampling_ratio, aligned),
        )


def awkward_boxes(seed: int = 0) -> list[torch.Tensor]:
    """Boxes for three images of a 320 x 432 input (the second without boxes): random ones reaching past
    every edge, one of zero size, one wholly outside, one tiny."""
    generator = torch.Generator().manual_seed(seed)
    per_image = []
    for count in (30, 0, 25):
        corners = torch.rand(count, 2, generator=generator) * torch.tensor([500.0, 380.0]) - 40
        per_image.append(torch.cat([corners, corners + torch.rand(count, 2, generator=generator) * 300], dim=1))
    per_image[0][:3] = torch.tensor([[5.0, 5.0, 5.0, 5.0], [-90.0, -90.0, -40.0, -30.0], [100.0, 50.0, 100.5, 50.2]])
    return per_image


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(2, False), (2, True), (0, False), (0, True), (3, False)])
def test_roi_align_on_cpu_gives_torchvisions_outputs_and_gradients(sampling_ratio, aligned, channels_last):
    """The CPU path (an embedding bag of bilinear taps) against torchvision's kernel: forward and the
    gradient of the features, for boxes across the map's edges, outside it, empty, and adaptive grids."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, 6, 20, 27, generator=generator)
    if channels_last:
        features = features.to(memory_format=torch.channels_last)
    features.requires_grad_(True)
    boxes = awkward_boxes()
    ours = roi_align_cpu(features, boxes, 7, 1 / 16, sampling_ratio, aligned)
    theirs = torchvision.ops.roi_align(features, boxes, 7, 1 / 16, sampling_ratio, aligned)
    assert ours.shape == theirs.shape == (55, 6, 7, 7)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(theirs.shape, generator=generator)
    (our_grad,) = torch.autograd.grad(ours, features, upstream)
    (their_grad,) = torch.autograd.grad(theirs, features, upstream)
    torch.testing.assert_close(our_grad, their_grad, atol=1e-4, rtol=1e-5)
    assert their_grad[1].abs().sum() == 0 and our_grad[1].abs().sum() == 0  # the image without boxes


def test_roi_align_runs_torchvisions_op_when_traced_for_export():
    """A trace (ONNX export) records torchvision's roi_align, which exports as ONNX RoiAlign."""
    pooler = RoIPooler("roi_align", 7, {"c4": 16})
    features, boxes = torch.rand(1, 4, 10, 10), torch.tensor([[8.0, 8.0, 120.0, 100.0]])
    traced = torch.jit.trace(lambda f, b: pooler({"c4": f}, [b]), (features, boxes))
    assert "torchvision::roi_align" in str(traced.graph)
    torch.testing.assert_close(traced(features, boxes), pooler({"c4": features}, [boxes]), atol=1e-5, rtol=1e-5)


def test_double_boxes_pool_like_float_boxes():
    """Boxes are cast to the features' dtype."""
    features = shuffled()
    box = torch.tensor([[1.4, 1.6, 5.6, 6.4]])
    for op in ("roi_pool", "roi_align", "crop_resize"):
        pooler = RoIPooler(op, output_size=2, strides={"c4": 1})
        torch.testing.assert_close(pooler({"c4": features}, [box.double()]), pooler({"c4": features}, [box]))


# --- several levels (FPN): each box is pooled from the level its size maps to -------------------

FPN_STRIDES = {"0": 4, "1": 8, "2": 16, "3": 32}


def fpn_levels(height: int = 640, width: int = 640, channels: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random levels "0" .. "3" of a padded (height, width) batch of two, and a "pool" level never pooled."""
    generator = torch.Generator().manual_seed(seed)
    levels = {
        name: torch.rand(2, channels, height // stride, width // stride, generator=generator)
        for name, stride in FPN_STRIDES.items()
    }
    return {**levels, "pool": torch.rand(2, channels, height // 64, width // 64, generator=generator)}


def boxes_of_every_size(seed: int = 0) -> list[torch.Tensor]:
    """Boxes with sides from 8 to 600 px inside a 640 x 640 image, for two images."""
    generator = torch.Generator().manual_seed(seed)
    per_image = []
    for count in (40, 25):
        sides = 8 + torch.rand(count, 2, generator=generator) * 592
        corners = torch.rand(count, 2, generator=generator) * (640 - sides)
        per_image.append(torch.cat([corners, corners + sides], dim=1))
    return per_image


def fpn_level_by_hand(boxes: torch.Tensor) -> torch.Tensor:
    """The FPN paper's Eqn. 1, k = floor(4 + log2(sqrt(w h) / 224)), clamped to levels 2..5, as an index 0..3."""
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    return (torch.floor(4 + torch.log2(side / 224) + 1e-6).clamp(2, 5) - 2).long()


def test_roi_align_over_levels_matches_torchvisions_multiscale_roi_align():
    """The pooled RoIs equal MultiScaleRoIAlign's over levels "0" .. "3" (the "pool" level is left out)."""
    features, boxes = fpn_levels(), boxes_of_every_size()
    assert set(fpn_level_by_hand(torch.cat(boxes)).tolist()) == {0, 1, 2, 3}  # every level is used
    ours = RoIPooler("roi_align", 7, FPN_STRIDES, sampling_ratio=2)(features, boxes)
    theirs = torchvision.ops.MultiScaleRoIAlign(list(FPN_STRIDES), 7, 2)(features, boxes, [(640, 640), (640, 640)])
    assert ours.shape == (65, 3, 7, 7)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("op", sorted(POOLERS))
def test_every_op_pools_each_box_from_its_level_in_box_order(op):
    """Each output equals the single-level op on the level Eqn. 1 gives, at that level's stride."""
    features, boxes = fpn_levels(), boxes_of_every_size(seed=1)
    pooled = RoIPooler(op, 5, FPN_STRIDES)(features, boxes)
    levels = fpn_level_by_hand(torch.cat(boxes)).split([len(b) for b in boxes])
    expected = []
    for image, (image_boxes, image_levels) in enumerate(zip(boxes, levels, strict=True)):
        for box, level in zip(image_boxes, image_levels.tolist(), strict=True):
            name = str(level)
            single = RoIPooler(op, 5, {name: FPN_STRIDES[name]})
            expected.append(single({name: features[name][image : image + 1]}, [box[None]]))
    torch.testing.assert_close(pooled, torch.cat(expected))


@pytest.mark.parametrize("op", sorted(POOLERS))
@pytest.mark.parametrize(
    "side,level", [(20.0, 0), (111.9, 0), (112.0, 1), (223.9, 1), (224.0, 2), (447.9, 2), (448.0, 3), (1000.0, 3)]
)
def test_level_boundaries_follow_the_canonical_224_px_box(op, side, level):
    """A 224 px box reads the stride-16 level, each halving one level finer, clamped at both ends.
    Level i is filled with the value i + 1, so the pooled value names the level."""
    features = {name: torch.full((1, 1, 64, 64), float(i + 1)) for i, name in enumerate(FPN_STRIDES)}
    out = RoIPooler(op, 2, FPN_STRIDES)(features, [torch.tensor([[0.0, 0.0, side, side]])])
    torch.testing.assert_close(out, torch.full((1, 1, 2, 2), float(level + 1)))


def test_levels_must_be_increasing_powers_of_two_and_present():
    """Strides the FPN mapping cannot use are refused; a level missing from the features is named."""
    with pytest.raises(ValueError, match="powers of two"):
        RoIPooler("roi_align", 7, {"0": 4, "1": 12})
    with pytest.raises(ValueError, match="powers of two"):
        RoIPooler("roi_align", 7, {"0": 8, "1": 4})
    with pytest.raises(KeyError, match=r"\['3'\]"):
        RoIPooler("roi_align", 7, FPN_STRIDES)({k: v for k, v in fpn_levels().items() if k != "3"}, [])
