"""Activation layers, as PyTorch's; each forward is one call into :mod:`numbaconv.functional`.

``inplace=True`` is accepted for compatibility with PyTorch model code but never writes the
input: numbaconv's ops do not modify their inputs.
"""

from numbaconv import functional as F
from numbaconv.nn.module import Module

__all__ = ["GELU", "Hardswish", "LeakyReLU", "LogSoftmax", "ReLU", "ReLU6", "SiLU", "Sigmoid",
           "Softmax", "Tanh"]


class _Activation(Module):
    _op = None  # the functional op

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    @property
    def conv_activation(self):
        """This activation as conv2d's fused ``activation=`` argument (None when it has none)."""
        return self._op.__name__

    def forward(self, input):
        self._save(input)
        return type(self)._op(input)

    def backward(self, grad_output):
        x, = self._saved_pop()
        return self._backward_op(grad_output, x)

    def _backward_op(self, grad_output, x):
        return getattr(F, type(self)._op.__name__ + "_backward")(grad_output, x)[0]

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class ReLU(_Activation):
    """``max(x, 0)``."""
    _op = F.relu


class ReLU6(_Activation):
    """``min(max(x, 0), 6)``."""
    _op = F.relu6


class SiLU(_Activation):
    """``x * sigmoid(x)``."""
    _op = F.silu


class Hardswish(_Activation):
    """``x * relu6(x + 3) / 6``."""
    _op = F.hardswish


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``."""
    _op = F.sigmoid

    def __init__(self):
        super().__init__()


class Tanh(_Activation):
    """``tanh(x)``."""
    _op = F.tanh

    def __init__(self):
        super().__init__()


class LeakyReLU(_Activation):
    """``x`` where positive, ``negative_slope * x`` elsewhere."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__(inplace)
        self.negative_slope = negative_slope

    @property
    def conv_activation(self):
        return ("leaky_relu", float(self.negative_slope))

    def forward(self, input):
        self._save(input)
        return F.leaky_relu(input, self.negative_slope)

    def _backward_op(self, grad_output, x):
        return F.leaky_relu_backward(grad_output, x, self.negative_slope)[0]

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class GELU(_Activation):
    """Gaussian error linear unit; ``approximate='tanh'`` uses the tanh approximation."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate={approximate!r} is not valid; use 'none' or "
                             "'tanh'")
        self.approximate = approximate

    @property
    def conv_activation(self):
        return "gelu" if self.approximate == "none" else None

    def forward(self, input):
        self._save(input)
        return F.gelu(input, self.approximate)

    def _backward_op(self, grad_output, x):
        return F.gelu_backward(grad_output, x, self.approximate)[0]

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Softmax(Module):
    """Softmax over ``dim``."""

    conv_activation = None

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        if self.dim is None:
            raise ValueError("Softmax: construct it with the dim to normalise over, e.g. "
                             "Softmax(dim=1)")
        self._save(input)
        return F.softmax(input, self.dim)

    def backward(self, grad_output):
        x, = self._saved_pop()
        op = F.log_softmax_backward if isinstance(self, LogSoftmax) else F.softmax_backward
        return op(grad_output, x, self.dim)[0]

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """``log(softmax(x, dim))``, computed stably."""

    def forward(self, input):
        if self.dim is None:
            raise ValueError("LogSoftmax: construct it with the dim to normalise over, e.g. "
                             "LogSoftmax(dim=1)")
        self._save(input)
        return F.log_softmax(input, self.dim)
