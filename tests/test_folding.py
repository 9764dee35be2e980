"""Frozen BatchNorm computed inside the convolutions (frcnn_lab.model.folding) against torchvision's
FrozenBatchNorm2d layers: the same outputs and gradients, the same state dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision import models
from torchvision.ops import FrozenBatchNorm2d

from frcnn_lab.model.backbones import BackboneConfig, build_backbone
from frcnn_lab.model.folding import (
    Conv2dFrozenBN,
    FoldedFrozenBatchNorm2d,
    fold_frozen_batchnorm,
    unfold_frozen_batchnorm,
)
from frcnn_lab.model.reference import torchvision_copy


def network_with_statistics(constructor) -> nn.Module:
    """A torchvision network with FrozenBatchNorm2d layers holding statistics far from the identity."""
    torch.manual_seed(0)
    network = constructor(norm_layer=FrozenBatchNorm2d).eval()  # no dropout: both copies compute the same
    for norm in network.modules():
        if isinstance(norm, FrozenBatchNorm2d):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.5)
            norm.running_mean.normal_(0, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    return network


@pytest.mark.parametrize("constructor", [models.mobilenet_v2, models.resnet50])
def test_folded_network_gives_torchvisions_outputs_and_gradients(constructor):
    reference = network_with_statistics(constructor)
    folded = copy.deepcopy(reference)
    norms = sum(isinstance(m, FrozenBatchNorm2d) for m in reference.modules())
    assert fold_frozen_batchnorm(folded) == norms  # every norm of these networks follows a convolution
    assert sum(isinstance(m, Conv2dFrozenBN) for m in folded.modules()) == norms
    assert folded.state_dict().keys() == reference.state_dict().keys()

    x = torch.rand(2, 3, 64, 64)
    outputs = [network(x) for network in (reference, folded)]
    # float rounding only: differences within 1e-5 of each tensor's largest magnitude
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5 * outputs[0].abs().max().item())
    for output in outputs:
        output.square().mean().backward()
    gradients = [dict((n, p.grad) for n, p in network.named_parameters()) for network in (reference, folded)]
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=0, atol=1e-5 * gradient.abs().max().item(),
                                   msg=name)


def test_the_reference_copy_has_torchvisions_layers_again():
    reference = network_with_statistics(models.mobilenet_v2)
    folded = copy.deepcopy(reference)
    fold_frozen_batchnorm(folded)
    unfolded = torchvision_copy(folded)
    assert [type(m) for m in unfolded.modules()] == [type(m) for m in reference.modules()]
    assert not any(isinstance(m, (Conv2dFrozenBN, FoldedFrozenBatchNorm2d)) for m in unfolded.modules())
    assert unfold_frozen_batchnorm(unfolded) == 0
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(unfolded(x), reference(x), rtol=0, atol=0)  # the same layers: the same arithmetic


def test_a_folded_convolution_reads_the_statistics_its_norm_holds_now():
    """Loading a state dict, or moving the network, replaces the norm's buffers: the convolution must see the
    new ones, and a deep copy must read its own norm's."""
    conv_bn = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), FrozenBatchNorm2d(4))
    reference = copy.deepcopy(conv_bn)
    fold_frozen_batchnorm(conv_bn)
    assert isinstance(conv_bn[0], Conv2dFrozenBN) and isinstance(conv_bn[1], FoldedFrozenBatchNorm2d)
    x = torch.rand(1, 3, 8, 8)

    state = reference.state_dict()
    state["1.running_mean"] = torch.tensor([1.0, -2.0, 3.0, 0.5])
    state["0.bias"] = torch.tensor([0.1, 0.2, -0.3, 0.4])
    reference.load_state_dict(state)
    conv_bn.load_state_dict(state)
    torch.testing.assert_close(conv_bn(x), reference(x))

    conv_bn = conv_bn.double()
    torch.testing.assert_close(conv_bn(x.double()), reference.double()(x.double()))

    duplicate = copy.deepcopy(conv_bn)
    duplicate[1].running_var.fill_(4.0)
    assert duplicate[0].norm[0] is duplicate[1] and conv_bn[0].norm[0] is conv_bn[1]
    torch.testing.assert_close(conv_bn(x.double()), reference(x.double()))
    assert not torch.allclose(duplicate(x.double()), conv_bn(x.double()))


def test_a_norm_that_is_not_right_after_its_convolution_stays_a_layer():
    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 3, 1), FrozenBatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.norm(y) + y  # the convolution's output is needed as it is

    network = Branching()
    assert fold_frozen_batchnorm(network) == 0
    assert type(network.conv) is nn.Conv2d and type(network.norm) is FrozenBatchNorm2d


class ConvUsedTwice(nn.Module):
    """One convolution called twice, once followed by its norm and once not: folding the norm into it would apply
    the norm to the second call too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 1), FrozenBatchNorm2d(4)

    def forward(self, x):
        return self.norm(self.conv(x)) + self.conv(x)


class NormUsedTwice(nn.Module):
    """One norm after two convolutions: folded into both, the first convolution would read a copy of the norm that
    the network no longer holds (and that moving or converting the network leaves behind)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.other, self.norm = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), FrozenBatchNorm2d(4)

    def forward(self, x):
        return self.norm(self.conv(x)) + self.norm(self.other(x))


@pytest.mark.parametrize("network_class", [ConvUsedTwice, NormUsedTwice])
def test_a_convolution_or_norm_called_twice_stays_a_layer(network_class):
    torch.manual_seed(0)
    network = network_class()
    network.norm.weight.uniform_(1.5, 2.5)  # far from the identity: a norm applied once too often shows
    network.norm.bias.normal_(0, 1.0)
    network.norm.running_mean.normal_(0, 0.5)
    x = torch.rand(1, 3, 8, 8)
    before = network(x)
    folded = fold_frozen_batchnorm(network)
    torch.testing.assert_close(network(x), before)
    assert folded == 0 and type(network.conv) is nn.Conv2d and type(network.norm) is FrozenBatchNorm2d


def test_a_network_that_cannot_be_traced_keeps_its_layers_and_says_so(caplog):
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 3, 1), FrozenBatchNorm2d(3)

        def forward(self, x):
            return self.norm(self.conv(x)) if x.sum() > 0 else x  # a branch on a value: fx cannot trace it

    network = DataDependent()
    assert fold_frozen_batchnorm(network) == 0
    assert type(network.conv) is nn.Conv2d and type(network.norm) is FrozenBatchNorm2d
    assert "DataDependent cannot be traced by torch.fx" in caplog.text


def test_pretrained_backbones_fold_and_random_ones_keep_trainable_batchnorm(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(network_with_statistics(models.mobilenet_v2).state_dict(), path)
    pretrained = build_backbone(BackboneConfig(weights=str(path)))
    assert sum(isinstance(m, Conv2dFrozenBN) for m in pretrained.trunk.modules()) == 39  # blocks 0-13
    assert not any(type(m) is FrozenBatchNorm2d for m in pretrained.trunk.modules())
    unfrozen = build_backbone(BackboneConfig(weights=str(path), frozen_bn=False))
    assert not any(isinstance(m, (Conv2dFrozenBN, FrozenBatchNorm2d)) for m in unfrozen.trunk.modules())
    random = build_backbone(BackboneConfig(weights="none"))
    assert any(isinstance(m, nn.BatchNorm2d) for m in random.trunk.modules())
    assert not any(isinstance(m, Conv2dFrozenBN) for m in random.trunk.modules())
