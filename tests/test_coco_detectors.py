"""torchvision's COCO Faster R-CNNs as a start: ``python -m frcnn_lab.convert`` and ``model.weights``.

No download: torchvision's three detectors are built with random weights (seeded) and saved as state dicts, as a
COCO file would be. Random weights give empty comparisons (BatchNorm's default statistics, logits that tie), so the
BatchNorm statistics are estimated on the test photo and then scaled at random (torchvision's COCO backbones
freeze them: the converted model must read them), and the RPN objectness and class logits are spread out. Both
detectors get the photo at its final size: torchvision's transform is set not to resize it.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.ops import FrozenBatchNorm2d

from frcnn_lab.convert import convert, converted_config
from frcnn_lab.convert import main as convert_main
from frcnn_lab.data.synthetic import SyntheticScenes
from frcnn_lab.engine.checkpoints import load_module
from frcnn_lab.errors import USER_ERROR_EXIT_CODE
from frcnn_lab.model.anchor_fit import fit_report
from frcnn_lab.model.backbones import feature_levels
from frcnn_lab.model.detection_weights import (
    TORCHVISION_DETECTORS,
    coco_classes,
    read_detection_weights,
    torchvision_settings,
)
from frcnn_lab.model.detector import build_detector
from frcnn_lab.model.weights import OFFLINE_ENV, WeightsUnavailableError
from frcnn_lab.train import build_module, train
from support import compose_config, tiny_run

LAYOUTS = list(TORCHVISION_DETECTORS)
CELL_PHONE, PERSON = 77, 1  # COCO category ids, torchvision's labels


def photo(height: int = 320, width: int = 416, seed: int = 0) -> Tensor:
    """A synthetic scene as (3, H, W) RGB in [0, 1]."""
    image = SyntheticScenes(1, seed=seed, image_sizes=((height, width),))[0]["image"]
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def spread_logits(layer: nn.Module, logits: Tensor, spread: float) -> None:
    """Rescale ``layer`` so that its ``logits`` get mean 0 and standard deviation ``spread``."""
    scale = spread / logits.std()
    layer.weight.mul_(scale)
    layer.bias.copy_((layer.bias - logits.mean(dim=0)) * scale)


def meaningful(model: TorchvisionFasterRCNN, image: Tensor) -> TorchvisionFasterRCNN:
    """``model`` with BatchNorm statistics of ``image`` scaled at random, and objectness / class logits spread out."""
    batch, _ = model.transform([image])
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.backbone.train()
    with torch.no_grad():
        model.backbone(batch.tensors)
        for norm in norms:
            norm.running_var.mul_(torch.empty_like(norm.running_var).uniform_(0.5, 2.0))
            norm.running_mean.add_(torch.randn_like(norm.running_mean) * 0.1 * norm.running_var.sqrt())
        model.eval()
        features = model.backbone(batch.tensors)
        head = model.rpn.head
        hidden = [head.conv(level) for level in features.values()]
        spread_logits(head.cls_logits, torch.cat([head.cls_logits(h).flatten() for h in hidden]), spread=1.0)
        head.bbox_pred.weight.mul_(0.1)
        corners = torch.rand(64, 2) * 200
        boxes = torch.cat([corners, corners + 32 + torch.rand(64, 2) * 150], dim=1)
        pooled = model.roi_heads.box_head(model.roi_heads.box_roi_pool(features, [boxes], batch.image_sizes))
        predictor = model.roi_heads.box_predictor
        spread_logits(predictor.cls_score, predictor.cls_score(pooled), spread=3.0)
        predictor.bbox_pred.weight.mul_(0.1)
    return model


class Saved:
    """torchvision's detectors of the layouts, made meaningful on ``image`` and saved as state dicts (cached)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.image, self.models = folder, photo(), {}

    def model(self, layout: str) -> TorchvisionFasterRCNN:
        if layout not in self.models:
            torch.manual_seed(LAYOUTS.index(layout))
            model = TORCHVISION_DETECTORS[layout][0](weights=None, weights_backbone=None)
            model.transform.min_size, model.transform.max_size = (min(self.image.shape[-2:]),), 10_000
            self.models[layout] = meaningful(model, self.image)
            torch.save(self.models[layout].state_dict(), self.path(layout))
        return self.models[layout]

    def path(self, layout: str) -> Path:
        return self.folder / f"fasterrcnn_{layout}.pt"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Saved:
    return Saved(tmp_path_factory.mktemp("torchvision"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_converted_checkpoint_detects_as_torchvision(saved, layout, tmp_path):
    """The converted checkpoint, loaded alone as predict / evaluate / export / serve load it, gives torchvision's
    detections on the same photo: boxes within 0.01 px, scores within 1e-4, the same labels."""
    theirs_model = saved.model(layout)
    checkpoint = tmp_path / "coco.ckpt"
    convert(str(saved.path(layout)), checkpoint, layout)
    module = load_module(checkpoint)
    settings = torchvision_settings(layout)["data"]
    assert (module.preprocess.image_size, module.preprocess.max_size) == (settings["image_size"], settings["max_size"])
    assert module.classes == coco_classes()[0] and module.category_ids == list(range(1, 91))
    assert module.classes[CELL_PHONE - 1] == "cell phone" and module.classes[11] == "unused_12"
    with torch.no_grad():
        theirs = theirs_model([saved.image])[0]
        ours = module([saved.image])[0]
    assert len(theirs["boxes"]) > 10
    assert theirs["scores"].max() - theirs["scores"].min() > 0.05  # distinct scores, not ties
    assert len(set(theirs["labels"].tolist())) > 3
    assert len(ours["boxes"]) == len(theirs["boxes"])
    torch.testing.assert_close(ours["boxes"], theirs["boxes"], atol=0.01, rtol=0)
    torch.testing.assert_close(ours["scores"], theirs["scores"], atol=1e-4, rtol=0)
    assert torch.equal(ours["labels"], theirs["labels"])


def test_mobilenet_v3_options_hold_torchvisions_settings():
    """The backbone options' YAML defaults are the settings of torchvision's detectors of the same name."""
    for layout in ("mobilenet_v3_large_fpn", "mobilenet_v3_large_320_fpn"):
        cfg = compose_config("config", [f"backbone={layout}"])
        for group, values in torchvision_settings(layout).items():
            for key, value in values.items():
                assert cfg[group][key] == value, f"backbone={layout}: {group}.{key}"


def fine_tuning_module(weights: Path, layout: str, classes: list[str], init_classes: str = "new"):
    cfg = compose_config("config", [f"backbone={layout}", f"model.weights={weights}",
                                    f"model.init_classes={init_classes}", f"data.classes=[{','.join(classes)}]"])
    return build_module(cfg)


def test_fine_tuning_from_a_torchvision_file_trains_two_classes(saved):
    """A 320 px MobileNetV3 file as the start of a two-class detector: trunk, FPN, RPN and box head are the file's,
    the predictor is new, and the loss falls over a few steps on a tiny batch."""
    layout = "mobilenet_v3_large_320_fpn"
    theirs = saved.model(layout)
    module = fine_tuning_module(saved.path(layout), layout, ["camera", "phone"])
    ours = module.detector
    torch.testing.assert_close(ours.rpn.head.conv.weight, theirs.rpn.head.conv[0][0].weight)
    torch.testing.assert_close(ours.roi_head.tail.fc7.weight, theirs.roi_heads.box_head.fc7.weight)
    body = dict(ours.trunk.body.named_buffers())
    torch.testing.assert_close(body["16.1.running_var"], theirs.backbone.body["16"][1].running_var)
    assert ours.roi_head.predictor.cls_score.out_features == 3
    assert not torch.allclose(ours.roi_head.predictor.cls_score.weight[1:],
                              theirs.roi_heads.box_predictor.cls_score.weight[[1, CELL_PHONE]])

    torch.manual_seed(0)
    scenes = SyntheticScenes(2, seed=3, image_sizes=((320, 320),))
    images = [torch.from_numpy(s["image"]).permute(2, 0, 1).float() / 255 for s in scenes]
    targets = [{"boxes": torch.as_tensor(s["boxes"], dtype=torch.float32),
                "labels": torch.as_tensor(s["labels"], dtype=torch.long)} for s in scenes]
    assert all(len(t["boxes"]) for t in targets)
    ours.train()
    optimizer = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.002, momentum=0.9)
    totals = []
    for _ in range(8):
        losses = ours(images, targets).losses
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert sum(totals[-2:]) / 2 < 0.8 * totals[0], totals


def test_classes_named_as_coco_start_from_their_rows(saved):
    """init_classes=by_name: ``phone`` starts from COCO's ``cell phone``, ``person`` from ``person``, background from
    background; a class COCO lacks (``camera``) starts anew."""
    layout = "mobilenet_v3_large_320_fpn"
    theirs = saved.model(layout).roi_heads.box_predictor
    module = fine_tuning_module(saved.path(layout), layout, ["camera", "phone", "person"], "by_name")
    assert module.init_classes_from == {"phone": "cell phone", "person": "person"}
    ours = module.detector.roi_head.predictor
    torch.testing.assert_close(ours.cls_score.weight[[0, 2, 3]], theirs.cls_score.weight[[0, CELL_PHONE, PERSON]])
    torch.testing.assert_close(ours.bbox_pred.bias.view(-1, 4)[2], theirs.bbox_pred.bias.view(-1, 4)[CELL_PHONE])
    assert (theirs.cls_score.weight - ours.cls_score.weight[1]).abs().amax(dim=1).min() > 1e-3  # no source row


def test_a_state_dict_of_another_layout_is_refused_naming_both(saved):
    """A resnet50_fpn state dict cannot start mobilenet_v3_large_fpn: one line naming both layouts."""
    saved.model("resnet50_fpn")
    with pytest.raises(ValueError) as refused:
        fine_tuning_module(saved.path("resnet50_fpn"), "mobilenet_v3_large_fpn", ["camera", "phone"])
    message = str(refused.value)
    assert "\n" not in message
    assert "has the resnet50_fpn layout" in message and "backbone=mobilenet_v3_large_fpn has the" in message


def test_coco_weights_offline_name_the_file_and_the_cache_folder(tmp_path, monkeypatch, capsys):
    """model.weights=coco without the file and without a network: one line naming the file and torchvision's cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(WeightsUnavailableError) as missing:
        read_detection_weights("coco", "mobilenet_v3_large_320_fpn")
    message = str(missing.value)
    assert "\n" not in message
    expected = tmp_path / "hub" / "checkpoints" / "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth"
    assert str(expected) in message
    with pytest.raises(SystemExit) as exit_:
        convert_main(["coco", str(tmp_path / "coco.ckpt"), "--backbone", "mobilenet_v3_large_320_fpn"])
    assert exit_.value.code == USER_ERROR_EXIT_CODE
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and printed.startswith("error: ") and str(expected) in printed
    assert not (tmp_path / "coco.ckpt").exists()


def test_convert_keeps_overrides_and_refuses_coco_for_a_layout_without_it():
    cfg = converted_config("resnet50_fpn", ["rpn.post_nms_top_n_test=300"])
    assert cfg.rpn.post_nms_top_n_test == 300 and cfg.data.image_size == 800 and cfg.rpn.pre_nms_top_n_test == 1000
    with pytest.raises(ValueError, match="torchvision has COCO weights for backbone=resnet50_fpn"):
        read_detection_weights("coco", "mobilenet_v2_fpn")


def test_the_anchor_report_takes_sizes_per_level():
    """The MobileNetV3 options give a list of sizes per level; the training's anchor report reads them as such."""
    layout = "mobilenet_v3_large_320_fpn"
    sizes = torchvision_settings(layout)["rpn"]["anchor_sizes"]
    widths, heights = np.array([40.0, 100.0, 300.0]), np.array([40.0, 90.0, 280.0])
    report = fit_report(widths, heights, sizes, [0.5, 1.0, 2.0], 0.7, list(feature_levels(layout)))
    assert report["used"]["anchor_sizes"] == sizes
    assert report["fit"]["share_best_iou_at_least"]["0.5"] == 1.0


def test_a_frcnn_lab_checkpoint_is_a_start_too(saved, tmp_path):
    """model.weights=<converted checkpoint>: its trunk, and with by_name its ``cell phone`` rows for ``phone``."""
    layout = "mobilenet_v3_large_320_fpn"
    theirs = saved.model(layout)
    checkpoint = tmp_path / "coco.ckpt"
    convert(str(saved.path(layout)), checkpoint, layout)
    module = fine_tuning_module(checkpoint, layout, ["phone", "camera"], "by_name")
    assert module.init_classes_from == {"phone": "cell phone"}
    ours = module.detector
    torch.testing.assert_close(ours.trunk.fpn.layer_blocks[0][0].weight, theirs.backbone.fpn.layer_blocks[0][0].weight)
    torch.testing.assert_close(ours.roi_head.predictor.cls_score.weight[1],
                               theirs.roi_heads.box_predictor.cls_score.weight[CELL_PHONE])


@pytest.mark.parametrize("init_classes", ["new", "by_name"])
def test_a_class_prior_starts_the_classes_that_take_no_source_rows(init_classes, tmp_path):
    """``roi_head.class_prior=0.01`` with ``model.weights=<checkpoint>``: the predictor's bias is the prior's, but with
    by_name background and ``phone`` keep their source rows (``cell phone``); ``camera`` has none."""
    torch.manual_seed(0)
    source = build_detector(num_classes=2, pretrained=False)
    nn.init.normal_(source.roi_head.predictor.cls_score.bias)
    checkpoint = tmp_path / "source.ckpt"
    torch.save({"state_dict": {f"detector.{key}": value for key, value in source.state_dict().items()},
                "hyper_parameters": {"classes": ["cell phone", "person"]}}, checkpoint)
    cfg = compose_config("config", [f"model.weights={checkpoint}", f"model.init_classes={init_classes}",
                                    "roi_head.class_prior=0.01", "data.classes=[camera,phone]"])
    ours = build_module(cfg).detector.roi_head.predictor.cls_score.bias.detach()
    theirs = source.roi_head.predictor.cls_score.bias.detach()
    prior = math.log(0.01 / (2 * 0.99))
    expected = [0.0, prior, prior] if init_classes == "new" else [theirs[0].item(), prior, theirs[1].item()]
    assert ours.tolist() == pytest.approx(expected)


def test_a_run_from_a_file_trains_and_its_checkpoint_stands_alone(saved, make_config, tmp_path):
    """``train model.weights=<file>`` end to end on a tiny run: the data summary, fit and checkpoint; the checkpoint
    loads after the file is gone (its BatchNorm frozen as it trained)."""
    layout = "mobilenet_v3_large_320_fpn"
    saved.model(layout)
    start = tmp_path / "start.pt"
    shutil.copyfile(saved.path(layout), start)
    cfg = make_config(tiny_run(f"backbone={layout}", f"model.weights={start}", "model.init_classes=by_name",
                               "data.source.num_train=4", "data.source.num_val=2", "data.source.num_test=2",
                               "data.batch_size=2", "data.num_negatives=0"))
    summary = train(cfg)
    start.unlink()
    module = load_module(summary["checkpoint"])
    assert module.hparams["weights"] == str(start) and module.classes == ["camera", "phone"]
    assert any(isinstance(m, FrozenBatchNorm2d) for m in module.detector.trunk.modules())
