"""Device selection (NUMBACONV_DEVICE, set_device, use_device) and where results come back."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import assert_close, cuda_skip_reason, host, is_device_array, on
from numbaconv import _cuda

F = nc.functional
REPO = os.path.dirname(os.path.dirname(os.path.abspath(nc.__file__)))
HAVE_NUMBA_CUDA = _cuda._import() is not None
needs_numba_cuda = pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed")


def run_fresh(code, **env):
    """Run ``code`` in a fresh interpreter with ``env`` (None removes a variable); return its
    last stdout line parsed as JSON."""
    full = dict(os.environ)
    full["PYTHONPATH"] = REPO + os.pathsep + full.get("PYTHONPATH", "")
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


PROBE = """
import json
import numpy as np
import numbaconv as nc
result = {"available": nc.cuda_available()}
try:
    result["device"] = nc.get_device()
    result["relu"] = nc.functional.relu(np.array([-1.0, 2.0])).tolist()
except Exception as exc:
    result["error"] = type(exc).__name__
    result["message"] = str(exc)
print(json.dumps(result))
"""


@pytest.fixture
def restore_device():
    """Put the global device back after a test that calls set_device."""
    before = nc.get_device()
    yield
    nc.set_device(before)


# ---------------------------------------------------------------------------------------------
# NUMBACONV_DEVICE, in a fresh interpreter each time
# ---------------------------------------------------------------------------------------------

def test_env_cpu():
    r = run_fresh(PROBE, NUMBACONV_DEVICE="cpu")
    assert r["device"] == "cpu" and r["relu"] == [0.0, 2.0]


@pytest.mark.parametrize("value", ["CPU", " cpu "])
def test_env_case_and_spaces(value):
    assert run_fresh(PROBE, NUMBACONV_DEVICE=value)["device"] == "cpu"


@pytest.mark.parametrize("value", ["auto", None, ""], ids=["auto", "unset", "empty"])
def test_env_auto(value):
    # auto (the default) is cuda exactly when CUDA is usable, here judged by the child itself.
    r = run_fresh(PROBE, NUMBACONV_DEVICE=value)
    assert r["device"] == ("cuda" if r["available"] else "cpu")
    assert r["relu"] == [0.0, 2.0]


@needs_numba_cuda
def test_env_auto_with_simulator():
    r = run_fresh(PROBE, NUMBACONV_DEVICE="auto", NUMBA_ENABLE_CUDASIM="1")
    assert r["available"] and r["device"] == "cuda" and r["relu"] == [0.0, 2.0]


@needs_numba_cuda
def test_env_cuda_with_simulator():
    r = run_fresh(PROBE, NUMBACONV_DEVICE="cuda", NUMBA_ENABLE_CUDASIM="1")
    assert r["device"] == "cuda" and r["relu"] == [0.0, 2.0]


def test_env_bogus_raises_listing_valid_values():
    r = run_fresh(PROBE, NUMBACONV_DEVICE="gpu")
    assert r["error"] == "ValueError"
    for word in ("NUMBACONV_DEVICE", "gpu", "cpu", "cuda", "auto"):
        assert word in r["message"]


def test_env_bogus_does_not_break_import():
    # The variable is read at first use, not at import.
    r = run_fresh("import json, numbaconv; print(json.dumps({'ok': True}))",
                  NUMBACONV_DEVICE="bogus")
    assert r == {"ok": True}


def test_env_cuda_without_gpu_raises_with_reason():
    # numba-cuda installed, simulator off: on a machine without a GPU this must fail loudly.
    r = run_fresh(PROBE, NUMBACONV_DEVICE="cuda", NUMBA_ENABLE_CUDASIM="0")
    if r["available"]:
        pytest.skip("a real GPU is present")
    assert r["error"] == "RuntimeError"
    assert "NUMBACONV_DEVICE=cuda" in r["message"]
    if HAVE_NUMBA_CUDA:  # the reason says how to get the simulator
        assert "NUMBA_ENABLE_CUDASIM" in r["message"]
    else:  # or how to install numba-cuda
        assert "numba.cuda" in r["message"]


BLOCK_NUMBA_CUDA = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "numba.cuda" or name.startswith("numba.cuda."):
            raise ImportError("No module named 'numba.cuda' (blocked by the test)")
sys.meta_path.insert(0, _Block())
"""


def test_env_cuda_without_numba_cuda_raises_with_reason():
    r = run_fresh(BLOCK_NUMBA_CUDA + PROBE, NUMBACONV_DEVICE="cuda", NUMBA_ENABLE_CUDASIM="1")
    assert not r["available"]
    assert r["error"] == "RuntimeError"
    assert "numba.cuda" in r["message"] and "numbaconv[cuda1" in r["message"]


def test_without_numba_cuda_cpu_still_works():
    r = run_fresh(BLOCK_NUMBA_CUDA + PROBE, NUMBACONV_DEVICE="auto")
    assert r["device"] == "cpu" and r["relu"] == [0.0, 2.0]


def test_set_device_cuda_without_gpu_raises():
    code = """
    import json, numbaconv as nc
    out = {"available": nc.cuda_available()}
    for how in ("set", "use"):
        try:
            if how == "set":
                nc.set_device("cuda")
            else:
                with nc.use_device("cuda"):
                    pass
            out[how] = "ok"
        except RuntimeError as exc:
            out[how] = str(exc)
    out["device"] = nc.get_device()
    print(json.dumps(out))
    """
    r = run_fresh(code, NUMBACONV_DEVICE="cpu", NUMBA_ENABLE_CUDASIM="0")
    if r["available"]:
        pytest.skip("a real GPU is present")
    assert "CUDA" in r["set"] and "CUDA" in r["use"]
    assert r["device"] == "cpu"  # a failed switch leaves the device alone


# ---------------------------------------------------------------------------------------------
# set_device / use_device in this process
# ---------------------------------------------------------------------------------------------

def test_set_device_cpu(restore_device):
    nc.set_device("cpu")
    assert nc.get_device() == "cpu"
    nc.set_device("CPU")
    assert nc.get_device() == "cpu"


@pytest.mark.parametrize("name", ["gpu", "", None, 0])
def test_bad_device_name_raises(name, restore_device):
    with pytest.raises(ValueError):
        nc.set_device(name)
    with pytest.raises(ValueError):
        with nc.use_device(name):
            pass


def test_use_device_nests_and_restores(restore_device):
    nc.set_device("cpu")
    with nc.use_device("cpu") as name:
        assert name == "cpu" and nc.get_device() == "cpu"
    assert nc.get_device() == "cpu"
    if nc.cuda_available():
        with nc.use_device("cuda"):
            assert nc.get_device() == "cuda"
            with nc.use_device("cpu"):
                assert nc.get_device() == "cpu"
            assert nc.get_device() == "cuda"
        assert nc.get_device() == "cpu"


def test_use_device_restores_after_error(restore_device):
    nc.set_device("cpu")
    with pytest.raises(KeyError):
        with nc.use_device("cpu"):
            raise KeyError("boom")
    assert nc.get_device() == "cpu"


def test_device_fixture_sets_device(device):
    assert nc.get_device() == device


def test_cuda_available_is_bool():
    assert isinstance(nc.cuda_available(), bool)


def test_info_prints(capsys):
    nc.info()
    text = capsys.readouterr().out
    for word in ("numbaconv", "numba", "numpy", "device", "cuda", "threads", "simd", "cache"):
        assert word in text


# ---------------------------------------------------------------------------------------------
# What goes in comes back
# ---------------------------------------------------------------------------------------------

def test_numpy_in_numpy_out(device):
    x = np.array([[-1.0, 2.0, -3.0]], np.float32)
    out = F.relu(x)
    assert type(out) is np.ndarray and out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.0, 2.0, 0.0]])
    loss = F.mse_loss(x, np.zeros_like(x))
    assert type(loss) is np.ndarray and loss.shape == () and loss.dtype == np.float32


def test_to_device_and_back(device):
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    d = on(device, x)
    assert is_device_array(d) == (device == "cuda")
    back = host(d)
    assert type(back) is np.ndarray
    np.testing.assert_array_equal(back, x)
    assert nc.to_device(d, device) is d or device == "cpu"


def test_to_device_default_is_current(device):
    d = nc.to_device(np.zeros(3))
    assert is_device_array(d) == (device == "cuda")


@pytest.fixture
def cuda_device():
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    with nc.use_device("cpu"):  # device arrays must run on CUDA whatever the current device
        yield


@pytest.mark.cuda_only
def test_device_in_device_out(cuda_device):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    dx, dw = nc.to_device(x, "cuda"), nc.to_device(w, "cuda")
    for out, expect in [(F.relu(dx), np.maximum(x, 0)),
                        (F.conv2d(dx, dw, padding=1), None),
                        (F.max_pool2d(dx, 2), None),
                        (F.softmax(dx, 1), None)]:
        assert is_device_array(out), type(out)
        if expect is not None:
            np.testing.assert_array_equal(host(out), expect)
    np.testing.assert_allclose(host(F.conv2d(dx, dw, padding=1)),
                               F.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5)
    loss = F.mse_loss(dx, dx)
    assert is_device_array(loss) and host(loss).shape == ()


@pytest.mark.cuda_only
@pytest.mark.parametrize("which", ["input", "weight", "bias"])
def test_mixing_host_and_device_raises_naming_argument(cuda_device, which):
    args = {"input": np.zeros((1, 2, 4, 4), np.float32),
            "weight": np.zeros((3, 2, 3, 3), np.float32), "bias": np.zeros(3, np.float32)}
    # Exactly one argument on the host, the others on the device: the host one is named.
    dev = {k: (v if k == which else nc.to_device(v, "cuda")) for k, v in args.items()}
    with pytest.raises(ValueError, match=which):
        F.conv2d(dev["input"], dev["weight"], dev["bias"])


@pytest.mark.cuda_only
def test_mixing_in_loss_raises(cuda_device):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="target"):
        F.mse_loss(nc.to_device(x, "cuda"), x)


@pytest.mark.cuda_only
def test_host_inputs_on_cuda_device_come_back_as_numpy(cuda_device):
    x = np.array([-1.0, 0.5], np.float64)
    with nc.use_device("cuda"):
        out = F.sigmoid(x)
    assert type(out) is np.ndarray
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-x)), rtol=1e-12)


# ---- streams: an op runs on its caller's stream, without synchronising the producer -------------

@pytest.fixture
def restore_stream():
    before = _cuda.current_stream()
    yield
    _cuda.use_stream(before)


def test_kernels_launch_on_the_current_stream(restore_stream):
    seen = []

    class Dispatcher:
        def __getitem__(self, config):
            seen.append(config)
            return lambda *args: seen.append(args)

    kernel = _cuda._Kernel(Dispatcher())
    _cuda.use_stream("stream A")
    kernel[3, 256](1, 2)
    _cuda.use_stream(0)
    kernel[1, 32]()
    assert seen == [(3, 256, "stream A"), (1, 2), (1, 32, 0), ()]


@needs_numba_cuda
def test_device_views_do_not_synchronise_the_producer(monkeypatch):
    calls = []

    class Producer:  # a CuPy / PyTorch array as numba sees it
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False),
                                    "version": 3, "stream": 7}

    monkeypatch.setattr(_cuda.cuda(), "as_cuda_array", lambda x, **kw: calls.append(kw) or "view",
                        raising=False)  # the simulator has none
    assert _cuda.as_device_array(Producer()) == "view"
    # numba's default, sync=True, would block the host on the producer's stream every call.
    assert calls == [{"sync": False}]


def test_stream_of_array_interface_without_stream_is_the_default():
    class Producer:
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False),
                                    "version": 3, "stream": None}

    assert _cuda.stream_of(Producer()) == 0


@pytest.mark.cuda_only
def test_op_runs_on_the_stream_of_its_device_inputs(cuda_device, monkeypatch, restore_stream):
    cuda = _cuda.cuda()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((17, 3, 3, 3)).astype(np.float32)
    stream = cuda.stream()
    launches = []
    launch = _cuda._Kernel.__getitem__
    monkeypatch.setattr(_cuda._Kernel, "__getitem__",
                        lambda self, config: launches.append(_cuda.current_stream())
                        or launch(self, config))
    # numba arrays bound to a stream: the conv (GEMM and its k table) and relu launch there.
    out = F.relu(F.conv2d(cuda.to_device(x).bind(stream), cuda.to_device(w).bind(stream),
                          padding=1))
    assert launches and all(s is stream for s in launches), launches
    assert_close(out, np.maximum(R.conv2d(x, w, None, 1, 1, 1, 1), 0), np.float32, "conv",
                 scale=R.conv2d(np.abs(x), np.abs(w), None, 1, 1, 1, 1))
    # Host inputs computed on CUDA: the default stream, whatever ran before on this thread.
    launches.clear()
    with nc.use_device("cuda"):
        F.relu(x)
    assert launches == [0]


# ---- device memory pool (numba memory-manager plugin); checked without a GPU --------------------

@pytest.mark.parametrize("size, block", [(1, 512), (512, 512), (513, 1024), (1 << 20, 1 << 20),
                                         ((1 << 20) + 1, 2 << 20)])
def test_pool_size_classes(size, block):
    assert _cuda.block_size(size) == block


def test_pool_reuses_blocks_only_for_the_same_stream_and_size_class():
    pool = _cuda.BlockPool()
    pool.give((7, 512), "a")
    assert pool.take((0, 512)) is None and pool.take((7, 1024)) is None
    assert pool.cached == 512
    assert pool.take((7, 512)) == "a" and pool.take((7, 512)) is None
    pool.give((0, 1024), "b")
    assert pool.drain() == ["b"] and pool.cached == 0 and pool.take((0, 1024)) is None


POOL_PROBE = """
import gc, json, os
from numbaconv import _cuda
_cuda._import()
from numba.cuda.cudadrv import driver as drv
manager = _cuda._state.get("pool")
result = {"installed": manager is not None and drv._memory_manager is manager}
if manager is not None:  # its memalloc against a fake driver: no GPU needed
    allocs = []
    drv.driver.cuMemAlloc = lambda size: allocs.append(size) or 1000 + len(allocs)

    class Context:
        pass

    context = Context()
    m = manager(context=context)
    a = m.memalloc(1000)
    first = a.device_pointer
    del a
    gc.collect()
    b = m.memalloc(900)  # the same size class on the same stream: the freed block
    c = m.memalloc(900)  # a new one while b lives
    result.update(allocs=allocs, reused=b.device_pointer == first, held=m.pool.cached,
                  fresh=c.device_pointer != first)
print(json.dumps(result))
"""


@needs_numba_cuda
def test_pool_is_numbas_memory_manager_and_recycles_freed_blocks():
    got = run_fresh(POOL_PROBE, NUMBA_ENABLE_CUDASIM=None, NUMBACONV_CUDA_POOL=None,
                    NUMBA_CUDA_MEMORY_MANAGER=None)
    assert got == {"installed": True, "allocs": [1024, 1024], "reused": True, "held": 0,
                   "fresh": True}


@needs_numba_cuda
@pytest.mark.parametrize("env", [dict(NUMBACONV_CUDA_POOL="0"),
                                 dict(NUMBA_CUDA_MEMORY_MANAGER="some_users_plugin")])
def test_pool_can_be_left_out(env):
    assert run_fresh(POOL_PROBE, NUMBA_ENABLE_CUDASIM=None, **env) == {"installed": False}
