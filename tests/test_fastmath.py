"""numbaconv.cpu.vecmath: float32 exp / tanh / erfc against float64 libm, special values, and
that a loop over them compiles to vector code."""

import math
import re

import numpy as np
import pytest
from numba import njit

from numbaconv.cpu import simd, vecmath
from numbaconv.cpu._common import FASTMATH  # the kernels' flags

FUNCS = {"exp": (vecmath.exp, np.exp), "tanh": (vecmath.tanh, np.tanh),
         "erfc": (vecmath.erfc, np.frompyfunc(math.erfc, 1, 1))}


def _loop(f):
    @njit(fastmath=FASTMATH, error_model="numpy")
    def run(out, x):
        for i in range(x.shape[0]):
            out[i] = f(x[i])

    return run


LOOPS = {name: _loop(f) for name, (f, _) in FUNCS.items()}


def apply(name, x):
    out = np.empty_like(x)
    LOOPS[name](out, x)
    return out


def exact(name, x):
    with np.errstate(over="ignore"):
        return np.asarray(FUNCS[name][1](x.astype(np.float64)), dtype=np.float64)


def sample():
    """About 2 million float32 values: an even spread over all bit patterns, plus every float32
    in [-4, 4] at a stride that keeps the sample small."""
    spread = np.arange(0, 2 ** 32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32)
    lo, hi = np.float32(0).view(np.uint32), np.float32(4).view(np.uint32)
    pos = np.arange(lo, hi, 1031, dtype=np.uint32).view(np.float32)
    x = np.concatenate([spread, pos, -pos])
    return x[np.isfinite(x)]


def ulps(got, ref):
    """|got - ref| in units in the last place of float32 at ``ref``'s binade."""
    _, e = np.frexp(ref)
    return np.abs(got.astype(np.float64) - ref) / np.ldexp(1.0, np.maximum(e - 24, -149))


def test_exp_accuracy():
    x = sample()
    x = x[(x >= -86.5) & (x <= 88.72)]
    err = ulps(apply("exp", x), exact("exp", x))
    assert err.max() <= 2.5, f"exp: {err.max():.2f} ulp at x={x[err.argmax()]!r}"


def test_tanh_accuracy():
    x = sample()
    got, ref = apply("tanh", x), exact("tanh", x)
    nonzero = ref != 0
    err = ulps(got[nonzero], ref[nonzero])
    assert err.max() <= 6, f"tanh: {err.max():.2f} ulp at x={x[nonzero][err.argmax()]!r}"
    assert np.all(np.abs(got) <= 1)


def test_erfc_accuracy():
    x = sample()
    got, ref = apply("erfc", x).astype(np.float64), exact("erfc", x)
    err = np.abs(got - ref)
    pos = x >= 0
    assert err[pos].max() <= 2.5e-7, f"erfc: abs error {err[pos].max():.3g}"
    assert (err[pos] * np.maximum(x[pos], 1)).max() <= 5e-7
    assert err[~pos].max() <= 3e-7, f"erfc(x < 0): abs error {err[~pos].max():.3g}"
    assert np.all((got >= 0) & (got <= 2))


SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)


@pytest.mark.parametrize("name, expected", [
    ("exp", [np.nan, np.inf, 0.0, 1.0, 1.0]),
    ("tanh", [np.nan, 1.0, -1.0, 0.0, -0.0]),
    ("erfc", [np.nan, 0.0, 2.0, 1.0, 1.0]),
])
def test_special_values(name, expected):
    got = apply(name, SPECIAL)
    np.testing.assert_array_equal(got, np.array(expected, np.float32))
    assert np.array_equal(np.signbit(got[3:]), np.signbit(np.array(expected[3:])))


def test_exp_range_ends():
    top = np.float32(88.72283172607421875)  # the largest float32 whose exp is finite
    x = np.array([top, np.nextafter(top, np.float32(np.inf)), 1e30, -86.5, -87.5, -1e30],
                 np.float32)
    got = apply("exp", x)
    assert np.isfinite(got[0]) and ulps(got[:1], exact("exp", x[:1]))[0] <= 2.5
    assert got[1] == np.inf and got[2] == np.inf
    assert got[3] > 0 and got[4] == 0 and got[5] == 0


def test_tanh_saturates_exactly():
    x = np.array([7.9840984, 9.0, 20.0, 1e30], np.float32)
    np.testing.assert_array_equal(apply("tanh", x), np.ones(4, np.float32))
    np.testing.assert_array_equal(apply("tanh", -x), -np.ones(4, np.float32))


@pytest.mark.parametrize("name", list(FUNCS))
def test_float64_calls_libm(name):
    x = np.array([-30.0, -2.5, -1e-8, 0.0, 0.3, 1.7, 5.0, 700.0])
    ref = [getattr(math, name)(v) if not (name == "exp" and v > 709) else math.inf for v in x]
    np.testing.assert_array_equal(apply(name, x), np.array(ref))


@pytest.mark.skipif(simd.host_lanes() < 8, reason="needs an AVX2 or AVX-512 CPU")
@pytest.mark.parametrize("name", list(FUNCS))
def test_loop_vectorises(name):
    # Packed single-precision arithmetic on ymm or zmm registers, and no libm call.
    apply(name, np.zeros(3, np.float32))
    loop = LOOPS[name]
    sig = next(s for s in loop.signatures if str(s[1].dtype) == "float32")
    asm = loop.inspect_asm(sig)
    assert re.search(r"\bv(fmadd|mul|add)\d*ps\s+%[yz]mm", asm), f"{name}: no vector arithmetic"
    assert not re.search(r"call\w*\s+\S*(exp|tanh|erfc)", asm)
