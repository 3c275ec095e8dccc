"""Every registered CUDA kernel compiles to PTX for sm_80 and sm_90, without a GPU; on sm_90 none
spills, and the tiled GEMM kernels keep their accumulators in registers (ptxas via nvJitLink).

The simulator runs kernels as Python and hides type errors; NVVM does not. Skipped under the
simulator, and when numba-cuda, NVVM or nvJitLink is missing unless NUMBACONV_TEST_REQUIRE_PTX=1
(CI), in which case those are failures.
"""

import fnmatch
import importlib.util
import os
import re

import pytest

from numbaconv import _cuda

REQUIRE_PTX = os.environ.get("NUMBACONV_TEST_REQUIRE_PTX", "0") == "1"
CCS = [(8, 0), (9, 0)]

pytestmark = pytest.mark.skipif(_cuda.simulator_enabled(),
                                reason="NUMBA_ENABLE_CUDASIM=1: the simulator cannot make PTX")


def _load():
    """Import the CUDA backend (which registers its kernels); return (registry, error)."""
    if importlib.util.find_spec("numba_cuda") is None:
        # Without the package, ``numba.cuda`` is numba's deprecated built-in CUDA target, which
        # numbaconv does not support (the cuda12 / cuda13 extras install numba-cuda).
        return [], "numba-cuda is not installed (pip install 'numbaconv[cuda13]')"
    try:
        import numbaconv.cuda  # noqa: F401  registers every kernel in _cuda.KERNELS
    except Exception as exc:  # numba-cuda missing or broken
        return [], f"numbaconv.cuda cannot be imported: {type(exc).__name__}: {exc}"
    return list(_cuda.KERNELS), None


KERNELS, IMPORT_ERROR = ([], None) if _cuda.simulator_enabled() else _load()


def unavailable(reason):
    if REQUIRE_PTX:
        pytest.fail(f"NUMBACONV_TEST_REQUIRE_PTX=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def compile_ptx():
    """numbaconv._cuda.compile_ptx, after checking that NVVM works (skip or fail otherwise).

    The shim's helper works without a GPU driver (numba-cuda otherwise asks the current GPU for
    its compute capability when a kernel calls a device function).
    """
    if IMPORT_ERROR:
        unavailable(IMPORT_ERROR)
    cuda = _cuda.cuda()

    def probe(x):
        i = cuda.grid(1)
        if i < x.shape[0]:
            x[i] = 2.0 * x[i]

    try:
        _cuda.compile_ptx(probe, "void(float32[::1])", (8, 0))
    except Exception as exc:  # NVVM library missing or too old
        unavailable(f"NVVM cannot compile PTX: {type(exc).__name__}: {exc}")
    return _cuda.compile_ptx


def test_registry_covers_every_launcher_module():
    if IMPORT_ERROR:
        unavailable(IMPORT_ERROR)
    import numbaconv.cuda as backend

    assert KERNELS, "no CUDA kernel registered in numbaconv._cuda.KERNELS"
    kernel_modules = {name.rsplit(".", 1)[0] for name, _, _ in KERNELS}
    launcher_modules = {getattr(backend, name).__module__ for name in backend.__all__}
    missing = sorted(launcher_modules - kernel_modules)
    assert not missing, f"launcher modules without a registered kernel: {missing}"
    for name, func, sigs in KERNELS:
        assert callable(func) and sigs, name
        assert len(set(sigs)) == len(sigs), f"{name}: duplicate signatures {sigs}"
    names = [name for name, _, _ in KERNELS]
    assert len(set(names)) == len(names), "a kernel is registered twice"


@pytest.mark.parametrize("cc", CCS, ids=[f"sm_{a}{b}" for a, b in CCS])
@pytest.mark.parametrize("name, func, sigs", KERNELS, ids=[k[0] for k in KERNELS])
def test_kernel_compiles_to_ptx(compile_ptx, name, func, sigs, cc):
    for sig in sigs:
        ptx = compile_ptx(func, sig, cc)
        assert f".target sm_{cc[0]}{cc[1]}" in ptx, f"{name} {sig}: PTX for another target"
        assert ".entry" in ptx, f"{name} {sig}: no kernel entry point in the PTX"


# ---- ptxas resource usage on sm_90 (nvJitLink), float32 ---------------------------------------
SM90 = (9, 0)
# The shared-memory tiled GEMM kernels: each thread's accumulator tile must live in registers, so
# ptxas must give them no stack frame (a local array it could not promote is a stack frame).
# fnmatch patterns; one that matches no registered kernel stays in the list and fails.
REGISTER_TILED = ["numbaconv.cuda.gemm._conv2d_gemm*"]  # conv2d and linear


def _register_tiled():
    names = [k[0] for k in KERNELS]
    return [m for p in REGISTER_TILED for m in (fnmatch.filter(names, p) or [p])]


def _float32_signature(sigs):
    # The signature whose first float type ({T}) is float32; a kernel without float arguments
    # has one signature.
    for sig in sigs:
        first = re.search(r"float(16|32|64)", sig)
        if first is None or first[0] == "float32":
            return sig
    return None


@pytest.fixture(scope="module")
def resources(compile_ptx):
    """``resources(name)``: _cuda.kernel_resources of registered kernel ``name`` for its float32
    signature on sm_90, compiled once per module (skip or fail when nvJitLink is missing)."""
    try:
        _cuda.nvjitlink_version()
    except RuntimeError as exc:
        unavailable(str(exc))
    registry = {name: (func, sigs) for name, func, sigs in KERNELS}
    cache = {}

    def get(name):
        if name not in cache:
            assert name in registry, f"no registered kernel matches {name} (renamed? update " \
                "REGISTER_TILED)"
            func, sigs = registry[name]
            sig = _float32_signature(sigs)
            assert sig, f"{name}: no float32 signature in {sigs}"
            cache[name] = _cuda.kernel_resources(func, sig, SM90)
        return cache[name]

    return get


@pytest.mark.parametrize("name", [k[0] for k in KERNELS])
def test_kernel_does_not_spill_on_sm90(resources, name):
    res = resources(name)
    assert res["spill_stores"] == 0 and res["spill_loads"] == 0, f"{name} spills on sm_90: {res}"


@pytest.mark.parametrize("name", _register_tiled())
def test_gemm_accumulators_in_registers_on_sm90(resources, name):
    res = resources(name)
    assert res["stack"] == 0, f"{name}: {res['stack']}-byte stack frame on sm_90 (accumulators " \
        f"not promoted to registers): {res}"


# ---- SASS of the GEMM kernels on sm_90 (nvJitLink cubin, nvdisasm), float32 -------------------
@pytest.mark.parametrize("name", _register_tiled())
def test_gemm_hot_loop_is_fma_bound_with_128bit_shared_loads(compile_ptx, name):
    # The reduction loop (the innermost loop nested deepest; the epilogue's loop, less deep,
    # holds more FFMAs in the activation's branches) must spend at least 3 of 4 issue slots on
    # FFMA, the FP32 peak's bound, and read its shared fragments with 128-bit loads.
    try:
        _cuda.nvjitlink_version()
        _cuda.nvdisasm_path()
    except RuntimeError as exc:
        unavailable(str(exc))
    registry = {k[0]: k for k in KERNELS}
    assert name in registry, f"no registered kernel matches {name} (renamed? update " \
        "REGISTER_TILED)"
    _, func, sigs = registry[name]
    hot = _cuda.sass_hot_loop(_cuda.sass_loops(_cuda.kernel_sass(func, _float32_signature(sigs),
                                                                  SM90)))
    assert hot, f"{name}: no loop with FFMA in its sm_90 SASS"
    ffma, n = hot["opcodes"]["FFMA"], hot["instructions"]
    figures = f"{ffma}/{n} FFMA, {dict(hot['opcodes'].most_common(8))}"
    assert ffma >= 0.75 * n, f"{name}: hot loop {figures}"
    assert hot["opcodes"]["LDS.128"], f"{name}: no 128-bit shared load in the hot loop: {figures}"


# ---- launch configuration (no GPU needed to configure a launch) ------------------------------
def test_small_grids_launch_without_occupancy_warnings():
    # numba warns about every launch configuration under 128 blocks; numbaconv launches small
    # grids on purpose for small inputs, so its kernels configure them without the warning.
    if IMPORT_ERROR:
        unavailable(IMPORT_ERROR)
    import warnings

    name, func, _ = KERNELS[0]
    kernel = _cuda._Kernel(_cuda.cuda().jit(func))  # a fresh dispatcher: nothing cached
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel.dispatcher[3, 32, 0]  # numba's own configuration warns (the premise)
        premise = [str(w.message) for w in caught]
        kernel[2, 32]
        ours = [str(w.message) for w in caught][len(premise):]
    assert any("under-utilization" in m for m in premise), premise
    assert not ours, f"{name}: {ours}"
