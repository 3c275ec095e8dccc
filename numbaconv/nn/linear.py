"""``Linear`` and the shape-only layers ``Flatten``, ``Identity`` and ``Dropout``."""

import math
import numbers

from numbaconv import functional as F
from numbaconv.nn.module import Module, _factory, _uniform

__all__ = ["Dropout", "Flatten", "Identity", "Linear"]


class Linear(Module):
    """``y = x @ weight.T + bias``, as ``torch.nn.Linear``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    device : 'cpu', 'cuda' or None (the current device)
    dtype : float32 (default) or float64

    Attributes
    ----------
    weight : Parameter (out_features, in_features), U(+-1/sqrt(in_features))
    bias : Parameter (out_features,) or None, same init
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
                raise ValueError(f"Linear: {name} must be a non-negative int, got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        device, dtype = _factory(device, dtype)
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0
        self.weight = _uniform((out_features, in_features), bound, device, dtype)
        if bias:
            self.bias = _uniform((out_features,), bound, device, dtype)
        else:
            self.register_parameter("bias", None)

    def forward(self, input):
        x = self._input(input)
        self._save(x)
        return F.linear(x, self.weight.data, None if self.bias is None else self.bias.data)

    def backward(self, grad_output):
        x, = self._saved_pop()
        gx, gw, gb = F.linear_backward(grad_output, x, self.weight.data,
                                       None if self.bias is None else self.bias.data)
        self._add_grad(self.weight, gw)
        self._add_grad(self.bias, gb)
        return gx

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Flatten(Module):
    """Flatten dims ``start_dim`` .. ``end_dim`` into one (a view where the input allows it)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input):
        shape = tuple(input.shape)
        n = max(len(shape), 1)
        start, end = self.start_dim, self.end_dim
        if not (-n <= start < n and -n <= end < n):
            raise IndexError(f"Flatten: dims ({start}, {end}) are out of range for a "
                             f"{len(shape)}-D input of shape {shape}")
        start, end = start % n, end % n
        if start > end:
            raise ValueError(f"Flatten: start_dim ({self.start_dim}) comes after end_dim "
                             f"({self.end_dim}) for a {len(shape)}-D input")
        self._save(shape)
        if not shape:
            return input.reshape((1,))
        return input.reshape(shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:])

    def backward(self, grad_output):
        shape, = self._saved_pop()
        return grad_output.reshape(shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input; ignores constructor arguments, as ``torch.nn.Identity``."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input

    def backward(self, grad_output):
        return grad_output


class Dropout(Module):
    """Zeroes elements with probability ``p`` in training mode and scales the rest by
    ``1 / (1 - p)``; the identity in eval mode. The mask comes from NumPy's global RNG
    (``np.random.seed`` repeats it), see :func:`numbaconv.functional.dropout`.
    """

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"Dropout: probability p must be between 0 and 1, got {p!r}")
        self.p, self.inplace = float(p), inplace

    def forward(self, input):
        out, mask = F.dropout(input, self.p, self.training, return_mask=True)
        self._save(input, mask)
        return out

    def backward(self, grad_output):
        x, mask = self._saved_pop()
        gx, = F.dropout_backward(grad_output, x, self.p, mask is not None, mask=mask)
        return gx

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"
