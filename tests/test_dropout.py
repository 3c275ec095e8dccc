"""dropout and dropout_backward: the mask's statistics and reproducibility, torch's edge cases
(p = 0, p = 1, eval mode, NaN), central differences with the mask held fixed, CPU against
CUDA."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import (SIM_FP_WARNINGS, assert_close, cuda_skip_reason, host, is_device_array, on,
                      rand)
from gradcheck import assert_grad_close

F = nc.functional


def masked(x, mask, p):
    """The float64 result torch gives for this mask: x * mask / (1 - p), x * 0 for p = 1."""
    scale = 0.0 if p == 1 else 1 / (1 - p)
    with np.errstate(invalid="ignore"):
        return x.astype(np.float64) * np.where(mask, scale, 0.0)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(4, 3, 5), (37,)], ids=["3d", "1d"])
def test_dropout(rng, device, dtype, p, shape):
    x = rand(rng, shape, dtype)
    x0 = x.copy()
    out, mask = F.dropout(x, p, return_mask=True)
    assert np.array_equal(x, x0)
    assert type(out) is np.ndarray and type(mask) is np.ndarray
    assert mask.dtype == np.bool_ and mask.shape == shape
    # Exactly the float64 value rounded once, as torch's x * (1 / (1 - p)) in the input dtype.
    want = (x * dtype(1 / (1 - p))) * mask
    assert np.array_equal(host(out), want)


def test_dropout_mask_statistics(device_big):
    x = np.ones(200000, np.float32)
    for p in (0.1, 0.5, 0.75):
        out, mask = F.dropout(x, p, return_mask=True)
        # 200000 Bernoulli draws: the kept fraction is within 5 standard deviations of 1 - p.
        assert abs(mask.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / x.size)
        assert np.array_equal(np.unique(host(out)), np.float32([0, 1 / (1 - p)]))


def test_dropout_is_repeatable_with_numpy_seed(device, dtype):
    x = np.ones((3, 50), dtype)
    np.random.seed(1234)
    a, ma = F.dropout(x, 0.4, return_mask=True)
    b, mb = F.dropout(x, 0.4, return_mask=True)
    np.random.seed(1234)
    c, mc = F.dropout(x, 0.4, return_mask=True)
    assert np.array_equal(ma, mc) and np.array_equal(host(a), host(c))
    assert not np.array_equal(ma, mb)


def test_dropout_identity_cases_return_the_input(device, dtype):
    x = rand(np.random.default_rng(0), (3, 4), dtype)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    out, mask = F.dropout(x, 0.0, return_mask=True)
    assert out is x and mask is None
    d = on(device, x)
    assert F.dropout(d, 0.7, False) is d


@SIM_FP_WARNINGS
def test_dropout_p1_and_nonfinite(device, dtype):
    # torch: p = 1 gives x * 0 (NaN for NaN and Inf), and a dropped NaN or Inf is NaN.
    x = np.array([1.0, -2.0, np.nan, np.inf, -np.inf, 0.0], dtype)
    out, mask = F.dropout(x, 1.0, return_mask=True)
    assert not mask.any()
    assert_close(out, masked(x, mask, 1.0), dtype, "exact")
    assert np.signbit(host(out)[1])
    out, mask = F.dropout(np.repeat(x, 50), 0.5, return_mask=True)
    assert_close(out, masked(np.repeat(x, 50), mask, 0.5), dtype, "exact")


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5", True])
def test_dropout_invalid_p_raises(device, p):
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        F.dropout(np.zeros(3), p)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        F.dropout_backward(np.zeros(3), np.zeros(3), p, mask=np.ones(3, bool))


def test_dropout_other_errors(device):
    with pytest.raises(ValueError, match="inplace"):
        F.dropout(np.zeros(3), 0.5, True, True)
    with pytest.raises(TypeError):
        F.dropout(np.zeros(3, np.int32), 0.5)
    with pytest.raises(TypeError):
        F.dropout([1.0, 2.0], 0.5)


def test_dropout_empty(device, dtype):
    out, mask = F.dropout(np.zeros((0, 4), dtype), 0.5, return_mask=True)
    assert host(out).shape == (0, 4) and host(mask).shape == (0, 4)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.3, 0.5, 1.0])
def test_dropout_backward(rng, device, dtype, p):
    x, go = rand(rng, (3, 4, 5), dtype), rand(rng, (3, 4, 5), dtype)
    _, mask = F.dropout(x, p, return_mask=True)
    before = [a.copy() for a in (x, go, mask)]
    grads = F.dropout_backward(go, x, p, mask=mask)
    assert all(np.array_equal(a, b) for a, b in zip((x, go, mask), before))
    assert isinstance(grads, tuple) and len(grads) == 1 and type(grads[0]) is np.ndarray
    num = R.numerical_grad(lambda v: go * masked(v, mask, p), (x,), 0)
    assert_grad_close(grads[0], num, dtype, what=f"dropout_backward[{device}]")


def test_dropout_backward_identity_cases(device, dtype):
    x = np.ones((2, 3), dtype)
    go = np.full((2, 3), 2.0, dtype)
    assert F.dropout_backward(go, x, 0.5, training=False)[0] is go
    assert F.dropout_backward(go, x, 0.0)[0] is go


def test_dropout_backward_device_arrays(rng, device, dtype):
    x, go = rand(rng, (5, 7), dtype), rand(rng, (5, 7), dtype)
    dx = on(device, x)
    out, mask = F.dropout(dx, 0.25, return_mask=True)
    (g,) = F.dropout_backward(on(device, go), dx, 0.25, mask=mask)
    if device == "cuda":
        assert is_device_array(out) and is_device_array(mask) and is_device_array(g)
    m = host(mask)
    assert_close(out, masked(x, m, 0.25), dtype, "elementwise")
    assert_close(g, masked(go, m, 0.25), dtype, "elementwise")


def test_dropout_backward_errors(device):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="mask"):
        F.dropout_backward(x, x, 0.5)
    with pytest.raises(TypeError, match="bool"):
        F.dropout_backward(x, x, 0.5, mask=np.ones((2, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        F.dropout_backward(x, x, 0.5, mask=np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="grad_output"):
        F.dropout_backward(np.zeros((3, 2)), x, 0.5, mask=np.ones((2, 3), bool))
    with pytest.raises(TypeError):
        F.dropout_backward(x.astype(np.float32), x, 0.5, mask=np.ones((2, 3), bool))


# ---------------------------------------------------------------------------------------------
# CPU against CUDA: one seed gives one mask on both devices
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def cuda_device():
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    with nc.use_device("cuda"):
        yield "cuda"


@pytest.mark.cuda_only
def test_dropout_cpu_vs_cuda(rng, cuda_device, dtype):
    x, go = rand(rng, (4, 33), dtype), rand(rng, (4, 33), dtype)
    with nc.use_device("cpu"):
        np.random.seed(7)
        want, wmask = F.dropout(x, 0.3, return_mask=True)
        (wg,) = F.dropout_backward(go, x, 0.3, mask=wmask)
    np.random.seed(7)
    got, mask = F.dropout(on("cuda", x), 0.3, return_mask=True)
    assert is_device_array(got) and np.array_equal(host(mask), wmask)
    (g,) = F.dropout_backward(on("cuda", go), on("cuda", x), 0.3, mask=mask)
    assert_close(got, want.astype(np.float64), dtype, "exact", what="dropout cuda")
    assert_close(g, wg.astype(np.float64), dtype, "exact", what="dropout_backward cuda")
