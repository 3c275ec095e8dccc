"""Bad input gets a clear ValueError / TypeError; odd but valid input gets a correct result.

Covers wrong rank, dtype and channel counts, bad strides / padding / activation names,
non-contiguous and negative-stride views, NaN and Inf, empty batches, and that inputs are never
modified.
"""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import SIM_FP_WARNINGS, call_unchanged, check_op, rand

F = nc.functional

X4 = np.zeros((1, 4, 6, 6), np.float32)
W4 = np.zeros((6, 4, 3, 3), np.float32)


# ---------------------------------------------------------------------------------------------
# Rank, dtype, type
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: F.conv2d(np.zeros((4, 6), np.float32), W4),
    lambda: F.conv2d(np.zeros((1, 1, 4, 6, 6), np.float32), W4),
    lambda: F.conv2d(X4, np.zeros((6, 4, 3), np.float32)),
    lambda: F.conv1d(np.zeros((1, 2, 3, 8)), np.zeros((3, 2, 3))),
    lambda: F.conv1d(np.zeros((1, 2, 8)), np.zeros((3, 2, 3, 3))),
    lambda: F.max_pool2d(np.zeros((6, 6)), 2),
    lambda: F.avg_pool2d(np.zeros((1, 1, 1, 6, 6)), 2),
    lambda: F.adaptive_avg_pool2d(np.zeros(6), 2),
    lambda: F.linear(np.zeros((2, 3)), np.zeros((1, 2, 3))),
    lambda: F.batch_norm(np.zeros(4), np.zeros(4), np.ones(4)),
], ids=["conv2d_2d", "conv2d_5d", "conv2d_weight_3d", "conv1d_4d", "conv1d_weight_4d",
        "max_pool_2d", "avg_pool_5d", "adaptive_1d", "linear_weight_3d", "batch_norm_1d"])
def test_wrong_rank_raises(device, call):
    with pytest.raises(ValueError):
        call()


INT_OPS = [
    ("conv2d", lambda x: F.conv2d(x, W4.astype(x.dtype) if x.dtype.kind == "f" else W4)),
    ("max_pool2d", lambda x: F.max_pool2d(x, 2)),
    ("avg_pool2d", lambda x: F.avg_pool2d(x, 2)),
    ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 2)),
    ("relu", F.relu),
    ("gelu", F.gelu),
    ("softmax", lambda x: F.softmax(x, 1)),
    ("linear", lambda x: F.linear(x, np.zeros((2, 6), x.dtype))),
    ("batch_norm", lambda x: F.batch_norm(x, np.zeros(4, x.dtype), np.ones(4, x.dtype))),
    ("mse_loss", lambda x: F.mse_loss(x, x)),
    ("cross_entropy", lambda x: F.cross_entropy(x[:, :, 0, 0], np.zeros(1, np.int64))),
]


@pytest.mark.parametrize("bad_dtype", [np.int32, np.int64, np.bool_, np.complex128])
@pytest.mark.parametrize("name, call", INT_OPS, ids=[n for n, _ in INT_OPS])
def test_non_float_dtype_raises(device, name, call, bad_dtype):
    with pytest.raises(TypeError):
        call(np.zeros((1, 4, 6, 6), bad_dtype))


@pytest.mark.parametrize("name, call", INT_OPS, ids=[n for n, _ in INT_OPS])
def test_float16_on_cpu_raises(name, call):
    with nc.use_device("cpu"):
        with pytest.raises(TypeError):
            call(np.zeros((1, 4, 6, 6), np.float16))


@pytest.mark.parametrize("call", [
    lambda: F.conv2d(X4, W4.astype(np.float64)),
    lambda: F.conv2d(X4, W4, np.zeros(6, np.float64)),
    lambda: F.conv1d(np.zeros((1, 2, 5), np.float64), np.zeros((3, 2, 3), np.float32)),
    lambda: F.linear(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float64)),
    lambda: F.linear(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(4, np.float32)),
    lambda: F.batch_norm(np.zeros((2, 3)), np.zeros(3), np.ones(3), np.ones(3, np.float32)),
    lambda: F.mse_loss(np.zeros(3), np.zeros(3, np.float32)),
    lambda: F.cross_entropy(np.zeros((2, 3)), np.full((2, 3), 1 / 3, np.float32)),
], ids=["conv2d_weight", "conv2d_bias", "conv1d", "linear_weight", "linear_bias", "batch_norm",
        "mse_loss", "cross_entropy_prob"])
def test_dtype_mismatch_raises(device, call):
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize("bad", [[[1.0, 2.0]], 3.0, "x", None])
@pytest.mark.parametrize("op", ["relu", "sigmoid", "softmax", "max_pool2d", "conv2d", "linear"])
def test_non_array_input_raises(device, op, bad):
    calls = {"relu": lambda: F.relu(bad), "sigmoid": lambda: F.sigmoid(bad),
             "softmax": lambda: F.softmax(bad, 0), "max_pool2d": lambda: F.max_pool2d(bad, 2),
             "conv2d": lambda: F.conv2d(bad, W4), "linear": lambda: F.linear(bad, np.zeros((2, 2)))}
    with pytest.raises(TypeError):
        calls[op]()


def test_non_array_weight_raises(device):
    with pytest.raises(TypeError, match=r"'weight' .* a builtins\.list: pass np\.asarray\(weight"):
        F.conv2d(X4, W4.tolist())


# ---------------------------------------------------------------------------------------------
# Channels, groups, hyper-parameters
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("xs, ws, bs, groups", [
    ((1, 4, 6, 6), (6, 3, 3, 3), None, 1),     # input channels != weight.shape[1]
    ((1, 4, 6, 6), (6, 4, 3, 3), None, 2),     # weight.shape[1] * groups != C
    ((1, 6, 6, 6), (4, 2, 3, 3), None, 3),     # OC not divisible by groups
    ((1, 5, 6, 6), (4, 1, 3, 3), None, 5),     # OC not divisible by groups (depthwise)
    ((1, 4, 6, 6), (6, 4, 3, 3), (5,), 1),     # bias length
    ((1, 4, 6, 6), (6, 4, 3, 3), (6, 1), 1),   # bias rank
], ids=["channels", "groups_channels", "groups_oc", "depthwise_oc", "bias_len", "bias_rank"])
def test_conv2d_channel_mismatch_raises(device, xs, ws, bs, groups):
    with pytest.raises(ValueError):
        F.conv2d(np.zeros(xs), np.zeros(ws), None if bs is None else np.zeros(bs), groups=groups)


@pytest.mark.parametrize("kw", [dict(stride=0), dict(stride=-1), dict(stride=(1, 0)),
                                dict(dilation=0), dict(dilation=(1, -2)), dict(padding=-1),
                                dict(padding=(0, -1)), dict(groups=0), dict(groups=-2)],
                         ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_conv2d_bad_hyperparameters_raise(device, kw):
    with pytest.raises(ValueError):
        F.conv2d(np.zeros((1, 2, 6, 6)), np.zeros((2, 2, 3, 3)), **kw)


@pytest.mark.parametrize("kw", [dict(stride=(1, 1, 1)), dict(stride=()), dict(stride=1.5),
                                dict(dilation="2"), dict(padding=((1,),))])
def test_conv2d_malformed_tuple_raises(device, kw):
    with pytest.raises(TypeError, match="must be an int or a tuple of one int or of 2 ints"):
        F.conv2d(np.zeros((1, 2, 6, 6)), np.zeros((2, 2, 3, 3)), **kw)


ONE_TUPLES = [  # (op, input shape, weight shape or None, kwargs): torch repeats a 1-tuple
    ("conv2d", (1, 2, 9, 8), (3, 2, 3, 3), dict(stride=(2,), padding=(1,), dilation=(2,))),
    ("conv1d", (1, 2, 9), (3, 2, 3), dict(stride=(2,), padding=(1,), dilation=(2,))),
    ("conv_transpose2d", (1, 2, 5, 4), (2, 3, 3, 3),
     dict(stride=(2,), padding=(1,), output_padding=(1,), dilation=(2,))),
    ("max_pool2d", (1, 2, 9, 8), None, dict(kernel_size=(3,), stride=(2,), padding=(1,),
                                            dilation=(2,))),
    ("avg_pool2d", (1, 2, 9, 8), None, dict(kernel_size=[3], stride=[2], padding=[1])),
]


@pytest.mark.parametrize("op, xs, ws, kw", ONE_TUPLES, ids=[c[0] for c in ONE_TUPLES])
def test_one_element_tuples_are_repeated(rng, device, dtype, op, xs, ws, kw):
    # numbaconv raised where torch expands padding=(2,), stride=(2,), kernel_size=(3,), ...
    args = (rand(rng, xs, dtype),) + (() if ws is None else (rand(rng, ws, dtype),))
    family = "exact" if op == "max_pool2d" else "pool" if op == "avg_pool2d" else "conv"
    check_op(op, args, kw, dtype, family, device,
             ref_kwargs={k: v[0] for k, v in kw.items()})


@pytest.mark.parametrize("padding", ["SAME", "full", "", "causal"])
def test_unknown_padding_string_raises(device, padding):
    with pytest.raises(ValueError):
        F.conv2d(np.zeros((1, 2, 6, 6)), np.zeros((2, 2, 3, 3)), padding=padding)
    with pytest.raises(ValueError):
        F.conv1d(np.zeros((1, 2, 6)), np.zeros((2, 2, 3)), padding=padding)


@pytest.mark.parametrize("activation", ["Relu", "softmax", "gelu_tanh", "", "none", 1])
def test_unknown_activation_raises(device, activation):
    with pytest.raises(ValueError):
        F.conv2d(np.zeros((1, 2, 6, 6)), np.zeros((2, 2, 3, 3)), activation=activation)


def test_conv1d_bad_stride_raises(device):
    with pytest.raises(ValueError):
        F.conv1d(np.zeros((1, 2, 6)), np.zeros((2, 2, 3)), stride=0)


# ---------------------------------------------------------------------------------------------
# Non-contiguous and negative-stride views give correct results
# ---------------------------------------------------------------------------------------------

def views(a):
    """Views of 4-D ``a``: strided, reversed, transposed. Each is a valid, non-contiguous input."""
    return {
        "strided": a[:, :, ::2, ::2],
        "reversed": a[:, ::-1, ::-1, :],
        "transposed": a.transpose(0, 1, 3, 2),
        "fortran": np.asfortranarray(a),
    }


VIEW_NAMES = ["strided", "reversed", "transposed", "fortran"]


@pytest.mark.parametrize("view", VIEW_NAMES)
def test_views_conv2d(rng, device, dtype, view):
    x = views(rand(rng, (2, 3, 8, 8), dtype))[view]
    w = views(rand(rng, (4, 3, 6, 6), dtype))[view][:, :, :3, :3]
    b = rand(rng, (8,), dtype)[::-2]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    check_op("conv2d", (x, w, b), dict(padding=1), dtype, "conv", device,
             scale=R.conv2d(np.abs(x), np.abs(w), np.abs(b), padding=1))


@pytest.mark.parametrize("view", VIEW_NAMES)
def test_views_pool_and_elementwise(rng, device, dtype, view):
    x = views(rand(rng, (1, 3, 8, 10), dtype))[view]
    check_op("max_pool2d", (x,), dict(kernel_size=2), dtype, "exact", device)
    check_op("avg_pool2d", (x,), dict(kernel_size=3, stride=2, padding=1), dtype, "pool", device)
    check_op("adaptive_avg_pool2d", (x,), dict(output_size=3), dtype, "pool", device)
    check_op("relu", (x,), {}, dtype, "exact", device)
    check_op("tanh", (x,), {}, dtype, "elementwise", device)
    check_op("softmax", (x,), dict(dim=1), dtype, "softmax", device)
    check_op("log_softmax", (x,), dict(dim=-1), dtype, "softmax", device)
    check_op("batch_norm", (x, rand(rng, (3,), dtype), rand(rng, (6,), dtype, 0.5, 2)[::2]), {},
             dtype, "norm", device)
    check_op("mse_loss", (x, x[:, ::-1]), {}, dtype, "loss", device)


def test_views_linear_and_losses(rng, device, dtype):
    x = rand(rng, (9, 5), dtype).T          # (5, 9), Fortran order
    w = rand(rng, (7, 18), dtype)[:, ::2]   # (7, 9), strided
    b = rand(rng, (7,), dtype)[::-1]
    check_op("linear", (x, w, b), {}, dtype, "linear", device,
             scale=R.linear(np.abs(x), np.abs(w), np.abs(b)))
    logits = rand(rng, (6, 8), dtype).T[:, ::-1]  # (8, 6)
    target = np.arange(16)[::2] % 6
    check_op("cross_entropy", (logits, target), {}, dtype, "loss", device)


# ---------------------------------------------------------------------------------------------
# NaN and Inf propagate as in torch (the reference is checked against torch)
# ---------------------------------------------------------------------------------------------

def with_specials(rng, shape, dtype):
    x = rand(rng, shape, dtype)
    flat = x.reshape(-1)
    flat[3], flat[-5], flat[len(flat) // 2] = np.nan, np.inf, -np.inf
    return x


@SIM_FP_WARNINGS
def test_nan_inf_conv2d(rng, device, dtype):
    x = with_specials(rng, (1, 2, 6, 7), dtype)
    w, b = rand(rng, (3, 2, 3, 3), dtype), rand(rng, (3,), dtype)
    out = check_op("conv2d", (x, w, b), dict(padding=1), dtype, "conv", device,
                   scale=R.conv2d(np.abs(np.nan_to_num(x)), np.abs(w), np.abs(b), padding=1))
    assert np.isnan(out).any() and np.isfinite(out).any()


@SIM_FP_WARNINGS
def test_nan_inf_conv2d_activation(rng, device, dtype):
    x = with_specials(rng, (1, 2, 6, 7), dtype)
    w = rand(rng, (3, 2, 3, 3), dtype)
    for act in ("relu", "sigmoid", "tanh", "relu6"):
        check_op("conv2d", (x, w), dict(padding=1, activation=act), dtype, "conv", device,
                 scale=R.conv2d(np.abs(np.nan_to_num(x)), np.abs(w), padding=1))


@SIM_FP_WARNINGS
def test_nan_inf_pooling(rng, device, dtype):
    x = with_specials(rng, (1, 2, 6, 6), dtype)
    check_op("max_pool2d", (x,), dict(kernel_size=2), dtype, "exact", device)
    check_op("max_pool2d", (x,), dict(kernel_size=3, stride=1, padding=1), dtype, "exact", device)
    check_op("avg_pool2d", (x,), dict(kernel_size=2), dtype, "pool", device)
    check_op("adaptive_max_pool2d", (x,), dict(output_size=(4, 3)), dtype, "exact", device)
    check_op("adaptive_avg_pool2d", (x,), dict(output_size=(4, 3)), dtype, "pool", device)


@SIM_FP_WARNINGS
def test_nan_first_in_max_window(device, dtype):
    # NaN wins a max wherever it sits in the window, first element included.
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 3, 3] = np.nan
    out = F.max_pool2d(x, 2)
    assert np.isnan(out[0, 0, 0, 0]) and np.isnan(out[0, 0, 1, 1])
    assert out[0, 0, 0, 1] == 7 and out[0, 0, 1, 0] == 13


@SIM_FP_WARNINGS
def test_nan_inf_dense_and_losses(rng, device, dtype):
    x = with_specials(rng, (4, 6), dtype)
    w = rand(rng, (3, 6), dtype)
    check_op("linear", (x, w), {}, dtype, "linear", device,
             scale=R.linear(np.abs(np.nan_to_num(x)), np.abs(w)))
    check_op("softmax", (x,), dict(dim=1), dtype, "softmax", device)
    check_op("log_softmax", (x,), dict(dim=0), dtype, "softmax", device)
    check_op("cross_entropy", (x, np.array([0, 1, 2, 3])), dict(reduction="none"), dtype, "loss",
             device)
    check_op("mse_loss", (x, rand(rng, (4, 6), dtype)), dict(reduction="none"), dtype, "loss",
             device)
    check_op("mse_loss", (x, rand(rng, (4, 6), dtype)), {}, dtype, "loss", device)
    c = x.shape[1]
    check_op("batch_norm", (x, rand(rng, (c,), dtype), rand(rng, (c,), dtype, 0.5, 2)), {}, dtype,
             "norm", device)


# ---------------------------------------------------------------------------------------------
# Empty batch: an empty output like torch
# ---------------------------------------------------------------------------------------------

def test_empty_batch(rng, device, dtype):
    x = np.zeros((0, 3, 5, 5), dtype)
    w, b = rand(rng, (4, 3, 3, 3), dtype), rand(rng, (4,), dtype)
    cases = [
        ("conv2d", (x, w, b), dict(padding=1), (0, 4, 5, 5)),
        ("conv2d", (x, w), dict(activation="relu"), (0, 4, 3, 3)),
        ("conv1d", (np.zeros((0, 3, 7), dtype), w[:, :, 0]), {}, (0, 4, 5)),
        ("max_pool2d", (x,), dict(kernel_size=2), (0, 3, 2, 2)),
        ("avg_pool2d", (x,), dict(kernel_size=3, padding=1, stride=2), (0, 3, 3, 3)),
        ("adaptive_avg_pool2d", (x,), dict(output_size=2), (0, 3, 2, 2)),
        ("adaptive_max_pool2d", (x,), dict(output_size=2), (0, 3, 2, 2)),
        ("relu", (x,), {}, x.shape),
        ("linear", (np.zeros((0, 3), dtype), w[:, :, 0, 0], b), {}, (0, 4)),
        ("softmax", (x,), dict(dim=1), x.shape),
        ("batch_norm", (x, b[:3], np.abs(b[:3]) + 1), {}, x.shape),
        ("mse_loss", (x, x), dict(reduction="none"), x.shape),
        ("cross_entropy", (np.zeros((0, 3), dtype), np.zeros(0, np.int64)),
         dict(reduction="none"), (0,)),
    ]
    for name, args, kw, shape in cases:
        out = check_op(name, args, kw, dtype, "exact", device)
        assert out.shape == shape, name


def test_empty_batch_shapes_match_torch(rng):
    torch = pytest.importorskip("torch")
    TF = torch.nn.functional
    x = np.zeros((0, 3, 5, 5), np.float32)
    w = rand(rng, (4, 3, 3, 3), np.float32)
    t = torch.from_numpy
    assert F.conv2d(x, w, padding=1).shape == tuple(TF.conv2d(t(x), t(w), padding=1).shape)
    assert F.max_pool2d(x, 2).shape == tuple(TF.max_pool2d(t(x), 2).shape)
    assert F.avg_pool2d(x, 2).shape == tuple(TF.avg_pool2d(t(x), 2).shape)
    assert F.adaptive_avg_pool2d(x, 3).shape == tuple(TF.adaptive_avg_pool2d(t(x), 3).shape)


# ---------------------------------------------------------------------------------------------
# Inputs are never modified
# ---------------------------------------------------------------------------------------------

@SIM_FP_WARNINGS
def test_inputs_unchanged(rng, device, dtype):
    x = with_specials(rng, (2, 3, 6, 6), dtype)
    w, b = rand(rng, (4, 3, 3, 3), dtype), rand(rng, (4,), dtype)
    mean, var = rand(rng, (3,), dtype), rand(rng, (3,), dtype, 0.5, 2)
    t = np.array([0, 2])
    call_unchanged(F.conv2d, x, w, b, padding=1, activation="silu")
    call_unchanged(F.max_pool2d, x, 3, 2, 1)
    call_unchanged(F.avg_pool2d, x, 2)
    call_unchanged(F.adaptive_max_pool2d, x, 4)
    for act in (F.relu, F.relu6, F.sigmoid, F.tanh, F.silu, F.gelu, F.hardswish, F.leaky_relu):
        call_unchanged(act, x)
    call_unchanged(F.softmax, x, 1)
    call_unchanged(F.log_softmax, x, -1)
    call_unchanged(F.linear, x, rand(rng, (4, 6), dtype), b)
    call_unchanged(F.batch_norm, x, mean, var, w[0, :, 0, 0], b[:3])
    call_unchanged(F.cross_entropy, x[:, :, 0, 0], t)
    call_unchanged(F.cross_entropy, x[:, :, 0, 0], F.softmax(x[:, :, 0, 0], 1))
    call_unchanged(F.mse_loss, x, x[::-1])
    # Read-only inputs work too: nothing tries to write them.
    x.flags.writeable = False
    w.flags.writeable = False
    assert F.conv2d(x, w).shape == (2, 4, 4, 4)
    assert F.relu(x).shape == x.shape
