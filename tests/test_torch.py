"""numbaconv.functional against torch.nn.functional, op by op (skipped without torch).

torch runs in float64 on the same (float32 or float64) inputs, so it gives the exact answer that
numbaconv's result in the input dtype is held to, with the tolerances of conftest.TOLERANCES.
Runs on the devices that are available here (no skips: CI's torch pass counts a skip as a failure).
"""

import numpy as np
import pytest

import numbaconv as nc
from conftest import assert_close, call_unchanged, rand

torch = pytest.importorskip("torch")
TF = torch.nn.functional
F = nc.functional


def t64(a):
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a.astype(np.float64) if a.dtype.kind == "f" else a.astype(np.int64))


def compare(name, args, kwargs, dtype, family, scale=None, torch_fn=None, torch_kwargs=None):
    out = call_unchanged(getattr(F, name), *args, **kwargs)
    assert type(out) is np.ndarray
    fn = torch_fn or getattr(TF, name)
    expect = fn(*[t64(a) if isinstance(a, np.ndarray) else a for a in args],
                **(kwargs if torch_kwargs is None else torch_kwargs))
    assert_close(out, expect.numpy(), dtype, family, scale=scale, what=f"{name} vs torch")


def abs_scale(fn, *args, **kwargs):
    """torch ``fn`` on |args|: the sum of |products| each output's rounding error scales with."""
    return fn(*[None if a is None else t64(np.abs(a)) for a in args], **kwargs).numpy()


CONV2D = [
    ((2, 3, 7, 6), (5, 3, 3, 3), dict(padding=1)),
    ((1, 4, 9, 8), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    ((1, 6, 6, 5), (6, 1, 3, 3), dict(padding="same", groups=6)),
    ((1, 3, 6, 5), (6, 1, 3, 3), dict(padding=1, groups=3, stride=2)),
    ((1, 3, 5, 5), (18, 3, 3, 3), dict(padding="valid")),
    ((1, 2, 5, 6), (3, 2, 2, 4), dict(padding="same", dilation=2)),
    ((2, 3, 1, 1), (4, 3, 1, 1), {}),
    ((3, 5, 4), (2, 3, 3, 3), dict(padding=1)),
]


@pytest.mark.parametrize("xs, ws, kw", CONV2D, ids=[str(i) for i in range(len(CONV2D))])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_conv2d(rng, device_available, dtype, xs, ws, kw):
    x, w, b = rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, (ws[0],), dtype)
    compare("conv2d", (x, w, b), kw, dtype, "conv", scale=abs_scale(TF.conv2d, x, w, b, **kw))


@pytest.mark.parametrize("act", ["relu", "relu6", "leaky_relu", "sigmoid", "tanh", "silu", "gelu",
                                 "hardswish"])
def test_conv2d_activation(rng, device_available, dtype, act):
    x, w, b = rand(rng, (1, 3, 5, 4), dtype, -4, 4), rand(rng, (17, 3, 3, 3), dtype), \
        rand(rng, (17,), dtype)
    out = call_unchanged(F.conv2d, x, w, b, padding=1, activation=act)
    expect = getattr(TF, act)(TF.conv2d(t64(x), t64(w), t64(b), padding=1)).numpy()
    assert_close(out, expect, dtype, "conv", scale=abs_scale(TF.conv2d, x, w, b, padding=1),
                 what=f"conv2d+{act} vs torch")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("xs, ws, kw", [((2, 3, 11), (4, 3, 3), dict(padding=1)),
                                        ((1, 4, 13), (6, 2, 4), dict(stride=2, dilation=2,
                                                                     groups=2)),
                                        ((1, 3, 8), (3, 1, 4), dict(padding="same", groups=3))])
def test_conv1d(rng, device_available, dtype, xs, ws, kw):
    x, w, b = rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, (ws[0],), dtype)
    compare("conv1d", (x, w, b), kw, dtype, "conv", scale=abs_scale(TF.conv1d, x, w, b, **kw))


POOL = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), ceil_mode=True),
    dict(kernel_size=2, stride=2, padding=1, ceil_mode=True),
]


@pytest.mark.parametrize("kw", POOL, ids=[str(i) for i in range(len(POOL))])
def test_pool(rng, device_available, dtype, kw):
    x = rand(rng, (2, 3, 7, 9), dtype)
    compare("max_pool2d", (x,), kw, dtype, "exact")
    compare("max_pool2d", (x,), dict(kw, dilation=(2, 1)), dtype, "exact")
    for include in (True, False):
        compare("avg_pool2d", (x,), dict(kw, count_include_pad=include), dtype, "pool")


@pytest.mark.parametrize("size", [(3, 4), 1, (5, 2), (None, 3), (9, 11)])
def test_adaptive_pool(rng, device_available, dtype, size):
    x = rand(rng, (1, 3, 7, 9), dtype)
    compare("adaptive_avg_pool2d", (x,), dict(output_size=size), dtype, "pool")
    compare("adaptive_max_pool2d", (x,), dict(output_size=size), dtype, "exact")


@pytest.mark.parametrize("name, kw", [("relu", {}), ("relu6", {}), ("leaky_relu", {}),
                                      ("leaky_relu", dict(negative_slope=0.3)), ("sigmoid", {}),
                                      ("tanh", {}), ("silu", {}), ("gelu", {}),
                                      ("gelu", dict(approximate="tanh")), ("hardswish", {})])
def test_activation(rng, device_available, dtype, name, kw):
    x = rand(rng, (4, 75), dtype, -8, 8)
    x[0, :6] = [-3.0, 3.0, 0.0, 6.0, -50.0, 50.0]
    compare(name, (x,), kw, dtype, "elementwise")


@pytest.mark.parametrize("xs, ws", [((5, 7), (3, 7)), ((2, 3, 4, 7), (5, 7)), ((7,), (3, 7))])
def test_linear(rng, device_available, dtype, xs, ws):
    x, w, b = rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, (ws[0],), dtype)
    compare("linear", (x, w, b), {}, dtype, "linear", scale=abs_scale(TF.linear, x, w, b))
    compare("linear", (x, w), {}, dtype, "linear", scale=abs_scale(TF.linear, x, w))


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -2])
def test_softmax(rng, device_available, dtype, dim):
    x = rand(rng, (3, 4, 5), dtype, -6, 6)
    x[1, 1, 1] = 1e30
    x[2, 2, 2] = -1e30
    compare("softmax", (x,), dict(dim=dim), dtype, "softmax", torch_fn=torch.softmax)
    compare("log_softmax", (x,), dict(dim=dim), dtype, "softmax", torch_fn=torch.log_softmax)


@pytest.mark.parametrize("xs", [(4, 3), (2, 3, 5), (2, 3, 4, 5)])
def test_batch_norm(rng, device_available, dtype, xs):
    c = xs[1]
    x, mean, var = rand(rng, xs, dtype), rand(rng, (c,), dtype), rand(rng, (c,), dtype, 0.2, 2)
    w, b = rand(rng, (c,), dtype), rand(rng, (c,), dtype)
    compare("batch_norm", (x, mean, var, w, b), dict(eps=1e-3), dtype, "norm",
            torch_kwargs=dict(training=False, eps=1e-3))
    compare("batch_norm", (x, mean, var), {}, dtype, "norm")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("xs", [(6, 5), (2, 4, 3), (2, 3, 2, 3), (5,)])
def test_cross_entropy(rng, device_available, dtype, xs, reduction):
    x = rand(rng, xs, dtype, -4, 4)
    cdim = 1 if len(xs) > 1 else 0
    target = rng.integers(0, xs[cdim], size=xs[:1] + xs[2:] if len(xs) > 1 else ())
    compare("cross_entropy", (x, np.asarray(target)), dict(reduction=reduction), dtype, "loss")
    prob = rand(rng, xs, dtype, 0, 1)
    prob /= prob.sum(axis=cdim, keepdims=True)
    compare("cross_entropy", (x, prob), dict(reduction=reduction), dtype, "loss")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(rng, device_available, dtype, reduction):
    x, y = rand(rng, (3, 4, 5), dtype), rand(rng, (3, 4, 5), dtype)
    compare("mse_loss", (x, y), dict(reduction=reduction), dtype, "loss")


def test_big_against_torch(rng, device_available_big, dtype):
    x, w, b = rand(rng, (2, 32, 28, 28), dtype), rand(rng, (64, 32, 3, 3), dtype), \
        rand(rng, (64,), dtype)
    compare("conv2d", (x, w, b), dict(padding=1, stride=2), dtype, "conv",
            scale=abs_scale(TF.conv2d, x, w, b, padding=1, stride=2))
    compare("max_pool2d", (x,), dict(kernel_size=3, stride=2, padding=1), dtype, "exact")
    compare("adaptive_avg_pool2d", (x,), dict(output_size=(5, 3)), dtype, "pool")
    feats = rand(rng, (33, 257), dtype)
    fw, fb = rand(rng, (100, 257), dtype), rand(rng, (100,), dtype)
    compare("linear", (feats, fw, fb), {}, dtype, "linear",
            scale=abs_scale(TF.linear, feats, fw, fb))
    compare("log_softmax", (feats,), dict(dim=1), dtype, "softmax", torch_fn=torch.log_softmax)
    compare("cross_entropy", (feats, rng.integers(0, 257, 33)), {}, dtype, "loss")


def test_a_cpu_tensor_is_refused_with_what_to_pass():
    # The message said "... not Tensor" and nothing about what to do.
    with pytest.raises(TypeError, match=r"'input' .* CPU torch\.Tensor: pass input\.numpy\(\)"):
        F.relu(torch.ones(1, 2, 4, 4))
    with pytest.raises(TypeError, match=r"'weight' .* pass weight\.numpy\(\) \(weight\.detach"):
        F.conv2d(np.ones((1, 2, 4, 4), np.float32), torch.ones(3, 2, 3, 3, requires_grad=True))
