"""``BatchNorm2d``, as PyTorch's."""

import numbers

import numpy as np

from numbaconv import device as _device
from numbaconv import functional as F
from numbaconv.nn.module import Module, _constant, _factory

__all__ = ["BatchNorm2d"]


class BatchNorm2d(Module):
    """Batch normalisation over the channels of an (N, C, H, W) input, as ``torch.nn.BatchNorm2d``.

    In eval mode it normalises with the running statistics. Training mode (batch statistics,
    running-statistic updates) arrives with training support: until then a forward in training
    mode raises ``NotImplementedError`` (call ``model.eval()`` for inference).

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
        if self.training or not self.track_running_stats:
            raise NotImplementedError(
                "BatchNorm2d in training mode (or without running statistics) needs batch "
                "statistics, which are not implemented yet; call model.eval() for inference")
        return F.batch_norm(self._input(input), self.running_mean, self.running_var,
                            None if self.weight is None else self.weight.data,
                            None if self.bias is None else self.bias.data, False, self.momentum,
                            self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")
