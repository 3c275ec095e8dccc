"""Pooling layers, as PyTorch's; each forward is one call into :mod:`numbaconv.functional`."""

from numbaconv import functional as F
from numbaconv.nn.module import Module

__all__ = ["AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "MaxPool2d"]


class MaxPool2d(Module):
    """2-D max pooling, as ``torch.nn.MaxPool2d`` (``stride`` defaults to ``kernel_size``).

    ``return_indices=True`` is not supported (there is no ``MaxUnpool2d``); use
    :class:`AdaptiveMaxPool2d` or ``functional.adaptive_max_pool2d`` for indices.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        if return_indices:
            raise ValueError("MaxPool2d: return_indices=True is not supported")
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding, self.dilation, self.ceil_mode = padding, dilation, ceil_mode
        self.return_indices = False

    def forward(self, input):
        self._save(input)
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode)

    def backward(self, grad_output):
        x, = self._saved_pop()
        return F.max_pool2d_backward(grad_output, x, self.kernel_size, self.stride, self.padding,
                                     self.dilation, self.ceil_mode)[0]

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """2-D average pooling, as ``torch.nn.AvgPool2d`` (``divisor_override`` is not supported)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        if divisor_override is not None:
            raise ValueError("AvgPool2d: divisor_override is not supported; leave it None")
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = None

    def forward(self, input):
        self._save(input)
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)

    def backward(self, grad_output):
        x, = self._saved_pop()
        return F.avg_pool2d_backward(grad_output, x, self.kernel_size, self.stride, self.padding,
                                     self.ceil_mode, self.count_include_pad)[0]

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Adaptive 2-D average pooling to ``output_size`` (int, or (h, w) with None keeping a side)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input):
        self._save(input)
        return F.adaptive_avg_pool2d(input, self.output_size)

    def backward(self, grad_output):
        x, = self._saved_pop()
        return F.adaptive_avg_pool2d_backward(grad_output, x, self.output_size)[0]

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(Module):
    """Adaptive 2-D max pooling; with ``return_indices`` forward returns ``(values, indices)``."""

    def __init__(self, output_size, return_indices=False):
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, input):
        self._save(input)
        return F.adaptive_max_pool2d(input, self.output_size, self.return_indices)

    def backward(self, grad_output):
        """The input's gradient; with ``return_indices`` pass the gradient of the values only."""
        x, = self._saved_pop()
        return F.adaptive_max_pool2d_backward(grad_output, x, self.output_size)[0]

    def extra_repr(self):
        return f"output_size={self.output_size}"
