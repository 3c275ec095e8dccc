"""batch_norm (inference, running statistics) against the float64 reference."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import SIM_FP_WARNINGS, assert_close, call_unchanged, check_op, host, on, rand

F = nc.functional

SHAPES = [(4, 3), (2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 2, 3), (3, 1, 4, 4)]


def params(rng, c, dtype):
    mean = rand(rng, (c,), dtype)
    var = rand(rng, (c,), dtype, 0.05, 3.0)
    weight = rand(rng, (c,), dtype, 0.5, 2.0)
    bias = rand(rng, (c,), dtype)
    return mean, var, weight, bias


@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_batch_norm(rng, device, dtype, shape, affine):
    x = rand(rng, shape, dtype, -3, 3)
    mean, var, weight, bias = params(rng, shape[1], dtype)
    weight = weight if affine in ("both", "weight") else None
    bias = bias if affine in ("both", "bias") else None
    check_op("batch_norm", (x, mean, var, weight, bias), {}, dtype, "norm", device)


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.5])
def test_batch_norm_eps(rng, device, dtype, eps):
    x = rand(rng, (2, 3, 4), dtype)
    mean, var, weight, bias = params(rng, 3, dtype)
    var[0] = 0.0  # only eps keeps this channel finite
    check_op("batch_norm", (x, mean, var, weight, bias), dict(eps=eps), dtype, "norm", device)


@SIM_FP_WARNINGS
def test_batch_norm_eps_zero(rng, device, dtype):
    # torch allows eps=0 in eval mode: a zero-variance channel divides by zero (inf / NaN, not
    # the ZeroDivisionError that numbaconv's kernel raised), the others are exact.
    x = rand(rng, (2, 3, 4), dtype)
    mean, var, weight, bias = params(rng, 3, dtype)
    var[0] = 0.0
    out = host(call_unchanged(F.batch_norm, on(device, x), on(device, mean), on(device, var),
                              on(device, weight), on(device, bias), eps=0))
    assert not np.isfinite(out[:, 0]).any()
    assert_close(out[:, 1:], R.batch_norm(x, mean, var, weight, bias, eps=0)[:, 1:], dtype,
                 "norm", what=f"batch_norm eps=0 [{device}]")
    # Batch statistics can have zero variance: torch refuses eps=0 there, up front.
    with pytest.raises(ValueError, match="eps must be positive when training"):
        F.batch_norm(x, mean, var, training=True, eps=0)
    with pytest.raises(ValueError, match="eps must be positive when training"):
        F.batch_norm_backward(x, x, mean, var, training=True, eps=0.0)
    with pytest.raises(ValueError, match="eps must be a non-negative number"):
        F.batch_norm(x, mean, var, eps=-1e-5)


def test_batch_norm_keywords(rng, device, dtype):
    x = rand(rng, (2, 3, 2, 2), dtype)
    mean, var, weight, bias = params(rng, 3, dtype)
    check_op("batch_norm", (x,), dict(running_mean=mean, running_var=var, weight=weight, bias=bias,
                                      training=False, momentum=0.3, eps=1e-4),
             dtype, "norm", device)


def test_batch_norm_big(rng, device_big, dtype):
    device = device_big  # realistic shapes: CPU and real GPUs
    x = rand(rng, (5, 37, 13, 11), dtype, -3, 3)
    check_op("batch_norm", (x,) + params(rng, 37, dtype), {}, dtype, "norm", device)


def test_batch_norm_empty_batch(rng, device, dtype):
    x = np.zeros((0, 3, 4, 4), dtype)
    check_op("batch_norm", (x,) + params(rng, 3, dtype), {}, dtype, "norm", device)


def test_batch_norm_training_momentum_none_raises(rng, device):
    # Training mode itself is tested in test_norm_backward.py; the cumulative average
    # (momentum=None) needs the layer's batch count.
    x = rand(rng, (2, 3, 4), np.float64)
    with pytest.raises(TypeError, match="momentum"):
        F.batch_norm(x, np.zeros(3), np.ones(3), training=True, momentum=None)


@pytest.mark.parametrize("bad", ["running_mean", "running_var", "weight", "bias"])
def test_batch_norm_channel_mismatch_raises(device, bad):
    args = dict(running_mean=np.zeros(3), running_var=np.ones(3), weight=np.ones(3),
                bias=np.zeros(3))
    args[bad] = np.ones(4)
    with pytest.raises(ValueError):
        F.batch_norm(np.zeros((2, 3, 4)), **args)


def test_batch_norm_1d_input_raises(device):
    with pytest.raises(ValueError):
        F.batch_norm(np.zeros(3), np.zeros(3), np.ones(3))


def test_batch_norm_dtype_mismatch_raises(device):
    with pytest.raises(TypeError):
        F.batch_norm(np.zeros((2, 3), np.float32), np.zeros(3, np.float64), np.ones(3, np.float32))
