"""max_pool2d, avg_pool2d and the adaptive poolings against the float64 reference."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import SIM, assert_close, call_unchanged, check_op, on, rand

F = nc.functional

# (id, input shape, kwargs shared by max and avg pooling)
POOL_CASES = [
    ("k2", (2, 3, 6, 8), dict(kernel_size=2)),
    ("k3_default_stride_odd", (1, 2, 7, 9), dict(kernel_size=3)),
    ("k3_s2_p1", (1, 3, 9, 8), dict(kernel_size=3, stride=2, padding=1)),
    ("k3_s2_p1_ceil", (1, 3, 9, 8), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("k2_ceil_odd", (1, 2, 7, 5), dict(kernel_size=2, ceil_mode=True)),
    ("k2_s2_p1_ceil", (1, 1, 5, 6), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ("ceil_last_window_dropped", (1, 2, 6, 6), dict(kernel_size=3, stride=3, padding=1,
                                                    ceil_mode=True)),
    ("rect_kernel", (1, 2, 8, 9), dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0))),
    ("stride_1", (1, 2, 5, 5), dict(kernel_size=3, stride=1, padding=1)),
    ("stride_larger_than_kernel", (1, 2, 9, 10), dict(kernel_size=2, stride=3)),
    ("kernel_covers_input", (2, 3, 4, 4), dict(kernel_size=4)),
    ("image_1x1", (2, 3, 1, 1), dict(kernel_size=1)),
    ("list_args", (1, 2, 7, 7), dict(kernel_size=[3, 2], stride=[2, 2], padding=[1, 1])),
    ("unbatched", (3, 6, 7), dict(kernel_size=2, stride=2, ceil_mode=True)),
]

MAX_ONLY = [
    ("dilation", (1, 2, 9, 9), dict(kernel_size=3, stride=2, padding=1, dilation=2)),
    ("dilation_tuple_ceil", (1, 2, 10, 9), dict(kernel_size=2, stride=3, dilation=(2, 3),
                                                ceil_mode=True)),
]

BIG = [
    ("resnet_stem", (2, 16, 33, 35), dict(kernel_size=3, stride=2, padding=1)),
    ("ceil_big", (1, 19, 27, 26), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ("k2_big", (3, 7, 64, 63), dict(kernel_size=2)),
]


def ids(cases):
    return [c[0] for c in cases]


def args(cases):
    return [c[1:] for c in cases]


@pytest.mark.parametrize("xs, kw", args(POOL_CASES + MAX_ONLY), ids=ids(POOL_CASES + MAX_ONLY))
def test_max_pool2d(rng, device, dtype, xs, kw):
    check_op("max_pool2d", (rand(rng, xs, dtype),), kw, dtype, "exact", device)


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl_pad", "excl_pad"])
@pytest.mark.parametrize("xs, kw", args(POOL_CASES), ids=ids(POOL_CASES))
def test_avg_pool2d(rng, device, dtype, xs, kw, count_include_pad):
    check_op("avg_pool2d", (rand(rng, xs, dtype),), dict(kw, count_include_pad=count_include_pad),
             dtype, "pool", device)


@pytest.mark.parametrize("xs, kw", args(BIG), ids=ids(BIG))
def test_pool_big(rng, device_big, dtype, xs, kw):
    device = device_big  # realistic shapes: CPU and real GPUs
    x = rand(rng, xs, dtype)
    check_op("max_pool2d", (x,), kw, dtype, "exact", device)
    check_op("avg_pool2d", (x,), dict(kw, count_include_pad=False), dtype, "pool", device)
    check_op("avg_pool2d", (x,), kw, dtype, "pool", device)


def test_max_pool2d_all_negative_with_padding(device, dtype):
    # Padding must never win a max: all-negative inputs stay negative at the borders.
    x = -np.arange(1, 1 + 2 * 5 * 5, dtype=dtype).reshape(1, 2, 5, 5)
    out = check_op("max_pool2d", (x,), dict(kernel_size=3, stride=2, padding=1), dtype, "exact",
                   device)
    assert (out < 0).all()


@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                                dict(kernel_size=2), dict(kernel_size=2, ceil_mode=True)],
                         ids=["k3_s2_p1", "k3_s2_p1_ceil", "k2", "k2_ceil"])
@pytest.mark.parametrize("xs", [(2, 3, 12, 56), (1, 2, 9, 71)], ids=["w56", "w71"])
def test_stride2_wide_rows(rng, device, dtype, xs, kw):
    # Rows wider than two vectors (the stride-2 path's blocks) with NaN, which max must keep,
    # at block edges and inside.
    x = rand(rng, xs, dtype)
    x[0, 0, 1, [0, 15, 16, 31, 32, 33]] = np.nan
    x[-1, -1, -1, -1] = np.nan
    check_op("max_pool2d", (x,), kw, dtype, "exact", device)
    for include in (True, False):
        check_op("avg_pool2d", (x,), dict(kw, count_include_pad=include), dtype, "pool", device)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding=2), dict(kernel_size=2, padding=2),
                                dict(kernel_size=(4, 2), padding=(1, 2))])
def test_padding_over_half_kernel_raises(device, op, kw):
    with pytest.raises(ValueError):
        getattr(F, op)(np.zeros((1, 1, 8, 8)), **kw)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_output_too_small_raises(device, op):
    with pytest.raises(ValueError):
        getattr(F, op)(np.zeros((1, 1, 2, 2)), kernel_size=3)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("kw", [dict(kernel_size=0), dict(kernel_size=2, stride=0),
                                dict(kernel_size=2, padding=-1)])
def test_bad_arguments_raise(device, op, kw):
    with pytest.raises(ValueError):
        getattr(F, op)(np.zeros((1, 1, 6, 6)), **kw)


def test_max_pool2d_zero_dilation_raises(device):
    with pytest.raises(ValueError):
        F.max_pool2d(np.zeros((1, 1, 6, 6)), 2, dilation=0)


# ---------------------------------------------------------------------------------------------
# Adaptive pooling
# ---------------------------------------------------------------------------------------------

ADAPTIVE_CASES = [
    ("divides", (2, 3, 6, 8), (3, 4)),
    ("non_dividing", (1, 3, 7, 9), (3, 4)),
    ("non_dividing_2", (1, 2, 10, 5), (3, 3)),
    ("global", (2, 5, 7, 6), 1),
    ("identity", (1, 2, 5, 4), (5, 4)),
    ("larger_than_input", (1, 2, 4, 3), (7, 5)),
    ("none_keeps_size", (1, 2, 6, 5), (None, 2)),
    ("int_size", (1, 3, 9, 9), 4),
    ("unbatched", (3, 10, 7), (3, 2)),
    # Column windows of a power-of-two width k dividing W (the in-register halving path), with
    # rows that do not divide, W not a whole number of vectors, and k up to and past the lanes.
    ("cols_k8_w56", (2, 3, 16, 56), 7),
    ("cols_k4_tail", (1, 2, 5, 36), (2, 9)),
    ("cols_k2_wide", (1, 2, 3, 70), (3, 35)),
    ("cols_k16", (1, 2, 4, 64), (2, 4)),
    ("cols_k32", (1, 2, 3, 96), (1, 3)),
]


@pytest.mark.parametrize("op, family", [("adaptive_avg_pool2d", "pool"),
                                        ("adaptive_max_pool2d", "exact")])
@pytest.mark.parametrize("xs, size", args(ADAPTIVE_CASES), ids=ids(ADAPTIVE_CASES))
def test_adaptive(rng, device, dtype, op, family, xs, size):
    check_op(op, (rand(rng, xs, dtype),), dict(output_size=size), dtype, family, device)


def test_adaptive_big(rng, device_big, dtype):
    device = device_big  # realistic shapes: CPU and real GPUs
    x = rand(rng, (2, 37, 15, 13), dtype)
    for size in [(7, 7), (1, 1), (4, 6)]:
        check_op("adaptive_avg_pool2d", (x,), dict(output_size=size), dtype, "pool", device)
        check_op("adaptive_max_pool2d", (x,), dict(output_size=size), dtype, "exact", device)


@pytest.mark.parametrize("xs, size", [((2, 3, 9, 56), 7), ((1, 2, 4, 40), (2, 10)),
                                      ((1, 2, 5, 48), (3, 3))], ids=["k8", "k4", "k16"])
def test_adaptive_nan_inf(rng, device, dtype, xs, size):
    # NaN must win its window (and only its window), at window and vector edges; infinities are
    # ordinary values.
    x = rand(rng, xs, dtype)
    x[0, 0, 1, [0, 7, 8, 15, 16, 17, 31, 32]] = np.nan
    x[-1, -1, -1, -1] = np.nan
    x[0, 1, 0, 3] = np.inf
    x[-1, 0, 2, :] = -np.inf
    check_op("adaptive_max_pool2d", (x,), dict(output_size=size), dtype, "exact", device)
    x[0, 1, 0, 3] = 1
    check_op("adaptive_avg_pool2d", (x,), dict(output_size=size), dtype, "pool", device)


@pytest.mark.parametrize("op", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
@pytest.mark.parametrize("size", [(-1, 2), (2, -3)])
def test_adaptive_bad_size_raises(device, op, size):
    with pytest.raises(ValueError, match="output_size must be non-negative"):
        getattr(F, op)(np.zeros((1, 1, 4, 4)), size)


@pytest.mark.parametrize("op", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
@pytest.mark.parametrize("size, want", [(0, (0, 0)), ((2, 0), (2, 0)), ((None, 0), (4, 0)),
                                        ((0, 3), (0, 3))])
def test_adaptive_size_zero_gives_an_empty_output(device, dtype, op, size, want):
    # As torch; numbaconv raised. The gradient of an empty output is zero.
    x = np.ones((2, 3, 4, 5), dtype)
    out = call_unchanged(getattr(F, op), on(device, x), size)
    assert nc.to_numpy(out).shape == (2, 3) + want and out.dtype == dtype
    (g,) = getattr(F, op + "_backward")(on(device, np.zeros((2, 3) + want, dtype)), on(device, x),
                                        size)
    assert np.array_equal(nc.to_numpy(g), np.zeros_like(x))


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                                "adaptive_max_pool2d"])
def test_pool_wrong_rank_raises(op):
    x = np.zeros((4, 4))
    with pytest.raises(ValueError):
        getattr(F, op)(x, 2)
    with pytest.raises(ValueError):
        getattr(F, op)(np.zeros((1, 1, 1, 4, 4)), 2)


# ---------------------------------------------------------------------------------------------
# Every small window geometry
# ---------------------------------------------------------------------------------------------

def _axis_geometries():
    """Every (size, kernel, stride, padding, dilation, ceil_mode) of one axis with sizes up to
    5, kernels and strides up to 3, dilations up to 3 and torch's padding bound, that gives at
    least one output. Dilation with padding, and ceil_mode, give windows with no tap inside
    the input."""
    out = []
    for size in range(1, 6):
        for k in range(1, 4):
            for s in range(1, 4):
                for p in range(k // 2 + 1):
                    for d in range(1, 4):
                        for ceil in (False, True):
                            if R._pool_size(size, k, s, p, d, ceil) >= 1:
                                out.append((size, k, s, p, d, ceil))
    return out


def _empty_window(size, k, s, p, d, ceil):
    """Whether some window of this axis geometry has no tap inside [0, size)."""
    return any(all(not 0 <= o * s - p + i * d < size for i in range(k))
               for o in range(R._pool_size(size, k, s, p, d, ceil)))


AXES = _axis_geometries()


def test_axis_geometries_include_empty_windows():
    # The sweep covers the case that used to read other channels' memory.
    assert sum(_empty_window(*g) for g in AXES) >= 10


def test_every_small_geometry(device, dtype):
    # Each axis geometry on the rows, paired with another of the same ceil_mode on the columns
    # (walking the list at a stride prime to its length), for max pooling forward and backward
    # and, without dilation, average pooling. Several channels and images: a window that read
    # or wrote past its own plane would show in its neighbours. Distinct values: one arg-max per
    # window. The simulator runs the pairs with an empty window and every 16th other.
    rng = np.random.default_rng(5)
    pairs = []
    for ceil in (False, True):
        axes = [g for g in AXES if g[5] == ceil]
        pairs += [(axes[i], axes[(7 * i + 3) % len(axes)]) for i in range(len(axes))]
    if SIM and device == "cuda":
        pairs = [(a, b) for i, (a, b) in enumerate(pairs)
                 if _empty_window(*a) or _empty_window(*b) or i % 16 == 0]
    for (h, *rows), (w, *cols) in pairs:
        kw = dict(zip(("kernel_size", "stride", "padding", "dilation"), zip(rows, cols)),
                  ceil_mode=rows[4])
        x = (rng.permutation(2 * 3 * h * w) * 0.25 - 10).reshape(2, 3, h, w).astype(dtype)
        out = check_op("max_pool2d", (x,), kw, dtype, "exact", device)
        go = rand(rng, out.shape, dtype)
        (g,) = call_unchanged(F.max_pool2d_backward, go, x, **kw)
        # Overlapping windows add their gradients in the input's precision.
        assert_close(g, R.max_pool2d_backward(go, x, **kw), dtype, "pool",
                     what=f"max_pool2d_backward[{device}] {kw} on {x.shape}")
        if kw["dilation"] == (1, 1):
            del kw["dilation"]
            for include in (True, False):
                check_op("avg_pool2d", (x,), dict(kw, count_include_pad=include), dtype, "pool",
                         device)


def test_max_pool2d_window_without_taps(device, dtype):
    # Dilation 2 with padding 1 on a 1-pixel map: both taps of every window miss the input.
    # PyTorch gives -inf; numbaconv read the next channel's memory (and past the array).
    x = np.array([[[[1.0]], [[2.0]]]], dtype)
    kw = dict(kernel_size=(2, 1), stride=1, padding=(1, 0), dilation=(2, 1))
    out = check_op("max_pool2d", (x,), kw, dtype, "exact", device)
    assert np.array_equal(out, np.full((1, 2, 1, 1), -np.inf, dtype))
    # ... and the backward gives such a window's gradient to nobody (it wrote into other
    # channels, then the heap broke).
    x = np.zeros((1, 4, 1, 1), dtype)
    kw = dict(kernel_size=2, stride=1, padding=1, dilation=2)
    (g,) = F.max_pool2d_backward(np.arange(1, 5, dtype=dtype).reshape(1, 4, 1, 1), x, **kw)
    assert np.array_equal(nc.to_numpy(g), np.zeros_like(x))
