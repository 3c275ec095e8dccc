"""The float64 reference (tests/reference.py) checked against PyTorch, so it can be trusted."""

import numpy as np
import pytest

import reference as R

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def same(ours, theirs, rtol=1e-12, atol=1e-12):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.dtype == np.float64
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, equal_nan=True)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


CONV2D_CASES = [
    # x shape, w shape, kwargs
    ((2, 3, 7, 9), (4, 3, 3, 3), {}),
    ((1, 4, 8, 8), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)),
    ((2, 6, 5, 5), (6, 1, 3, 3), dict(padding=1, groups=6)),            # depthwise
    ((1, 3, 6, 7), (6, 1, 3, 3), dict(padding="same", groups=3)),         # multiplier 2
    ((1, 2, 6, 7), (3, 2, 4, 2), dict(padding="same", dilation=2)),       # asymmetric same
    ((1, 2, 6, 7), (3, 2, 3, 3), dict(padding="valid", stride=3)),
    ((2, 3, 1, 1), (5, 3, 1, 1), {}),
    ((3, 4, 5), (2, 3, 3, 3), dict(padding=1)),                           # unbatched
    ((1, 2, 2, 3), (2, 2, 4, 4), dict(padding=1)),                         # kernel > input
]


@pytest.mark.parametrize("xs, ws, kw", CONV2D_CASES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_conv2d(rng, xs, ws, kw, bias):
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[0]) if bias else None
    same(R.conv2d(x, w, b, **kw), TF.conv2d(t(x), t(w), None if b is None else t(b), **kw))


@pytest.mark.parametrize("act", ["relu", "relu6", "leaky_relu", "sigmoid", "tanh", "silu",
                                 "gelu", "hardswish"])
def test_conv2d_activation(rng, act):
    x, w, b = rng.standard_normal((1, 3, 5, 5)) * 3, rng.standard_normal((4, 3, 3, 3)), \
        rng.standard_normal(4)
    y = TF.conv2d(t(x), t(w), t(b), padding=1)
    same(R.conv2d(x, w, b, padding=1, activation=act), getattr(TF, act)(y))


def test_conv2d_too_small():
    with pytest.raises(ValueError):
        R.conv2d(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3)))


@pytest.mark.parametrize("xs, ws, kw", [
    ((2, 3, 11), (4, 3, 3), {}),
    ((1, 4, 12), (6, 2, 3), dict(stride=2, padding=2, dilation=2, groups=2)),
    ((1, 3, 9), (3, 1, 4), dict(padding="same", groups=3)),
    ((3, 10), (2, 3, 5), dict(padding="valid")),
])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_conv1d(rng, xs, ws, kw):
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    same(R.conv1d(x, w, b, **kw), TF.conv1d(t(x), t(w), t(b), **kw))


POOL_CASES = [
    ((2, 3, 7, 9), dict(kernel_size=3)),
    ((1, 2, 7, 9), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 2, 7, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 8, 8), dict(kernel_size=(2, 3), stride=(2, 3), ceil_mode=True)),
    ((1, 1, 5, 6), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ((3, 6, 7), dict(kernel_size=2)),
]


@pytest.mark.parametrize("xs, kw", POOL_CASES + [
    ((1, 2, 9, 9), dict(kernel_size=3, stride=2, padding=1, dilation=2)),
    ((1, 2, 10, 9), dict(kernel_size=2, stride=3, dilation=(2, 3), ceil_mode=True)),
])
def test_max_pool2d(rng, xs, kw):
    x = rng.standard_normal(xs)
    same(R.max_pool2d(x, **kw), TF.max_pool2d(t(x), **kw))


@pytest.mark.parametrize("xs, kw", POOL_CASES)
@pytest.mark.parametrize("include", [True, False])
def test_avg_pool2d(rng, xs, kw, include):
    x = rng.standard_normal(xs)
    same(R.avg_pool2d(x, count_include_pad=include, **kw),
         TF.avg_pool2d(t(x), count_include_pad=include, **kw))


@pytest.mark.parametrize("xs, size", [((2, 3, 7, 9), (3, 4)), ((1, 2, 5, 5), 5), ((1, 2, 4, 6), 7),
                                      ((3, 10, 3), (None, 2)), ((1, 1, 9, 7), (1, 1))])
def test_adaptive(rng, xs, size):
    x = rng.standard_normal(xs)
    same(R.adaptive_avg_pool2d(x, size), TF.adaptive_avg_pool2d(t(x), size))
    same(R.adaptive_max_pool2d(x, size), TF.adaptive_max_pool2d(t(x), size))


def _special():
    return np.array([-np.inf, -1e30, -50.0, -4.0, -3.0, -1.0, -1e-8, -0.0, 0.0, 1e-8, 0.5, 1.0,
                     2.9, 3.0, 6.0, 7.5, 50.0, 1e30, np.inf, np.nan])


@pytest.mark.parametrize("name, kw", [("relu", {}), ("relu6", {}), ("leaky_relu", {}),
                                      ("leaky_relu", dict(negative_slope=0.2)), ("sigmoid", {}),
                                      ("tanh", {}), ("silu", {}), ("gelu", {}),
                                      ("gelu", dict(approximate="tanh")), ("hardswish", {})])
def test_activations(rng, name, kw):
    x = np.concatenate([rng.standard_normal(200) * 4, _special()])
    same(getattr(R, name)(x, **kw), getattr(TF, name)(t(x), **kw), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("xs, ws, bias", [
    ((5, 7), (3, 7), False), ((5, 7), (3, 7), True), ((2, 3, 4, 7), (3, 7), True),
    ((7,), (3, 7), True), ((4, 7), (7,), False)])  # torch allows no bias with a 1-D weight
def test_linear(rng, xs, ws, bias):
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[0]) if bias else None
    same(R.linear(x, w, b), TF.linear(t(x), t(w), None if b is None else t(b)))


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_softmax(rng, dim):
    x = rng.standard_normal((3, 4, 5)) * 5
    x[0, 0, :] = [1e30, -1e30, 0.0, 1e30, 5.0]
    same(R.softmax(x, dim), torch.softmax(t(x), dim))
    same(R.log_softmax(x, dim), torch.log_softmax(t(x), dim))


def test_softmax_nonfinite():
    x = np.array([[-np.inf, -np.inf, -np.inf], [np.inf, 1.0, 2.0], [np.nan, 1.0, 2.0],
                  [-np.inf, 0.0, 1.0]])
    same(R.softmax(x, 1), torch.softmax(t(x), 1))
    same(R.log_softmax(x, 1), torch.log_softmax(t(x), 1))


@pytest.mark.parametrize("xs", [(4, 3), (2, 3, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("affine", [False, True])
def test_batch_norm(rng, xs, affine):
    c = xs[1]
    x, mean = rng.standard_normal(xs), rng.standard_normal(c)
    var = rng.uniform(0.1, 2.0, c)
    w, b = (rng.standard_normal(c), rng.standard_normal(c)) if affine else (None, None)
    tw, tb = (t(w), t(b)) if affine else (None, None)
    same(R.batch_norm(x, mean, var, w, b, eps=1e-3),
         TF.batch_norm(t(x), t(mean), t(var), tw, tb, training=False, eps=1e-3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("xs", [(6, 5), (2, 4, 3), (2, 3, 2, 3), (5,)])
def test_cross_entropy(rng, xs, reduction):
    x = rng.standard_normal(xs) * 3
    cdim = 1 if len(xs) > 1 else 0
    idx_shape = xs[:1] + xs[2:] if len(xs) > 1 else ()
    target = rng.integers(0, xs[cdim], size=idx_shape)
    same(R.cross_entropy(x, target, reduction),
         TF.cross_entropy(t(x), torch.from_numpy(np.asarray(target)), reduction=reduction))
    prob = rng.uniform(0, 1, xs)
    prob /= prob.sum(axis=cdim, keepdims=True)
    same(R.cross_entropy(x, prob, reduction), TF.cross_entropy(t(x), t(prob), reduction=reduction))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(rng, reduction):
    x, y = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    same(R.mse_loss(x, y, reduction), TF.mse_loss(t(x), t(y), reduction=reduction))


def test_empty_reductions():
    x, y = np.zeros((0, 3)), np.zeros((0, 3))
    same(R.mse_loss(x, y, "mean"), TF.mse_loss(t(x), t(y)))
    same(R.mse_loss(x, y, "sum"), TF.mse_loss(t(x), t(y), reduction="sum"))
