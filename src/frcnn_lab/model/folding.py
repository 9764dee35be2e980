"""Frozen BatchNorm computed inside the convolution before it.

A ``FrozenBatchNorm2d`` after a convolution is an affine map per output channel, ``y = x * scale + shift``.
Run as its own layer it reads and writes every activation once more in the forward pass and again in the
backward pass; computed as part of the convolution (weight ``W * scale``, bias ``b * scale + shift``) it costs
a multiplication of the small weight tensor per call, and the convolution's bias is added in the same pass.
The weight stays the trainable parameter and the scale is recomputed at every call, so training follows the
same gradients as with the separate layer (up to float rounding).

Modules keep their names, parameters and buffers: state dicts, pretrained weights and checkpoints load as
before. The pairs are found by tracing the network (``torch.fx``): a ``FrozenBatchNorm2d`` whose only input is
a ``Conv2d`` used by nothing else, each called once. A network that ``torch.fx`` cannot trace keeps its
separate layers (with a warning). ``unfold_frozen_batchnorm`` gives back torchvision's separate layers (the
reference detector's, ``frcnn_lab.model.reference``).
"""

from __future__ import annotations

import logging
from collections import Counter

import torch.fx
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

log = logging.getLogger(__name__)


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A ``FrozenBatchNorm2d`` that the convolution before it applies; its own forward passes ``x`` through."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """``(C,)`` each: the per-channel ``scale`` and ``shift`` of ``x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale


class Conv2dFrozenBN(nn.Conv2d):
    """An ``nn.Conv2d`` followed by a frozen BatchNorm, computed as one convolution. The norm stays a module of
    its own (where the network has it); the convolution only reads its statistics."""

    norm: tuple[FoldedFrozenBatchNorm2d]  # in a tuple: not a submodule, so the state dict does not hold it twice

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.norm[0].scale_and_shift()
        bias = shift if self.bias is None else self.bias * scale + shift
        return self._conv_forward(x, self.weight * scale.reshape(-1, 1, 1, 1), bias)


class _FrozenBNLeaves(torch.fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, FrozenBatchNorm2d) or super().is_leaf_module(module, qualified_name)


def conv_frozen_bn_pairs(network: nn.Module) -> list[tuple[str, str]]:
    """``[(conv name, norm name)]``: every ``FrozenBatchNorm2d`` of ``network`` whose only input is a
    ``Conv2d`` whose output goes nowhere else; none where ``network`` cannot be traced."""
    try:
        graph = _FrozenBNLeaves().trace(network)
    except Exception as error:  # tracing fails in many ways (data-dependent control flow, unsupported calls)
        log.warning("%s cannot be traced by torch.fx (%s: %s): its frozen BatchNorm stays as separate layers",
                    type(network).__name__, type(error).__name__, error)
        return []
    modules = dict(network.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], FrozenBatchNorm2d):
            continue
        source = node.args[0]
        if (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and type(modules[source.target]) is nn.Conv2d and len(source.users) == 1
                and calls[source.target] == calls[node.target] == 1):  # a module called twice may be used alike
            pairs.append((source.target, node.target))
    return pairs


def _sharing(cls: type, module: nn.Module) -> nn.Module:
    """A ``cls`` with the layout of ``module`` (a Conv2d or a FrozenBatchNorm2d) holding its very tensors."""
    if isinstance(module, nn.Conv2d):
        new = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                  module.dilation, module.groups, module.bias is not None, module.padding_mode, device="meta")
        new._parameters.update(module._parameters)
    else:
        new = cls(module.weight.numel(), eps=module.eps)
        new._buffers.update(module._buffers)
    return new


def _replace(network: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(network.get_submodule(parent), child, module)


def fold_frozen_batchnorm(network: nn.Module) -> int:
    """Replaces, in place, every convolution + ``FrozenBatchNorm2d`` pair of ``network`` with a
    ``Conv2dFrozenBN`` + ``FoldedFrozenBatchNorm2d`` sharing the same parameters and buffers. Returns the
    number of pairs."""
    pairs = conv_frozen_bn_pairs(network)
    for conv_name, norm_name in pairs:
        folded_norm = _sharing(FoldedFrozenBatchNorm2d, network.get_submodule(norm_name))
        folded_conv = _sharing(Conv2dFrozenBN, network.get_submodule(conv_name))
        folded_conv.norm = (folded_norm,)
        _replace(network, conv_name, folded_conv)
        _replace(network, norm_name, folded_norm)
    return len(pairs)


def unfold_frozen_batchnorm(network: nn.Module) -> int:
    """The inverse of ``fold_frozen_batchnorm``, in place: torchvision's ``nn.Conv2d`` and ``FrozenBatchNorm2d``
    layers again, sharing the same parameters and buffers. Returns the number of pairs."""
    replaced = 0
    for name, module in list(network.named_modules()):
        if isinstance(module, Conv2dFrozenBN):
            _replace(network, name, _sharing(nn.Conv2d, module))
            replaced += 1
        elif isinstance(module, FoldedFrozenBatchNorm2d):
            _replace(network, name, _sharing(FrozenBatchNorm2d, module))
    return replaced
