"""conv2d and conv1d against the float64 reference, on every device and dtype."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import _enter_device, check_op, rand

F = nc.functional

ACTIVATIONS = ["relu", "relu6", "leaky_relu", "sigmoid", "tanh", "silu", "gelu", "hardswish"]

# (id, input shape, weight shape, kwargs). Outputs stay at a few hundred elements so that the
# CUDA simulator can run them all; shapes are deliberately not multiples of any tile size.
CONV2D_CASES = [
    ("basic", (2, 3, 6, 7), (4, 3, 3, 3), dict(padding=1)),
    ("no_padding", (1, 3, 7, 6), (5, 3, 3, 3), {}),
    ("stride2", (1, 3, 9, 9), (5, 3, 3, 3), dict(stride=2, padding=1)),
    ("stride_tuple", (1, 2, 7, 10), (3, 2, 3, 2), dict(stride=(2, 3), padding=(1, 0))),
    ("padding_tuple", (1, 2, 5, 6), (3, 2, 3, 3), dict(padding=(2, 1))),
    ("same", (1, 3, 6, 7), (4, 3, 3, 3), dict(padding="same")),
    ("same_even_kernel", (1, 2, 6, 5), (3, 2, 4, 2), dict(padding="same")),
    ("same_dilated", (1, 2, 7, 6), (3, 2, 3, 2), dict(padding="same", dilation=(2, 3))),
    ("valid", (1, 3, 6, 7), (4, 3, 3, 3), dict(padding="valid")),
    ("dilation", (1, 2, 9, 8), (3, 2, 3, 3), dict(dilation=2, padding=2)),
    ("dilation_tuple_stride", (1, 2, 10, 9), (3, 2, 3, 2), dict(dilation=(2, 1), stride=(1, 2))),
    ("groups2", (1, 4, 6, 6), (6, 2, 3, 3), dict(groups=2, padding=1)),
    ("groups3_odd", (1, 9, 5, 4), (3, 3, 3, 3), dict(groups=3, padding=1)),
    ("depthwise", (2, 5, 5, 6), (5, 1, 3, 3), dict(groups=5, padding=1)),
    ("depthwise_multiplier", (1, 3, 6, 5), (6, 1, 3, 3), dict(groups=3, padding=1, stride=2)),
    ("depthwise_5x5", (1, 4, 7, 7), (4, 1, 5, 5), dict(groups=4, padding=2, stride=2)),
    ("pointwise", (2, 7, 5, 3), (9, 7, 1, 1), {}),
    ("image_1x1", (3, 4, 1, 1), (5, 4, 1, 1), {}),
    ("image_1x1_padded", (1, 2, 1, 1), (3, 2, 3, 3), dict(padding=1)),
    ("kernel_larger_than_input", (1, 2, 2, 3), (3, 2, 4, 4), dict(padding=1)),
    ("odd_kernel_5x3", (1, 3, 5, 7), (7, 3, 5, 3), dict(padding=(2, 1))),
    ("rect_input", (1, 1, 2, 11), (2, 1, 1, 3), {}),
    ("wide_oc", (1, 3, 5, 5), (17, 3, 3, 3), dict(padding=1)),  # >= 16 channels per group
    ("wide_oc_groups", (1, 4, 4, 4), (32, 2, 3, 3), dict(padding=1, groups=2)),
    ("wide_oc_strided", (1, 5, 6, 7), (20, 5, 2, 3), dict(stride=2, padding=1, dilation=(1, 2))),
    ("unbatched", (3, 5, 6), (4, 3, 3, 3), dict(padding=1)),
]

# Larger cases (shapes around real layers, nothing a multiple of a tile): CPU and real GPUs only.
CONV2D_BIG = [
    ("big_3x3", (2, 37, 19, 23), (70, 37, 3, 3), dict(padding=1)),
    ("big_stride2", (1, 29, 31, 17), (45, 29, 3, 3), dict(stride=2, padding=1)),
    ("big_groups", (1, 32, 15, 15), (64, 8, 3, 3), dict(groups=4, stride=2, padding=1)),
    ("big_depthwise", (2, 48, 17, 17), (48, 1, 5, 5), dict(groups=48, padding=2)),
    ("big_depthwise_mult", (1, 24, 14, 13), (72, 1, 3, 3), dict(groups=24, padding=1)),
    ("big_1x1", (4, 65, 9, 11), (33, 65, 1, 1), {}),
    ("big_7x7", (1, 3, 40, 37), (19, 3, 7, 7), dict(stride=2, padding=3)),
    ("big_dilated", (1, 16, 21, 21), (24, 16, 3, 3), dict(dilation=3, padding="same")),
    ("big_batch", (9, 6, 10, 10), (10, 6, 3, 3), dict(padding=1)),
]


def conv_scale(x, w, b, kw):
    """Sum of |products| per output: the unit a float sum's rounding error scales with."""
    absb = None if b is None else np.abs(b)
    kw = {k: v for k, v in kw.items() if k != "activation"}
    if kw.get("residual") is not None:
        kw["residual"] = np.abs(kw["residual"])
    return R.conv2d(np.abs(x), np.abs(w), absb, **kw)


def run_conv2d(rng, device, dtype, xs, ws, kw, bias, x_scale=1.0):
    x = rand(rng, xs, dtype) * dtype(x_scale)
    w = rand(rng, ws, dtype)
    b = rand(rng, (ws[0],), dtype) if bias else None
    return check_op("conv2d", (x, w, b), kw, dtype, "conv", device,
                    scale=conv_scale(x, w, b, kw))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in CONV2D_CASES],
                         ids=[c[0] for c in CONV2D_CASES])
def test_conv2d(rng, device, dtype, xs, ws, kw, bias):
    run_conv2d(rng, device, dtype, xs, ws, kw, bias)


@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in CONV2D_BIG], ids=[c[0] for c in CONV2D_BIG])
def test_conv2d_big(rng, device_big, dtype, xs, ws, kw):
    device = device_big  # realistic shapes: CPU and real GPUs
    run_conv2d(rng, device, dtype, xs, ws, kw, True)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("path", ["direct", "wide"])
def test_conv2d_activation(rng, device, dtype, activation, path):
    # Inputs scaled so the pre-activations cover the interesting ranges (< -3, > 6).
    ws = (4, 3, 3, 3) if path == "direct" else (18, 3, 3, 3)
    out = run_conv2d(rng, device, dtype, (1, 3, 4, 5), ws, dict(padding=1, activation=activation),
                     bias=True, x_scale=4.0)
    assert np.isfinite(out).all()


def test_conv2d_activation_big(rng, device_big, dtype):
    device = device_big  # realistic shapes: CPU and real GPUs
    for activation in ACTIVATIONS:
        run_conv2d(rng, device, dtype, (2, 19, 13, 11), (35, 19, 3, 3),
                   dict(padding=1, stride=(1, 2), activation=activation), bias=True, x_scale=3.0)


def test_conv2d_activation_none_matches_plain(rng, device, dtype):
    x, w = rand(rng, (1, 2, 4, 4), dtype), rand(rng, (3, 2, 3, 3), dtype)
    np.testing.assert_array_equal(F.conv2d(x, w, activation=None), F.conv2d(x, w))


def test_conv2d_relu_clamps(rng, device, dtype):
    # A fused relu must actually clamp: with an all-negative result every output is 0.
    x = np.abs(rand(rng, (1, 2, 4, 4), dtype)) + dtype(0.1)
    w = -np.abs(rand(rng, (3, 2, 3, 3), dtype)) - dtype(0.1)
    out = F.conv2d(x, w, activation="relu")
    assert out.shape == (1, 3, 2, 2) and np.all(out == 0)
    assert np.all(F.conv2d(x, w) < 0)


def test_conv2d_bias_zero_equals_none(rng, device, dtype):
    x, w = rand(rng, (1, 3, 5, 4), dtype), rand(rng, (4, 3, 2, 2), dtype)
    np.testing.assert_allclose(F.conv2d(x, w, np.zeros(4, dtype)), F.conv2d(x, w),
                               rtol=1e-6, atol=1e-6)


def test_conv2d_lists_for_tuples(rng, device, dtype):
    x, w = rand(rng, (1, 2, 6, 7), dtype), rand(rng, (3, 2, 3, 2), dtype)
    a = F.conv2d(x, w, stride=[2, 1], padding=[1, 0], dilation=[1, 2])
    b = F.conv2d(x, w, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    np.testing.assert_array_equal(a, b)


def test_conv2d_batch_consistency(rng, device, dtype):
    # Each image of a batch gives the same result as on its own.
    x, w, b = rand(rng, (3, 3, 5, 5), dtype), rand(rng, (4, 3, 3, 3), dtype), rand(rng, (4,), dtype)
    full = F.conv2d(x, w, b, padding=1)
    for i in range(3):
        np.testing.assert_allclose(full[i:i + 1], F.conv2d(x[i:i + 1], w, b, padding=1),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xs, ws, kw", [
    ((1, 2, 2, 2), (3, 2, 3, 3), {}),                      # kernel larger than input, no padding
    ((1, 2, 3, 3), (3, 2, 3, 3), dict(dilation=2)),          # dilated extent 5 > 3
    ((1, 2, 1, 4), (3, 2, 2, 2), dict(padding=(0, 1))),      # height 1 < 2
    ((1, 2, 5), (3, 2, 7, 7), {}),                           # unbatched
])
def test_conv2d_kernel_larger_than_padded_input(device, xs, ws, kw):
    x, w = np.zeros(xs, np.float32), np.zeros(ws, np.float32)
    with pytest.raises(ValueError):
        F.conv2d(x, w, **kw)


def test_conv2d_same_with_stride_raises(device):
    with pytest.raises(ValueError):
        F.conv2d(np.zeros((1, 2, 5, 5)), np.zeros((3, 2, 3, 3)), stride=2, padding="same")


# ---------------------------------------------------------------------------------------------
# conv1d
# ---------------------------------------------------------------------------------------------

CONV1D_CASES = [
    ("basic", (2, 3, 11), (4, 3, 3), dict(padding=1)),
    ("stride_dilation", (1, 4, 17), (6, 4, 3), dict(stride=2, padding=2, dilation=2)),
    ("tuple_args", (1, 2, 13), (3, 2, 4), dict(stride=(3,), padding=(1,), dilation=(1,))),
    ("groups", (1, 4, 12), (6, 2, 3), dict(groups=2)),
    ("depthwise", (2, 5, 9), (5, 1, 5), dict(groups=5, padding="same")),
    ("same_even", (1, 3, 9), (2, 3, 4), dict(padding="same")),
    ("valid", (1, 3, 9), (2, 3, 4), dict(padding="valid")),
    ("length_1", (3, 4, 1), (5, 4, 1), {}),
    ("kernel_larger_than_input", (1, 2, 3), (2, 2, 5), dict(padding=1)),
    ("wide_oc", (1, 3, 10), (20, 3, 3), dict(padding=1)),
    ("unbatched", (3, 10), (2, 3, 5), {}),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in CONV1D_CASES],
                         ids=[c[0] for c in CONV1D_CASES])
def test_conv1d(rng, device, dtype, xs, ws, kw, bias):
    x, w = rand(rng, xs, dtype), rand(rng, ws, dtype)
    b = rand(rng, (ws[0],), dtype) if bias else None
    absb = None if b is None else np.abs(b)
    check_op("conv1d", (x, w, b), kw, dtype, "conv", device,
             scale=R.conv1d(np.abs(x), np.abs(w), absb, **kw))


def test_conv1d_big(rng, device_big, dtype):
    device = device_big  # realistic shapes: CPU and real GPUs
    x, w, b = rand(rng, (3, 33, 301), dtype), rand(rng, (47, 33, 5), dtype), rand(rng, (47,), dtype)
    check_op("conv1d", (x, w, b), dict(stride=2, padding=2), dtype, "conv", device,
             scale=R.conv1d(np.abs(x), np.abs(w), np.abs(b), stride=2, padding=2))


def test_conv1d_kernel_larger_than_padded_input(device):
    with pytest.raises(ValueError):
        F.conv1d(np.zeros((1, 2, 3)), np.zeros((3, 2, 6)), padding=1)


def test_conv1d_has_no_activation_argument():
    with pytest.raises(TypeError):
        F.conv1d(np.zeros((1, 2, 5)), np.zeros((3, 2, 3)), activation="relu")


# CUDA's tiled GEMM in both shape classes, on grids of several tiles in every direction (more
# output channels and pixels than one tile holds, several reduction steps, two groups), with
# the fused epilogue. Elsewhere the tile is chosen by problem size, which the simulator's small
# shapes would leave to one class.
GEMM_TILE_CASES = [
    ("two_tiles_each_way", (2, 5, 9, 8), (130, 5, 3, 3), dict(padding=1)),
    ("groups_strided_dilated", (1, 6, 13, 12), (68, 3, 3, 2),
     dict(groups=2, stride=(1, 2), padding=(2, 1), dilation=(2, 1))),
]


@pytest.mark.cuda_only
@pytest.mark.parametrize("tile, dtype", [("BIG", np.float32), ("SMALL", np.float32),
                                         ("SMALL", np.float64)])  # BIG has no float64 variant
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in GEMM_TILE_CASES],
                         ids=[c[0] for c in GEMM_TILE_CASES])
def test_conv2d_cuda_gemm_tiles(rng, monkeypatch, dtype, tile, xs, ws, kw):
    with _enter_device("cuda"):
        from numbaconv.cuda import gemm

        chosen = getattr(gemm, tile)
        monkeypatch.setattr(gemm, "_gemm_tile", lambda *args: chosen)
        x, w, b = rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, (ws[0],), dtype)
        out_shape = R.conv2d(x, w, b, **kw).shape
        kw = dict(kw, residual=rand(rng, out_shape, dtype), activation="leaky_relu")
        check_op("conv2d", (x, w, b), kw, dtype, "conv", "cuda", scale=conv_scale(x, w, b, kw))


@pytest.mark.cuda_only
def test_cuda_gemm_tile_choice(monkeypatch):
    with _enter_device("cuda"):
        from numbaconv.cuda import gemm

        monkeypatch.setattr(gemm, "sm_count", lambda device: 132)
        choose = gemm._gemm_tile
        # ResNet-50 at batch 32: 56x56 maps fill 784 big blocks; 7x7 maps only 52 (of 132 SMs).
        assert choose(np.float32, 32 * 56 * 56, 64, 1, 0) == gemm.BIG
        assert choose(np.float16, 32 * 56 * 56, 64, 1, 0) == gemm.BIG
        assert choose(np.float32, 32 * 7 * 7, 512, 1, 0) == gemm.SMALL
        assert choose(np.float64, 32 * 56 * 56, 64, 1, 0) == gemm.SMALL


# CUDA's depthwise kernel (one input channel per group) on maps of several row and column tiles
# with 4 rows per thread, which the simulator's one SM would otherwise reduce to 1.
DEPTHWISE_TILE_CASES = [
    ("3x3_multiplier", (1, 2, 37, 35), (4, 1, 3, 3), dict(groups=2, padding=1)),
    ("3x3_strided", (2, 3, 75, 70), (3, 1, 3, 3), dict(groups=3, stride=2, padding=1)),
    ("5x3_dilated", (1, 2, 40, 37), (2, 1, 5, 3), dict(groups=2, padding=(3, 1), dilation=(2, 1))),
    ("3x3_dilated", (1, 2, 36, 37), (2, 1, 3, 3), dict(groups=2, padding=2, dilation=2)),
]


@pytest.mark.cuda_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in DEPTHWISE_TILE_CASES],
                         ids=[c[0] for c in DEPTHWISE_TILE_CASES])
def test_conv2d_cuda_depthwise_tiles(rng, monkeypatch, dtype, xs, ws, kw):
    with _enter_device("cuda"):
        from numbaconv.cuda import conv as cuda_conv, gemm

        shapes = []
        choose = cuda_conv._depthwise_shape
        monkeypatch.setattr(gemm, "sm_count", lambda device: 0)
        monkeypatch.setattr(cuda_conv, "_depthwise_shape",
                            lambda *args: shapes.append(choose(*args)) or shapes[-1])
        x, w, b = rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, (ws[0],), dtype)
        out_shape = R.conv2d(x, w, b, **kw).shape
        kw = dict(kw, residual=rand(rng, out_shape, dtype), activation="leaky_relu")
        check_op("conv2d", (x, w, b), kw, dtype, "conv", "cuda", scale=conv_scale(x, w, b, kw))
        assert shapes and all(rows == 4 for _, rows, _, _ in shapes)
        assert any(th > 1 for _, _, th, _ in shapes) and any(tw > 1 for *_, tw in shapes)


@pytest.mark.cuda_only
def test_cuda_depthwise_shape(monkeypatch):
    with _enter_device("cuda"):
        from numbaconv.cuda import conv as cuda_conv, gemm

        monkeypatch.setattr(gemm, "sm_count", lambda device: 132)
        shape = cuda_conv._depthwise_shape
        # Blocks as wide as the map: (bw, bh), rows per thread, row tiles, column tiles.
        assert shape(32, 32, 112, 112, 0) == ((32, 8), 4, 4, 4)
        assert shape(32, 960, 7, 7, 0) == ((8, 8), 1, 1, 1)
        assert shape(32, 576, 14, 14, 0) == ((16, 16), 1, 1, 1)
        assert shape(32, 144, 56, 56, 0) == ((32, 8), 4, 2, 2)
        assert shape(1, 144, 56, 56, 0) == ((32, 8), 2, 4, 2)
        # Smaller batches: fewer rows per thread, so that every SM still gets several blocks.
        assert shape(1, 32, 112, 112, 0) == ((32, 8), 1, 14, 4)


# Each path of the CPU conv (read in place, padded workspace, gather) and the direct/GEMM split
# on CUDA, with the residual fused before the activation.
RESIDUAL_CASES = [
    ("pointwise_inplace", (2, 7, 5, 3), (9, 7, 1, 1), {}),
    ("padded_workspace", (1, 3, 6, 7), (17, 3, 3, 3), dict(padding=1)),
    ("strided", (1, 5, 9, 8), (20, 5, 3, 3), dict(stride=2, padding=1)),
    ("gather", (1, 2, 1, 1), (3, 2, 3, 3), dict(padding=1)),
    ("groups", (1, 4, 6, 6), (6, 2, 3, 3), dict(groups=2, padding=1)),
    ("unbatched", (3, 5, 6), (4, 3, 3, 3), dict(padding=1)),
]


@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in RESIDUAL_CASES],
                         ids=[c[0] for c in RESIDUAL_CASES])
def test_conv2d_residual(rng, device, dtype, xs, ws, kw, activation):
    x, w, b = rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, (ws[0],), dtype)
    out_shape = R.conv2d(x, w, b, **kw).shape
    kw = dict(kw, residual=rand(rng, out_shape, dtype) * dtype(2), activation=activation)
    check_op("conv2d", (x, w, b), kw, dtype, "conv", device, scale=conv_scale(x, w, b, kw))


def test_conv2d_residual_errors(rng):
    x, w = rand(rng, (1, 2, 5, 5), np.float32), rand(rng, (3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"residual must have the output's shape \(1, 3, 3, 3\)"):
        F.conv2d(x, w, residual=np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(TypeError, match="'residual' has dtype float64"):
        F.conv2d(x, w, residual=np.zeros((1, 3, 3, 3)))
    with pytest.raises(TypeError, match="'residual' must be a numpy.ndarray"):
        F.conv2d(x, w, residual=[[0.0]])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_conv2d_nonfinite_stays_local_on_the_winograd_shapes(rng, bad):
    # On a shape the heuristic sends to Winograd, a NaN/Inf input must still only reach the
    # outputs whose window holds it, as in the reference (the dispatch takes the direct path).
    x = rand(rng, (1, 64, 56, 56), np.float32)
    w = rand(rng, (64, 64, 3, 3), np.float32)
    x[0, 3, 20, 30] = bad
    got = F.conv2d(x, w, padding=1)
    ref = R.conv2d(x, w, padding=1)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))


@pytest.mark.parametrize("split", ["blocks", "tiles"])
@pytest.mark.parametrize("nwk", [1, 2, 3, 4])
@pytest.mark.parametrize("units, nbg, npos, pos_bytes, halo, plane", [
    (1, 8, 196, 1536, 14, 196),        # 1x1 at 14x14: fewer tiles than blocks
    (1, 64, 49, 8192, 7, 49),          # 7x7, many channel blocks, one tile group
    (1, 18, 3136, 96, 56, 3136),       # 56x56, few input channels
    (1, 16, 784, 2048, 28, 784),       # tile groups bounded by the input bytes
    (3, 5, 61, 4096, 27, 81),          # batch 3
    (8, 1, 17, 64, 9, 25),             # grouped: units = images x groups, one block each
])
def test_grid_schedule_covers_every_block_and_tile_once(units, nbg, npos, pos_bytes, halo, plane,
                                                        nwk, split):
    from numbaconv.cpu import conv as C
    from numbaconv.cpu import simd

    lanes = simd.LANES
    # Huge weights: workers split the channel blocks; tiny weights: they split the tiles.
    wbytes = 1 << 50 if split == "blocks" else 1
    tasks, soff = C._grid_schedule(units, nbg, npos, lanes, pos_bytes, halo, plane, nwk, wbytes)
    n3, n2 = C.split_tiles.py_func(npos, lanes)
    seen = np.zeros((units, nbg, n3 + n2), int)
    assert soff[0] == 0 and soff[-1] == len(tasks) and (np.diff(soff) >= 0).all()
    assert len(soff) == nwk + 1
    for u, ob0, ob1, jt0, jt1 in tasks:
        assert 0 <= ob0 < ob1 <= nbg and 0 <= jt0 < jt1 <= n3 + n2
        seen[u, ob0:ob1, jt0:jt1] += 1
    assert (seen == 1).all()
    # Shares are balanced: no worker has more than its fair share plus one task's work (one
    # tile's block when the tiles are split).
    cost = lambda t: (t[2] - t[1]) * sum(3 if j < n3 else 2 for j in range(t[3], t[4]))
    shares = [sum(cost(t) for t in tasks[soff[k]:soff[k + 1]]) for k in range(nwk)]
    slack = 3 if split == "tiles" else max(cost(t) for t in tasks)
    assert max(shares) <= sum(shares) / nwk + slack


def test_conv2d_repeat_calls_recheck_argument_types(rng):
    # A repeat call takes a cached fast path; arguments that compare equal to a cached call's
    # but are of another type (True == 1) must still get their error, and results must match.
    x, w = rand(rng, (1, 3, 6, 6), np.float32), rand(rng, (4, 3, 3, 3), np.float32)
    first = F.conv2d(x, w, stride=1, padding=1)
    np.testing.assert_array_equal(F.conv2d(x, w, stride=1, padding=1), first)
    with pytest.raises(TypeError, match="stride must be an int"):
        F.conv2d(x, w, stride=True, padding=1)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        F.conv2d(x, w, stride=1, padding=1, groups=True)
    # A non-contiguous or read-only input on the fast path: same values.
    xt = np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    ro = x.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(F.conv2d(xt, w, stride=1, padding=1), first)
    np.testing.assert_array_equal(F.conv2d(ro, w, stride=1, padding=1), first)
    # Unbatched and conv1d reshapes through the same path.
    np.testing.assert_array_equal(F.conv2d(x[0], w, stride=1, padding=1), first[0])
    np.testing.assert_array_equal(F.conv2d(x[0], w, stride=1, padding=1), first[0])


# (id, input shape, weight shape, kwargs): strides above 2 and longer than the kernel's extent,
# whose skipped rows and columns the CPU drops before the conv runs.
LONG_STRIDES = [
    ("dw_1x1_s5", (2, 3, 11, 13), (3, 1, 1, 1), dict(stride=5, groups=3)),
    ("dw_1x1_s3_pad", (1, 4, 7, 8), (8, 1, 1, 1), dict(stride=3, padding=1, groups=4)),
    ("dw_2x2_s4_dil", (1, 2, 12, 10), (2, 1, 2, 3), dict(stride=(4, 7), padding=(1, 2),
                                                          dilation=(2, 1), groups=2)),
    ("dense_1x1_s3", (2, 3, 10, 9), (5, 3, 1, 1), dict(stride=3)),
    ("dense_3x3_rows_only", (1, 4, 13, 9), (6, 4, 3, 3), dict(stride=(4, 1), padding=1)),
    ("grouped_2x2_s5", (1, 4, 11, 11), (6, 2, 2, 2), dict(stride=5, padding=1, groups=2)),
]


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in LONG_STRIDES],
                         ids=[c[0] for c in LONG_STRIDES])
def test_conv2d_long_strides(rng, device, dtype, xs, ws, kw, activation):
    x, w, b = rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, (ws[0],), dtype)
    out_shape = R.conv2d(x, w, b, **kw).shape
    kw = dict(kw, residual=rand(rng, out_shape, dtype), activation=activation)
    check_op("conv2d", (x, w, b), kw, dtype, "conv", device, scale=conv_scale(x, w, b, kw))


@pytest.mark.parametrize("c, groups", [(1, 1), (4, 4), (2, 1)], ids=["depthwise", "depthwise4",
                                                                     "dense"])
def test_conv2d_long_stride_scratch_is_bounded(c, groups):
    # A 1x1 depthwise conv of a 4000x4000 image at stride 3999 peaked at 7 GB of scratch:
    # scratch must stay within the input's and the output's size (here at 1000x1000).
    import tracemalloc

    x = np.ones((1, c, 1000, 1000), np.float32)
    w = np.ones((c, c // groups, 1, 1), np.float32)
    F.conv2d(x[:, :, :40, :40], w, stride=39, groups=groups)  # compiled outside the count
    tracemalloc.start()
    try:
        out = F.conv2d(x, w, stride=999, groups=groups)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(out, np.full((1, c, 2, 2), c // groups, np.float32))
    assert peak <= x.nbytes // 4, f"{peak} bytes of scratch for a {x.nbytes}-byte input"
