"""cross_entropy_backward and mse_loss_backward: against float64 central differences of the
reference, against PyTorch autograd, and CPU against CUDA."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import (assert_close, call_unchanged, cuda_skip_reason, host, is_device_array, on,
                      rand)
from gradcheck import assert_grad_close

F = nc.functional

REDUCTIONS = ["mean", "sum", "none"]
CE_SHAPES = [  # class dim 1, or 0 for an unbatched input
    ("nc", (6, 5)),
    ("batch_1", (1, 7)),
    ("one_class", (3, 1)),
    ("k_dim", (2, 4, 3)),
    ("k_dim_2", (2, 3, 2, 3)),
    ("unbatched", (5,)),
]


def item_shape(shape):
    return shape[:1] + shape[2:] if len(shape) > 1 else ()


def index_target(rng, shape, itype=np.int64):
    return rng.integers(0, shape[1 if len(shape) > 1 else 0], size=item_shape(shape)).astype(itype)


def prob_target(rng, shape, dtype):
    cdim = 1 if len(shape) > 1 else 0
    p = rng.uniform(0, 1, shape)
    return (p / p.sum(axis=cdim, keepdims=True)).astype(dtype)


def grad_out(rng, reduction, shape, dtype):
    """grad_output for a loss of ``shape`` per item: an array for 'none', else a number."""
    if reduction == "none":
        return rand(rng, shape, dtype)
    return 1.75


def weighted(loss, go, reduction):
    """``f`` with ``sum(f(*args)) = sum(go * loss(*args, reduction))``, the scalar whose gradient
    the backward op returns. The reduction is applied as a factor on the per-item losses
    (``reference._reduce``'s sum / count) so that numerical_grad differences item by item."""
    if reduction == "none":
        return lambda *args: go * loss(*args, reduction="none")

    def f(*args):
        items = loss(*args, reduction="none")
        count = items.size if reduction == "mean" else 1
        return (np.float64(go) / count) * items
    return f


# ---------------------------------------------------------------------------------------------
# cross_entropy
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [c[1] for c in CE_SHAPES], ids=[c[0] for c in CE_SHAPES])
def test_cross_entropy_backward_index(rng, device, dtype, shape, reduction):
    x, t = rand(rng, shape, dtype, -4, 4), index_target(rng, shape)
    go = grad_out(rng, reduction, item_shape(shape), dtype)
    gx, gt = call_unchanged(F.cross_entropy_backward, go, x, t, reduction)
    assert gt is None and type(gx) is np.ndarray
    num = R.numerical_grad(weighted(R.cross_entropy, go, reduction), (x, t), 0)
    assert_grad_close(gx, num, dtype, what=f"cross_entropy_backward[{device}]")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [c[1] for c in CE_SHAPES], ids=[c[0] for c in CE_SHAPES])
def test_cross_entropy_backward_prob(rng, device, dtype, shape, reduction):
    x, t = rand(rng, shape, dtype, -4, 4), prob_target(rng, shape, dtype)
    go = grad_out(rng, reduction, item_shape(shape), dtype)
    gx, gt = call_unchanged(F.cross_entropy_backward, go, x, t, reduction)
    f = weighted(R.cross_entropy, go, reduction)
    assert_grad_close(gx, R.numerical_grad(f, (x, t), 0), dtype, what="grad_input")
    assert_grad_close(gt, R.numerical_grad(f, (x, t), 1), dtype, what="grad_target")


@pytest.mark.parametrize("itype", [np.int32, np.int16, np.uint8])
def test_cross_entropy_backward_index_dtypes(rng, device, dtype, itype):
    x = rand(rng, (4, 6), dtype)
    t = index_target(rng, (4, 6), itype)
    (gx, _), (want, _) = (F.cross_entropy_backward(1.0, x, t),
                          F.cross_entropy_backward(1.0, x, t.astype(np.int64)))
    assert np.array_equal(host(gx), host(want))


@pytest.mark.parametrize("go", [2.5, np.float32(2.5), np.array(2.5), np.array(2.5, np.float32)],
                         ids=["float", "np_scalar", "0d_f64", "0d_f32"])
def test_cross_entropy_backward_scalar_grad_forms(rng, device, dtype, go):
    x, t = rand(rng, (3, 4), dtype), index_target(rng, (3, 4))
    gx, _ = F.cross_entropy_backward(go, x, t)
    (want, _) = F.cross_entropy_backward(1.0, x, t)
    assert_close(gx, host(want).astype(np.float64) * 2.5, dtype, "loss")


def test_cross_entropy_backward_design_example(rng, device):
    # DESIGN.md: grad_logits, _ = F.cross_entropy_backward(1.0, logits, y)
    logits, y = rand(rng, (8, 10), np.float32), index_target(rng, (8, 10))
    grad_logits, none = F.cross_entropy_backward(1.0, logits, y)
    assert none is None and grad_logits.shape == logits.shape
    # each row of softmax - onehot sums to zero
    np.testing.assert_allclose(host(grad_logits).sum(axis=1), 0, atol=1e-7)


def test_cross_entropy_backward_big(rng, device_big, dtype):
    # Long rows and several position tiles on the CPU; the float64 formula written out.
    for shape in ((64, 1000), (3, 7, 300)):
        x, t = rand(rng, shape, dtype, -5, 5), index_target(rng, shape)
        for red in REDUCTIONS:
            go = grad_out(rng, red, item_shape(shape), dtype)
            gx, _ = F.cross_entropy_backward(go, x, t, red)
            y = R.softmax(x, 1)
            onehot = np.moveaxis(np.eye(shape[1])[t], -1, 1)
            g = (np.expand_dims(go.astype(np.float64), 1) if red == "none"
                 else go / (t.size if red == "mean" else 1))
            assert_close(gx, g * (y - onehot), dtype, "loss", what=f"ce big {shape} {red}")


def test_cross_entropy_backward_large_logits(device, dtype):
    x = np.array([[1e30, -1e30, 0.0], [-1e30, 0.0, 1e30], [50.0, 49.0, -50.0]], dtype)
    t = np.array([0, 2, 1])
    gx, _ = F.cross_entropy_backward(1.0, x, t, "sum")
    ref = R.softmax(x, 1) - np.eye(3)[t]
    assert np.isfinite(host(gx)).all()
    assert_close(gx, ref, dtype, "loss")


def test_cross_entropy_backward_empty_batch(device, dtype):
    for red in REDUCTIONS:
        go = np.zeros((0,), dtype) if red == "none" else 1.0
        gx, _ = F.cross_entropy_backward(go, np.zeros((0, 4), dtype), np.zeros(0, np.int64), red)
        assert host(gx).shape == (0, 4)


@pytest.mark.parametrize("bad", [5, -1, -100])
def test_cross_entropy_backward_target_out_of_range_raises(device, bad):
    with pytest.raises(ValueError):
        F.cross_entropy_backward(1.0, np.zeros((3, 5)), np.array([0, bad, 1]))


@pytest.mark.parametrize("xs, ts", [((3, 5), (4,)), ((3, 5), (3, 1)), ((2, 5, 4), (2,))])
def test_cross_entropy_backward_shape_mismatch_raises(device, xs, ts):
    with pytest.raises(ValueError):
        F.cross_entropy_backward(1.0, np.zeros(xs), np.zeros(ts, np.int64))


def test_cross_entropy_backward_bad_arguments_raise(device):
    x, t = np.zeros((3, 5)), np.array([0, 1, 2])
    with pytest.raises(ValueError):
        F.cross_entropy_backward(1.0, x, t, reduction="avg")
    with pytest.raises(ValueError, match="0-d"):
        F.cross_entropy_backward(np.ones(3), x, t)  # a reduced loss takes a scalar gradient
    with pytest.raises(TypeError):
        F.cross_entropy_backward("1", x, t)
    with pytest.raises(ValueError, match="grad_output"):
        F.cross_entropy_backward(np.ones(4), x, t, reduction="none")
    with pytest.raises(TypeError):
        F.cross_entropy_backward(np.ones(3, np.float32), x, t, reduction="none")
    with pytest.raises(TypeError):
        F.cross_entropy_backward(1.0, np.zeros((3, 2)), np.array([True, False, True]))
    with pytest.raises(ValueError):
        F.cross_entropy_backward(1.0, x, np.zeros((3, 4)))  # probabilities of another shape


# ---------------------------------------------------------------------------------------------
# mse_loss
# ---------------------------------------------------------------------------------------------

MSE_SHAPES = [(3, 4, 5), (7,), (1,), (2, 1, 3, 1), ()]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", MSE_SHAPES, ids=[str(s) for s in MSE_SHAPES])
def test_mse_loss_backward(rng, device, dtype, shape, reduction):
    x, t = rand(rng, shape, dtype, -3, 3), rand(rng, shape, dtype, -3, 3)
    go = grad_out(rng, reduction, shape, dtype)
    gx, gt = call_unchanged(F.mse_loss_backward, go, x, t, reduction)
    assert type(gx) is np.ndarray and type(gt) is np.ndarray
    f = weighted(R.mse_loss, go, reduction)
    assert_grad_close(gx, R.numerical_grad(f, (x, t), 0), dtype, what="grad_input")
    assert_grad_close(gt, R.numerical_grad(f, (x, t), 1), dtype, what="grad_target")


def test_mse_loss_backward_big(rng, device_big, dtype):
    x, t = rand(rng, (7, 33, 101), dtype), rand(rng, (7, 33, 101), dtype)
    for red in REDUCTIONS:
        go = grad_out(rng, red, x.shape, dtype)
        gx, gt = F.mse_loss_backward(go, x, t, red)
        g = go.astype(np.float64) if red == "none" else go / (x.size if red == "mean" else 1)
        ref = 2 * (x.astype(np.float64) - t) * g
        assert_close(gx, ref, dtype, "loss", what=f"mse big {red}")
        assert_close(gt, -ref, dtype, "loss", what=f"mse big {red}")


def test_mse_loss_backward_empty(device, dtype):
    x = np.zeros((0, 3), dtype)
    for red in REDUCTIONS:
        gx, gt = F.mse_loss_backward(x if red == "none" else 1.0, x, x, red)
        assert host(gx).shape == (0, 3) and host(gt).shape == (0, 3)


def test_mse_loss_backward_bad_arguments_raise(device):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError):
        F.mse_loss_backward(1.0, x, np.zeros((3, 2)))
    with pytest.raises(TypeError):
        F.mse_loss_backward(1.0, x.astype(np.float32), x)
    with pytest.raises(ValueError):
        F.mse_loss_backward(1.0, x, x, reduction="avg")
    with pytest.raises(ValueError, match="grad_output"):
        F.mse_loss_backward(np.zeros(3), x, x, reduction="none")
    with pytest.raises(ValueError, match="0-d"):
        F.mse_loss_backward(np.zeros(3), x, x)


# ---------------------------------------------------------------------------------------------
# PyTorch autograd (optional oracle)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(6, 5), (2, 4, 3), (5,)], ids=["nc", "k_dim", "unbatched"])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_cross_entropy_backward_torch(rng, device_available, dtype, shape, reduction, kind):
    torch = pytest.importorskip("torch")
    x = rand(rng, shape, dtype, -4, 4)
    t = index_target(rng, shape) if kind == "index" else prob_target(rng, shape, dtype)
    go = grad_out(rng, reduction, item_shape(shape), dtype)
    gx, gt = F.cross_entropy_backward(go, x, t, reduction)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tt = (torch.tensor(t) if kind == "index"
          else torch.tensor(t, dtype=torch.float64, requires_grad=True))
    loss = torch.nn.functional.cross_entropy(tx, tt, reduction=reduction)
    loss.backward(torch.tensor(go, dtype=torch.float64))
    assert_close(gx, tx.grad.numpy(), dtype, "loss", what="grad_input vs torch")
    if kind == "index":
        assert gt is None
    else:
        assert_close(gt, tt.grad.numpy(), dtype, "loss", what="grad_target vs torch")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss_backward_torch(rng, device_available, dtype, reduction):
    torch = pytest.importorskip("torch")
    x, t = rand(rng, (3, 4, 5), dtype), rand(rng, (3, 4, 5), dtype)
    go = grad_out(rng, reduction, x.shape, dtype)
    gx, gt = F.mse_loss_backward(go, x, t, reduction)
    tx, tt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, t))
    torch.nn.functional.mse_loss(tx, tt, reduction=reduction).backward(
        torch.tensor(go, dtype=torch.float64))
    assert_close(gx, tx.grad.numpy(), dtype, "loss", what="grad_input vs torch")
    assert_close(gt, tt.grad.numpy(), dtype, "loss", what="grad_target vs torch")


# ---------------------------------------------------------------------------------------------
# CPU against CUDA, device arrays in and out
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def cuda_device():
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    with nc.use_device("cuda"):
        yield "cuda"


def device_go(go):
    return on("cuda", go) if isinstance(go, np.ndarray) else go


# No unbatched case here: nc.to_device turns a 0-d array into shape (1,) (np.ascontiguousarray in
# numbaconv._cuda.to_device); unbatched inputs run on CUDA in the host-array tests above.
@pytest.mark.cuda_only
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(6, 5), (2, 4, 3), (1, 3, 2, 2)], ids=["nc", "k_dim", "k_dim_2"])
@pytest.mark.parametrize("kind", ["index", "index32", "prob"])
def test_cross_entropy_backward_cpu_vs_cuda(rng, cuda_device, dtype, shape, reduction, kind):
    x = rand(rng, shape, dtype, -4, 4)
    t = (prob_target(rng, shape, dtype) if kind == "prob"
         else index_target(rng, shape, np.int32 if kind == "index32" else np.int64))
    go = grad_out(rng, reduction, item_shape(shape), dtype)
    with nc.use_device("cpu"):
        want = F.cross_entropy_backward(go, x, t, reduction)
    got = F.cross_entropy_backward(device_go(go), on("cuda", x), on("cuda", t), reduction)
    for g, c in zip(got, want):
        if c is None:
            assert g is None
            continue
        assert is_device_array(g)
        assert_close(g, c.astype(np.float64), dtype, "parity", what="cross_entropy_backward")


@pytest.mark.cuda_only
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss_backward_cpu_vs_cuda(rng, cuda_device, dtype, reduction):
    x, t = rand(rng, (3, 4, 5), dtype), rand(rng, (3, 4, 5), dtype)
    go = grad_out(rng, reduction, x.shape, dtype)
    with nc.use_device("cpu"):
        want = F.mse_loss_backward(go, x, t, reduction)
    got = F.mse_loss_backward(device_go(go), on("cuda", x), on("cuda", t), reduction)
    for g, c in zip(got, want):
        assert is_device_array(g)
        assert_close(g, c.astype(np.float64), dtype, "parity", what="mse_loss_backward")


@pytest.mark.cuda_only
def test_cross_entropy_backward_device_scalar_grad(rng, cuda_device, dtype):
    # The 0-d loss a device call returns can be fed back as grad_output.
    x, t = on("cuda", rand(rng, (4, 3), dtype)), on("cuda", index_target(rng, (4, 3)))
    loss = F.cross_entropy(x, t)
    gx, _ = F.cross_entropy_backward(loss, x, t)
    want, _ = F.cross_entropy_backward(float(host(loss)), x, t)
    assert np.array_equal(host(gx), host(want))
