"""The SIMD layer (numbaconv.cpu.simd) at every vector width this CPU can run.

The native width runs in this process. The narrower ones (8 = AVX2, 1 = scalar) run in a child
process with ``NUMBACONV_SIMD_WIDTH`` forced (conftest's ``run_at_width``) and check the SIMD ops
and the conv paths built on them against float64 NumPy.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit

from numbaconv.cpu import simd

HERE = os.path.dirname(os.path.abspath(__file__))


@njit(cache=False)
def _ops(x, y, out, n):
    a = simd.load(x, 1)
    b = simd.load1(y, 0)
    simd.store(out, 0, simd.fma(a, b, simd.splat(x, 2)))
    w = simd.width(x)
    simd.store_n(out, w, simd.maximum(simd.load_n(x, 0, n), simd.splat(x, 0.5)), n)
    return simd.hsum(simd.add(a, simd.mul(a, a))), w


def _check_ops(dtype):
    lanes = simd.lanes_of(np.dtype(dtype))
    x = np.linspace(-1, 2, 3 * lanes + 1).astype(dtype)
    x[2] = np.nan if lanes > 2 else x[2]
    y = np.array([3.0], dtype)
    for n in range(lanes + 1):
        out = np.full(3 * lanes, -7, dtype)
        total, width = _ops(x, y, out, n)
        assert width == lanes
        a = x[1:1 + lanes].astype(np.float64)
        np.testing.assert_allclose(out[:lanes], a * 3 + 2, rtol=1e-6)
        # Masked lanes: only the first n are loaded and stored; NaN propagates through maximum.
        np.testing.assert_array_equal(out[lanes:lanes + n], np.maximum(x[:n], dtype(0.5)))
        assert np.all(out[lanes + n:] == -7)
        np.testing.assert_allclose(total, np.sum(a + a * a), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simd_ops_native_width(dtype):
    _check_ops(dtype)


def test_lanes_follow_the_dtype():
    assert simd.lanes_of(np.dtype(np.float32)) == simd.LANES
    assert simd.lanes_of(np.dtype(np.float64)) == max(1, simd.LANES // 2)


def test_simd_rejects_bad_arrays():
    from numba.core.errors import TypingError

    @njit(cache=False)
    def load2d(a):
        return simd.load(a, 0)

    with pytest.raises(TypingError, match="1-D C-contiguous float array"):
        load2d(np.zeros((2, 16), np.float32))
    with pytest.raises(TypingError, match="1-D C-contiguous float array"):
        load2d(np.zeros(16, np.int64))


# What the child process checks: the ops, then every conv path (in place, workspace, gather,
# groups, strides, residual) against the float64 reference.
_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {here!r})
    import test_simd, reference as R
    import numbaconv as nc
    from numbaconv.cpu import simd
    assert simd.LANES == {lanes}, simd.LANES
    for dt in (np.float32, np.float64):
        test_simd._check_ops(dt)
    rng = np.random.default_rng(0)
    cases = [((2, 7, 5, 3), (19, 7, 1, 1), {{}}),
             ((1, 3, 9, 10), (17, 3, 3, 3), dict(padding=1)),
             ((1, 5, 9, 8), (9, 5, 3, 3), dict(stride=2, padding=1, dilation=(1, 2))),
             ((1, 2, 1, 1), (3, 2, 3, 3), dict(padding=1)),
             ((2, 4, 6, 6), (6, 2, 3, 3), dict(groups=2, padding=1))]
    for dt in (np.float32, np.float64):
        for xs, ws, kw in cases:
            x = rng.uniform(-1, 1, xs).astype(dt)
            w = rng.uniform(-1, 1, ws).astype(dt)
            b = rng.uniform(-1, 1, ws[0]).astype(dt)
            ref = R.conv2d(x, w, b, **kw)
            res = rng.uniform(-1, 1, ref.shape).astype(dt)
            got = nc.functional.conv2d(x, w, b, residual=res, activation="relu", **kw)
            want = np.maximum(ref + res, 0)
            scale = R.conv2d(np.abs(x), np.abs(w), np.abs(b), **kw) + np.abs(res)
            err = np.max(np.abs(got - want) / scale)
            assert err < (1e-5 if dt == np.float32 else 1e-12), (xs, ws, kw, dt, err)
    print("ok")
""")


@pytest.mark.parametrize("lanes", [w for w in (8, 1) if w < simd.host_lanes()])
def test_forced_width(lanes, run_at_width):
    proc = run_at_width(_CHILD.format(here=HERE, lanes=lanes), lanes, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.parametrize("value, message", [("12", "not a supported width"),
                                            ("wide", "not a supported width")])
def test_bad_width_is_a_clear_error(value, message):
    env = dict(os.environ, NUMBACONV_SIMD_WIDTH=value)
    proc = subprocess.run([sys.executable, "-c", "import numbaconv.cpu"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
