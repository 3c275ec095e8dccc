"""Public ops with ``torch.nn.functional`` semantics, on NumPy or CUDA arrays.

Each op checks and normalises its arguments, works out the output shape, allocates the output on
the device where the data lives and calls that backend's launcher (``numbaconv.cpu`` or
``numbaconv.cuda``), which fills it. Layout is NCHW; inputs are float32 or float64 and the output
has the input's dtype. On CUDA the inference ops (``_HALF_OPS``) also take float16, computed with
float32 accumulation and rounded to float16 once per output. NumPy in gives NumPy out; a device
array in gives the same kind of device array out. Inputs are never modified.

Training: every differentiable op ``op`` has ``op_backward(grad_output, <op's own arguments>)``.
It always returns a tuple with one entry per array argument of ``op``, in order, even when there
is only one (``grad_input, = softmax_backward(g, x, dim)``): that argument's gradient, or None
where the argument was None or has no gradient (class-index targets). For a loss reduced to a
0-d value, ``grad_output`` is a number or a 0-d array (1.0 for ``loss.backward()``).
"""

import functools
import math
import numbers

import numpy as np

from numbaconv import _convshape, _cuda, _ops
from numbaconv import device as _device

__all__ = [
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "batch_norm", "conv1d", "conv2d",
    "cross_entropy", "gelu", "hardswish", "leaky_relu", "linear", "log_softmax", "max_pool2d",
    "mse_loss", "relu", "relu6", "sigmoid", "silu", "softmax", "tanh",
    # backward ops (training)
    "cross_entropy_backward", "linear_backward", "log_softmax_backward", "mse_loss_backward",
    "softmax_backward",
    # convolution training ops and the transposed convolution
    "conv1d_backward", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
    # pooling, activation and batch_norm training ops; dropout
    "adaptive_avg_pool2d_backward", "adaptive_max_pool2d_backward", "avg_pool2d_backward",
    "batch_norm_backward", "dropout", "dropout_backward", "gelu_backward", "hardswish_backward",
    "leaky_relu_backward", "max_pool2d_backward", "relu6_backward", "relu_backward",
    "sigmoid_backward", "silu_backward", "tanh_backward",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_FLOAT16 = np.dtype(np.float16)
# The ops that take float16 (on CUDA only): the forward ops of an inference network.
_HALF_OPS = ("conv1d, conv2d, linear, max/avg/adaptive pooling, the activations, softmax, "
             "log_softmax and batch_norm in eval mode")
_CONV_ACTIVATIONS = ("relu", "relu6", "leaky_relu", "sigmoid", "tanh", "silu", "gelu", "hardswish")
_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------------
# Dispatch: where the arrays live, conversion in and out
# --------------------------------------------------------------------------------------------

def _backend(device):
    if device == "cpu":
        from numbaconv import cpu

        return cpu
    from numbaconv import cuda

    return cuda


@functools.lru_cache(maxsize=64)
def _constant(device, dtype, size, value):
    # Kernels only read these (batch_norm's default weight and bias), so one copy serves all calls.
    a = np.full(size, value, dtype)
    return a if device == "cpu" else _cuda.to_device(a)


def _writable_view(a):
    """A writable view of read-only ``a`` (a layer's parameter) where its memory allows, else a
    copy. Kernels never write their inputs; this only spares Numba a second, read-only
    specialisation of every kernel (compile time)."""
    view = a.view()
    try:
        view.flags.writeable = True
    except ValueError:  # memory that really is read-only (np.broadcast_to, a read-only mmap)
        return a.copy()
    return view


def _not_an_array(op, name, a):
    """The TypeError message for argument ``name`` that is neither NumPy nor on the device,
    with what to pass instead."""
    what = f"{type(a).__module__}.{type(a).__name__}"
    if what.startswith("torch."):
        hint = (f"a CPU torch.Tensor: pass {name}.numpy() ({name}.detach().numpy() if it "
                "requires grad; no copy is made), or a CUDA tensor, which is used as it is")
    elif hasattr(a, "__array__") or isinstance(a, (list, tuple, numbers.Number)):
        hint = f"a {what}: pass np.asarray({name}, dtype=np.float32) (or float64)"
    else:
        hint = f"a {what}"
    return (f"{op}(): argument '{name}' must be a numpy.ndarray or a CUDA device array, but is "
            f"{hint}")


class _Call:
    """The arrays of one op call, placed on one device.

    ``arrays`` maps argument names to arrays; those named in ``optional`` may be ``None``. Device arrays (anything with
    ``__cuda_array_interface__``) are viewed as numba device arrays without copying; host arrays
    stay NumPy until :meth:`ready` moves them. Mixing host and device arrays is a ``ValueError``
    that names the arguments.
    """

    def __init__(self, op, optional=(), **arrays):
        self.op = op
        self.arrays = {}
        on_device, on_host = [], []
        for name, a in arrays.items():
            if a is None and name in optional:
                self.arrays[name] = None
            elif isinstance(a, np.ndarray):
                self.arrays[name] = a
                on_host.append(name)
            elif _cuda.is_device_array(a):
                self.arrays[name] = _cuda.as_device_array(a)
                on_device.append(name)
            else:
                raise TypeError(_not_an_array(op, name, a))
        if on_device and on_host:
            raise ValueError(
                f"{op}(): argument '{on_host[0]}' is a host (NumPy) array but '{on_device[0]}' "
                f"is on the CUDA device; move it first, e.g. nc.to_device({on_host[0]}, 'cuda')")
        self.device = "cuda" if on_device else _device.get_device()
        if self.device == "cuda":  # launches and copies go to the caller's stream
            _cuda.use_stream(_cuda.call_stream([arrays[n] for n in on_device]) if on_device
                             else 0)
        first = next(iter(arrays))
        self.template = arrays[first]  # the kind of array the caller gets back
        self.host_in = not on_device

    def __getitem__(self, name):
        return self.arrays[name]

    def float_dtype(self, name, half=False):
        """The dtype of float argument ``name``; TypeError unless float32/float64, or float16
        when ``half`` (the op is one of ``_HALF_OPS``) and the call runs on CUDA."""
        dt = self.arrays[name].dtype
        if dt in _FLOAT_DTYPES:
            return dt
        if dt == _FLOAT16:
            if half and self.device == "cuda":
                return dt
            where = ("the CPU backend does not support float16" if self.device == "cpu" else
                     f"{self.op} does not support float16")
            raise TypeError(f"{self.op}(): argument '{name}' is float16 and {where}: float16 is "
                            f"supported on CUDA for inference (forward) ops only ({_HALF_OPS}); "
                            "use float32 (x.astype(np.float32))")
        raise TypeError(f"{self.op}(): argument '{name}' has dtype {dt}; expected float32 or "
                        "float64")

    def same_dtype(self, dtype, *names):
        for name in names:
            a = self.arrays[name]
            if a is not None and a.dtype != dtype:
                raise TypeError(f"{self.op}(): argument '{name}' has dtype {a.dtype} but the input "
                                f"is {dtype}; both must have the same dtype")

    def ready(self, name):
        """Argument ``name`` as a C-contiguous array on the call's device (copied only if needed)."""
        a = self.arrays[name]
        if a is None:
            return None
        if self.device == "cpu":
            # A copy for non-contiguous and negative-stride views: kernels assume C order, and
            # the caller's array is never written.
            a = np.ascontiguousarray(a)
            if not a.flags.writeable:
                a = _writable_view(a)
            return a
        if isinstance(a, np.ndarray):
            return _cuda.to_device(a)
        if not a.is_c_contiguous():
            raise ValueError(f"{self.op}(): device argument '{name}' is not C-contiguous; pass a "
                             "contiguous copy (e.g. cupy.ascontiguousarray or tensor.contiguous())")
        return a

    def empty(self, shape, dtype):
        """Allocate an output on the call's device."""
        if self.device == "cpu":
            return np.empty(shape, dtype)
        return _cuda.empty(shape, dtype)

    def zeros(self, shape, dtype):
        """A new array of zeros on the call's device (degenerate shapes: no kernel runs)."""
        z = np.zeros(shape, dtype)
        return z if self.device == "cpu" else _cuda.to_device(z)

    def constant(self, size, dtype, value):
        """A 1-D array of ``value`` on the call's device, cached across calls: never write it."""
        return _constant(self.device, np.dtype(dtype).str, size, value)

    def finish(self, out):
        """Return ``out`` as the kind of array the caller passed in."""
        if self.device == "cpu":
            return out
        if self.host_in:
            return _cuda.to_host(out)
        result = _device.like(out, self.template)
        stream = _cuda.current_stream()
        # A numba result is bound to the call's stream, so the caller's next op queues there too
        # (PyTorch and CuPy results follow their library's current stream instead).
        return result.bind(stream) if result is out and stream else result


# --------------------------------------------------------------------------------------------
# Argument helpers (shared by every op)
# --------------------------------------------------------------------------------------------

def _int_tuple(value, n, op, name, minimum):
    """``value`` as a tuple of ``n`` ints, each >= ``minimum``: an int or a 1-tuple is repeated,
    as torch does."""
    one = value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value
    if isinstance(one, numbers.Integral) and not isinstance(one, bool):
        vals = (int(one),) * n
    elif isinstance(value, (tuple, list)) and len(value) == n and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        vals = tuple(int(v) for v in value)
    else:
        many = "" if n == 1 else f" or of {n} ints"
        raise TypeError(f"{op}(): {name} must be an int or a tuple of one int{many}, got "
                        f"{value!r}")
    if any(v < minimum for v in vals):
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{op}(): {name} must be {what}, got {value!r}")
    return vals


def _reshape(a, shape):
    """``a.reshape(shape)``, or ``a`` itself when it has that shape already: a numba device
    array's reshape builds a new array object, host time that counts in every small op."""
    return a if tuple(a.shape) == tuple(shape) else a.reshape(shape)


def _rank(call, name, ranks):
    a = call[name]
    if a.ndim not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{call.op}(): expected {want} '{name}', got {a.ndim}-D with shape "
                         f"{tuple(a.shape)}")


def _reduction(op, reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}(): reduction={reduction!r} is not valid; use one of "
                         f"{', '.join(map(repr, _REDUCTIONS))}")


def _dim(op, dim, ndim):
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool):
        raise TypeError(f"{op}(): dim must be an int, got {dim!r}")
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"{op}(): dim {dim} is out of range for a {ndim}-D input "
                         f"(expected in [{-n}, {n - 1}])")
    return dim % n


def _activation(op, activation):
    """(code, alpha) for conv2d's fused ``activation=``: a name, or ('leaky_relu', slope)."""
    if activation is None:
        return _ops.ACT_NONE, 0.0
    alpha = 0.01
    name = activation
    if isinstance(activation, tuple) and len(activation) == 2 and activation[0] == "leaky_relu":
        name, alpha = activation
    if not isinstance(name, str) or name not in _CONV_ACTIVATIONS:
        raise ValueError(f"{op}(): unknown activation {activation!r}; use None, one of "
                         f"{', '.join(map(repr, _CONV_ACTIVATIONS))}, or ('leaky_relu', slope)")
    return _ops.ACTIVATIONS[name], float(alpha)


# --------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------

# Host calls that passed every check keep their derived arguments here, keyed on everything the
# checks and the arithmetic read (types, shapes, dtypes, the other arguments), so that a repeat
# call (a layer in a loop) skips straight to the launcher.
_CONV_PLANS = {}
_CONV_PLANS_MAX = 1024
_CPU = []  # the cpu backend module, imported on first use


def _plain(v):
    """``v`` when it is an int, a str or a tuple of ints, by exact type (``True`` is not ``1``
    here, nor is a NumPy integer), for a cache key; else None."""
    t = type(v)
    if t is int or t is str:
        return v
    if t is tuple:
        for e in v:
            if type(e) is not int:
                return None
        return v
    return None


def _conv_key(op, input, weight, bias, stride, padding, dilation, groups, activation, residual):
    """The fast-path key of a conv call with host arrays, or None when it has none."""
    if type(input) is not np.ndarray or type(weight) is not np.ndarray:
        return None
    if bias is None:
        bk = None
    elif type(bias) is np.ndarray:
        bk = (bias.shape, bias.dtype)
    else:
        return None
    if residual is None:
        rk = None
    elif type(residual) is np.ndarray:
        rk = (residual.shape, residual.dtype)
    else:
        return None
    s, p, d = _plain(stride), _plain(padding), _plain(dilation)
    if s is None or p is None or d is None or type(groups) is not int:
        return None
    key = (op, input.shape, input.dtype, weight.shape, weight.dtype, bk, rk, s, p, d, groups,
           activation)
    try:
        hash(key)
    except TypeError:  # an unhashable activation: the checks will say what is wrong
        return None
    return key


def _host(a):
    """:meth:`_Call.ready` for a host array on the CPU."""
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:
        a = _writable_view(a)
    return a


def _conv_host(plan, input, weight, bias, residual):
    """Run a checked conv call on the CPU from its plan (see :func:`_conv`)."""
    alloc, dtype, xshape, wshape, out_shape, stride, pad, dilation, groups, act, alpha = plan
    out = np.empty(alloc, dtype)
    if out.size:
        if not _CPU:
            from numbaconv import cpu

            _CPU.append(cpu)
        x = _host(input)
        if x.shape != xshape:
            x = x.reshape(xshape)
        w = _host(weight)
        if w.shape != wshape:
            w = w.reshape(wshape)
        res = None
        if residual is not None:
            res = _host(residual)
            if res.shape != alloc:
                res = res.reshape(alloc)
        _CPU[0].conv2d(out, x, w, None if bias is None else _host(bias), res, stride, pad,
                       dilation, groups, act, alpha)
    return out if alloc == out_shape else out.reshape(out_shape)


def _conv(op, nd, input, weight, bias, stride, padding, dilation, groups, activation,
          residual=None):
    """Shared body of conv1d (nd=1, run as a conv2d with height 1) and conv2d (nd=2)."""
    key = _conv_key(op, input, weight, bias, stride, padding, dilation, groups, activation,
                    residual)
    if key is not None:
        plan = _CONV_PLANS.get(key)
        if plan is not None and _device.get_device() == "cpu":
            return _conv_host(plan, input, weight, bias, residual)
    call = _Call(op, ("bias", "residual"), input=input, weight=weight, bias=bias,
                 residual=residual)
    act, alpha = _activation(op, activation)
    _rank(call, "input", (nd + 1, nd + 2))
    _rank(call, "weight", (nd + 2,))
    dtype = call.float_dtype("input", half=True)
    call.same_dtype(dtype, "weight", "bias", "residual")
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}(): groups must be a positive int, got {groups!r}")
    stride = _int_tuple(stride, nd, op, "stride", 1)
    dilation = _int_tuple(dilation, nd, op, "dilation", 1)

    xs = tuple(call["input"].shape)
    batched = len(xs) == nd + 2
    if not batched:
        xs = (1,) + xs
    ws = tuple(call["weight"].shape)
    n, c, spatial = xs[0], xs[1], xs[2:]
    oc, cpg, ksize = ws[0], ws[1], ws[2:]
    if oc % groups:
        raise ValueError(f"{op}(): out_channels ({oc}, weight.shape[0]) must be divisible by "
                         f"groups={groups}")
    if cpg * groups != c:
        raise ValueError(f"{op}(): input has {c} channels but weight of shape {ws} with "
                         f"groups={groups} expects {cpg * groups} (= weight.shape[1] * groups)")
    if call["bias"] is not None and tuple(call["bias"].shape) != (oc,):
        raise ValueError(f"{op}(): bias must have shape ({oc},) to match weight's out_channels, "
                         f"got {tuple(call['bias'].shape)}")

    # Padding as (before, after) per spatial dim; 'same' may be asymmetric, like torch's.
    if isinstance(padding, str):
        if padding == "valid":
            pads = [(0, 0)] * nd
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{op}(): padding='same' is not supported for strided "
                                 "convolutions (stride must be 1)")
            pads = []
            for k, d in zip(ksize, dilation):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))
        else:
            raise ValueError(f"{op}(): padding={padding!r} is not valid; use 'same', 'valid', an "
                             f"int or a tuple of {nd} ints")
    else:
        pads = [(p, p) for p in _int_tuple(padding, nd, op, "padding", 0)]

    out_spatial = []
    for size, k, s, d, (pb, pa) in zip(spatial, ksize, stride, dilation, pads):
        extent = d * (k - 1) + 1
        if size + pb + pa < extent:
            raise ValueError(
                f"{op}(): padded input size per channel {tuple(sp + a + b for sp, (a, b) in zip(spatial, pads))} "
                f"is smaller than the dilated kernel size "
                f"{tuple(dd * (kk - 1) + 1 for kk, dd in zip(ksize, dilation))}")
        out_spatial.append((size + pb + pa - extent) // s + 1)

    if nd == 1:  # run conv1d as conv2d over a height-1 image
        stride, dilation = (1,) + stride, (1,) + dilation
        pads = [(0, 0)] + pads
        ksize, spatial, out_spatial = (1,) + ksize, (1,) + spatial, [1] + out_spatial

    out_shape = (n, oc) + tuple(out_spatial[-nd:])
    if not batched:
        out_shape = out_shape[1:]
    if call["residual"] is not None and tuple(call["residual"].shape) != out_shape:
        raise ValueError(f"{op}(): residual must have the output's shape {out_shape}, got "
                         f"{tuple(call['residual'].shape)}")
    if call.device == "cpu":
        plan = ((n, oc) + tuple(out_spatial), dtype, (n, c) + tuple(spatial),
                (oc, cpg) + tuple(ksize), out_shape, stride, (pads[0][0], pads[1][0]), dilation,
                groups, act, alpha)
        if key is not None:
            if len(_CONV_PLANS) >= _CONV_PLANS_MAX:
                _CONV_PLANS.clear()
            _CONV_PLANS[key] = plan
        return _conv_host(plan, input, weight, bias, residual)
    out = call.empty((n, oc) + tuple(out_spatial), dtype)
    if out.size:
        x = _reshape(call.ready("input"), (n, c) + tuple(spatial))
        w = _reshape(call.ready("weight"), (oc, cpg) + tuple(ksize))
        res = call.ready("residual")
        if res is not None:
            res = _reshape(res, out.shape)
        _backend(call.device).conv2d(out, x, w, call.ready("bias"), res, stride,
                                     (pads[0][0], pads[1][0]), dilation, groups, act, alpha)
    return call.finish(_reshape(out, out_shape))


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           activation=None, residual=None):
    """2-D convolution over an NCHW input, as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    input : array (N, C, H, W) or (C, H, W), float32 or float64
    weight : array (OC, C // groups, KH, KW), same dtype
    bias : array (OC,) or None
    stride, dilation : int or (int, int), positive
    padding : int, (int, int), 'same' or 'valid'
        'same' pads like PyTorch (the extra row/column of an even kernel goes after).
    groups : int
        ``C`` and ``OC`` must both be divisible by it; ``groups == C`` is depthwise.
    activation : None, str or ('leaky_relu', slope), keyword-only
        Applied after the bias inside the kernel: one of 'relu', 'relu6', 'leaky_relu',
        'sigmoid', 'tanh', 'silu', 'gelu', 'hardswish'.
    residual : array shaped as the output, or None, keyword-only
        Added after the bias and before the activation, as in a ResNet block's
        ``relu(bn(conv(x)) + identity)``; never modified.

    Returns
    -------
    array (N, OC, OH, OW), with ``OH = (H + pad_top + pad_bottom - dilation*(KH-1) - 1) // stride + 1``.

    Examples
    --------
    >>> x = np.random.rand(1, 3, 32, 32).astype(np.float32)
    >>> w = np.random.rand(8, 3, 3, 3).astype(np.float32)
    >>> F.conv2d(x, w, padding=1, activation="relu").shape
    (1, 8, 32, 32)
    """
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups, activation,
                 residual)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D convolution over an NCL input, as ``torch.nn.functional.conv1d``.

    Parameters
    ----------
    input : array (N, C, L) or (C, L), float32 or float64
    weight : array (OC, C // groups, K)
    bias : array (OC,) or None
    stride, padding, dilation, groups
        As in :func:`conv2d`, with ints or 1-tuples (padding also 'same' or 'valid').

    Returns
    -------
    array (N, OC, OL)
    """
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups, None)


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------

def _pool_out(op, size, k, s, p, d, ceil_mode):
    """PyTorch's pooling output length (pooling_output_shape)."""
    extent = d * (k - 1) + 1
    numer = size + 2 * p - extent + ((s - 1) if ceil_mode else 0)
    out = numer // s + 1
    # With ceil_mode the last window must start inside the input or its left padding.
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_setup(op, input, kernel_size, stride, padding, dilation, ceil_mode, half=False):
    """Check a pooling call's input and window (``half``: the forward, which takes float16)."""
    call = _Call(op, input=input)
    _rank(call, "input", (3, 4))
    dtype = call.float_dtype("input", half=half)
    k = _int_tuple(kernel_size, 2, op, "kernel_size", 1)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else \
        _int_tuple(stride, 2, op, "stride", 1)
    p = _int_tuple(padding, 2, op, "padding", 0)
    d = _int_tuple(dilation, 2, op, "dilation", 1)
    for kk, pp in zip(k, p):
        if pp > kk // 2:
            raise ValueError(f"{op}(): padding should be at most half of the kernel size, got "
                             f"padding={p} for kernel_size={k}")
    shape = tuple(call["input"].shape)
    if any(v == 0 for v in shape[-3:]):
        raise ValueError(f"{op}(): expected non-empty spatial and channel dims, got input of "
                         f"shape {shape}")
    out_hw = tuple(_pool_out(op, size, kk, ss, pp, dd, ceil_mode)
                   for size, kk, ss, pp, dd in zip(shape[-2:], k, s, p, d))
    if min(out_hw) < 1:
        raise ValueError(f"{op}(): input of spatial size {shape[-2:]} gives output size "
                         f"{out_hw}, which is too small (kernel_size={k}, stride={s}, "
                         f"padding={p}, dilation={d})")
    return call, dtype, k, s, p, d, shape, out_hw


def _run_pool(call, dtype, shape, out_hw, launch):
    """Allocate the pooled output, run ``launch(out4, x4)`` on 4-D views, restore the rank."""
    n, c = (1,) + shape[:1] if len(shape) == 3 else shape[:2]
    out = call.empty((n, c) + out_hw, dtype)
    if out.size:
        launch(out, _reshape(call.ready("input"), (n, c) + shape[-2:]))
    return call.finish(_reshape(out, shape[:-2] + out_hw))


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.

    Parameters
    ----------
    input : array (N, C, H, W) or (C, H, W)
    kernel_size : int or (int, int)
    stride : int, (int, int) or None (= kernel_size)
    padding : int or (int, int), at most half the kernel size; pads with -inf
    dilation : int or (int, int)
    ceil_mode : bool
        Round the output size up instead of down.

    Returns
    -------
    array (N, C, OH, OW). NaN in a window gives NaN.
    """
    call, dtype, k, s, p, d, shape, out_hw = _pool_setup(
        "max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode, half=True)
    be = _backend(call.device)
    return _run_pool(call, dtype, shape, out_hw,
                     lambda out, x: be.max_pool2d(out, x, k, s, p, d))


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d``.

    Parameters
    ----------
    input : array (N, C, H, W) or (C, H, W)
    kernel_size : int or (int, int)
    stride : int, (int, int) or None (= kernel_size)
    padding : int or (int, int), at most half the kernel size; pads with zeros
    ceil_mode : bool
    count_include_pad : bool
        Whether zero padding counts in the divisor.

    Returns
    -------
    array (N, C, OH, OW)
    """
    call, dtype, k, s, p, _, shape, out_hw = _pool_setup(
        "avg_pool2d", input, kernel_size, stride, padding, 1, ceil_mode, half=True)
    be = _backend(call.device)
    return _run_pool(call, dtype, shape, out_hw,
                     lambda out, x: be.avg_pool2d(out, x, k, s, p, bool(count_include_pad)))


def _adaptive_size(op, output_size, shape):
    """The (OH, OW) of an adaptive pooling of an input of ``shape``: an int or a pair, None
    keeping that size, 0 giving an empty output (as torch)."""
    if isinstance(output_size, numbers.Integral) and not isinstance(output_size, bool):
        output_size = (output_size, output_size)
    if not (isinstance(output_size, (tuple, list)) and len(output_size) == 2 and all(
            v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool))
            for v in output_size)):
        raise TypeError(f"{op}(): output_size must be an int or a tuple of 2 ints (or None), "
                        f"got {output_size!r}")
    out_hw = tuple(shape[-2 + i] if v is None else int(v) for i, v in enumerate(output_size))
    if min(out_hw) < 0:
        raise ValueError(f"{op}(): output_size must be non-negative, got {output_size!r}")
    if min(shape[-2:]) < 1 or (len(shape) == 4 and shape[1] < 1):
        raise ValueError(f"{op}(): expected non-empty spatial and channel dims, got input of "
                         f"shape {shape}")
    return out_hw


def _adaptive(op, input, output_size, launcher):
    call = _Call(op, input=input)
    _rank(call, "input", (3, 4))
    dtype = call.float_dtype("input", half=True)
    shape = tuple(call["input"].shape)
    out_hw = _adaptive_size(op, output_size, shape)
    be = _backend(call.device)
    return _run_pool(call, dtype, shape, out_hw, lambda out, x: getattr(be, launcher)(out, x))


def adaptive_avg_pool2d(input, output_size):
    """Adaptive 2-D average pooling, as ``torch.nn.functional.adaptive_avg_pool2d``.

    Output cell ``i`` averages rows ``floor(i*H/OH)`` to ``ceil((i+1)*H/OH)`` (and likewise for
    columns). ``output_size`` is an int or a pair whose entries may be None (keep that size).
    """
    return _adaptive("adaptive_avg_pool2d", input, output_size, "adaptive_avg_pool2d")


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Adaptive 2-D max pooling, as ``torch.nn.functional.adaptive_max_pool2d``.

    ``return_indices=True`` is not supported yet and raises ``NotImplementedError``.
    """
    if return_indices:
        raise NotImplementedError("adaptive_max_pool2d(): return_indices=True is not supported")
    return _adaptive("adaptive_max_pool2d", input, output_size, "adaptive_max_pool2d")


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------

def _elementwise(op, input, act, alpha=0.0):
    call = _Call(op, input=input)
    dtype = call.float_dtype("input", half=True)
    shape = tuple(call["input"].shape)
    size = int(math.prod(shape))
    out = call.empty(shape, dtype)
    if size:
        _backend(call.device).activation(out.reshape((size,)),
                                         call.ready("input").reshape((size,)), act, float(alpha))
    return call.finish(out)


def relu(input):
    """``max(x, 0)`` elementwise; NaN stays NaN."""
    return _elementwise("relu", input, _ops.ACT_RELU)


def relu6(input):
    """``min(max(x, 0), 6)`` elementwise."""
    return _elementwise("relu6", input, _ops.ACT_RELU6)


def leaky_relu(input, negative_slope=0.01):
    """``x if x >= 0 else negative_slope * x`` elementwise."""
    if not isinstance(negative_slope, numbers.Real):
        raise TypeError(f"leaky_relu(): negative_slope must be a number, got {negative_slope!r}")
    return _elementwise("leaky_relu", input, _ops.ACT_LEAKY_RELU, negative_slope)


def sigmoid(input):
    """``1 / (1 + exp(-x))`` elementwise, without overflow for large ``|x|``."""
    return _elementwise("sigmoid", input, _ops.ACT_SIGMOID)


def tanh(input):
    """Hyperbolic tangent elementwise."""
    return _elementwise("tanh", input, _ops.ACT_TANH)


def silu(input):
    """``x * sigmoid(x)`` elementwise."""
    return _elementwise("silu", input, _ops.ACT_SILU)


def gelu(input, approximate="none"):
    """Gaussian error linear unit; ``approximate='tanh'`` uses the tanh formula, as in PyTorch."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu(): approximate={approximate!r} is not valid; use 'none' or 'tanh'")
    return _elementwise("gelu", input, _ops.ACT_GELU if approximate == "none" else
                        _ops.ACT_GELU_TANH)


def hardswish(input):
    """``x * relu6(x + 3) / 6`` elementwise."""
    return _elementwise("hardswish", input, _ops.ACT_HARDSWISH)


# --------------------------------------------------------------------------------------------
# Sums and channel concatenation (private: what the layers need for skip connections, Fire
# modules and gradient accumulation; torch has them as tensor methods, not in functional)
# --------------------------------------------------------------------------------------------

def _add(a, b, activation=None):
    """``activation(a + b)`` elementwise for same-shaped, same-dtype arrays on one device.

    ``activation`` is as :func:`conv2d`'s. One pass; the sum rounds once, as ``a + b``.
    """
    call = _Call("add", a=a, b=b)
    dtype = call.float_dtype("a", half=True)
    call.same_dtype(dtype, "b")
    shape = tuple(call["a"].shape)
    if tuple(call["b"].shape) != shape:
        raise ValueError(f"add(): the shapes differ, {shape} and {tuple(call['b'].shape)}; "
                         "broadcasting is not supported")
    act, alpha = _activation("add", activation)
    size = int(math.prod(shape))
    out = call.empty(shape, dtype)
    if size:
        _backend(call.device).add(out.reshape((size,)), call.ready("a").reshape((size,)),
                                  call.ready("b").reshape((size,)), act, alpha)
    return call.finish(out)


def _accumulate(out, x):
    """``out += x`` in place: ``out`` is a C-contiguous array this library owns (a gradient),
    ``x`` an array of the same shape and dtype on the same device."""
    if tuple(out.shape) != tuple(x.shape) or np.dtype(out.dtype) != np.dtype(x.dtype):
        raise ValueError(f"accumulate(): cannot add a {x.dtype} array of shape "
                         f"{tuple(x.shape)} into a {out.dtype} array of shape {tuple(out.shape)}")
    size = int(math.prod(tuple(out.shape)))
    if not size:
        return
    if isinstance(out, np.ndarray):
        # Host arrays are summed on the host, whatever the current device.
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("accumulate(): the target must be a writable C-contiguous array")
        flat = out.reshape((size,))
        _backend("cpu").add(flat, flat, np.ascontiguousarray(_device.to_numpy(x)).reshape((size,)),
                            _ops.ACT_NONE, 0.0)
        return
    _cuda.use_stream(_cuda.call_stream([out, x] if _cuda.is_device_array(x) else [out]))
    d_out = _cuda.as_device_array(out)
    d_x = _cuda.as_device_array(x) if _cuda.is_device_array(x) else _cuda.to_device(
        np.ascontiguousarray(x))
    if not d_out.is_c_contiguous() or not d_x.is_c_contiguous():
        raise ValueError("accumulate(): device arrays must be C-contiguous")
    flat = d_out.reshape((size,))
    _backend("cuda").add(flat, flat, d_x.reshape((size,)), _ops.ACT_NONE, 0.0)


def _cat_channels(a, b):
    """``torch.cat([a, b], 1)`` for (N, C, ...) arrays of one dtype on one device."""
    call = _Call("cat", a=a, b=b)
    dtype = call.float_dtype("a", half=True)  # a copy: exact in any dtype
    call.same_dtype(dtype, "b")
    sa, sb = tuple(call["a"].shape), tuple(call["b"].shape)
    if len(sa) < 2 or len(sa) != len(sb) or sa[0] != sb[0] or sa[2:] != sb[2:]:
        raise ValueError(f"cat(): shapes {sa} and {sb} differ outside dim 1")
    out = call.empty((sa[0], sa[1] + sb[1]) + sa[2:], dtype)
    out[:, :sa[1]] = call.ready("a")  # strided copies (numba's on the device)
    out[:, sa[1]:] = call.ready("b")
    return call.finish(out)


def _split_channels(x, c):
    """``(x[:, :c], x[:, c:])`` as C-contiguous arrays on ``x``'s device (cat's backward)."""
    call = _Call("split", x=x)
    dtype = call.float_dtype("x")
    s = tuple(call["x"].shape)
    if len(s) < 2 or not 0 <= c <= s[1]:
        raise ValueError(f"split(): cannot split {s[1] if len(s) > 1 else None} channels at {c}")
    full = call.ready("x")
    first, second = call.empty((s[0], c) + s[2:], dtype), call.empty((s[0], s[1] - c) + s[2:],
                                                                     dtype)
    first[...] = full[:, :c]
    second[...] = full[:, c:]
    return call.finish(first), call.finish(second)


# --------------------------------------------------------------------------------------------
# Dense
# --------------------------------------------------------------------------------------------

def linear(input, weight, bias=None):
    """``input @ weight.T + bias``, as ``torch.nn.functional.linear``.

    Parameters
    ----------
    input : array (..., K), any number of leading dims (also 1-D)
    weight : array (M, K) or (K,)
    bias : array (M,) or None; only with a 2-D weight, as in torch

    Returns
    -------
    array (..., M), or (...) for a 1-D weight.
    """
    call = _Call("linear", ("bias",), input=input, weight=weight, bias=bias)
    _rank(call, "input", tuple(range(1, 33)))
    _rank(call, "weight", (1, 2))
    dtype = call.float_dtype("input", half=True)
    call.same_dtype(dtype, "weight", "bias")
    xs, ws = tuple(call["input"].shape), tuple(call["weight"].shape)
    vector_weight = len(ws) == 1
    m, k = (1, ws[0]) if vector_weight else ws
    if xs[-1] != k:
        raise ValueError(f"linear(): input's last dim is {xs[-1]} but weight of shape {ws} "
                         f"expects {k} in_features")
    if call["bias"] is not None:
        if vector_weight:
            raise ValueError("linear(): a bias needs a 2-D weight (out_features, in_features); "
                             f"got a 1-D weight of shape {ws}")
        if tuple(call["bias"].shape) != (m,):
            raise ValueError(f"linear(): bias of shape {tuple(call['bias'].shape)} does not match "
                             f"weight of shape {ws}; expected ({m},)")
    rows = int(math.prod(xs[:-1]))
    out = call.empty((rows, m), dtype)
    if out.size:
        b = call.ready("bias")
        _backend(call.device).linear(out, _reshape(call.ready("input"), (rows, k)),
                                     _reshape(call.ready("weight"), (m, k)),
                                     None if b is None else _reshape(b, (m,)))
    return call.finish(_reshape(out, xs[:-1] + (() if vector_weight else (m,))))


def _softmax(op, input, dim, log):
    call = _Call(op, input=input)
    dtype = call.float_dtype("input", half=True)
    shape = tuple(call["input"].shape)
    dim = _dim(op, dim, len(shape))
    full = shape if shape else (1,)
    outer = int(math.prod(full[:dim]))
    inner = int(math.prod(full[dim + 1:]))
    out = call.empty(shape, dtype)
    if out.size:
        d3 = (outer, full[dim], inner)
        _backend(call.device).softmax(out.reshape(d3), call.ready("input").reshape(d3), log)
    return call.finish(out)


def softmax(input, dim):
    """Softmax along ``dim`` (any dim, negative allowed), stable for inputs up to ±1e30."""
    return _softmax("softmax", input, dim, False)


def log_softmax(input, dim):
    """``log(softmax(input, dim))`` computed without forming the softmax, stable at ±1e30."""
    return _softmax("log_softmax", input, dim, True)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalisation with running statistics, as ``torch.nn.functional.batch_norm``.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel (dim 1).

    Parameters
    ----------
    input : array (N, C, ...) with at least 2 dims
    running_mean, running_var : arrays (C,)
    weight, bias : arrays (C,) or None (ones / zeros)
    training : bool
        Training mode normalises with the batch's own mean and biased variance over all dims
        but 1, and, when the running statistics are given (they may be None here), updates
        them in place as PyTorch does: ``r = (1 - momentum) * r + momentum * batch`` with the
        unbiased variance for ``running_var``. Needs more than one value per channel.
    momentum : float
        Only used in training mode; None (torch's cumulative average) raises ``TypeError``
        here, since it needs the batch count that ``nn.BatchNorm2d`` keeps.
    eps : float
        Added to the variance for stability.
    """
    training = bool(training)
    if training:
        _check_momentum("batch_norm", momentum)
    call = _Call("batch_norm", _BN_ARRAYS if training else ("weight", "bias"), input=input,
                 running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    dtype, shape, n, c, s = _batch_norm_args(call, training, momentum, eps, half=not training)
    if training:
        return _batch_norm_train(call, dtype, shape, n, c, s, momentum, eps)
    out = call.empty(shape, dtype)
    if out.size:
        weight = call.ready("weight") if call["weight"] is not None else call.constant(c, dtype, 1)
        bias = call.ready("bias") if call["bias"] is not None else call.constant(c, dtype, 0)
        _backend(call.device).batch_norm(
            out.reshape((shape[0], c, s)), call.ready("input").reshape((shape[0], c, s)),
            call.ready("running_mean"), call.ready("running_var"), weight, bias, float(eps))
    return call.finish(out)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------

def _reduce(call, per_item, dtype, reduction, count):
    """Apply ``reduction`` to the per-item losses; 'mean' divides by ``count``."""
    if reduction == "none":
        return call.finish(per_item)
    out = call.empty((1,), dtype)
    size = int(math.prod(per_item.shape))
    if reduction == "mean" and count == 0:
        scale = float("nan")  # mean of nothing, as torch
    else:
        scale = 1.0 / count if reduction == "mean" else 1.0
    if size:
        _backend(call.device).reduce_sum(out, per_item.reshape((size,)), scale)
    elif call.device == "cpu":
        out[0] = 0.0 * scale
    else:
        out = _cuda.to_device(np.array([0.0 * scale], dtype))
    return call.finish(out.reshape(()))


def cross_entropy(input, target, reduction="mean"):
    """Cross-entropy between logits and targets, as ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    input : array (N, C), (N, C, d1, ...) or (C,) of logits
    target : int array (N,), (N, d1, ...) or () of class indices in [0, C), or a float array of
        the input's shape holding class probabilities
    reduction : 'mean' | 'sum' | 'none'

    Returns
    -------
    0-d array for 'mean' and 'sum' (input dtype); (N, d1, ...) for 'none'.

    Notes
    -----
    ``weight``, ``ignore_index`` and ``label_smoothing`` are not supported: every class index
    must lie in [0, C), so torch's ignore value -100 raises a ValueError here.
    """
    _reduction("cross_entropy", reduction)
    call = _Call("cross_entropy", input=input, target=target)
    dtype, xs, n, c, s, batched, prob, host_t = _cross_entropy_args(call)
    tdtype = call["target"].dtype
    per_item = call.empty((n, s), dtype)
    if per_item.size:
        x = call.ready("input").reshape((n, c, s))
        be = _backend(call.device)
        if prob:
            be.cross_entropy_prob(per_item, x, call.ready("target").reshape((n, c, s)))
        else:
            if call.device == "cpu":
                t = np.ascontiguousarray(host_t, dtype=np.int64)
            elif tdtype == np.int64 and not call.host_in:
                t = call.ready("target")
            else:
                t = _cuda.to_device(host_t.astype(np.int64))
            be.cross_entropy(per_item, x, t.reshape((n, s)))
    if reduction == "none":
        return call.finish(per_item.reshape((xs[:1] + xs[2:]) if batched else ()))
    return _reduce(call, per_item, dtype, reduction, n * s)


def mse_loss(input, target, reduction="mean"):
    """Mean squared error, as ``torch.nn.functional.mse_loss``.

    ``input`` and ``target`` must have the same shape (no broadcasting) and dtype.
    Returns a 0-d array for 'mean' and 'sum', and the elementwise squared errors for 'none'.
    """
    _reduction("mse_loss", reduction)
    call = _Call("mse_loss", input=input, target=target)
    dtype = call.float_dtype("input")
    call.same_dtype(dtype, "target")
    shape = tuple(call["input"].shape)
    if tuple(call["target"].shape) != shape:
        raise ValueError(f"mse_loss(): target shape {tuple(call['target'].shape)} differs from "
                         f"input shape {shape}; they must be equal (no broadcasting)")
    size = int(math.prod(shape))
    per_item = call.empty(shape, dtype)
    if size:
        _backend(call.device).squared_error(per_item.reshape((size,)),
                                            call.ready("input").reshape((size,)),
                                            call.ready("target").reshape((size,)))
    return _reduce(call, per_item, dtype, reduction, size)


# --------------------------------------------------------------------------------------------
# Backward ops (training): F.<op>_backward(grad_output, <op's arguments>) returns a tuple with
# one entry per array argument of the op, in order: its gradient, or None.
# --------------------------------------------------------------------------------------------

def _check_grad_output(call, shape, dtype, forward):
    """``grad_output`` must have the shape of ``forward``'s output and the input's dtype."""
    call.same_dtype(dtype, "grad_output")
    got = tuple(call["grad_output"].shape)
    if got != tuple(shape):
        raise ValueError(f"{call.op}(): grad_output has shape {got} but {forward}() gives an "
                         f"output of shape {tuple(shape)}; they must be equal")


def _scalar_grad(op, grad_output, reduction):
    """The gradient of a reduced (0-d) loss as a float: a number or a 0-d array."""
    if isinstance(grad_output, numbers.Real) and not isinstance(grad_output, bool):
        return float(grad_output)
    if isinstance(grad_output, np.ndarray) or _cuda.is_device_array(grad_output):
        if tuple(grad_output.shape) == ():
            return float(_device.to_numpy(grad_output))
        raise ValueError(f"{op}(): with reduction={reduction!r} the loss is 0-d, so grad_output "
                         f"must be a number or a 0-d array, got shape "
                         f"{tuple(grad_output.shape)}")
    raise TypeError(f"{op}(): grad_output must be a number or a 0-d array with "
                    f"reduction={reduction!r}, not {type(grad_output).__name__}")


def _linear_args(call):
    """Check linear's input, weight and bias as :func:`linear` does; return
    (dtype, input shape, weight shape, out_features, in_features, vector_weight)."""
    op = call.op
    _rank(call, "input", tuple(range(1, 33)))
    _rank(call, "weight", (1, 2))
    dtype = call.float_dtype("input")
    call.same_dtype(dtype, "weight", "bias")
    xs, ws = tuple(call["input"].shape), tuple(call["weight"].shape)
    vector_weight = len(ws) == 1
    m, k = (1, ws[0]) if vector_weight else ws
    if xs[-1] != k:
        raise ValueError(f"{op}(): input's last dim is {xs[-1]} but weight of shape {ws} "
                         f"expects {k} in_features")
    if call["bias"] is not None:
        if vector_weight:
            raise ValueError(f"{op}(): a bias needs a 2-D weight (out_features, in_features); "
                             f"got a 1-D weight of shape {ws}")
        if tuple(call["bias"].shape) != (m,):
            raise ValueError(f"{op}(): bias of shape {tuple(call['bias'].shape)} does not match "
                             f"weight of shape {ws}; expected ({m},)")
    return dtype, xs, ws, m, k, vector_weight


def linear_backward(grad_output, input, weight, bias=None):
    """Gradients of :func:`linear`: ``(grad_input, grad_weight, grad_bias)``.

    Parameters
    ----------
    grad_output : array shaped as ``linear(input, weight, bias)``, the input's dtype
    input, weight, bias : as in :func:`linear`

    Returns
    -------
    tuple
        ``grad_input = grad_output @ weight`` (input's shape), ``grad_weight = grad_output.T @
        input`` over all leading dims (weight's shape), and ``grad_bias = grad_output`` summed
        over all leading dims, or None when ``bias`` is None.
    """
    call = _Call("linear_backward", ("bias",), input=input, grad_output=grad_output,
                 weight=weight, bias=bias)
    dtype, xs, ws, m, k, vector_weight = _linear_args(call)
    _check_grad_output(call, xs[:-1] + (() if vector_weight else (m,)), dtype, "linear")
    rows = int(math.prod(xs[:-1]))
    gx = call.empty((rows, k), dtype)
    gw = call.empty((m, k), dtype)
    gb = call.empty((m,), dtype) if call["bias"] is not None else None
    _backend(call.device).linear_backward(
        gx, gw, gb, call.ready("grad_output").reshape((rows, m)),
        call.ready("input").reshape((rows, k)), call.ready("weight").reshape((m, k)))
    return (call.finish(gx.reshape(xs)), call.finish(gw.reshape(ws)),
            None if gb is None else call.finish(gb))


def _softmax_backward(op, forward, grad_output, input, dim, log):
    call = _Call(op, input=input, grad_output=grad_output)
    dtype = call.float_dtype("input")
    shape = tuple(call["input"].shape)
    dim = _dim(op, dim, len(shape))
    _check_grad_output(call, shape, dtype, forward)
    full = shape if shape else (1,)
    d3 = (int(math.prod(full[:dim])), full[dim], int(math.prod(full[dim + 1:])))
    gx = call.empty(shape, dtype)
    if gx.size:
        _backend(call.device).softmax_backward(
            gx.reshape(d3), call.ready("grad_output").reshape(d3), call.ready("input").reshape(d3),
            log)
    return (call.finish(gx),)


def softmax_backward(grad_output, input, dim):
    """Gradient of :func:`softmax` w.r.t. ``input``, as a 1-tuple ``(grad_input,)``.

    ``grad_input = y * (grad_output - sum(grad_output * y, dim))`` with ``y = softmax(input,
    dim)`` recomputed from ``input``; ``grad_output`` has the input's shape and dtype.
    """
    return _softmax_backward("softmax_backward", "softmax", grad_output, input, dim, False)


def log_softmax_backward(grad_output, input, dim):
    """Gradient of :func:`log_softmax` w.r.t. ``input``, as a 1-tuple ``(grad_input,)``.

    ``grad_input = grad_output - softmax(input, dim) * sum(grad_output, dim)``.
    """
    return _softmax_backward("log_softmax_backward", "log_softmax", grad_output, input, dim, True)


def _cross_entropy_args(call):
    """Check cross_entropy's input and target as :func:`cross_entropy` does; return
    (dtype, input shape, N, C, S, batched, probability target, host copy of index target)."""
    op = call.op
    _rank(call, "input", tuple(range(1, 33)))
    dtype = call.float_dtype("input")
    xs = tuple(call["input"].shape)
    ts = tuple(call["target"].shape)
    batched = len(xs) > 1
    n, c, rest = (xs[0], xs[1], xs[2:]) if batched else (1, xs[0], ())
    s = int(math.prod(rest))
    tdtype = call["target"].dtype
    prob = np.issubdtype(tdtype, np.floating)
    host_t = None
    want = (xs[:1] + xs[2:]) if batched else ()
    if prob and (ts != xs or tdtype != dtype):
        # Say both forms: float class labels are a common slip, and matching only the dtype
        # (the other half of the advice) would end in a shape error.
        raise (TypeError if ts == xs else ValueError)(
            f"{op}(): target has dtype {tdtype} and shape {ts}, which is neither form cross_"
            f"entropy takes: class indices, an integer array of shape {want} (e.g. "
            f"target.astype(np.int64)), or class probabilities of the input's shape {xs} and "
            f"dtype {dtype}")
    if not prob:
        if not np.issubdtype(tdtype, np.integer):
            raise TypeError(f"{op}(): target must hold integer class indices or float "
                            f"probabilities, got dtype {tdtype}")
        if ts != want:
            raise ValueError(f"{op}(): class-index target must have shape {want} for input of "
                             f"shape {xs}, got {ts}")
        host_t = _device.to_numpy(call["target"])
        if host_t.size and (host_t.min() < 0 or host_t.max() >= c):
            bad = host_t[(host_t < 0) | (host_t >= c)].flat[0]
            raise ValueError(f"{op}(): target {int(bad)} is out of bounds; class indices must "
                             f"lie in [0, {c})")
    return dtype, xs, n, c, s, batched, prob, host_t


def cross_entropy_backward(grad_output, input, target, reduction="mean"):
    """Gradients of :func:`cross_entropy`: ``(grad_input, grad_target)``.

    Parameters
    ----------
    grad_output : number or 0-d array for reduction 'mean' and 'sum' (usually 1.0); for 'none'
        an array of the per-item loss shape (N, d1, ...) and the input's dtype
    input, target, reduction : as in :func:`cross_entropy`

    Returns
    -------
    tuple
        ``grad_input`` (input's shape): ``g * (softmax(input) - onehot(target))`` along the class
        dim for class indices, ``g * (softmax(input) * sum(target) - target)`` for
        probabilities, where ``g`` is the item's gradient (``grad_output / count`` for 'mean').
        ``grad_target``: None for class indices (not differentiable), ``-g * log_softmax(input)``
        for probabilities.

    Examples
    --------
    >>> grad_logits, _ = F.cross_entropy_backward(1.0, logits, y)
    """
    op = "cross_entropy_backward"
    _reduction(op, reduction)
    per_item = reduction == "none"
    arrays = dict(input=input, target=target)
    if per_item:
        arrays["grad_output"] = grad_output
    call = _Call(op, **arrays)
    dtype, xs, n, c, s, batched, prob, host_t = _cross_entropy_args(call)
    if per_item:
        _check_grad_output(call, (xs[:1] + xs[2:]) if batched else (), dtype, "cross_entropy")
        scale = 1.0
    else:
        scale = _scalar_grad(op, grad_output, reduction)
        if reduction == "mean" and n * s:
            scale /= n * s
    gx = call.empty(xs, dtype)
    gt = call.empty(xs, dtype) if prob else None
    if gx.size:
        x = call.ready("input").reshape((n, c, s))
        go = call.ready("grad_output").reshape((n, s)) if per_item else None
        be = _backend(call.device)
        if prob:
            be.cross_entropy_prob_backward(gx.reshape((n, c, s)), gt.reshape((n, c, s)), x,
                                           call.ready("target").reshape((n, c, s)), go, scale)
        else:
            if call.device == "cpu":
                t = np.ascontiguousarray(host_t, dtype=np.int64)
            elif call["target"].dtype == np.int64 and not call.host_in:
                t = call.ready("target")
            else:
                t = _cuda.to_device(host_t.astype(np.int64))
            be.cross_entropy_backward(gx.reshape((n, c, s)), x, t.reshape((n, s)), go, scale)
    return call.finish(gx), None if gt is None else call.finish(gt)


def mse_loss_backward(grad_output, input, target, reduction="mean"):
    """Gradients of :func:`mse_loss`: ``(grad_input, grad_target)``.

    ``grad_input = 2 * (input - target) * g`` with ``g`` the item's gradient (``grad_output /
    input.size`` for 'mean'), and ``grad_target = -grad_input``. ``grad_output`` is a number or
    a 0-d array for 'mean' and 'sum', an array of the input's shape and dtype for 'none'.
    """
    op = "mse_loss_backward"
    _reduction(op, reduction)
    per_item = reduction == "none"
    arrays = dict(input=input, target=target)
    if per_item:
        arrays["grad_output"] = grad_output
    call = _Call(op, **arrays)
    dtype = call.float_dtype("input")
    call.same_dtype(dtype, "target")
    shape = tuple(call["input"].shape)
    if tuple(call["target"].shape) != shape:
        raise ValueError(f"{op}(): target shape {tuple(call['target'].shape)} differs from "
                         f"input shape {shape}; they must be equal (no broadcasting)")
    size = int(math.prod(shape))
    if per_item:
        _check_grad_output(call, shape, dtype, "mse_loss")
        scale = 2.0
    else:
        scale = 2.0 * _scalar_grad(op, grad_output, reduction)
        if reduction == "mean" and size:
            scale /= size
    gx = call.empty(shape, dtype)
    gt = call.empty(shape, dtype)
    if size:
        go = call.ready("grad_output").reshape((size,)) if per_item else None
        _backend(call.device).squared_error_backward(
            gx.reshape((size,)), gt.reshape((size,)), call.ready("input").reshape((size,)),
            call.ready("target").reshape((size,)), go, scale)
    return call.finish(gx), call.finish(gt)


# --------------------------------------------------------------------------------------------
# Convolution training ops and the transposed convolution. The shape arithmetic is
# numbaconv._convshape's; the data gradient of conv2d is conv_transpose2d's forward.
# --------------------------------------------------------------------------------------------

def _conv_args(call, nd, stride, padding, dilation, groups):
    """Check conv{nd}d's input, weight and bias as :func:`conv2d` does; return (dtype,
    :class:`numbaconv._convshape.ConvGeometry`)."""
    op = call.op
    _rank(call, "input", (nd + 1, nd + 2))
    _rank(call, "weight", (nd + 2,))
    dtype = call.float_dtype("input")
    call.same_dtype(dtype, "weight", "bias")
    groups = _convshape.check_groups(op, groups)
    stride = _int_tuple(stride, nd, op, "stride", 1)
    dilation = _int_tuple(dilation, nd, op, "dilation", 1)
    if not isinstance(padding, str):
        padding = _int_tuple(padding, nd, op, "padding", 0)
    b = call["bias"]
    return dtype, _convshape.conv_geometry(op, nd, call["input"].shape, call["weight"].shape,
                                           None if b is None else b.shape, stride, padding,
                                           dilation, groups)


def _conv_backward(op, forward, nd, grad_output, input, weight, bias, stride, padding, dilation,
                   groups):
    call = _Call(op, ("bias",), input=input, grad_output=grad_output, weight=weight, bias=bias)
    dtype, geo = _conv_args(call, nd, stride, padding, dilation, groups)
    _check_grad_output(call, geo.out_shape, dtype, forward)
    be = _backend(call.device)
    go = call.ready("grad_output").reshape(geo.out4)
    gx = call.empty(geo.x4, dtype)
    be.conv2d_backward_input(gx, go, call.ready("weight").reshape(geo.w4), None, geo.stride,
                             geo.padding, geo.dilation, geo.groups)
    gw = call.empty(geo.w4, dtype)
    be.conv2d_backward_weight(gw, go, call.ready("input").reshape(geo.x4), geo.stride,
                              geo.padding, geo.dilation, geo.groups)
    gb = None
    if call["bias"] is not None:
        gb = call.empty((geo.w4[0],), dtype)
        be.conv2d_backward_bias(gb, go)
    return (call.finish(gx.reshape(tuple(call["input"].shape))),
            call.finish(gw.reshape(tuple(call["weight"].shape))),
            None if gb is None else call.finish(gb))


def conv2d_backward(grad_output, input, weight, bias=None, stride=1, padding=0, dilation=1,
                    groups=1):
    """Gradients of :func:`conv2d`: ``(grad_input, grad_weight, grad_bias)``.

    Parameters
    ----------
    grad_output : array shaped as ``conv2d(input, weight, bias, ...)``, the input's dtype
    input, weight, bias, stride, padding, dilation, groups : as in :func:`conv2d`

    Returns
    -------
    tuple
        ``grad_input`` (input's shape): the transposed convolution of ``grad_output`` with
        ``weight`` (:func:`conv_transpose2d`'s arithmetic); ``grad_weight`` (weight's shape):
        the correlation of ``input`` with ``grad_output``, summed over the batch; ``grad_bias``:
        ``grad_output`` summed over batch and positions, or None when ``bias`` is None.

    Examples
    --------
    >>> gx, gw, gb = F.conv2d_backward(grad_y, x, w, b, stride=2, padding=1)
    """
    return _conv_backward("conv2d_backward", "conv2d", 2, grad_output, input, weight, bias,
                          stride, padding, dilation, groups)


def conv1d_backward(grad_output, input, weight, bias=None, stride=1, padding=0, dilation=1,
                    groups=1):
    """Gradients of :func:`conv1d`: ``(grad_input, grad_weight, grad_bias)``, as
    :func:`conv2d_backward` over images of height 1."""
    return _conv_backward("conv1d_backward", "conv1d", 1, grad_output, input, weight, bias,
                          stride, padding, dilation, groups)


def _conv_transpose_args(call, stride, padding, output_padding, groups, dilation):
    """Check conv_transpose2d's arguments; return (dtype, ConvGeometry of the convolution whose
    data gradient it is: ``x4`` is the transposed op's output, ``out4`` its input)."""
    op = call.op
    _rank(call, "input", (3, 4))
    _rank(call, "weight", (4,))
    dtype = call.float_dtype("input")
    call.same_dtype(dtype, "weight", "bias")
    groups = _convshape.check_groups(op, groups)
    stride = _int_tuple(stride, 2, op, "stride", 1)
    padding = _int_tuple(padding, 2, op, "padding", 0)
    output_padding = _int_tuple(output_padding, 2, op, "output_padding", 0)
    dilation = _int_tuple(dilation, 2, op, "dilation", 1)
    b = call["bias"]
    return dtype, _convshape.conv_transpose_geometry(
        op, 2, call["input"].shape, call["weight"].shape, None if b is None else b.shape, stride,
        padding, output_padding, dilation, groups)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """2-D transposed convolution, as ``torch.nn.functional.conv_transpose2d``.

    The gradient of :func:`conv2d` w.r.t. its input, for a conv2d with the same ``weight``,
    stride, padding, dilation and groups (and runs on the same kernels).

    Parameters
    ----------
    input : array (N, C_in, H, W) or (C_in, H, W), float32 or float64
    weight : array (C_in, C_out // groups, KH, KW), same dtype
    bias : array (C_out,) or None
    stride, padding, output_padding, dilation : int or (int, int)
        ``output_padding`` (added to the bottom/right of the output) must be smaller than the
        stride or the dilation; ``padding`` takes no strings, as in torch.
    groups : int, dividing C_in and C_out

    Returns
    -------
    array (N, C_out, OH, OW) with ``OH = (H - 1)*stride - 2*padding + dilation*(KH - 1) +
    output_padding + 1``.

    Examples
    --------
    >>> x = np.random.rand(1, 8, 16, 16).astype(np.float32)
    >>> w = np.random.rand(8, 4, 4, 4).astype(np.float32)
    >>> F.conv_transpose2d(x, w, stride=2, padding=1).shape
    (1, 4, 32, 32)
    """
    call = _Call("conv_transpose2d", ("bias",), input=input, weight=weight, bias=bias)
    dtype, geo = _conv_transpose_args(call, stride, padding, output_padding, groups, dilation)
    out = call.empty(geo.x4, dtype)
    if out.size:
        _backend(call.device).conv2d_backward_input(
            out, call.ready("input").reshape(geo.out4), call.ready("weight"), call.ready("bias"),
            geo.stride, geo.padding, geo.dilation, geo.groups)
    return call.finish(out.reshape(geo.out_shape))


def conv_transpose2d_backward(grad_output, input, weight, bias=None, stride=1, padding=0,
                              output_padding=0, groups=1, dilation=1):
    """Gradients of :func:`conv_transpose2d`: ``(grad_input, grad_weight, grad_bias)``.

    ``grad_input = conv2d(grad_output, weight, None, stride, padding, dilation, groups)``; the
    weight gradient is conv2d's weight gradient with the roles of input and grad_output swapped;
    ``grad_bias`` sums ``grad_output`` over batch and positions (None when ``bias`` is None).
    ``grad_output`` has the shape of ``conv_transpose2d(input, weight, bias, ...)``.
    """
    op = "conv_transpose2d_backward"
    call = _Call(op, ("bias",), input=input, grad_output=grad_output, weight=weight, bias=bias)
    dtype, geo = _conv_transpose_args(call, stride, padding, output_padding, groups, dilation)
    _check_grad_output(call, geo.out_shape, dtype, "conv_transpose2d")
    be = _backend(call.device)
    gy = call.ready("grad_output").reshape(geo.x4)
    w = call.ready("weight")
    if geo.w4[1] == 0 or 0 in geo.out4:  # no output channels, or nothing to compute
        gx = call.zeros(geo.out4, dtype)
    else:
        gx = call.empty(geo.out4, dtype)
        be.conv2d(gx, gy, w, None, None, geo.stride, geo.padding, geo.dilation, geo.groups,
                  _ops.ACT_NONE, 0.0)
    gw = call.empty(geo.w4, dtype)
    be.conv2d_backward_weight(gw, call.ready("input").reshape(geo.out4), gy, geo.stride,
                              geo.padding, geo.dilation, geo.groups)
    gb = None
    if call["bias"] is not None:
        gb = call.empty((geo.x4[1],), dtype)
        be.conv2d_backward_bias(gb, gy)
    return (call.finish(gx.reshape(tuple(call["input"].shape))), call.finish(gw),
            None if gb is None else call.finish(gb))


# --------------------------------------------------------------------------------------------
# Backward ops: pooling, activations, batch_norm; dropout
# --------------------------------------------------------------------------------------------

def _run_pool_backward(call, dtype, shape, out_hw, launch, needs_input):
    """Allocate the input gradient and run ``launch(gx4, go4, x4)`` (``x4`` None unless
    ``needs_input``) on 4-D views; return ``(grad_input,)`` in the input's shape."""
    n, c = (1,) + shape[:1] if len(shape) == 3 else shape[:2]
    if not math.prod(out_hw):  # an empty output (adaptive output_size 0): no gradient
        return (call.finish(call.zeros(shape, dtype)),)
    gx = call.empty((n, c) + shape[-2:], dtype)
    if gx.size:
        go = call.ready("grad_output").reshape((n, c) + out_hw)
        x = call.ready("input").reshape((n, c) + shape[-2:]) if needs_input else None
        launch(gx, go, x)
    return (call.finish(gx.reshape(shape)),)


def _pool_backward_call(op, forward, grad_output, input, shape, out_hw, dtype):
    call = _Call(op, input=input, grad_output=grad_output)
    _check_grad_output(call, shape[:-2] + out_hw, dtype, forward)
    return call


def max_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False):
    """Gradient of :func:`max_pool2d` w.r.t. ``input``, as a 1-tuple ``(grad_input,)``.

    Each output's gradient goes to the arg-max of its window, chosen as PyTorch does: the first
    maximum in scan order (row by row), the last NaN when the window holds NaN, the first tap
    inside the input when all are -inf. Overlapping windows add up.

    Parameters
    ----------
    grad_output : array shaped as ``max_pool2d(input, ...)``, the input's dtype
    input, kernel_size, stride, padding, dilation, ceil_mode : as in :func:`max_pool2d`
    """
    op = "max_pool2d_backward"
    _, dtype, k, s, p, d, shape, out_hw = _pool_setup(op, input, kernel_size, stride, padding,
                                                     dilation, ceil_mode)
    call = _pool_backward_call(op, "max_pool2d", grad_output, input, shape, out_hw, dtype)
    be = _backend(call.device)
    return _run_pool_backward(call, dtype, shape, out_hw,
                              lambda gx, go, x: be.max_pool2d_backward(gx, go, x, k, s, p, d),
                              True)


def avg_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True):
    """Gradient of :func:`avg_pool2d` w.r.t. ``input``, as a 1-tuple ``(grad_input,)``: each
    output's gradient over its divisor (PyTorch's rules), added over the window.

    ``input`` gives the shape and dtype (its values are not read).
    """
    op = "avg_pool2d_backward"
    _, dtype, k, s, p, _, shape, out_hw = _pool_setup(op, input, kernel_size, stride, padding, 1,
                                                      ceil_mode)
    call = _pool_backward_call(op, "avg_pool2d", grad_output, input, shape, out_hw, dtype)
    be = _backend(call.device)
    cip = bool(count_include_pad)
    return _run_pool_backward(call, dtype, shape, out_hw,
                              lambda gx, go, x: be.avg_pool2d_backward(gx, go, k, s, p, cip),
                              False)


def _adaptive_backward(op, forward, grad_output, input, output_size):
    # The checks of _adaptive (the forward), on the input alone first.
    first = _Call(op, input=input)
    _rank(first, "input", (3, 4))
    dtype = first.float_dtype("input")
    shape = tuple(first["input"].shape)
    out_hw = _adaptive_size(op, output_size, shape)
    call = _pool_backward_call(op, forward, grad_output, input, shape, out_hw, dtype)
    return call, dtype, shape, out_hw


def adaptive_avg_pool2d_backward(grad_output, input, output_size):
    """Gradient of :func:`adaptive_avg_pool2d` w.r.t. ``input``, as ``(grad_input,)``.

    ``input`` gives the shape and dtype (its values are not read).
    """
    call, dtype, shape, out_hw = _adaptive_backward(
        "adaptive_avg_pool2d_backward", "adaptive_avg_pool2d", grad_output, input, output_size)
    be = _backend(call.device)
    return _run_pool_backward(call, dtype, shape, out_hw,
                              lambda gx, go, x: be.adaptive_avg_pool2d_backward(gx, go), False)


def adaptive_max_pool2d_backward(grad_output, input, output_size):
    """Gradient of :func:`adaptive_max_pool2d` w.r.t. ``input``, as ``(grad_input,)``: each
    output's gradient goes to its window's arg-max, chosen as in :func:`max_pool2d_backward`."""
    call, dtype, shape, out_hw = _adaptive_backward(
        "adaptive_max_pool2d_backward", "adaptive_max_pool2d", grad_output, input, output_size)
    be = _backend(call.device)
    return _run_pool_backward(call, dtype, shape, out_hw,
                              lambda gx, go, x: be.adaptive_max_pool2d_backward(gx, go, x), True)


def _elementwise_backward(op, forward, grad_output, input, act, alpha=0.0):
    call = _Call(op, input=input, grad_output=grad_output)
    dtype = call.float_dtype("input")
    shape = tuple(call["input"].shape)
    _check_grad_output(call, shape, dtype, forward)
    size = int(math.prod(shape))
    gx = call.empty(shape, dtype)
    if size:
        _backend(call.device).activation_backward(
            gx.reshape((size,)), call.ready("grad_output").reshape((size,)),
            call.ready("input").reshape((size,)), act, float(alpha))
    return (call.finish(gx),)


def relu_backward(grad_output, input):
    """Gradient of :func:`relu`: ``(grad_output * (input > 0),)``; 0 at 0, as torch."""
    return _elementwise_backward("relu_backward", "relu", grad_output, input, _ops.ACT_RELU)


def relu6_backward(grad_output, input):
    """Gradient of :func:`relu6`: ``grad_output`` where ``0 < input < 6``, else 0 (0 at both
    kinks, as torch), as a 1-tuple."""
    return _elementwise_backward("relu6_backward", "relu6", grad_output, input, _ops.ACT_RELU6)


def leaky_relu_backward(grad_output, input, negative_slope=0.01):
    """Gradient of :func:`leaky_relu`: ``grad_output`` where ``input > 0``, else
    ``grad_output * negative_slope`` (the slope at 0, as torch), as a 1-tuple."""
    if not isinstance(negative_slope, numbers.Real):
        raise TypeError(f"leaky_relu_backward(): negative_slope must be a number, got "
                        f"{negative_slope!r}")
    return _elementwise_backward("leaky_relu_backward", "leaky_relu", grad_output, input,
                                 _ops.ACT_LEAKY_RELU, negative_slope)


def sigmoid_backward(grad_output, input):
    """Gradient of :func:`sigmoid`: ``(grad_output * s * (1 - s),)`` with ``s = sigmoid(input)``
    recomputed from ``input``."""
    return _elementwise_backward("sigmoid_backward", "sigmoid", grad_output, input,
                                 _ops.ACT_SIGMOID)


def tanh_backward(grad_output, input):
    """Gradient of :func:`tanh`: ``(grad_output * (1 - tanh(input) ** 2),)``."""
    return _elementwise_backward("tanh_backward", "tanh", grad_output, input, _ops.ACT_TANH)


def silu_backward(grad_output, input):
    """Gradient of :func:`silu`: ``(grad_output * s * (1 + input * (1 - s)),)``, s the
    sigmoid."""
    return _elementwise_backward("silu_backward", "silu", grad_output, input, _ops.ACT_SILU)


def gelu_backward(grad_output, input, approximate="none"):
    """Gradient of :func:`gelu` (exact or ``approximate='tanh'``, torch's formulas), as a
    1-tuple."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu_backward(): approximate={approximate!r} is not valid; use "
                         "'none' or 'tanh'")
    return _elementwise_backward("gelu_backward", "gelu", grad_output, input,
                                 _ops.ACT_GELU if approximate == "none" else _ops.ACT_GELU_TANH)


def hardswish_backward(grad_output, input):
    """Gradient of :func:`hardswish`: 0 for ``input <= -3``, ``grad_output * (input / 3 + 1/2)``
    below 3, ``grad_output`` from 3 on (torch's values at the kinks), as a 1-tuple."""
    return _elementwise_backward("hardswish_backward", "hardswish", grad_output, input,
                                 _ops.ACT_HARDSWISH)


_BN_ARRAYS = ("running_mean", "running_var", "weight", "bias")


def _batch_norm_args(call, training, momentum, eps, half=False):
    """Check batch_norm's arrays and numbers; return (dtype, shape, N, C, S). In training mode
    the running statistics may be None (both or neither) and ``momentum`` must be a number.
    ``half``: float16 is accepted (on CUDA; the eval-mode forward)."""
    op = call.op
    _rank(call, "input", tuple(range(2, 33)))
    dtype = call.float_dtype("input", half=half)
    call.same_dtype(dtype, *_BN_ARRAYS)
    shape = tuple(call["input"].shape)
    c = shape[1]
    for name in _BN_ARRAYS:
        a = call[name]
        if a is not None and tuple(a.shape) != (c,):
            raise ValueError(f"{op}(): {name} must have shape ({c},) to match the input's "
                             f"{c} channels, got {tuple(a.shape)}")
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"{op}(): eps must be a non-negative number, got {eps!r}")
    if training and eps == 0:
        raise ValueError(f"{op}(): eps must be positive when training (batch statistics), got "
                         f"{eps!r}: a channel whose batch values are all equal would divide by 0")
    n, s = shape[0], int(math.prod(shape[2:]))
    if training:
        if (call["running_mean"] is None) != (call["running_var"] is None):
            raise ValueError(f"{op}(): pass both running_mean and running_var, or neither "
                             "(batch statistics only)")
        if n * s <= 1:
            raise ValueError(f"{op}(): expected more than 1 value per channel when training, "
                             f"got input size {shape}")
    return dtype, shape, n, c, s


def _check_momentum(op, momentum):
    if momentum is None:
        raise TypeError(
            f"{op}(): momentum=None (a cumulative moving average) needs the number of batches "
            "seen, which the functional op does not have; pass a float (nn.BatchNorm2d with "
            "momentum=None keeps the count and passes 1 / count)")
    if not isinstance(momentum, numbers.Real) or isinstance(momentum, bool):
        raise TypeError(f"{op}(): momentum must be a float, got {momentum!r}")


def _batch_norm_train(call, dtype, shape, n, c, s, momentum, eps):
    """Training-mode forward: normalise with the batch statistics and update the running ones
    in place (the caller's arrays, wherever they live)."""
    op = call.op
    for name in ("running_mean", "running_var"):
        a = call[name]
        if isinstance(a, np.ndarray) and not a.flags.writeable:
            raise ValueError(f"{op}(): {name} is read-only; training mode updates the running "
                             "statistics in place")
    out = call.empty(shape, dtype)
    if not out.size:  # no channels
        return call.finish(out)
    be = _backend(call.device)
    x = call.ready("input").reshape((n, c, s))
    mean, var = call.empty((c,), dtype), call.empty((c,), dtype)
    be.batch_norm_stats(mean, var, x)
    weight = call.ready("weight") if call["weight"] is not None else call.constant(c, dtype, 1)
    bias = call.ready("bias") if call["bias"] is not None else call.constant(c, dtype, 0)
    be.batch_norm(out.reshape((n, c, s)), x, mean, var, weight, bias, float(eps))
    if call["running_mean"] is not None:
        rm, rv = call.ready("running_mean"), call.ready("running_var")
        be.batch_norm_update(rm, rv, mean, var, float(momentum), n * s)
        # Copies made on the way in (a host array on the GPU, a strided host array) go back.
        for name, new in (("running_mean", rm), ("running_var", rv)):
            orig = call[name]
            if new is not orig:
                orig[...] = _cuda.to_host(new) if call.device == "cuda" else new
    return call.finish(out)


def batch_norm_backward(grad_output, input, running_mean, running_var, weight=None, bias=None,
                        training=False, momentum=0.1, eps=1e-5):
    """Gradients of :func:`batch_norm`: ``(grad_input, None, None, grad_weight, grad_bias)``.

    Training mode differentiates through the batch statistics, recomputed from ``input`` (no
    state is kept between the forward and the backward); eval mode uses the running statistics
    as constants. The running statistics get no gradient (None), nor do ``weight`` / ``bias``
    when they are None; the running statistics are not updated here.

    Parameters
    ----------
    grad_output : array of the input's shape and dtype
    input, running_mean, running_var, weight, bias, training, eps : as in :func:`batch_norm`
        (running statistics may be None in training mode)
    momentum : unused (the forward's running-stat update), accepted for the same call

    Returns
    -------
    tuple
        ``grad_input`` (input's shape), None, None, ``grad_weight = sum(grad_output * xhat)``
        and ``grad_bias = sum(grad_output)`` over all dims but 1, each (C,) or None.
    """
    op = "batch_norm_backward"
    training = bool(training)
    call = _Call(op, ("running_mean", "running_var", "weight", "bias") if training else
                 ("weight", "bias"), input=input, grad_output=grad_output,
                 running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    dtype, shape, n, c, s = _batch_norm_args(call, training, momentum, eps)
    _check_grad_output(call, shape, dtype, "batch_norm")
    gx = call.empty(shape, dtype)
    gw, gb = call.empty((c,), dtype), call.empty((c,), dtype)
    be = _backend(call.device)
    if n * s and c:
        x = call.ready("input").reshape((n, c, s))
        if training:
            mean, var = call.empty((c,), dtype), call.empty((c,), dtype)
            be.batch_norm_stats(mean, var, x)
        else:
            mean, var = call.ready("running_mean"), call.ready("running_var")
        weight = call.ready("weight") if call["weight"] is not None else \
            call.constant(c, dtype, 1)
        be.batch_norm_backward(gx.reshape((n, c, s)), gw, gb,
                               call.ready("grad_output").reshape((n, c, s)), x, mean, var,
                               weight, float(eps), training)
    elif c:  # no values per channel: zero sums, as torch
        gw, gb = call.zeros((c,), dtype), call.zeros((c,), dtype)
    return (call.finish(gx), None, None,
            None if call["weight"] is None else call.finish(gw),
            None if call["bias"] is None else call.finish(gb))


def _dropout_p(op, p):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"{op}(): dropout probability has to be between 0 and 1, but got {p!r}")
    return float(p)


def _dropout_scale(p):
    return 0.0 if p == 1 else 1.0 / (1.0 - p)


def dropout(input, p=0.5, training=True, inplace=False, *, return_mask=False):
    """Dropout, as ``torch.nn.functional.dropout``: in training mode each element is zeroed
    with probability ``p`` and the rest are scaled by ``1 / (1 - p)``.

    The keep mask is drawn on the host from NumPy's global RNG (``np.random.random_sample``;
    ``np.random.seed`` makes a run repeatable, on either device) and copied to the GPU for
    device inputs. An element is kept where its uniform draw is ``>= p``. Dropped elements are
    multiplied by 0, so a dropped NaN or Inf gives NaN, as in torch; ``p = 1`` gives
    ``input * 0``.

    Parameters
    ----------
    input : float32 / float64 array of any shape
    p : float in [0, 1]
    training : bool
        With False (or ``p == 0``) this is the identity and returns ``input`` itself, as torch.
    inplace : bool
        Only False: numbaconv never modifies its inputs (True raises ``ValueError``).
    return_mask : bool, keyword-only
        Also return the mask for :func:`dropout_backward`: ``(out, mask)``, ``mask`` a bool
        array of the input's shape on the input's device (True = kept), or None when nothing is
        dropped (eval mode, ``p == 0``).

    Examples
    --------
    >>> y, mask = F.dropout(x, 0.2, return_mask=True)
    >>> grad_x, = F.dropout_backward(grad_y, x, 0.2, mask=mask)
    """
    op = "dropout"
    p = _dropout_p(op, p)
    if inplace:
        raise ValueError(f"{op}(): inplace=True is not supported; numbaconv ops never modify "
                         "their inputs")
    call = _Call(op, input=input)
    dtype = call.float_dtype("input")
    if not training or p == 0:
        return (input, None) if return_mask else input
    shape = tuple(call["input"].shape)
    size = int(math.prod(shape))
    host_mask = np.random.random_sample(shape) >= p
    out = call.empty(shape, dtype)
    mask = host_mask if call.device == "cpu" else _cuda.to_device(host_mask)
    if size:
        _backend(call.device).dropout(out.reshape((size,)), call.ready("input").reshape((size,)),
                                      mask.reshape((size,)), _dropout_scale(p))
    out = call.finish(out)
    if not return_mask:
        return out
    return out, (host_mask if call.host_in else call.finish(mask))


def dropout_backward(grad_output, input, p=0.5, training=True, inplace=False, *, mask=None):
    """Gradient of :func:`dropout` w.r.t. ``input``, as a 1-tuple ``(grad_input,)``.

    ``grad_input = grad_output * mask / (1 - p)`` (``grad_output * 0`` for ``p = 1``) with the
    ``mask`` that ``dropout(..., return_mask=True)`` returned; in eval mode or with ``p == 0``
    it is ``grad_output`` itself and ``mask`` may be None. ``input`` gives the shape and dtype.
    """
    op = "dropout_backward"
    p = _dropout_p(op, p)
    if inplace:
        raise ValueError(f"{op}(): inplace=True is not supported; numbaconv ops never modify "
                         "their inputs")
    identity = not training or p == 0
    arrays = dict(input=input, grad_output=grad_output)
    if mask is not None:
        arrays["mask"] = mask
    call = _Call(op, **arrays)
    dtype = call.float_dtype("input")
    shape = tuple(call["input"].shape)
    _check_grad_output(call, shape, dtype, "dropout")
    if identity:
        return (grad_output,)
    if mask is None:
        raise ValueError(f"{op}(): training-mode dropout with p > 0 needs the mask that "
                         "dropout(..., return_mask=True) returned, as mask=")
    if call["mask"].dtype != np.bool_:
        raise TypeError(f"{op}(): mask must be a bool array, got dtype {call['mask'].dtype}")
    if tuple(call["mask"].shape) != shape:
        raise ValueError(f"{op}(): mask has shape {tuple(call['mask'].shape)} but the input has "
                         f"shape {shape}; they must be equal")
    size = int(math.prod(shape))
    gx = call.empty(shape, dtype)
    if size:
        _backend(call.device).dropout(
            gx.reshape((size,)), call.ready("grad_output").reshape((size,)),
            call.ready("mask").reshape((size,)), _dropout_scale(p))
    return (call.finish(gx),)


# --------------------------------------------------------------------------------------------
# Recurrent: one layer and one direction of an Elman RNN, LSTM or GRU over a whole sequence.
# A sequence-level op (not a cell) lets a backend run the input projection of all steps as one
# GEMM and keep the step loop in compiled code; nn.RNN / LSTM / GRU stack layers and directions.
# --------------------------------------------------------------------------------------------

_RNN_NONLINEARITIES = {"tanh": 0, "relu": 1}
_LSTM, _GRU = 2, 3
_RNN_GATES = (1, 1, 4, 3)
_RNN_EXTRA = (0, 0, 1, 1)  # per-unit values a backend keeps besides the gates (c_t, W_hn h)
_RNN_OPS = ("rnn", "rnn", "lstm", "gru")


class RecurrentWorkspace:
    """What a training-mode :func:`rnn` / :func:`lstm` / :func:`gru` call keeps for its backward
    (``return_workspace=True``): the output (all hidden states) and the activated gates, on the
    call's device, in the backend's own layout. Pass it unchanged as ``workspace=`` to the
    matching ``*_backward`` with the same arguments; it is read, never modified."""

    __slots__ = ("mode", "device", "shape", "dtype", "reverse", "lengths", "output", "gates")

    def __init__(self, mode, device, shape, dtype, reverse, lengths, output, gates):
        self.mode, self.device, self.shape, self.dtype = mode, device, shape, dtype
        self.reverse, self.lengths, self.output, self.gates = reverse, lengths, output, gates

    def __repr__(self):
        t, n, i, h = self.shape
        return (f"RecurrentWorkspace({_RNN_OPS[self.mode]}, T={t}, N={n}, input={i}, hidden={h}, "
                f"{np.dtype(self.dtype).name}, device='{self.device}')")


def _rnn_lengths(call, lengths, t, n):
    """``lengths`` as a host int64 (N,) array (all T when None), each in [0, T]."""
    op = call.op
    if lengths is None:
        return np.full(n, t, np.int64)
    host = _device.to_numpy(lengths) if (isinstance(lengths, np.ndarray)
                                         or _cuda.is_device_array(lengths)) else lengths
    host = np.asarray(host)
    if host.dtype.kind not in "iu" and not (host.dtype.kind == "f" and host.size == 0):
        raise TypeError(f"{op}(): lengths must hold integers, got dtype {host.dtype}")
    if host.shape != (n,):
        raise ValueError(f"{op}(): lengths must have shape ({n},), one per batch item, got "
                         f"{host.shape}")
    if host.size and (host.min() < 0 or host.max() > t):
        bad = host[(host < 0) | (host > t)].flat[0]
        raise ValueError(f"{op}(): lengths must lie in [0, {t}] (the sequence length), got "
                         f"{int(bad)}")
    return host.astype(np.int64)


def _rnn_args(call, mode, lengths):
    """Check a recurrent op's arrays; return (dtype, T, N, I, H, host lengths)."""
    op = call.op
    g = _RNN_GATES[mode]
    _rank(call, "input", (3,))
    dtype = call.float_dtype("input")
    names = ["hx", "cx", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    call.same_dtype(dtype, *[nm for nm in names if nm in call.arrays])
    t, n, i = (int(v) for v in call["input"].shape)
    _rank(call, "weight_hh", (2,))
    _rank(call, "weight_ih", (2,))
    gh, h = (int(v) for v in call["weight_hh"].shape)
    if gh != g * h:
        raise ValueError(f"{op}(): weight_hh must have shape ({g} * hidden_size, hidden_size), "
                         f"got {(gh, h)}")
    if tuple(call["weight_ih"].shape) != (gh, i):
        raise ValueError(f"{op}(): weight_ih of shape {tuple(call['weight_ih'].shape)} does not "
                         f"match input_size {i} (the input's last dim) and hidden_size {h}; "
                         f"expected {(gh, i)}")
    for name in ("bias_ih", "bias_hh"):
        a = call[name]
        if a is not None and tuple(a.shape) != (gh,):
            raise ValueError(f"{op}(): {name} must have shape ({gh},), got {tuple(a.shape)}")
    for name in ("hx", "cx"):
        a = call.arrays.get(name)
        if a is not None and tuple(a.shape) != (n, h):
            raise ValueError(f"{op}(): {name} must have shape (batch, hidden_size) = {(n, h)}, "
                             f"got {tuple(a.shape)}")
    return dtype, t, n, i, h, _rnn_lengths(call, lengths, t, n)


def _rnn_ready(call, mode, dtype, n, h, lens):
    """The backend's arguments: hx/cx and the biases filled in with zeros where None."""
    g = _RNN_GATES[mode]

    def zeros(shape):
        z = call.empty(shape, dtype)
        if call.device == "cpu":
            z[...] = 0
        else:
            z.copy_to_device(np.zeros(shape, dtype), stream=_cuda.current_stream())
        return z

    hx = call.ready("hx") if call["hx"] is not None else zeros((n, h))
    cx = None
    if mode == _LSTM:
        cx = call.ready("cx") if call["cx"] is not None else zeros((n, h))
    b_ih = call.ready("bias_ih") if call["bias_ih"] is not None else call.constant(g * h, dtype, 0)
    b_hh = call.ready("bias_hh") if call["bias_hh"] is not None else call.constant(g * h, dtype, 0)
    lengths = lens if call.device == "cpu" else _cuda.to_device(lens)
    return hx, cx, b_ih, b_hh, lengths


def _recurrent(op, mode, input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, reverse, lengths,
               return_workspace):
    arrays = dict(input=input, hx=hx, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                  bias_hh=bias_hh)
    if mode == _LSTM:
        arrays["cx"] = cx
    call = _Call(op, ("hx", "cx", "bias_ih", "bias_hh"), **arrays)
    dtype, t, n, i, h, lens = _rnn_args(call, mode, lengths)
    h0, c0, b_ih, b_hh, dlens = _rnn_ready(call, mode, dtype, n, h, lens)
    be = _backend(call.device)
    out = call.empty((t, n, h), dtype)
    h_n = call.empty((n, h), dtype)
    c_n = call.empty((n, h), dtype) if mode == _LSTM else None
    # The workspace only when a backward will read it (the CPU backend then skips storing it).
    ws = (call.empty((t * n * (_RNN_GATES[mode] + _RNN_EXTRA[mode]) * h,), dtype)
          if return_workspace else None)
    be.rnn_forward(mode, out, h_n, c_n, ws, call.ready("input"), h0, c0, call.ready("weight_ih"),
                   call.ready("weight_hh"), b_ih, b_hh, dlens, bool(reverse))
    result = (call.finish(out), call.finish(h_n)) + ((call.finish(c_n),) if c_n is not None
                                                     else ())
    if not return_workspace:
        return result
    return result + (RecurrentWorkspace(mode, call.device, (t, n, i, h), dtype, bool(reverse),
                                        lens, out, ws),)


def _nonlinearity(op, nonlinearity):
    if nonlinearity not in _RNN_NONLINEARITIES:
        raise ValueError(f"{op}(): unknown nonlinearity {nonlinearity!r}; use 'tanh' or 'relu'")
    return _RNN_NONLINEARITIES[nonlinearity]


def rnn(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, nonlinearity="tanh",
        reverse=False, lengths=None, *, return_workspace=False):
    """One layer and direction of an Elman RNN, ``h_t = act(W_ih x_t + b_ih + W_hh h_(t-1) +
    b_hh)``, over a whole sequence (``torch.nn.RNN``'s cell, time-major).

    Parameters
    ----------
    input : array (T, N, I), time first
    hx : array (N, H), the initial state, or None for zeros
    weight_ih : array (H, I); weight_hh : array (H, H); bias_ih, bias_hh : arrays (H,) or None
        PyTorch's ``weight_ih_l{k}`` etc.
    nonlinearity : 'tanh' | 'relu'
    reverse : bool
        Run from the last step to the first (the ``_reverse`` direction of a bidirectional
        layer); the output keeps the input's time order.
    lengths : int array (N,) or None
        Valid steps of each item, in [0, T] (a padded batch, as ``pack_padded_sequence``):
        item n's state stops changing after step ``lengths[n] - 1`` (the reverse direction
        starts there), its output is zero past it, and ``h_n`` is its state at its own end.
    return_workspace : bool, keyword-only
        Also return a :class:`RecurrentWorkspace` for :func:`rnn_backward`.

    Returns
    -------
    (output (T, N, H), h_n (N, H)), plus the workspace when asked.
    """
    mode = _nonlinearity("rnn", nonlinearity)
    return _recurrent("rnn", mode, input, hx, None, weight_ih, weight_hh, bias_ih, bias_hh,
                      reverse, lengths, return_workspace)


def lstm(input, hx, cx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse=False,
         lengths=None, *, return_workspace=False):
    """One layer and direction of an LSTM over a whole sequence (``torch.nn.LSTM``'s cell,
    gates i, f, g, o in that order in the weights' rows).

    ``c_t = f * c_(t-1) + i * g``, ``h_t = o * tanh(c_t)``, with ``i, f, o = sigmoid(.)`` and
    ``g = tanh(.)`` of ``W_ih x_t + b_ih + W_hh h_(t-1) + b_hh``.

    Parameters
    ----------
    input : array (T, N, I); hx, cx : arrays (N, H) or None (zeros)
    weight_ih : (4H, I); weight_hh : (4H, H); bias_ih, bias_hh : (4H,) or None
    reverse, lengths, return_workspace : as :func:`rnn`

    Returns
    -------
    (output (T, N, H), h_n (N, H), c_n (N, H)), plus the workspace when asked.
    """
    return _recurrent("lstm", _LSTM, input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                      reverse, lengths, return_workspace)


def gru(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse=False, lengths=None,
        *, return_workspace=False):
    """One layer and direction of a GRU over a whole sequence (``torch.nn.GRU``'s cell, gates
    r, z, n in the weights' rows).

    ``r, z = sigmoid(W_i. x + b_i. + W_h. h + b_h.)``, ``n = tanh(W_in x + b_in + r * (W_hn h +
    b_hn))``, ``h_t = (1 - z) * n + z * h_(t-1)``.

    Parameters and returns as :func:`rnn` (weights (3H, I), (3H, H), biases (3H,)).
    """
    return _recurrent("gru", _GRU, input, hx, None, weight_ih, weight_hh, bias_ih, bias_hh,
                      reverse, lengths, return_workspace)


def _recurrent_backward(op, mode, grads, input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                        reverse, lengths, workspace):
    lstm_ = mode == _LSTM
    arrays = dict(input=input, hx=hx, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                  bias_hh=bias_hh)
    if lstm_:
        arrays["cx"] = cx
    names = ("grad_output", "grad_h_n", "grad_c_n")[:3 if lstm_ else 2]
    arrays.update(zip(names, grads))
    call = _Call(op, ("hx", "cx", "bias_ih", "bias_hh") + names, **arrays)
    dtype, t, n, i, h, lens = _rnn_args(call, mode, lengths)
    forward = _RNN_OPS[mode]
    for name, shape in zip(names, ((t, n, h), (n, h), (n, h))):
        if call[name] is not None:
            call.same_dtype(dtype, name)
            if tuple(call[name].shape) != shape:
                raise ValueError(f"{op}(): {name} has shape {tuple(call[name].shape)} but "
                                 f"{forward}() gives {shape}; they must be equal")
    h0, c0, b_ih, b_hh, dlens = _rnn_ready(call, mode, dtype, n, h, lens)
    be = _backend(call.device)
    x, w_ih, w_hh = call.ready("input"), call.ready("weight_ih"), call.ready("weight_hh")
    if workspace is None:  # recompute the forward
        out = call.empty((t, n, h), dtype)
        ws = call.empty((t * n * (_RNN_GATES[mode] + _RNN_EXTRA[mode]) * h,), dtype)
        be.rnn_forward(mode, out, call.empty((n, h), dtype),
                       call.empty((n, h), dtype) if lstm_ else None, ws, x, h0, c0, w_ih, w_hh,
                       b_ih, b_hh, dlens, bool(reverse))
    else:
        if not isinstance(workspace, RecurrentWorkspace):
            raise TypeError(f"{op}(): workspace must be the RecurrentWorkspace that {forward}(..., "
                            f"return_workspace=True) returned, not {type(workspace).__name__}")
        if (workspace.mode != mode or workspace.shape != (t, n, i, h)
                or workspace.dtype != dtype or workspace.device != call.device
                or workspace.reverse != bool(reverse)
                or not np.array_equal(workspace.lengths, lens)):
            raise ValueError(f"{op}(): the workspace comes from a different call ({workspace!r}); "
                             "pass the arguments of the forward call that returned it")
        out, ws = workspace.output, workspace.gates

    def grad_or_zeros(name, shape):
        if call[name] is not None:
            return call.ready(name)
        z = call.empty(shape, dtype)
        if call.device == "cpu":
            z[...] = 0
        else:
            z.copy_to_device(np.zeros(shape, dtype), stream=_cuda.current_stream())
        return z

    gout = grad_or_zeros("grad_output", (t, n, h))
    gh_n = grad_or_zeros("grad_h_n", (n, h))
    gc_n = grad_or_zeros("grad_c_n", (n, h)) if lstm_ else None
    g = _RNN_GATES[mode]
    gx = call.empty((t, n, i), dtype)
    gh0 = call.empty((n, h), dtype)
    gc0 = call.empty((n, h), dtype) if lstm_ else None
    gw_ih, gw_hh = call.empty((g * h, i), dtype), call.empty((g * h, h), dtype)
    gb_ih = call.empty((g * h,), dtype) if call["bias_ih"] is not None else None
    gb_hh = call.empty((g * h,), dtype) if call["bias_hh"] is not None else None
    be.rnn_backward(mode, gx, gh0, gc0, gw_ih, gw_hh, gb_ih, gb_hh, gout, gh_n, gc_n, x, h0, c0,
                    w_ih, w_hh, b_ih, b_hh, dlens, bool(reverse), out, ws)

    def fin(a, name):
        return None if a is None or call[name] is None else call.finish(a)

    states = (fin(gh0, "hx"),) + ((fin(gc0, "cx"),) if lstm_ else ())
    return ((call.finish(gx),) + states + (call.finish(gw_ih), call.finish(gw_hh),
                                           fin(gb_ih, "bias_ih"), fin(gb_hh, "bias_hh"), None))


def rnn_backward(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, bias_ih=None,
                 bias_hh=None, nonlinearity="tanh", reverse=False, lengths=None, *,
                 workspace=None):
    """Backward through time of :func:`rnn`.

    Parameters
    ----------
    grad_output : array (T, N, H) or None; grad_h_n : array (N, H) or None
        The loss gradients of :func:`rnn`'s two outputs (None: zero).
    input ... lengths : :func:`rnn`'s arguments.
    workspace : RecurrentWorkspace or None, keyword-only
        From ``rnn(..., return_workspace=True)`` with the same arguments; without it the
        forward is recomputed.

    Returns
    -------
    (grad_input, grad_hx, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh, None):
    one entry per array argument of :func:`rnn` (None for the arguments given as None, and for
    ``lengths``).
    """
    mode = _nonlinearity("rnn_backward", nonlinearity)
    return _recurrent_backward("rnn_backward", mode, (grad_output, grad_h_n), input, hx, None,
                               weight_ih, weight_hh, bias_ih, bias_hh, reverse, lengths, workspace)


def lstm_backward(grad_output, grad_h_n, grad_c_n, input, hx, cx, weight_ih, weight_hh,
                  bias_ih=None, bias_hh=None, reverse=False, lengths=None, *, workspace=None):
    """Backward through time of :func:`lstm`: the gradients of its three outputs (each may be
    None) first, then its arguments. Returns ``(grad_input, grad_hx, grad_cx, grad_weight_ih,
    grad_weight_hh, grad_bias_ih, grad_bias_hh, None)``, as :func:`rnn_backward`."""
    return _recurrent_backward("lstm_backward", _LSTM, (grad_output, grad_h_n, grad_c_n), input,
                               hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, reverse, lengths,
                               workspace)


def gru_backward(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, bias_ih=None,
                 bias_hh=None, reverse=False, lengths=None, *, workspace=None):
    """Backward through time of :func:`gru`; arguments and returns as :func:`rnn_backward`."""
    return _recurrent_backward("gru_backward", _GRU, (grad_output, grad_h_n), input, hx, None,
                               weight_ih, weight_hh, bias_ih, bias_hh, reverse, lengths, workspace)


def _swap01(x):
    """``x (A, B, C)`` with its first two axes swapped, C-contiguous, on x's device (batch_first
    sequences to time-major and back)."""
    call = _Call("swap01", x=x)
    dtype = call.float_dtype("x")
    _rank(call, "x", (3,))
    a, b, c = (int(v) for v in call["x"].shape)
    out = call.empty((b, a, c), dtype)
    _backend(call.device).swap01(out, call.ready("x"))
    return call.finish(out)


__all__ += ["gru", "gru_backward", "lstm", "lstm_backward", "rnn", "rnn_backward",
            "RecurrentWorkspace"]
