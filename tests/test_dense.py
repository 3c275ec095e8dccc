"""linear, softmax and log_softmax against the float64 reference."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import check_op, rand

F = nc.functional

# (id, input shape, weight shape)
LINEAR_CASES = [
    ("2d", (5, 7), (3, 7)),
    ("leading_dims", (2, 3, 4, 7), (5, 7)),
    ("1d_input", (7,), (3, 7)),
    ("batch_1", (1, 9), (4, 9)),
    ("k_1", (6, 1), (5, 1)),
    ("out_1", (4, 6), (1, 6)),
    ("odd", (13, 17), (11, 17)),
    ("empty_leading", (0, 7), (3, 7)),
]
LINEAR_BIG = [
    ("big_odd", (37, 129), (65, 129)),
    ("big_leading", (3, 5, 7, 100), (33, 100)),
    ("big_tall", (257, 31), (17, 31)),
    ("big_wide", (2, 515), (130, 515)),
]


def linear_scale(x, w, b):
    return R.linear(np.abs(x), np.abs(w), None if b is None else np.abs(b))


def run_linear(rng, device, dtype, xs, ws, bias):
    x, w = rand(rng, xs, dtype), rand(rng, ws, dtype)
    b = rand(rng, (ws[0],), dtype) if bias else None
    return check_op("linear", (x, w, b), {}, dtype, "linear", device, scale=linear_scale(x, w, b))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("xs, ws", [c[1:] for c in LINEAR_CASES], ids=[c[0] for c in LINEAR_CASES])
def test_linear(rng, device, dtype, xs, ws, bias):
    run_linear(rng, device, dtype, xs, ws, bias)


@pytest.mark.parametrize("xs, ws", [c[1:] for c in LINEAR_BIG], ids=[c[0] for c in LINEAR_BIG])
def test_linear_big(rng, device_big, dtype, xs, ws):
    device = device_big  # realistic shapes: CPU and real GPUs
    run_linear(rng, device, dtype, xs, ws, True)


def test_linear_vector_weight(rng, device, dtype):
    # torch.nn.functional.linear accepts a 1-D weight: the output drops the last dim.
    x, w = rand(rng, (4, 6), dtype), rand(rng, (6,), dtype)
    out = check_op("linear", (x, w), {}, dtype, "linear", device, scale=linear_scale(x, w, None))
    assert out.shape == (4,)


@pytest.mark.parametrize("xs, ws, bs", [((4, 7), (3, 6), None), ((4, 7), (3, 7), (4,)),
                                        ((4, 7), (3, 7, 1), None), ((4, 7), (3, 7), (1, 3)),
                                        ((4, 7), (7,), (1,)), ((4, 7), (7,), ())])
def test_linear_shape_mismatch_raises(device, xs, ws, bs):
    with pytest.raises(ValueError):
        F.linear(np.zeros(xs), np.zeros(ws), None if bs is None else np.zeros(bs))


def test_linear_0d_input_raises(device):
    with pytest.raises(ValueError):
        F.linear(np.zeros(()), np.zeros((3, 1)))


# ---------------------------------------------------------------------------------------------
# softmax / log_softmax
# ---------------------------------------------------------------------------------------------

SOFTMAX_SHAPES = [(3, 4, 5), (2, 3, 4, 5), (7,), (1, 9), (6, 1)]


def dims_of(shape):
    return [(shape, d) for d in list(range(len(shape))) + [-d for d in range(1, len(shape) + 1)]]


SOFTMAX_CASES = [c for s in SOFTMAX_SHAPES for c in dims_of(s)]


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, dim", SOFTMAX_CASES, ids=[f"{s}-dim{d}" for s, d in SOFTMAX_CASES])
def test_softmax(rng, device, dtype, op, shape, dim):
    x = rand(rng, shape, dtype, -6, 6)
    out = check_op(op, (x,), dict(dim=dim), dtype, "softmax", device)
    if op == "softmax":
        np.testing.assert_allclose(out.sum(axis=dim), 1.0, rtol=1e-5)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_big(rng, device_big, dtype, op):
    device = device_big  # realistic shapes: CPU and real GPUs
    x = rand(rng, (3, 1001, 7), dtype, -20, 20)
    for dim in (0, 1, 2, -1):
        check_op(op, (x,), dict(dim=dim), dtype, "softmax", device)
    check_op(op, (rand(rng, (65, 4099), dtype, -20, 20),), dict(dim=1), dtype, "softmax", device)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [1, -1, 0])
def test_softmax_large_magnitudes(device, dtype, op, dim):
    # +-1e30 must not overflow: the row max is subtracted first.
    x = np.array([[1e30, -1e30, 0.0, 1e30, 5.0],
                  [-1e30, -1e30, -1e30, -1e30, -1e30],
                  [1e30, 1e30 * 0.5, -3.0, 2.0, 1.0],
                  [-1e30, 0.0, 1.0, 2.0, 3.0]], dtype=dtype)
    out = check_op(op, (x,), dict(dim=dim), dtype, "softmax", device)
    assert np.isfinite(out).all() if op == "softmax" else not np.isnan(out).any()


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_0d(device, dtype, op):
    check_op(op, (np.array(2.5, dtype=dtype),), dict(dim=0), dtype, "softmax", device)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_empty(device, dtype, op):
    check_op(op, (np.zeros((0, 4), dtype=dtype),), dict(dim=1), dtype, "softmax", device)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [3, -4])
def test_softmax_dim_out_of_range_raises(device, op, dim):
    # torch raises IndexError for a dim out of range
    with pytest.raises(IndexError):
        getattr(F, op)(np.zeros((2, 3, 4)), dim)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_dim_not_int_raises(device, op):
    with pytest.raises(TypeError):
        getattr(F, op)(np.zeros((2, 3)), 1.0)
