"""Convolution layers: ``Conv1d`` and ``Conv2d``, as PyTorch's."""

import math
import numbers

from numbaconv import functional as F
from numbaconv.nn.module import Module, _factory, _uniform

__all__ = ["Conv1d", "Conv2d"]


def check_channels(cls, in_channels, out_channels, groups):
    """Positive int channel counts and groups, both counts divisible by groups (ValueError)."""
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                    ("groups", groups)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{cls}: {name} must be a positive int, got {v!r}")
    if in_channels % groups:
        raise ValueError(f"{cls}: in_channels ({in_channels}) must be divisible by groups "
                         f"({groups})")
    if out_channels % groups:
        raise ValueError(f"{cls}: out_channels ({out_channels}) must be divisible by groups "
                         f"({groups})")


class _ConvNd(Module):
    _nd = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *,
                 activation=None):
        super().__init__()
        cls, nd = type(self).__name__, self._nd
        check_channels(cls, in_channels, out_channels, groups)
        if padding_mode != "zeros":
            raise ValueError(f"{cls}: padding_mode={padding_mode!r} is not supported; only "
                             "'zeros' (pad the input with zeros explicitly for other modes)")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = F._int_tuple(kernel_size, nd, cls, "kernel_size", 1)
        self.stride = F._int_tuple(stride, nd, cls, "stride", 1)
        self.dilation = F._int_tuple(dilation, nd, cls, "dilation", 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{cls}: padding={padding!r} is not valid; use 'same', "
                                 "'valid', an int or a tuple of ints")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"{cls}: padding='same' is not supported for strided "
                                 "convolutions (stride must be 1)")
            self.padding = padding
        else:
            self.padding = F._int_tuple(padding, nd, cls, "padding", 0)
        self.padding_mode = padding_mode
        # Fused into the kernel's epilogue by nn.fuse: None, a name or ('leaky_relu', slope).
        F._activation(cls, activation)
        self.activation = activation

        device, dtype = _factory(device, dtype)
        fan_in = in_channels // groups * math.prod(self.kernel_size)
        # kaiming_uniform_(a=sqrt(5)) and PyTorch's bias init both come to U(+-1/sqrt(fan_in)).
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = _uniform((out_channels, in_channels // groups) + self.kernel_size, bound,
                               device, dtype)
        if bias:
            self.bias = _uniform((out_channels,), bound, device, dtype)
        else:
            self.register_parameter("bias", None)

    def _forward(self, op, x, residual=None):
        x = self._input(x)
        weight, bias = self.weight.data, None if self.bias is None else self.bias.data
        # A fused activation or residual (nn.fuse's inference layers) has no backward here.
        self._save(x if self.activation is None and residual is None else None)
        kwargs = {} if self._nd == 1 else dict(
            activation=self.activation, residual=None if residual is None else self._input(residual))
        return op(x, weight, bias, self.stride, self.padding, self.dilation, self.groups, **kwargs)

    def backward(self, grad_output):
        x, = self._saved_pop()
        if x is None:
            raise RuntimeError(f"{type(self).__name__}.backward(): a convolution with a fused "
                               "activation or residual (made by nn.fuse) is for inference; "
                               "train the unfused model")
        op = F.conv2d_backward if self._nd == 2 else F.conv1d_backward
        gx, gw, gb = op(grad_output, x, self.weight.data,
                        None if self.bias is None else self.bias.data, self.stride, self.padding,
                        self.dilation, self.groups)
        self._add_grad(self.weight, gw)
        self._add_grad(self.bias, gb)
        return gx

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0,) * self._nd:
            s += f", padding={self.padding}"
        if self.dilation != (1,) * self._nd:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        return s


class Conv2d(_ConvNd):
    """2-D convolution layer, as ``torch.nn.Conv2d``; forward is :func:`numbaconv.functional.conv2d`.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (int, int), 'same' or 'valid'
    groups : int
    bias : bool
    padding_mode : 'zeros' (the only mode)
    device : 'cpu', 'cuda' or None (the current device)
    dtype : float32 (default) or float64
    activation : None, str or ('leaky_relu', slope), keyword-only
        Fused into the kernel after the bias (see ``functional.conv2d``); :func:`numbaconv.nn.fuse`
        sets it.

    Attributes
    ----------
    weight : Parameter (out_channels, in_channels // groups, *kernel_size), U(+-1/sqrt(fan_in))
    bias : Parameter (out_channels,) or None, same init
    """

    _nd = 2

    def forward(self, input, residual=None):
        """``conv2d(input)``; ``residual`` (shaped as the output) is added before the activation."""
        return self._forward(F.conv2d, input, residual)


class Conv1d(_ConvNd):
    """1-D convolution layer, as ``torch.nn.Conv1d``; forward is :func:`numbaconv.functional.conv1d`.

    Same parameters as :class:`Conv2d` with ints or 1-tuples; ``activation`` must stay None.
    """

    _nd = 1

    def __init__(self, *args, activation=None, **kwargs):
        if activation is not None:
            raise ValueError("Conv1d: a fused activation is only available for Conv2d")
        super().__init__(*args, **kwargs)

    def forward(self, input):
        return self._forward(F.conv1d, input)
