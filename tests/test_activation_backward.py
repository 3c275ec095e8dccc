"""Activation backward ops: against float64 central differences of the reference, against
PyTorch autograd (kinks, NaN and Inf included), and CPU against CUDA."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import (SIM_FP_WARNINGS, assert_close, call_unchanged, cuda_skip_reason, host,
                      is_device_array, on, rand)
from gradcheck import assert_grad_close

F = nc.functional

# (id, name, kwargs)
ACTIVATIONS = [
    ("relu", "relu", {}),
    ("relu6", "relu6", {}),
    ("leaky_relu", "leaky_relu", {}),
    ("leaky_relu_0.2", "leaky_relu", dict(negative_slope=0.2)),
    ("leaky_relu_negative_slope", "leaky_relu", dict(negative_slope=-1.5)),
    ("sigmoid", "sigmoid", {}),
    ("tanh", "tanh", {}),
    ("silu", "silu", {}),
    ("gelu", "gelu", {}),
    ("gelu_tanh", "gelu", dict(approximate="tanh")),
    ("hardswish", "hardswish", {}),
]
KINKS = {"relu": (0.0,), "relu6": (0.0, 6.0), "leaky_relu": (0.0,), "hardswish": (-3.0, 3.0)}
# Kinks, infinities, NaN and the places where the formulas switch branch: checked against torch.
EDGES = [-np.inf, -1e30, -100.0, -20.0, -6.0, -3.0, -2.999, -1.0, -1e-7, -0.0, 0.0, 1e-7, 0.5,
         2.999, 3.0, 5.999, 6.0, 6.001, 20.0, 100.0, 1e30, np.inf, np.nan]


def args(cases):
    return [c[1:] for c in cases]


def ids(cases):
    return [c[0] for c in cases]


def away_from_kinks(x, name, margin=0.05):
    """``x`` with values within ``margin`` of a kink moved off it (central differences there
    straddle the kink)."""
    x = x.copy()
    for k in KINKS.get(name, ()):
        near = np.abs(x - k) < margin
        x[near] = k + np.where(x[near] >= k, margin, -margin).astype(x.dtype)
    return x


def backward(name):
    return getattr(F, name + "_backward")


def elementwise_grad(name, kw, x, go):
    """Central differences of the float64 reference, elementwise (the op is elementwise, so
    this is ``numerical_grad`` vectorised)."""
    ref = getattr(R, name)
    x64, h = x.astype(np.float64), 1e-6
    return go.astype(np.float64) * (ref(x64 + h, **kw) - ref(x64 - h, **kw)) / (2 * h)


@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
@pytest.mark.parametrize("shape", [(3, 4, 5), (17,)], ids=["3d", "1d"])
def test_activation_backward(rng, device, dtype, name, kw, shape):
    x = away_from_kinks(rand(rng, shape, dtype, -8, 8), name)
    go = rand(rng, shape, dtype)
    grads = call_unchanged(backward(name), go, x, **kw)
    assert isinstance(grads, tuple) and len(grads) == 1
    assert type(grads[0]) is np.ndarray
    ref = getattr(R, name)
    num = R.numerical_grad(lambda v: go * ref(v, **kw), (x,), 0)
    assert_grad_close(grads[0], num, dtype, what=f"{name}_backward[{device}]")


@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
def test_activation_backward_big(rng, device_big, dtype, name, kw):
    # Several parallel tasks and a vector tail on the CPU.
    x = away_from_kinks(rand(rng, (40013,), dtype, -10, 10), name)
    go = rand(rng, x.shape, dtype)
    (g,) = backward(name)(go, x, **kw)
    assert_grad_close(g, elementwise_grad(name, kw, x, go), dtype, what=f"{name}_backward big")


@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
def test_activation_backward_device_arrays(rng, device, dtype, name, kw):
    x = away_from_kinks(rand(rng, (2, 9), dtype, -5, 5), name)
    go = rand(rng, x.shape, dtype)
    (g,) = backward(name)(on(device, go), on(device, x), **kw)
    if device == "cuda":
        assert is_device_array(g)
    assert_grad_close(g, elementwise_grad(name, kw, x, go), dtype, what=f"{name}_backward")


def test_activation_backward_empty(device, dtype):
    (g,) = F.relu_backward(np.zeros((0, 3), dtype), np.zeros((0, 3), dtype))
    assert host(g).shape == (0, 3) and host(g).dtype == dtype


@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
def test_activation_backward_bad_arguments_raise(device, name, kw):
    fn = backward(name)
    with pytest.raises(ValueError, match="grad_output"):
        fn(np.zeros((2, 4)), np.zeros((2, 3)), **kw)
    with pytest.raises(TypeError):
        fn(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float64), **kw)
    with pytest.raises(TypeError):
        fn(np.zeros((2, 3), np.int32), np.zeros((2, 3), np.int32), **kw)
    with pytest.raises(TypeError):
        fn([1.0], np.zeros(1), **kw)


def test_activation_backward_option_errors(device):
    x = np.zeros(3)
    with pytest.raises(ValueError, match="approximate"):
        F.gelu_backward(x, x, approximate="erf")
    with pytest.raises(TypeError, match="negative_slope"):
        F.leaky_relu_backward(x, x, negative_slope="0.1")


# ---------------------------------------------------------------------------------------------
# PyTorch autograd (optional oracle): random values, and the kinks, Inf and NaN exactly
# ---------------------------------------------------------------------------------------------

def torch_grad(torch, name, kw, x, go):
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    getattr(torch.nn.functional, name)(t, **kw).backward(torch.tensor(go, dtype=torch.float64))
    return t.grad.numpy()


@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
def test_activation_backward_torch(rng, device_available, dtype, name, kw):
    torch = pytest.importorskip("torch")
    x, go = rand(rng, (4, 33), dtype, -8, 8), rand(rng, (4, 33), dtype)
    (g,) = backward(name)(go, x, **kw)
    assert_close(g, torch_grad(torch, name, kw, x, go), dtype, "elementwise",
                 what=f"{name}_backward vs torch")


@SIM_FP_WARNINGS
@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
def test_activation_backward_kinks_torch(device_available, dtype, name, kw):
    torch = pytest.importorskip("torch")
    x = np.array(EDGES, dtype)
    go = np.linspace(-1.5, 2.0, x.size).astype(dtype)
    (g,) = backward(name)(go, x, **kw)
    want = torch_grad(torch, name, kw, x, go)
    # The piecewise ones select or scale grad_output: exactly torch's values (NaN, Inf, kinks).
    family = "exact" if name in ("relu", "relu6") else "elementwise"
    assert_close(g, want, dtype, family, what=f"{name}_backward at kinks vs torch")


# ---------------------------------------------------------------------------------------------
# CPU against CUDA
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def cuda_device():
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    with nc.use_device("cuda"):
        yield "cuda"


@SIM_FP_WARNINGS
@pytest.mark.cuda_only
@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
def test_activation_backward_cpu_vs_cuda(rng, cuda_device, dtype, name, kw):
    x = np.concatenate([rand(rng, (40,), dtype, -8, 8), np.array(EDGES, dtype)])
    go = rand(rng, x.shape, dtype)
    with nc.use_device("cpu"):
        (want,) = backward(name)(go, x, **kw)
    (got,) = backward(name)(on("cuda", go), on("cuda", x), **kw)
    assert is_device_array(got)
    assert_close(got, want.astype(np.float64), dtype, "parity", what=f"{name}_backward cuda")
