"""cross_entropy and mse_loss against the float64 reference."""

import numpy as np
import pytest

import numbaconv as nc
from conftest import check_op, host, rand

F = nc.functional

REDUCTIONS = ["mean", "sum", "none"]
# (id, input shape): class dim is 1, or 0 for an unbatched input
CE_SHAPES = [
    ("nc", (6, 5)),
    ("batch_1", (1, 7)),
    ("one_class", (3, 1)),
    ("k_dim", (2, 4, 3)),
    ("k_dim_2", (2, 3, 2, 3)),
    ("unbatched", (5,)),
]


def index_target(rng, shape, itype=np.int64):
    cdim = 1 if len(shape) > 1 else 0
    tshape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    return rng.integers(0, shape[cdim], size=tshape).astype(itype)


def prob_target(rng, shape, dtype):
    cdim = 1 if len(shape) > 1 else 0
    p = rng.uniform(0, 1, shape)
    return (p / p.sum(axis=cdim, keepdims=True)).astype(dtype)


def check_reduced(out, dtype, reduction, shape):
    if reduction != "none":
        assert out.shape == () and out.dtype == np.dtype(dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [c[1] for c in CE_SHAPES], ids=[c[0] for c in CE_SHAPES])
def test_cross_entropy_index(rng, device, dtype, shape, reduction):
    x = rand(rng, shape, dtype, -4, 4)
    out = check_op("cross_entropy", (x, index_target(rng, shape)), dict(reduction=reduction),
                   dtype, "loss", device)
    check_reduced(out, dtype, reduction, shape)


@pytest.mark.parametrize("itype", [np.int32, np.int16, np.uint8])
def test_cross_entropy_index_dtypes(rng, device, dtype, itype):
    x = rand(rng, (4, 6), dtype)
    check_op("cross_entropy", (x, index_target(rng, (4, 6), itype)), {}, dtype, "loss", device)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [c[1] for c in CE_SHAPES], ids=[c[0] for c in CE_SHAPES])
def test_cross_entropy_prob(rng, device, dtype, shape, reduction):
    x = rand(rng, shape, dtype, -4, 4)
    out = check_op("cross_entropy", (x, prob_target(rng, shape, dtype)), dict(reduction=reduction),
                   dtype, "loss", device)
    check_reduced(out, dtype, reduction, shape)


def test_cross_entropy_large_logits(device, dtype):
    # log-softmax inside must be stable: logits of 1e30 give finite losses.
    x = np.array([[1e30, -1e30, 0.0], [-1e30, 0.0, 1e30], [50.0, 49.0, -50.0]], dtype=dtype)
    t = np.array([0, 2, 1])
    out = check_op("cross_entropy", (x, t), dict(reduction="none"), dtype, "loss", device)
    assert np.isfinite(out).all()


def test_cross_entropy_big(rng, device_big, dtype):
    device = device_big  # realistic shapes: CPU and real GPUs
    x = rand(rng, (64, 1000), dtype, -5, 5)
    for red in REDUCTIONS:
        check_op("cross_entropy", (x, index_target(rng, x.shape)), dict(reduction=red), dtype,
                 "loss", device)
        check_op("cross_entropy", (x, prob_target(rng, x.shape, dtype)), dict(reduction=red), dtype,
                 "loss", device)
    x = rand(rng, (3, 21, 17, 19), dtype, -5, 5)
    check_op("cross_entropy", (x, index_target(rng, x.shape)), {}, dtype, "loss", device)


@pytest.mark.parametrize("bad", [5, -1, -100, 1000])
def test_cross_entropy_target_out_of_range_raises(device, bad):
    t = np.array([0, bad, 1])
    with pytest.raises(ValueError):
        F.cross_entropy(np.zeros((3, 5)), t)


@pytest.mark.parametrize("xs, ts", [((3, 5), (4,)), ((3, 5), (3, 1)), ((2, 5, 4), (2,)),
                                    ((2, 5, 4), (2, 5))])
def test_cross_entropy_index_shape_mismatch_raises(device, xs, ts):
    with pytest.raises(ValueError):
        F.cross_entropy(np.zeros(xs), np.zeros(ts, np.int64))


def test_cross_entropy_prob_shape_mismatch_raises(device):
    with pytest.raises(ValueError):
        F.cross_entropy(np.zeros((3, 5)), np.zeros((3, 4)))


@pytest.mark.parametrize("op", ["cross_entropy", "cross_entropy_backward"])
@pytest.mark.parametrize("target_dtype", [np.float64, np.float32])
def test_cross_entropy_float_labels_say_what_the_target_must_be(device, op, target_dtype):
    # float64 labels with float32 logits said "dtypes must match"; float32 labels then failed
    # on the shape. Both must name both forms of target.
    x = np.zeros((3, 5), np.float32)
    labels = np.array([0, 4, 2], target_dtype)
    args = (1.0, x, labels) if op.endswith("backward") else (x, labels)
    with pytest.raises(ValueError, match=r"integer array of shape \(3,\) \(e\.g\. target\.astype"
                                         r"\(np\.int64\)\), or class probabilities of the "
                                         r"input's shape \(3, 5\) and dtype float32"):
        getattr(F, op)(*args)
    with pytest.raises(TypeError, match="class probabilities of the input's shape"):
        getattr(F, op)(*args[:-1], np.full((3, 5), 0.2, np.float64))


def test_cross_entropy_bool_target_raises(device):
    with pytest.raises(TypeError):
        F.cross_entropy(np.zeros((3, 2)), np.array([True, False, True]))


@pytest.mark.parametrize("op, target", [("cross_entropy", np.array([0, 1])),
                                        ("mse_loss", np.zeros((2, 3)))])
def test_bad_reduction_raises(device, op, target):
    with pytest.raises(ValueError):
        getattr(F, op)(np.zeros((2, 3)), target, reduction="avg")


def test_cross_entropy_empty_batch(device, dtype):
    x, t = np.zeros((0, 4), dtype), np.zeros((0,), np.int64)
    for red in REDUCTIONS:
        out = check_op("cross_entropy", (x, t), dict(reduction=red), dtype, "loss", device)
        if red == "mean":
            assert np.isnan(out)  # torch: mean over nothing is NaN
        elif red == "sum":
            assert out == 0


# ---------------------------------------------------------------------------------------------
# mse_loss
# ---------------------------------------------------------------------------------------------

MSE_SHAPES = [(3, 4, 5), (7,), (1,), (2, 1, 3, 1), ()]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", MSE_SHAPES, ids=[str(s) for s in MSE_SHAPES])
def test_mse_loss(rng, device, dtype, shape, reduction):
    x, t = rand(rng, shape, dtype, -3, 3), rand(rng, shape, dtype, -3, 3)
    out = check_op("mse_loss", (x, t), dict(reduction=reduction), dtype, "loss", device)
    check_reduced(out, dtype, reduction, shape)


def test_mse_loss_big(rng, device_big, dtype):
    device = device_big  # realistic shapes: CPU and real GPUs
    x, t = rand(rng, (7, 33, 101), dtype), rand(rng, (7, 33, 101), dtype)
    for red in REDUCTIONS:
        check_op("mse_loss", (x, t), dict(reduction=red), dtype, "loss", device)


def test_mse_loss_known_value(device, dtype):
    x = np.array([1.0, 2.0, 4.0], dtype)
    t = np.array([1.0, 0.0, 1.0], dtype)
    assert host(F.mse_loss(x, t)) == pytest.approx(13.0 / 3, rel=1e-6)
    assert host(F.mse_loss(x, t, reduction="sum")) == pytest.approx(13.0, rel=1e-6)


def test_mse_loss_empty(device, dtype):
    x = np.zeros((0, 3), dtype)
    assert np.isnan(host(F.mse_loss(x, x)))
    assert host(F.mse_loss(x, x, reduction="sum")) == 0
    assert host(F.mse_loss(x, x, reduction="none")).shape == (0, 3)


@pytest.mark.parametrize("ts", [(3, 4), (2, 1), (2, 3, 1)])
def test_mse_loss_shape_mismatch_raises(device, ts):
    with pytest.raises(ValueError):
        F.mse_loss(np.zeros((2, 3)), np.zeros(ts))


def test_mse_loss_dtype_mismatch_raises(device):
    with pytest.raises(TypeError):
        F.mse_loss(np.zeros(3, np.float32), np.zeros(3, np.float64))
