"""Shared fixtures and helpers: devices, dtypes, tolerances and the compare helper.

Environment variables
---------------------
NUMBACONV_TEST_DEVICES       comma list of devices to run ('cpu,cuda' by default).
NUMBACONV_TEST_REQUIRE_CUDA  '1': CUDA being unavailable fails the session instead of skipping.
NUMBACONV_TEST_REQUIRE_PTX   '1': missing numba-cuda / NVVM fails test_ptx instead of skipping.
NUMBA_ENABLE_CUDASIM         '1': CUDA tests run in numba's simulator; tests then use small shapes.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import _cuda

SIM = _cuda.simulator_enabled()
REQUIRE_CUDA = os.environ.get("NUMBACONV_TEST_REQUIRE_CUDA", "0") == "1"
_DEVICES_ENV = os.environ.get("NUMBACONV_TEST_DEVICES", "cpu,cuda")
DEVICES = [d.strip().lower() for d in _DEVICES_ENV.split(",") if d.strip()]
DTYPES = (np.float32, np.float64)

# ---------------------------------------------------------------------------------------------
# Tolerances, per op family and dtype: (rtol, atol). A value passes when
#     |got - ref| <= rtol * |ref| + atol * scale
# elementwise, where ``scale`` is max(1, |ref|) unless the test passes a better one: conv and
# linear pass the sum of |products| of their reduction (conv(|x|, |w|) + |b|), the quantity a
# float sum's rounding error is proportional to. float32 numbers allow for
# reassociated / fused reductions of a few thousand terms (eps32 = 6e-8); float64 ones for the same
# in double precision. "exact" ops select or copy input values (max pooling, relu, ...).
# ---------------------------------------------------------------------------------------------
TOLERANCES = {
    "exact": {np.float32: (0.0, 0.0), np.float64: (0.0, 0.0)},
    # exp / tanh / erf in the input's precision: a few ulp, plus absolute slack for the
    # cancellation in gelu's (1 + erf(x)) and silu at large negative x.
    "elementwise": {np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-14)},
    "conv": {np.float32: (1e-5, 1e-5), np.float64: (1e-11, 1e-12)},
    "linear": {np.float32: (1e-5, 1e-5), np.float64: (1e-11, 1e-12)},
    "pool": {np.float32: (1e-6, 1e-6), np.float64: (1e-13, 1e-14)},  # averages of a few values
    "softmax": {np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-14)},
    # (x - mean) / sqrt(var + eps) cancels: the error is eps * |x| / sqrt(var), not eps * |y|.
    "norm": {np.float32: (1e-5, 1e-5), np.float64: (1e-12, 1e-13)},
    "loss": {np.float32: (1e-5, 1e-6), np.float64: (1e-11, 1e-13)},
    # CPU against CUDA: both round, in different orders.
    "parity": {np.float32: (1e-5, 1e-5), np.float64: (1e-11, 1e-12)},
    # float16 on CUDA (inference ops, any family), against float64 on the same float16 inputs:
    # computed in float32, rounded to float16 once (<= u16 = 2**-11 = 4.9e-4 relative), so
    # rtol 1e-3 ~ 2 u16; atol 1e-4 x scale covers the float32 sums (K * 6e-8 for K up to ~1600
    # terms) and float32 exp/tanh/erf. See tests/test_half.py.
    "half": {np.float16: (1e-3, 1e-4)},
}


# The CUDA simulator executes kernels as NumPy scalar arithmetic, which warns on IEEE overflow and
# invalid operations (inf * 0) that a GPU performs silently; tests that feed Inf/NaN on purpose
# carry this mark so that pyproject's "warnings are errors" does not turn them into failures.
SIM_FP_WARNINGS = pytest.mark.filterwarnings("ignore:.*encountered in scalar:RuntimeWarning")


def tol(family, dtype):
    """(rtol, atol) for an op family and dtype, from :data:`TOLERANCES`."""
    return TOLERANCES[family][np.dtype(dtype).type]


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------

def pytest_configure(config):
    unknown = [d for d in DEVICES if d not in ("cpu", "cuda")]
    if unknown or not DEVICES:
        raise pytest.UsageError(f"NUMBACONV_TEST_DEVICES={_DEVICES_ENV!r} must be a comma list "
                                "of 'cpu' and 'cuda'")
    if REQUIRE_CUDA and not nc.cuda_available():
        raise pytest.UsageError("NUMBACONV_TEST_REQUIRE_CUDA=1 but CUDA is unavailable: "
                                f"{_cuda.unavailable_reason()}")


def cuda_skip_reason():
    """None when CUDA tests can run, else why they are skipped (REQUIRE_CUDA fails earlier)."""
    if not nc.cuda_available():
        return f"CUDA unavailable: {_cuda.unavailable_reason()}"
    return None


def _device_params(sim_cuda=True, available_only=False):
    """Fixture params for DEVICES; ``sim_cuda=False`` leaves out CUDA under the simulator,
    ``available_only=True`` leaves it out where it cannot run (unless REQUIRE_CUDA)."""
    keep = [d for d in DEVICES if sim_cuda or not (SIM and d == "cuda")]
    if available_only:
        keep = [d for d in keep if d == "cpu" or REQUIRE_CUDA or nc.cuda_available()]
    return [pytest.param(d, marks=pytest.mark.cuda_only) if d == "cuda" else d for d in keep]


def _enter_device(name):
    if name == "cuda":
        reason = cuda_skip_reason()
        if reason is not None:
            if REQUIRE_CUDA:
                pytest.fail(reason)
            pytest.skip(reason)
    return nc.use_device(name)


@pytest.fixture(params=_device_params())
def device(request):
    """Each device in NUMBACONV_TEST_DEVICES, made current with ``nc.use_device`` for the test.

    'cuda' is skipped with the reason when CUDA cannot run (a failure under
    NUMBACONV_TEST_REQUIRE_CUDA=1).
    """
    with _enter_device(request.param):
        yield request.param


@pytest.fixture(params=_device_params(sim_cuda=False))
def device_big(request):
    """:func:`device` for tests with realistic shapes: no 'cuda' under the simulator, which runs
    every GPU thread in Python (the small-shape tests cover the simulator)."""
    with _enter_device(request.param):
        yield request.param


@pytest.fixture(params=_device_params(available_only=True))
def device_available(request):
    """The devices of NUMBACONV_TEST_DEVICES that can run here, without skips: for the optional
    PyTorch cross-check, whose CI pass treats any skip as a failure (CUDA itself is covered by
    the :func:`device` tests and test_parity)."""
    with _enter_device(request.param):
        yield request.param


@pytest.fixture(params=_device_params(sim_cuda=False, available_only=True))
def device_available_big(request):
    """:func:`device_available` for realistic shapes (no CUDA simulator)."""
    with _enter_device(request.param):
        yield request.param


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


def on(device, a):
    """``a`` (a NumPy array) on ``device``: NumPy for 'cpu', a device array for 'cuda'."""
    return nc.to_device(a, device)


def host(x):
    """``x`` as a NumPy array (copied from the device if needed)."""
    return nc.to_numpy(x)


def is_device_array(x):
    return _cuda.is_device_array(x)


# ---------------------------------------------------------------------------------------------
# Data and comparison
# ---------------------------------------------------------------------------------------------

def rand(rng, shape, dtype, low=-1.0, high=1.0):
    """Uniform random array of ``shape`` and ``dtype``."""
    return rng.uniform(low, high, size=shape).astype(dtype)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so every case is reproducible on its own."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(request.node.nodeid)) % (2 ** 32)
    return np.random.default_rng(seed)


def assert_close(got, ref, dtype, family, scale=None, what=""):
    """Check ``got`` against float64 ``ref``: shape, then dtype, then values.

    NaN must sit where ``ref`` has NaN and infinities must match exactly. ``scale`` (scalar or
    array broadcastable to ``ref``) sets the absolute tolerance's unit; see :data:`TOLERANCES`.
    """
    got = host(got)
    ref = np.asarray(ref)
    assert isinstance(got, np.ndarray), f"{what}: result is {type(got).__name__}, not an array"
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    rtol, atol = tol(family, dtype)
    g = got.astype(np.float64)
    nan_ref, nan_got = np.isnan(ref), np.isnan(g)
    bad = np.flatnonzero(nan_ref != nan_got)
    assert bad.size == 0, (f"{what}: NaN mismatch at flat index {bad[0]}: got {g.flat[bad[0]]}, "
                           f"expected {ref.flat[bad[0]]}")
    inf_ref = np.isinf(ref)
    bad = np.flatnonzero((inf_ref | np.isinf(g)) & ~nan_ref & (g != ref))
    assert bad.size == 0, (f"{what}: Inf mismatch at flat index {bad[0]}: got {g.flat[bad[0]]}, "
                           f"expected {ref.flat[bad[0]]}")
    finite = np.isfinite(ref)
    if scale is None:
        scale = np.maximum(np.abs(np.where(finite, ref, 0.0)), 1.0)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), ref.shape)
    with np.errstate(invalid="ignore"):
        err = np.where(finite, np.abs(g - ref), 0.0)
    limit = rtol * np.abs(np.where(finite, ref, 0.0)) + atol * scale
    over = np.flatnonzero(err > limit)
    if over.size:
        i = over[np.argmax((err - limit).flat[over])]
        idx = np.unravel_index(i, ref.shape) if ref.ndim else ()
        raise AssertionError(
            f"{what}: {over.size} of {ref.size} values out of tolerance ({family}, "
            f"{np.dtype(dtype).name}: rtol={rtol}, atol={atol} x scale); worst at {idx}: "
            f"got {g.flat[i]!r}, expected {ref.flat[i]!r}, |err|={err.flat[i]:.3g} > "
            f"{limit.flat[i]:.3g}")


def call_unchanged(fn, *args, **kwargs):
    """Call ``fn`` and assert that no array argument was modified; return its result."""
    arrays = [a for a in list(args) + list(kwargs.values())
              if isinstance(a, np.ndarray) or is_device_array(a)]
    before = [host(a).copy() for a in arrays]
    out = fn(*args, **kwargs)
    for i, (a, b) in enumerate(zip(arrays, before)):
        after = host(a)
        assert after.dtype == b.dtype and after.shape == b.shape
        assert np.array_equal(after, b, equal_nan=True), \
            f"{fn.__name__} modified array argument {i}"
    return out


def check_op(name, args, kwargs, dtype, family, device=None, scale=None, ref_kwargs=None):
    """Run ``F.<name>(*args, **kwargs)`` and ``reference.<name>`` and compare them.

    Host (NumPy) arguments run on the current device and must come back as NumPy; pass device
    arrays to test the device path. Checks that the inputs were not modified. Returns the result
    as NumPy.
    """
    import reference

    fn = getattr(nc.functional, name)
    out = call_unchanged(fn, *args, **kwargs)
    host_args = [host(a) if (isinstance(a, np.ndarray) or is_device_array(a)) else a for a in args]
    ref = getattr(reference, name)(*host_args, **(kwargs if ref_kwargs is None else ref_kwargs))
    any_device = any(is_device_array(a) for a in args)
    if any_device:
        assert is_device_array(out), f"{name}: device inputs gave {type(out).__name__}"
    else:
        assert type(out) is np.ndarray, f"{name}: NumPy inputs gave {type(out).__name__}"
    assert_close(out, ref, dtype, family, scale=scale,
                 what=f"{name}[{device or nc.get_device()}, {np.dtype(dtype).name}]")
    return host(out)


# ---------------------------------------------------------------------------------------------
# Child processes at a forced SIMD width
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def run_at_width(tmp_path_factory):
    """``run(code, lanes, timeout)``: run ``python -c code`` with ``NUMBACONV_SIMD_WIDTH=lanes``
    and return the ``subprocess.CompletedProcess`` (text output captured).

    Compiling kernels is nearly all of such a child's time, so the children of one width share a
    kernel cache for the session: one folder per width, so width 8 never even looks at what
    width 1 compiled (``numbaconv._jitcache`` also keys its folder on the width), and per
    pytest-xdist worker (each has its own ``tmp_path_factory``), so one cache index never has
    two writers at once (numba issue #10128): a worker runs its children one at a time.
    """
    dirs = {}

    def run(code, lanes, timeout):
        if lanes not in dirs:
            dirs[lanes] = tmp_path_factory.mktemp(f"numba-cache-simd{lanes}-")
        env = dict(os.environ, NUMBACONV_SIMD_WIDTH=str(lanes), NUMBA_CACHE_DIR=str(dirs[lanes]))
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=timeout)

    return run
