"""Pooling backward ops: against float64 central differences of the reference, against PyTorch
autograd (ties, NaN and -inf windows included), and CPU against CUDA."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import (SIM_FP_WARNINGS, assert_close, call_unchanged, cuda_skip_reason, host,
                      is_device_array, on, rand)
from gradcheck import assert_grad_close

F = nc.functional

# (id, input shape, kwargs): overlapping windows (stride < kernel), padding, dilation, ceil_mode
MAX_CASES = [
    ("k2", (2, 3, 6, 8), dict(kernel_size=2)),
    ("k2_odd", (2, 2, 7, 9), dict(kernel_size=2)),  # the 2x2 path's uncovered last row, column
    ("k3s2p1", (2, 2, 7, 9), dict(kernel_size=3, stride=2, padding=1)),
    ("k3s1", (1, 2, 6, 7), dict(kernel_size=3, stride=1)),
    ("rect_dil", (1, 2, 9, 8), dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0),
                                    dilation=(2, 1))),
    ("ceil", (2, 1, 7, 7), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ("ceil_pad", (1, 2, 6, 5), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ("unbatched", (3, 5, 6), dict(kernel_size=2, stride=1)),
]
AVG_CASES = [c for c in MAX_CASES if "dilation" not in c[2]] + [
    ("k3s3p1", (1, 2, 8, 7), dict(kernel_size=3, stride=3, padding=1)),
]
ADAPTIVE_CASES = [
    ("7to3", (2, 2, 7, 7), (3, 3)),
    ("uneven", (1, 3, 5, 9), (4, 5)),
    ("global", (2, 3, 4, 5), (1, 1)),
    ("identity", (1, 2, 3, 4), (3, 4)),
    ("upsample", (1, 1, 3, 2), (5, 4)),
    ("none_dim", (2, 1, 6, 5), (None, 2)),
    ("unbatched", (2, 6, 6), 4),
]


def ids(cases):
    return [c[0] for c in cases]


def args(cases):
    return [c[1:] for c in cases]


def distinct(rng, shape, dtype):
    """Values 0.1 apart in random order: no ties, and a perturbation of 1e-6 never changes a
    window's arg-max (central differences are then exact for max pooling)."""
    vals = (rng.permutation(int(np.prod(shape))) - np.prod(shape) / 2) * 0.1
    return vals.reshape(shape).astype(dtype)


def check_grad(device, dtype, name, x, extra, kw):
    """``F.<name>_backward`` against central differences of ``reference.<name>``."""
    fwd = getattr(R, name)
    go = rand(np.random.default_rng(7), fwd(x, *extra, **kw).shape, dtype)
    grads = call_unchanged(getattr(F, name + "_backward"), go, x, *extra, **kw)
    assert isinstance(grads, tuple) and len(grads) == 1
    assert type(grads[0]) is np.ndarray
    num = R.numerical_grad(lambda v: go * fwd(v, *extra, **kw), (x,), 0)
    assert_grad_close(grads[0], num, dtype, what=f"{name}_backward[{device}]")


@pytest.mark.parametrize("shape, kw", args(MAX_CASES), ids=ids(MAX_CASES))
def test_max_pool2d_backward(rng, device, dtype, shape, kw):
    check_grad(device, dtype, "max_pool2d", distinct(rng, shape, dtype), (), kw)


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl_pad", "excl_pad"])
@pytest.mark.parametrize("shape, kw", args(AVG_CASES), ids=ids(AVG_CASES))
def test_avg_pool2d_backward(rng, device, dtype, shape, kw, count_include_pad):
    kw = dict(kw, count_include_pad=count_include_pad)
    check_grad(device, dtype, "avg_pool2d", rand(rng, shape, dtype), (), kw)


@pytest.mark.parametrize("op", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
@pytest.mark.parametrize("shape, size", args(ADAPTIVE_CASES), ids=ids(ADAPTIVE_CASES))
def test_adaptive_pool2d_backward(rng, device, dtype, op, shape, size):
    check_grad(device, dtype, op, distinct(rng, shape, dtype), (size,), {})


def test_max_pool2d_backward_ties_go_to_the_first(device, dtype):
    # Scan order is row by row: the first maximum of each window gets the gradient.
    x = np.array([[[[1, 5, 5, 0], [5, 2, 0, 0]]]], dtype)
    go = np.array([[[[10, 20]]]], dtype)
    (g,) = F.max_pool2d_backward(go, x, 2)
    assert np.array_equal(host(g), np.array([[[[0, 10, 20, 0], [0, 0, 0, 0]]]], dtype))
    (g,) = F.adaptive_max_pool2d_backward(go, x, (1, 2))
    assert np.array_equal(host(g), np.array([[[[0, 10, 20, 0], [0, 0, 0, 0]]]], dtype))


def test_max_pool2d_backward_overlapping_windows_add(device, dtype):
    # One maximum in every 3x3 window of a stride-1 pool collects all their gradients.
    x = np.zeros((1, 1, 4, 4), dtype)
    x[0, 0, 1, 2] = 1
    go = np.arange(1, 5, dtype=dtype).reshape(1, 1, 2, 2)
    (g,) = F.max_pool2d_backward(go, x, 3, stride=1)
    want = np.zeros_like(x)
    want[0, 0, 1, 2] = 10
    assert np.array_equal(host(g), want)


def test_pool_backward_device_arrays(rng, device, dtype):
    x = distinct(rng, (1, 2, 5, 6), dtype)
    go = rand(rng, (1, 2, 3, 4), dtype)
    (g,) = F.max_pool2d_backward(on(device, go), on(device, x), 2, padding=1)
    if device == "cuda":
        assert is_device_array(g)
    num = R.numerical_grad(lambda v: go * R.max_pool2d(v, 2, padding=1), (x,), 0)
    assert_grad_close(g, num, dtype, what="max_pool2d_backward device arrays")


@pytest.mark.parametrize("op, extra", [("max_pool2d", (2,)), ("avg_pool2d", (2,)),
                                       ("adaptive_avg_pool2d", ((2, 2),)),
                                       ("adaptive_max_pool2d", ((2, 2),))])
def test_pool_backward_bad_arguments_raise(device, op, extra):
    fn = getattr(F, op + "_backward")
    x = np.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match="grad_output"):
        fn(np.zeros((1, 2, 3, 2)), x, *extra)
    with pytest.raises(TypeError):
        fn(np.zeros((1, 2, 2, 2), np.float32), x, *extra)
    with pytest.raises(ValueError):  # the forward's rank check
        fn(np.zeros((2, 2)), np.zeros((4, 4)), *extra)


def test_pool_backward_forward_errors(device):
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match="padding"):
        F.max_pool2d_backward(np.zeros((1, 1, 3, 3)), x, 2, padding=2)
    with pytest.raises(ValueError, match="too small"):
        F.avg_pool2d_backward(np.zeros((1, 1, 1, 1)), x, 5)
    with pytest.raises(ValueError, match="non-negative"):
        F.adaptive_avg_pool2d_backward(np.zeros((1, 1, 1, 1)), x, -1)
    with pytest.raises(TypeError, match="output_size"):
        F.adaptive_max_pool2d_backward(np.zeros((1, 1, 1, 1)), x, "1")


# ---------------------------------------------------------------------------------------------
# PyTorch autograd (optional oracle)
# ---------------------------------------------------------------------------------------------

def torch_grad(torch, op, x, go, *extra, **kw):
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    getattr(torch.nn.functional, op)(t, *extra, **kw).backward(
        torch.tensor(go, dtype=torch.float64))
    return t.grad.numpy()


def small_ints(rng, shape, dtype):
    """Values from {-2, ..., 2}: windows full of ties."""
    return rng.integers(-2, 3, size=shape).astype(dtype)


@pytest.mark.parametrize("shape, kw", args(MAX_CASES), ids=ids(MAX_CASES))
def test_max_pool2d_backward_ties_torch(rng, device_available, dtype, shape, kw):
    torch = pytest.importorskip("torch")
    x = small_ints(rng, shape, dtype)
    go = rand(rng, R.max_pool2d(x, **kw).shape, dtype)
    (g,) = F.max_pool2d_backward(go, x, **kw)
    assert_close(g, torch_grad(torch, "max_pool2d", x, go, **kw), dtype, "pool",
                 what="max_pool2d_backward ties vs torch")


@SIM_FP_WARNINGS
@pytest.mark.parametrize("op, kw", [("max_pool2d", dict(kernel_size=3, stride=1, padding=1)),
                                    ("max_pool2d", dict(kernel_size=2)),
                                    ("max_pool2d", dict(kernel_size=2, dilation=2)),
                                    ("adaptive_max_pool2d", dict(output_size=(2, 3)))])
def test_max_pool2d_backward_nan_and_inf_torch(rng, device_available, dtype, op, kw):
    # NaN windows (several NaN in one: the last wins), all -inf windows (the first tap inside
    # the input wins), +inf maxima.
    torch = pytest.importorskip("torch")
    x = small_ints(rng, (2, 2, 5, 6), dtype)
    x[0, 0, 1:3, 1:3] = np.nan
    x[0, 1] = -np.inf
    x[1, 0, 0, :4] = np.inf
    x[1, 1, ::2, ::3] = np.nan
    go = rand(rng, getattr(R, op)(x, **kw).shape, dtype)
    (g,) = getattr(F, op + "_backward")(go, x, **kw)
    assert_close(g, torch_grad(torch, op, x, go, **kw), dtype, "pool",
                 what=f"{op}_backward NaN/Inf vs torch")


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("shape, kw", args(AVG_CASES), ids=ids(AVG_CASES))
def test_avg_pool2d_backward_torch(rng, device_available, dtype, shape, kw, count_include_pad):
    torch = pytest.importorskip("torch")
    x = rand(rng, shape, dtype)
    kw = dict(kw, count_include_pad=count_include_pad)
    go = rand(rng, R.avg_pool2d(x, **kw).shape, dtype)
    (g,) = F.avg_pool2d_backward(go, x, **kw)
    assert_close(g, torch_grad(torch, "avg_pool2d", x, go, **kw), dtype, "pool",
                 what="avg_pool2d_backward vs torch")


@pytest.mark.parametrize("op", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
@pytest.mark.parametrize("shape, size", args(ADAPTIVE_CASES), ids=ids(ADAPTIVE_CASES))
def test_adaptive_pool2d_backward_torch(rng, device_available, dtype, op, shape, size):
    torch = pytest.importorskip("torch")
    x = small_ints(rng, shape, dtype)
    go = rand(rng, getattr(R, op)(x, size).shape, dtype)
    (g,) = getattr(F, op + "_backward")(go, x, size)
    assert_close(g, torch_grad(torch, op, x, go, size), dtype, "pool",
                 what=f"{op}_backward vs torch")


@pytest.mark.parametrize("op, extra, kw", [
    ("max_pool2d", (3,), dict(stride=2, padding=1)),
    ("avg_pool2d", (3,), dict(stride=2, padding=1, count_include_pad=False)),
    ("adaptive_avg_pool2d", ((7, 7),), {}),
    ("adaptive_max_pool2d", ((5, 7),), {}),
])
def test_pool_backward_big_torch(rng, device_available_big, dtype, op, extra, kw):
    torch = pytest.importorskip("torch")
    x = rand(rng, (4, 8, 33, 30), dtype)
    go = rand(rng, getattr(R, op)(x, *extra, **kw).shape, dtype)
    (g,) = getattr(F, op + "_backward")(go, x, *extra, **kw)
    assert_close(g, torch_grad(torch, op, x, go, *extra, **kw), dtype, "pool",
                 what=f"{op}_backward big vs torch")


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
@pytest.mark.parametrize("op, extra, kw", [
    ("max_pool2d", (3,), dict(stride=2, padding=1)),
    ("max_pool2d", ((2, 3),), dict(stride=1, dilation=(2, 1), ceil_mode=True)),
    ("avg_pool2d", (3,), dict(stride=2, padding=1, count_include_pad=False)),
    ("avg_pool2d", (2,), dict(stride=1, ceil_mode=True)),
    ("adaptive_avg_pool2d", ((3, 4),), {}),
    ("adaptive_max_pool2d", ((4, 3),), {}),
])
def test_pool_backward_cpu_vs_cuda(rng, cuda_device, dtype, op, extra, kw):
    x = small_ints(rng, (2, 2, 7, 6), dtype)
    x[0, 0, 2, 2:4] = np.nan
    x[1, 1] = -np.inf
    go = rand(rng, getattr(R, op)(x, *extra, **kw).shape, dtype)
    fn = getattr(F, op + "_backward")
    with nc.use_device("cpu"):
        (want,) = fn(go, x, *extra, **kw)
    (got,) = fn(on("cuda", go), on("cuda", x), *extra, **kw)
    assert is_device_array(got)
    assert_close(got, want.astype(np.float64), dtype, "parity", what=f"{op}_backward cuda")
