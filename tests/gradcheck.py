"""A backward op's gradients against float64 central differences (``reference.numerical_grad``).

Central differences with step 1e-6 carry an error of about 1e-10 x |f| (float64 rounding divided
by the step) plus step**2 x f''' (truncation), so float64 kernels are held to 1e-7 relative and
1e-8 absolute (x scale) here, not to the forward ops' 1e-12. float32 kernels keep the float32
tolerances of the forward ops: their own rounding dwarfs the difference quotient's.
"""

import numpy as np

from conftest import host

GRAD_TOL = {np.float32: (1e-5, 1e-5), np.float64: (1e-7, 1e-8)}


def assert_grad_close(got, ref, dtype, scale=None, what=""):
    """``got`` (a kernel's gradient) against ``ref`` (central differences, float64): shape, dtype,
    then ``|got - ref| <= rtol * |ref| + atol * scale`` with ``scale = max(1, |ref|)`` unless
    given (e.g. the sum of |products| a gradient element adds up)."""
    got = host(got)
    ref = np.asarray(ref, dtype=np.float64)
    assert isinstance(got, np.ndarray), f"{what}: result is {type(got).__name__}, not an array"
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    assert np.isfinite(got).all(), f"{what}: non-finite gradient"
    rtol, atol = GRAD_TOL[np.dtype(dtype).type]
    if scale is None:
        scale = np.maximum(np.abs(ref), 1.0)
    err = np.abs(got.astype(np.float64) - ref)
    limit = rtol * np.abs(ref) + atol * np.broadcast_to(np.asarray(scale, np.float64), ref.shape)
    over = np.flatnonzero(err > limit)
    if over.size:
        i = over[np.argmax((err - limit).flat[over])]
        raise AssertionError(
            f"{what}: {over.size} of {ref.size} gradient values out of tolerance "
            f"({np.dtype(dtype).name}: rtol={rtol}, atol={atol} x scale); worst at flat index "
            f"{i}: got {got.flat[i]!r}, expected {ref.flat[i]!r}, |err|={err.flat[i]:.3g} > "
            f"{limit.flat[i]:.3g}")
