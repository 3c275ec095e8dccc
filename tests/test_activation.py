"""Elementwise activations against the float64 reference."""

import numpy as np
import pytest

import numbaconv as nc
from conftest import SIM_FP_WARNINGS, check_op, rand

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
EXACT = {"relu", "relu6", "leaky_relu"}  # only select or scale the input

# Values where the formulas change branch or lose precision.
EDGES = [-1e30, -100.0, -50.0, -20.0, -6.0, -4.0, -3.0, -2.999, -1.0, -1e-7, -0.0, 0.0, 1e-7, 0.5,
         1.0, 2.999, 3.0, 5.999, 6.0, 6.001, 20.0, 50.0, 100.0, 1e30]
NONFINITE = [np.inf, -np.inf, np.nan]


def family(name):
    return "exact" if name in EXACT else "elementwise"


def args(cases):
    return [c[1:] for c in cases]


def ids(cases):
    return [c[0] for c in cases]


@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
@pytest.mark.parametrize("shape", [(3, 5, 7), (61,), (2, 1, 3, 1, 4)], ids=["3d", "1d", "5d"])
def test_activation(rng, device, dtype, name, kw, shape):
    x = rand(rng, shape, dtype, -8, 8)
    fam = "exact" if name == "relu" or name == "relu6" else family(name)
    if name == "leaky_relu":
        fam = "elementwise"  # x * slope rounds in the input dtype, the reference in float64
    check_op(name, (x,), kw, dtype, fam, device)


@SIM_FP_WARNINGS
@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
def test_activation_edges(device, dtype, name, kw):
    x = np.array(EDGES, dtype=dtype)
    check_op(name, (x,), kw, dtype, "elementwise", device)


@SIM_FP_WARNINGS
@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
def test_activation_nonfinite(device, dtype, name, kw):
    # NaN and +-Inf give what torch gives: the reference's formulas are checked against torch.
    x = np.array(NONFINITE + [1.0, -1.0], dtype=dtype)
    check_op(name, (x,), kw, dtype, "elementwise", device)


@SIM_FP_WARNINGS
@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
def test_activation_edges_in_whole_vectors(rng, device, dtype, name, kw):
    # The edge and non-finite values inside full SIMD vectors, not only a short masked tail.
    x = rand(rng, (101,), dtype, -8, 8)
    special = np.array(EDGES + NONFINITE, dtype=dtype)
    x[3:3 + 3 * special.size:3] = special
    check_op(name, (x,), kw, dtype, "elementwise", device)


@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
def test_activation_big(rng, device_big, dtype, name, kw):
    # Longer than the kernels' chunk sizes and not a multiple of them.
    device = device_big  # realistic shapes: CPU and real GPUs
    x = rand(rng, (3, 40001), dtype, -10, 10)
    check_op(name, (x,), kw, dtype, "elementwise", device)


@pytest.mark.parametrize("name, kw", args(ACTIVATIONS), ids=ids(ACTIVATIONS))
def test_activation_0d_and_empty(device, dtype, name, kw):
    check_op(name, (np.array(-0.7, dtype=dtype),), kw, dtype, "elementwise", device)
    check_op(name, (np.zeros((0, 3), dtype=dtype),), kw, dtype, "elementwise", device)


def test_relu_exact_values(device, dtype):
    x = np.array([-2.0, -0.5, 0.0, 0.25, 3.0, 7.0], dtype=dtype)
    np.testing.assert_array_equal(F.relu(x), np.array([0, 0, 0, 0.25, 3, 7], dtype=dtype))
    np.testing.assert_array_equal(F.relu6(x), np.array([0, 0, 0, 0.25, 3, 6], dtype=dtype))


def test_gelu_bad_approximate_raises(device):
    with pytest.raises(ValueError):
        F.gelu(np.zeros(3), approximate="erf")


def test_leaky_relu_default_slope(device, dtype):
    x = np.array([-1.0, 2.0], dtype=dtype)
    np.testing.assert_allclose(F.leaky_relu(x), np.array([-0.01, 2.0]), rtol=1e-6)
