"""``BatchNorm2d``, as PyTorch's."""

import numbers

import numpy as np

from numbaconv import device as _device
from numbaconv import functional as F
from numbaconv.nn.module import Module, _constant, _factory

__all__ = ["BatchNorm2d"]


class BatchNorm2d(Module):
    """Batch normalisation over the channels of an (N, C, H, W) input, as ``torch.nn.BatchNorm2d``.

    In train mode (and whenever it keeps no running statistics) it normalises with the batch's
    own statistics, and updates ``running_mean`` / ``running_var`` and ``num_batches_tracked``
    as PyTorch does (``momentum=None``: a cumulative average, momentum ``1 / batches``). In eval
    mode it normalises with the running statistics.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float
    momentum : float or None
    affine : bool
        With True, ``weight`` (ones) and ``bias`` (zeros) are parameters.
    track_running_stats : bool
        With True, ``running_mean`` (zeros), ``running_var`` (ones) and ``num_batches_tracked``
        (an int64 0-d array, on the host) are buffers.
    device, dtype
        As for :class:`Conv2d`.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None):
        super().__init__()
        if not isinstance(num_features, numbers.Integral) or num_features < 1:
            raise ValueError(f"BatchNorm2d: num_features must be a positive int, got "
                             f"{num_features!r}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        device, dtype = _factory(device, dtype)
        if affine:
            self.weight = _constant((num_features,), 1, device, dtype)
            self.bias = _constant((num_features,), 0, device, dtype)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            place = (lambda a: a) if device == "cpu" else (lambda a: _device.to_device(a, "cuda"))
            self.register_buffer("running_mean", place(np.zeros(num_features, dtype)))
            self.register_buffer("running_var", place(np.ones(num_features, dtype)))
            self.register_buffer("num_batches_tracked", np.array(0, np.int64))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def forward(self, input):
        if input.ndim != 4:
            raise ValueError(f"BatchNorm2d: expected a 4-D (N, C, H, W) input, got "
                             f"{input.ndim}-D with shape {tuple(input.shape)}")
        x = self._input(input)
        batch_stats = self.training or not self.track_running_stats
        momentum = self.momentum
        if self.training and self.track_running_stats:
            np.add(self.num_batches_tracked, 1, out=self.num_batches_tracked)
            if momentum is None:  # PyTorch's cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        elif momentum is None:
            momentum = 0.0  # not used: nothing is updated
        # Eval mode without running statistics uses batch statistics and updates nothing.
        update = self.training and self.track_running_stats
        mean, var = (self.running_mean, self.running_var) if update or not batch_stats else \
            (None, None)
        self._save(x, batch_stats)
        return F.batch_norm(x, mean, var, None if self.weight is None else self.weight.data,
                            None if self.bias is None else self.bias.data, batch_stats, momentum,
                            self.eps)

    def backward(self, grad_output):
        x, batch_stats = self._saved_pop()
        gx, _, _, gw, gb = F.batch_norm_backward(
            grad_output, x, None if batch_stats else self.running_mean,
            None if batch_stats else self.running_var,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data, batch_stats, 0.0, self.eps)
        self._add_grad(self.weight, gw)
        self._add_grad(self.bias, gb)
        return gx

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")
