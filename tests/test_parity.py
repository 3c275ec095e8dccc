"""CPU against CUDA, directly on the same inputs (device arrays in for CUDA).

Skipped when CUDA cannot run (no GPU and no simulator), unless NUMBACONV_TEST_REQUIRE_CUDA=1,
which makes the session fail instead (see conftest).
"""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import SIM, assert_close, cuda_skip_reason, host, is_device_array, rand

F = nc.functional
pytestmark = pytest.mark.cuda_only


@pytest.fixture(autouse=True)
def need_cuda():
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)


def big():
    return not SIM  # real GPU: realistic sizes


def case_list():
    """(id, op name, builder(rng, dtype) -> (args, kwargs, scale or None), family)."""
    def conv(xs, ws, **kw):
        def build(rng, dt):
            x, w, b = rand(rng, xs, dt), rand(rng, ws, dt), rand(rng, (ws[0],), dt)
            ref = R.conv1d if len(xs) == 3 else R.conv2d
            scale = ref(np.abs(x), np.abs(w), np.abs(b),
                             **{k: v for k, v in kw.items() if k != "activation"})
            return (x, w, b), kw, scale
        return build

    def unary(shape, lo=-4.0, hi=4.0, **kw):
        def build(rng, dt):
            return (rand(rng, shape, dt, lo, hi),), kw, None
        return build

    def linear(xs, ws):
        def build(rng, dt):
            x, w, b = rand(rng, xs, dt), rand(rng, ws, dt), rand(rng, (ws[0],), dt)
            return (x, w, b), {}, R.linear(np.abs(x), np.abs(w), np.abs(b))
        return build

    def bn(xs):
        def build(rng, dt):
            c = xs[1]
            return (rand(rng, xs, dt), rand(rng, (c,), dt), rand(rng, (c,), dt, 0.2, 2),
                    rand(rng, (c,), dt), rand(rng, (c,), dt)), {}, None
        return build

    def ce(xs, prob, reduction):
        def build(rng, dt):
            x = rand(rng, xs, dt, -4, 4)
            if prob:
                t = rand(rng, xs, dt, 0, 1)
                t /= t.sum(axis=1, keepdims=True)
            else:
                t = rng.integers(0, xs[1], size=xs[:1] + xs[2:])
            return (x, t), dict(reduction=reduction), None
        return build

    def mse(xs, reduction):
        def build(rng, dt):
            return (rand(rng, xs, dt), rand(rng, xs, dt)), dict(reduction=reduction), None
        return build

    n = 4 if big() else 1
    cases = [
        ("conv_direct", "conv2d", conv((1, 3, 6, 7), (4, 3, 3, 3), padding=1), "parity"),
        ("conv_wide", "conv2d", conv((1, 3, 5, 6), (18, 3, 3, 3), padding=1, stride=(1, 2)),
         "parity"),
        ("conv_depthwise", "conv2d", conv((1, 4, 6, 6), (8, 1, 3, 3), groups=4, padding="same"),
         "parity"),
        ("conv_dilated_groups", "conv2d", conv((1, 4, 7, 7), (20, 2, 3, 3), groups=2, dilation=2),
         "parity"),
        ("conv_silu", "conv2d", conv((1, 2, 5, 5), (17, 2, 3, 3), padding=1, activation="silu"),
         "parity"),
        ("conv_gelu", "conv2d", conv((1, 2, 5, 5), (3, 2, 3, 3), padding=1, activation="gelu"),
         "parity"),
        ("conv1d", "conv1d", conv((2, 3, 12), (5, 3, 3), padding=2, stride=2), "parity"),
        ("max_pool", "max_pool2d", unary((1, 3, 9, 8), kernel_size=3, stride=2, padding=1,
                                         ceil_mode=True), "exact"),
        ("max_pool_dilated", "max_pool2d", unary((1, 2, 9, 9), kernel_size=2, dilation=2),
         "exact"),
        ("avg_pool", "avg_pool2d", unary((1, 3, 9, 8), kernel_size=3, stride=2, padding=1,
                                         ceil_mode=True, count_include_pad=False), "parity"),
        ("adaptive_avg", "adaptive_avg_pool2d", unary((1, 3, 7, 9), output_size=(3, 4)),
         "parity"),
        ("adaptive_max", "adaptive_max_pool2d", unary((1, 3, 7, 9), output_size=(3, 4)), "exact"),
        ("linear", "linear", linear((2, 3, 9), (7, 9)), "parity"),
        ("softmax", "softmax", unary((3, 5, 4), dim=1), "parity"),
        ("log_softmax", "log_softmax", unary((3, 5, 4), dim=-1), "parity"),
        ("batch_norm", "batch_norm", bn((2, 3, 4, 5)), "parity"),
        ("ce_index", "cross_entropy", ce((5, 7), False, "mean"), "parity"),
        ("ce_index_kdim", "cross_entropy", ce((2, 4, 3, 2), False, "none"), "parity"),
        ("ce_prob", "cross_entropy", ce((5, 7), True, "sum"), "parity"),
        ("mse", "mse_loss", mse((3, 4, 5), "mean"), "parity"),
        ("mse_none", "mse_loss", mse((3, 4, 5), "none"), "parity"),
    ]
    for name, kw in [("relu", {}), ("relu6", {}), ("leaky_relu", dict(negative_slope=0.1)),
                     ("sigmoid", {}), ("tanh", {}), ("silu", {}), ("gelu", {}),
                     ("gelu", dict(approximate="tanh")), ("hardswish", {})]:
        cases.append((f"{name}{'_' + kw['approximate'] if 'approximate' in kw else ''}", name,
                      unary((n * 3, 67), -8, 8, **kw), "parity"))
    if big():
        cases += [
            ("big_conv", "conv2d", conv((2, 37, 19, 23), (70, 37, 3, 3), padding=1), "parity"),
            ("big_depthwise", "conv2d", conv((2, 48, 17, 17), (48, 1, 5, 5), groups=48, padding=2),
             "parity"),
            ("big_linear", "linear", linear((37, 129), (65, 129)), "parity"),
            ("big_softmax", "softmax", unary((65, 4099), dim=1), "parity"),
            ("big_pool", "max_pool2d", unary((2, 16, 33, 35), kernel_size=3, stride=2, padding=1),
             "exact"),
        ]
    return cases


CASES = case_list()


@pytest.mark.parametrize("name, build, family", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cpu_cuda_parity(rng, dtype, name, build, family):
    args, kwargs, scale = build(rng, dtype)
    fn = getattr(F, name)
    with nc.use_device("cpu"):
        expect = fn(*args, **kwargs)
    assert type(expect) is np.ndarray
    dev_args = [nc.to_device(a, "cuda") if isinstance(a, np.ndarray) else a for a in args]
    got = fn(*dev_args, **kwargs)
    assert is_device_array(got)
    got = host(got)
    for a, d in zip(args, dev_args):  # inputs untouched on the device too
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(host(d), a)
    assert_close(got, expect.astype(np.float64), dtype, family, scale=scale,
                 what=f"{name} cuda vs cpu")


def test_host_input_on_cuda_matches_device_input(rng, dtype):
    # Host input with the current device 'cuda' (copied in and out) equals device input.
    x, w = rand(rng, (1, 2, 5, 5), dtype), rand(rng, (3, 2, 3, 3), dtype)
    with nc.use_device("cuda"):
        a = F.conv2d(x, w, padding=1, activation="relu")
    assert type(a) is np.ndarray
    b = host(F.conv2d(nc.to_device(x, "cuda"), nc.to_device(w, "cuda"), padding=1,
                      activation="relu"))
    np.testing.assert_array_equal(a, b)
