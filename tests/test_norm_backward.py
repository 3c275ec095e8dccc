"""batch_norm in training mode (batch statistics, running-stat updates) and batch_norm_backward
in both modes: against the float64 reference and its central differences, against PyTorch,
and CPU against CUDA."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import assert_close, cuda_skip_reason, host, is_device_array, on, rand
from gradcheck import assert_grad_close

F = nc.functional

SHAPES = [(4, 3, 5, 5), (6, 2), (2, 3, 7), (1, 2, 3, 2)]


def params(rng, c, dtype, affine=True):
    w = rng.uniform(0.5, 2, c).astype(dtype) if affine else None
    b = rng.uniform(-1, 1, c).astype(dtype) if affine else None
    rm = rng.uniform(-1, 1, c).astype(dtype)
    rv = rng.uniform(0.5, 2, c).astype(dtype)
    return w, b, rm, rv


def batch(rng, shape, dtype):
    # Channels with an offset and a spread of their own (the cancellation batch norm undoes).
    c = shape[1]
    scale = np.array([0.5, 3.0, 1.5, 2.0][:c] * (c // 4 + 1))[:c]
    offset = np.array([2.0, -1.0, 0.25, 5.0][:c] * (c // 4 + 1))[:c]
    bshape = (1, c) + (1,) * (len(shape) - 2)
    x = rng.uniform(-1, 1, shape) * scale.reshape(bshape) + offset.reshape(bshape)
    return x.astype(dtype)


# ---------------------------------------------------------------------------------------------
# Training-mode forward
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_batch_norm_training(rng, device, dtype, shape, affine):
    x = batch(rng, shape, dtype)
    w, b, rm, rv = params(rng, shape[1], dtype, affine)
    x0, rm0, rv0 = x.copy(), rm.copy(), rv.copy()
    out = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, eps=1e-4)
    assert type(out) is np.ndarray
    assert np.array_equal(x, x0)
    assert_close(out, R.batch_norm_training(x, w, b, eps=1e-4), dtype, "norm",
                 scale=np.abs(R.batch_norm_training(x, None, None, 1e-4)) * (
                     1 if w is None else np.abs(w).reshape((1, -1) + (1,) * (x.ndim - 2))) + 1,
                 what="batch_norm training")
    want_m, want_v = R.batch_norm_running_update(rm0, rv0, x, 0.3)
    assert_close(rm, want_m, dtype, "norm", what="running_mean")
    assert_close(rv, want_v, dtype, "norm", what="running_var")


def test_batch_norm_training_without_running_stats(rng, device, dtype):
    x = batch(rng, (3, 2, 4, 4), dtype)
    out = F.batch_norm(x, None, None, training=True)
    assert_close(out, R.batch_norm_training(x), dtype, "norm", what="batch stats only")


def test_batch_norm_training_updates_strided_and_device_running_stats(rng, device, dtype):
    # The caller's arrays are updated in place: a strided view and, on CUDA, device arrays.
    x = batch(rng, (4, 3, 3, 3), dtype)
    store = np.zeros((3, 2), dtype)
    store[:, 1] = 1
    rm, rv = store[:, 0], store[:, 1]
    F.batch_norm(x, rm, rv, training=True)
    want_m, want_v = R.batch_norm_running_update(np.zeros(3), np.ones(3), x)
    assert_close(store[:, 0], want_m, dtype, "norm", what="strided running_mean")
    assert_close(store[:, 1], want_v, dtype, "norm", what="strided running_var")
    drm, drv = on(device, np.zeros(3, dtype)), on(device, np.ones(3, dtype))
    out = F.batch_norm(on(device, x), drm, drv, training=True)
    if device == "cuda":
        assert is_device_array(out)
    assert_close(drm, want_m, dtype, "norm", what="device running_mean")
    assert_close(drv, want_v, dtype, "norm", what="device running_var")


def test_batch_norm_training_errors(device):
    x = np.ones((2, 3, 2))
    with pytest.raises(TypeError, match="momentum"):
        F.batch_norm(x, np.zeros(3), np.ones(3), training=True, momentum=None)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(np.ones((1, 3, 1, 1)), np.zeros(3), np.ones(3), training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(np.ones((1, 3)), None, None, training=True)
    with pytest.raises(ValueError, match="both"):
        F.batch_norm(x, np.zeros(3), None, training=True)
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        F.batch_norm(x, ro, np.ones(3), training=True)
    with pytest.raises(ValueError, match="shape"):
        F.batch_norm(x, np.zeros(2), np.ones(2), training=True)
    with pytest.raises(TypeError):  # eval mode needs the running statistics
        F.batch_norm(x, None, None, training=False)


# ---------------------------------------------------------------------------------------------
# Backward: central differences of the reference
# ---------------------------------------------------------------------------------------------

GRAD_SHAPES = [(3, 2, 3, 2), (5, 3), (2, 2, 4)]


def bn_sum(go, training, rm, rv, eps):
    if training:
        return lambda x, w, b: go * R.batch_norm_training(x, w, b, eps)
    return lambda x, w, b: go * R.batch_norm(x, rm, rv, w, b, eps=eps)


def bn_sum_abs(absgo, xhat):
    """``|go| * (|xhat| * w + b)`` summed: its gradients w.r.t. w and b are the sums of the
    |terms| that grad_weight and grad_bias add up."""
    shape = (1, xhat.shape[1]) + (1,) * (xhat.ndim - 2)
    return lambda w, b: absgo * (np.abs(xhat) * w.reshape(shape) + b.reshape(shape))


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=[str(s) for s in GRAD_SHAPES])
def test_batch_norm_backward(rng, device, dtype, shape, training, affine):
    x = batch(rng, shape, dtype)
    w, b, rm, rv = params(rng, shape[1], dtype, affine)
    go = rand(rng, shape, dtype)
    before = [a.copy() for a in (go, x, rm, rv)]
    grads = F.batch_norm_backward(go, x, rm, rv, w, b, training=training, eps=1e-3)
    for a, a0 in zip((go, x, rm, rv), before):
        assert np.array_equal(a, a0), "batch_norm_backward modified an argument"
    assert isinstance(grads, tuple) and len(grads) == 5
    assert grads[1] is None and grads[2] is None
    f = bn_sum(go, training, rm, rv, 1e-3)
    args = (x, np.ones(shape[1]) if w is None else w, np.zeros(shape[1]) if b is None else b)
    for got, i, name in ((grads[0], 0, "input"), (grads[3], 1, "weight"), (grads[4], 2, "bias")):
        if i and not affine:
            assert got is None
            continue
        assert type(got) is np.ndarray
        num = R.numerical_grad(f, args, i)
        # grad_weight and grad_bias sum N * S terms: the sum of their |terms| is the unit of
        # the absolute tolerance.
        scale = None
        if i:
            absgo = np.abs(go.astype(np.float64))
            xhat = (R.batch_norm_training(x, eps=1e-3) if training else
                    R.batch_norm(x, rm, rv, eps=1e-3))
            scale = np.maximum(R.numerical_grad(bn_sum_abs(absgo, xhat), args[1:], i - 1), 1.0)
        assert_grad_close(got, num, dtype, scale=scale,
                          what=f"batch_norm_backward grad_{name}[{device}, training={training}]")


def test_batch_norm_backward_training_without_running_stats(rng, device, dtype):
    x, go = batch(rng, (4, 2, 3), dtype), rand(rng, (4, 2, 3), dtype)
    gx, _, _, gw, gb = F.batch_norm_backward(go, x, None, None, training=True)
    assert gw is None and gb is None
    num = R.numerical_grad(lambda v: go * R.batch_norm_training(v), (x,), 0)
    assert_grad_close(gx, num, dtype, what="batch_norm_backward, batch stats only")


def test_batch_norm_backward_eval_ignores_nan_input_for_grad_input(device, dtype):
    # Eval mode's grad_input is go * weight / sqrt(var + eps): x does not enter it.
    x = np.array([[1.0, np.nan], [2.0, 3.0]], dtype)
    go = np.ones((2, 2), dtype)
    gx, _, _, gw, gb = F.batch_norm_backward(go, x, np.zeros(2, dtype), np.full(2, 3, dtype),
                                             np.ones(2, dtype), np.ones(2, dtype), eps=1.0)
    assert_close(gx, np.full((2, 2), 0.5), dtype, "norm")
    assert np.isnan(host(gw)[1]) and not np.isnan(host(gw)[0])
    assert_close(gb, [2.0, 2.0], dtype, "norm")


def test_batch_norm_backward_errors(device):
    x = np.ones((2, 3, 2))
    with pytest.raises(ValueError, match="grad_output"):
        F.batch_norm_backward(np.ones((2, 3, 3)), x, np.zeros(3), np.ones(3))
    with pytest.raises(TypeError):
        F.batch_norm_backward(np.ones((2, 3, 2), np.float32), x, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm_backward(np.ones((1, 3)), np.ones((1, 3)), None, None, training=True)
    with pytest.raises(TypeError):
        F.batch_norm_backward(x, x, None, None, training=False)


def test_batch_norm_backward_empty_batch(device, dtype):
    gx, _, _, gw, gb = F.batch_norm_backward(np.zeros((0, 3, 2), dtype), np.zeros((0, 3, 2), dtype),
                                             np.zeros(3, dtype), np.ones(3, dtype),
                                             np.ones(3, dtype), np.ones(3, dtype))
    assert host(gx).shape == (0, 3, 2)
    assert not host(gw).any() and not host(gb).any() and host(gw).shape == (3,)


def test_batch_norm_backward_big(rng, device_big, dtype):
    # Many planes per channel, long planes: the float64 formulas written out.
    x, go = batch(rng, (6, 4, 31, 29), dtype), rand(rng, (6, 4, 31, 29), dtype)
    w = rng.uniform(0.5, 2, 4).astype(dtype)
    gx, _, _, gw, gb = F.batch_norm_backward(go, x, None, None, w, w, training=True)
    x64, g64 = x.astype(np.float64), go.astype(np.float64)
    axes = (0, 2, 3)
    mean = x64.mean(axes, keepdims=True)
    invstd = 1 / np.sqrt(((x64 - mean) ** 2).mean(axes, keepdims=True) + 1e-5)
    xhat = (x64 - mean) * invstd
    m = x.size // 4
    sg, sgx = g64.sum(axes, keepdims=True), (g64 * xhat).sum(axes, keepdims=True)
    want = w.reshape(1, -1, 1, 1) * invstd * (g64 - sg / m - xhat * sgx / m)
    assert_close(gx, want, dtype, "norm", scale=np.abs(want) + 1, what="grad_input")
    assert_close(gw, sgx.reshape(-1), dtype, "norm", scale=np.sqrt(m) * 10, what="grad_weight")
    assert_close(gb, sg.reshape(-1), dtype, "norm", scale=np.sqrt(m) * 10, what="grad_bias")


# ---------------------------------------------------------------------------------------------
# PyTorch (optional oracle)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (8, 5), (3, 2, 6)], ids=["4d", "2d", "3d"])
def test_batch_norm_vs_torch(rng, device_available, dtype, shape, training):
    torch = pytest.importorskip("torch")
    x, go = batch(rng, shape, dtype), rand(rng, shape, dtype)
    w, b, rm, rv = params(rng, shape[1], dtype)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
         for k, v in dict(x=x, w=w, b=b).items()}
    trm, trv = torch.tensor(rm, dtype=torch.float64), torch.tensor(rv, dtype=torch.float64)
    grads = F.batch_norm_backward(go, x, rm, rv, w, b, training, 0.2, 1e-3)
    out = F.batch_norm(x, rm, rv, w, b, training, 0.2, 1e-3)
    y = torch.nn.functional.batch_norm(t["x"], trm, trv, t["w"], t["b"], training, 0.2, 1e-3)
    y.backward(torch.tensor(go, dtype=torch.float64))
    assert_close(out, y.detach().numpy(), dtype, "norm", scale=np.abs(y.detach().numpy()) + 1,
                 what="batch_norm vs torch")
    assert_close(rm, trm.numpy(), dtype, "norm", what="running_mean vs torch")
    assert_close(rv, trv.numpy(), dtype, "norm", what="running_var vs torch")
    m = x.size // shape[1]
    for got, key in ((grads[0], "x"), (grads[3], "w"), (grads[4], "b")):
        want = t[key].grad.numpy()
        assert_close(got, want, dtype, "norm", scale=np.abs(want) + (1 if key == "x" else m),
                     what=f"batch_norm_backward grad_{key} vs torch")


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


@pytest.mark.cuda_only
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_cpu_vs_cuda(rng, cuda_device, dtype, training):
    shape = (3, 4, 5, 6)
    x, go = batch(rng, shape, dtype), rand(rng, shape, dtype)
    w, b, rm, rv = params(rng, 4, dtype)
    cpu_rm, cpu_rv = rm.copy(), rv.copy()
    with nc.use_device("cpu"):
        want_out = F.batch_norm(x, cpu_rm, cpu_rv, w, b, training)
        want = F.batch_norm_backward(go, x, rm, rv, w, b, training)
    drm, drv = on("cuda", rm), on("cuda", rv)
    dev = [on("cuda", a) for a in (go, x, w, b)]
    grads = F.batch_norm_backward(dev[0], dev[1], drm, drv, dev[2], dev[3], training)
    out = F.batch_norm(dev[1], drm, drv, dev[2], dev[3], training)
    assert is_device_array(out)
    assert_close(out, want_out.astype(np.float64), dtype, "parity", what="batch_norm cuda")
    assert_close(drm, cpu_rm.astype(np.float64), dtype, "parity", what="running_mean cuda")
    assert_close(drv, cpu_rv.astype(np.float64), dtype, "parity", what="running_var cuda")
    for g, c in zip(grads, want):
        if c is None:
            assert g is None
            continue
        assert is_device_array(g)
        assert_close(g, c.astype(np.float64), dtype, "parity", scale=np.abs(c) + 10,
                     what="batch_norm_backward cuda")
