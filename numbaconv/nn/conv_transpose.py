"""Transposed convolution layer: ``ConvTranspose2d``, as PyTorch's."""

import math

from numbaconv import functional as F
from numbaconv.nn.conv import check_channels
from numbaconv.nn.module import Module, _factory, _uniform

__all__ = ["ConvTranspose2d"]


class ConvTranspose2d(Module):
    """2-D transposed convolution layer, as ``torch.nn.ConvTranspose2d``; forward is
    :func:`numbaconv.functional.conv_transpose2d`.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, output_padding, dilation : int or (int, int)
        ``output_padding`` must be smaller than the stride or the dilation (checked on forward,
        as in PyTorch); ``padding`` takes no strings.
    groups : int, dividing both channel counts
    bias : bool
    padding_mode : 'zeros' (the only mode, as in PyTorch's transposed convolutions)
    device : 'cpu', 'cuda' or None (the current device)
    dtype : float32 (default) or float64

    Attributes
    ----------
    weight : Parameter (in_channels, out_channels // groups, *kernel_size)
        U(+-1/sqrt(fan_in)) with PyTorch's fan_in for this layout, ``weight.shape[1] * KH * KW``
        (``out_channels // groups * KH * KW``): kaiming_uniform_(a=sqrt(5)).
    bias : Parameter (out_channels,) or None, same bound
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None):
        super().__init__()
        cls = type(self).__name__
        check_channels(cls, in_channels, out_channels, groups)
        if padding_mode != "zeros":
            raise ValueError(f"{cls}: only padding_mode='zeros' is supported for transposed "
                             f"convolutions, got {padding_mode!r}")
        if isinstance(padding, str):
            raise ValueError(f"{cls}: padding={padding!r} is not supported for transposed "
                             "convolutions; use an int or a tuple of ints")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = F._int_tuple(kernel_size, 2, cls, "kernel_size", 1)
        self.stride = F._int_tuple(stride, 2, cls, "stride", 1)
        self.padding = F._int_tuple(padding, 2, cls, "padding", 0)
        self.output_padding = F._int_tuple(output_padding, 2, cls, "output_padding", 0)
        self.dilation = F._int_tuple(dilation, 2, cls, "dilation", 1)
        self.padding_mode = padding_mode

        device, dtype = _factory(device, dtype)
        # torch's _calculate_fan_in_and_fan_out reads weight.shape[1] as the fan-in channels,
        # which for a transposed conv's (in, out // groups, kh, kw) weight is out // groups.
        fan_in = out_channels // groups * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = _uniform((in_channels, out_channels // groups) + self.kernel_size, bound,
                               device, dtype)
        if bias:
            self.bias = _uniform((out_channels,), bound, device, dtype)
        else:
            self.register_parameter("bias", None)

    def _output_padding(self, input, output_size):
        """``output_padding``, or the one that gives ``output_size`` (PyTorch's rule: the size
        must lie between the smallest output and that plus stride - 1)."""
        if output_size is None:
            return self.output_padding
        shape = tuple(input.shape)
        output_size = tuple(output_size)
        if len(output_size) == len(shape):
            output_size = output_size[-2:]
        if len(output_size) != 2:
            raise ValueError(f"ConvTranspose2D: for {len(shape)}D input, output_size must have 2 "
                             f"or {len(shape)} elements (got {len(output_size)})")
        mins = [(shape[-2 + d] - 1) * self.stride[d] - 2 * self.padding[d]
                + self.dilation[d] * (self.kernel_size[d] - 1) + 1 for d in range(2)]
        maxs = [m + s - 1 for m, s in zip(mins, self.stride)]
        for size, lo, hi in zip(output_size, mins, maxs):
            if not lo <= size <= hi:
                raise ValueError(f"requested an output size of {list(output_size)}, but valid "
                                 f"sizes range from {mins} to {maxs} (for an input of "
                                 f"{shape[-2:]})")
        return tuple(int(size) - lo for size, lo in zip(output_size, mins))

    def forward(self, input, output_size=None):
        """``conv_transpose2d(input)``; ``output_size`` ((H, W), or the full shape) picks the
        output_padding that gives that size, as in PyTorch."""
        x = self._input(input)
        output_padding = self._output_padding(x, output_size)
        self._save(x, output_padding)
        return F.conv_transpose2d(x, self.weight.data,
                                  None if self.bias is None else self.bias.data, self.stride,
                                  self.padding, output_padding, self.groups, self.dilation)

    def backward(self, grad_output):
        x, output_padding = self._saved_pop()
        gx, gw, gb = F.conv_transpose2d_backward(
            grad_output, x, self.weight.data, None if self.bias is None else self.bias.data,
            self.stride, self.padding, output_padding, self.groups, self.dilation)
        self._add_grad(self.weight, gw)
        self._add_grad(self.bias, gb)
        return gx

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
