"""Inference fusion: fold BatchNorm into the convolution before it and the activation after it
into the convolution's epilogue, so a conv-bn-act block is one kernel call."""

import copy

import numpy as np

from numbaconv import device as _device
from numbaconv import functional as F
from numbaconv.nn.container import Sequential
from numbaconv.nn.conv import Conv2d
from numbaconv.nn.linear import Identity
from numbaconv.nn.module import _parameter
from numbaconv.nn.norm import BatchNorm2d

__all__ = ["fuse", "fold"]


def fuse(model):
    """An eval-mode copy of ``model`` with BatchNorm and activations fused into convolutions.

    ``Conv2d -> BatchNorm2d -> activation`` runs in ``Sequential`` containers (and in the model
    zoo's blocks, which know their own wiring) become one ``Conv2d`` with folded weights, a bias
    and the activation in its epilogue; the BatchNorm and activation become ``Identity``. The
    result computes the same function as ``model.eval()`` up to float rounding. ``model`` itself
    is not changed. The fused copy is for inference: its state_dict lacks the BatchNorm entries.

    Parameters
    ----------
    model : Module

    Returns
    -------
    Module
    """
    return _fuse(copy.deepcopy(model).eval())


def _fuse(module):
    hook = getattr(module, "_fuse", None)
    if hook is not None:  # a block that knows its own wiring (nc.models)
        return hook()
    for name, child in list(module.named_children()):
        setattr(module, name, _fuse(child))
    if isinstance(module, Sequential):
        _fuse_sequence(module)
    return module


def _fuse_sequence(seq):
    names = list(seq._modules)
    i = 0
    while i < len(names):
        conv = seq._modules[names[i]]
        i += 1
        if not isinstance(conv, Conv2d) or conv.activation is not None:
            continue
        bn = act = None
        end = i
        if end < len(names) and foldable(seq._modules[names[end]]):
            bn, end = seq._modules[names[end]], end + 1
        if end < len(names):
            act = getattr(seq._modules[names[end]], "conv_activation", None)
            end += act is not None
        if end > i:
            setattr(seq, names[i - 1], fold(conv, bn, act))
            for name in names[i:end]:
                setattr(seq, name, Identity())
        i = end


def foldable(bn):
    """True for a BatchNorm2d that can be folded into the conv before it (eval, running stats)."""
    return isinstance(bn, BatchNorm2d) and bn.track_running_stats and not bn.training


def fold(conv, bn=None, activation=None):
    """A new ``Conv2d`` computing ``activation(bn(conv(x)))`` in one kernel call.

    Parameters
    ----------
    conv : Conv2d
        Without a fused activation of its own.
    bn : BatchNorm2d or None
        In eval mode with running statistics; folded as
        ``w' = w * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``
        (computed in float64).
    activation : None, str or ('leaky_relu', slope)
        conv2d's fused activation.
    """
    if conv.activation is not None:
        raise ValueError("fold(): the conv already has a fused activation")
    w = np.asarray(_device.to_numpy(conv.weight.data), np.float64)
    b = (np.zeros(conv.out_channels) if conv.bias is None
         else np.asarray(_device.to_numpy(conv.bias.data), np.float64))
    if bn is not None:
        if not foldable(bn):
            raise ValueError("fold(): BatchNorm2d must be in eval mode with running statistics")
        if bn.num_features != conv.out_channels:
            raise ValueError(f"fold(): BatchNorm2d has {bn.num_features} features but the conv "
                             f"{conv.out_channels} output channels")
        mean = np.asarray(_device.to_numpy(bn.running_mean), np.float64)
        var = np.asarray(_device.to_numpy(bn.running_var), np.float64)
        g = (np.ones_like(mean) if bn.weight is None
             else np.asarray(_device.to_numpy(bn.weight.data), np.float64))
        beta = (np.zeros_like(mean) if bn.bias is None
                else np.asarray(_device.to_numpy(bn.bias.data), np.float64))
        scale = g / np.sqrt(var + bn.eps)
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        b = (b - mean) * scale + beta
    device, dtype = conv.weight.device, conv.weight.dtype
    F._activation("fold", activation)
    fused = copy.copy(conv)  # the same settings, with registries of its own:
    for name in ("_parameters", "_buffers", "_modules"):
        object.__setattr__(fused, name, type(getattr(conv, name))())
    object.__setattr__(fused, "_non_persistent", set())
    object.__setattr__(fused, "_saved", [])
    fused.weight = _parameter(w.astype(dtype), device)
    fused.bias = _parameter(b.astype(dtype), device)
    fused.activation = activation
    return fused
