"""Every registered CUDA kernel compiles to PTX for sm_80 and sm_90, without a GPU.

The simulator runs kernels as Python and hides type errors; NVVM does not. Skipped under the
simulator, and when numba-cuda or NVVM is missing unless NUMBACONV_TEST_REQUIRE_PTX=1 (CI), in
which case those are failures.
"""

import importlib.util
import os

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
