"""numbaconv.distributed: batch, spatial and channel partitioning on Dask.

Every result is compared with single-machine numbaconv on the whole array. In float64 that is
bit for bit (``np.array_equal``) everywhere: float64 convolutions always run the direct
convolution, whose arithmetic per output does not depend on the array's size. In float32 it is
within the tolerances of conftest.py (against a float64 reference with the "conv" family, or
against single-machine float32 with "parity") wherever a 3x3 stride-1 ungrouped convolution is
involved: numbaconv's CPU backend picks Winograd F(4x4, 3x3) or the direct convolution for
those by array size, so a block may round differently from the whole array. Other float32
results are bit for bit too. Each test runs against a real
``dask.distributed.LocalCluster`` of 2 worker processes (1 thread each, loopback; one cluster
for the module) and against Dask's threaded scheduler. The workers share this process's Numba
cache folder, so they load the kernels this process compiled rather than compiling their own.

Needs dask[array,distributed] (in the ``test`` extra): without it the module fails to collect,
saying what to install, rather than skipping.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import DEVICES, assert_close

_MISSING = [m for m in ("dask", "distributed") if importlib.util.find_spec(m) is None]
if _MISSING:
    pytest.fail(f"test_distributed needs {', '.join(_MISSING)}: pip install -e '.[test]' "
                "(or pip install 'dask[array,distributed]')", pytrace=False)

import cloudpickle  # noqa: E402
import dask.array as da  # noqa: E402
import numba  # noqa: E402

import numbaconv as nc  # noqa: E402
import numbaconv.distributed as ncd  # noqa: E402

F = nc.functional
nn = nc.nn

pytestmark = pytest.mark.skipif("cpu" not in DEVICES, reason="the Dask workers run on the CPU, "
                                "and NUMBACONV_TEST_DEVICES leaves 'cpu' out")

# The slow layer of the fault test lives here; workers get it by value, as a notebook's would.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client():
    """A Client of a LocalCluster with 2 worker processes, 1 thread each, on loopback."""
    from distributed import Client, LocalCluster

    env = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "NUMBACONV_DEVICE": "cpu"}
    if numba.config.CACHE_DIR:
        env["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0", env=env) as cluster, \
            Client(cluster, set_as_default=False) as c:
        c.wait_for_workers(2)
        yield c


@pytest.fixture(params=["cluster", "threads"])
def compute(request):
    """``compute(*dask_arrays)`` -> NumPy array(s), on the 2-process cluster or the threaded
    scheduler."""
    import dask

    if request.param == "cluster":
        c = request.getfixturevalue("client")
        run = lambda arrays: c.gather(c.compute(list(arrays)))  # noqa: E731
    else:
        run = lambda arrays: dask.compute(*arrays, scheduler="threads")  # noqa: E731
    return lambda *arrays: run(arrays)[0] if len(arrays) == 1 else tuple(run(arrays))


def _rand(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def _same(got, ref):
    """Bit-equal, with shape and dtype."""
    assert isinstance(got, np.ndarray) and got.shape == ref.shape and got.dtype == ref.dtype, \
        (type(got), getattr(got, "shape", None), ref.shape)
    bad = np.flatnonzero(got != ref)
    assert bad.size == 0, (f"{bad.size} of {ref.size} values differ; max |diff| "
                           f"{np.abs(got - ref).max():.3g}")


def _conv_scale(x, w, b, *args):
    """conftest's scale for a conv: conv(|x|, |w|) + |b|, in float64."""
    a = [np.abs(v).astype(np.float64) for v in (x, w)]
    return F.conv2d(a[0], a[1], None if b is None else np.abs(b).astype(np.float64), *args)


def _small_cnn(rng, dtype=np.float64):
    """Conv-BN-ReLU-pool stacks with every kind of window: 3x3 'same' (Winograd in float32), a
    strided 5x5, a 3x3 avg pool with padding, a dilated conv and nested Sequentials."""
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(16, 24, 5, stride=2, padding=2), nn.ReLU()),
        nn.AvgPool2d(3, 1, 1, count_include_pad=False),
        nn.Conv2d(24, 8, 3, padding="same", dilation=2), nn.SiLU())
    bn = m[1]
    bn.running_mean = rng.standard_normal(16)
    bn.running_var = rng.uniform(0.5, 2.0, 16)
    return m.eval().to(dtype)


def _resnet_stem(dtype=np.float64):
    r = nc.models.resnet18(num_classes=10).eval().to(dtype)
    return nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool).eval()


# ---- spatial partitioning ------------------------------------------------------------------

CONV_CASES = [
    # ResNet stem: 7x7 stride 2 pad 3, chunk edges at odd rows (not on the stride grid).
    dict(c=3, oc=8, k=7, stride=2, padding=3, dilation=1, groups=1, hw=(45, 38), chunks=(11, 13)),
    # 3x3 stride 1: Winograd's shape in float32 (exact here: float64 is always direct).
    dict(c=32, oc=16, k=3, stride=1, padding=1, dilation=1, groups=1, hw=(40, 37),
         chunks=(10, 9)),
    # dilation with 'same' padding; chunks narrower than the halo (gathered from 2 chunks).
    dict(c=4, oc=6, k=3, stride=1, padding="same", dilation=3, groups=1, hw=(20, 21),
         chunks=(4, 5)),
    # grouped, stride 3, even kernel, chunks smaller than the stride (merged blocks).
    dict(c=4, oc=8, k=4, stride=3, padding=1, dilation=1, groups=2, hw=(26, 23), chunks=(2, 7)),
]


def test_reachable_as_nc_distributed():
    """``import numbaconv as nc`` does not import Dask; ``nc.distributed`` loads it on first use
    (a fresh process, where nothing has imported the submodule yet)."""
    code = ("import sys, numbaconv as nc; before = 'dask' in sys.modules; "
            "print(before, nc.distributed.predict.__name__, 'dask' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "predict", "True"]
    with pytest.raises(AttributeError, match="no attribute 'distributd'"):
        nc.distributd  # noqa: B018


@pytest.mark.parametrize("case", CONV_CASES, ids=["stem7x7s2", "3x3", "dilated-same", "grouped"])
def test_conv2d_spatial_equals_one_machine(compute, case):
    rng = np.random.default_rng(1)
    x = _rand(rng, (2, case["c"]) + case["hw"])
    w = _rand(rng, (case["oc"], case["c"] // case["groups"], case["k"], case["k"]))
    b = _rand(rng, (case["oc"],))
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    ref = F.conv2d(x, w, b, *args, activation="relu")
    xd = da.from_array(x, chunks=(1, case["c"]) + case["chunks"])
    y = ncd.conv2d(xd, w, b, *args, activation="relu")
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert len(y.chunks[2]) > 1 and len(y.chunks[3]) > 1
    _same(compute(y), ref)


def test_conv2d_3x3_float32_and_float64(compute):
    """A 3x3 conv big enough that the whole image may run Winograd in float32 while the blocks
    alone run the direct conv: float32 within the conv tolerance of a float64 reference,
    float64 (always the direct conv) bit for bit."""
    rng = np.random.default_rng(2)
    x = _rand(rng, (1, 64, 56, 56), np.float32)
    w = _rand(rng, (32, 64, 3, 3), np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = F.conv2d(x64, w64, None, 1, 1)
    chunks = (1, 64, 19, 29)
    got64, got32 = compute(ncd.conv2d(da.from_array(x64, chunks=chunks), w64, None, 1, 1),
                           ncd.conv2d(da.from_array(x, chunks=chunks), w, None, 1, 1))
    _same(got64, ref)
    assert_close(got32, ref, np.float32, "conv", scale=_conv_scale(x, w, None, 1, 1))


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pools_equal_one_machine(compute, ceil_mode):
    rng = np.random.default_rng(3)
    x = _rand(rng, (2, 5, 33, 31))
    x[0, 1, 5, 7] = np.nan  # NaN and -inf travel through the halo like any value
    x[1, 2, 20, 3] = -np.inf
    xd = da.from_array(x, chunks=(1, 2, 7, 10))
    pairs = [
        (ncd.max_pool2d(xd, 3, 2, 1, 1, ceil_mode), F.max_pool2d(x, 3, 2, 1, 1, ceil_mode)),
        (ncd.max_pool2d(xd, (2, 3), (3, 2), (1, 0), 2, ceil_mode),
         F.max_pool2d(x, (2, 3), (3, 2), (1, 0), 2, ceil_mode)),
        (ncd.avg_pool2d(xd, 3, 2, 1, ceil_mode, True), F.avg_pool2d(x, 3, 2, 1, ceil_mode, True)),
        (ncd.avg_pool2d(xd, 4, 3, 2, ceil_mode, False),
         F.avg_pool2d(x, 4, 3, 2, ceil_mode, False)),
    ]
    for got, (_, ref) in zip(compute(*[g for g, _ in pairs]), pairs):
        assert got.shape == ref.shape and got.dtype == ref.dtype
        assert np.array_equal(got, ref, equal_nan=True)


@pytest.mark.parametrize("groups,parts", [(1, 2), (1, 3), (4, 2), (6, 4)])
def test_conv2d_split_out_channels(compute, groups, parts):
    rng = np.random.default_rng(4)
    c, oc = 12, 24
    x = _rand(rng, (3, c, 14, 15))
    w = _rand(rng, (oc, c // groups, 3, 3))
    b = _rand(rng, (oc,))
    ref = F.conv2d(x, w, b, 2, 1, 1, groups)
    y = ncd.conv2d(da.from_array(x, chunks=(2, c, 14, 15)), w, b, 2, 1, 1, groups,
                   split="out_channels", parts=parts)
    assert len(y.chunks[1]) == parts
    if groups > 1:
        assert all(n % (oc // groups) == 0 for n in y.chunks[1])  # whole groups per part
    _same(compute(y), ref)


def test_stem_spatial_float32(compute):
    """The ResNet-18 stem in float32 (no 3x3 stride-1 conv), through the op-by-op API (the
    conv also against a float64 reference) and through predict_tiled: bit for bit with
    single-machine float32."""
    rng = np.random.default_rng(5)
    stem = _resnet_stem(np.float32)
    x = _rand(rng, (1, 3, 96, 80), np.float32)
    xd = da.from_array(x, chunks=(1, 3, 37, 29))
    w = np.asarray(stem[0].weight.data)
    conv = ncd.conv2d(xd, w, None, 2, 3)
    got_conv, got_pool, got_stem = compute(conv, ncd.max_pool2d(conv, 3, 2, 1),
                                           ncd.predict_tiled(stem, xd, tile=(32, 32)))
    ref = F.conv2d(x.astype(np.float64), w.astype(np.float64), None, 2, 3)
    assert_close(got_conv, ref, np.float32, "conv", scale=_conv_scale(x, w, None, 2, 3))
    single = F.conv2d(x, w, None, 2, 3)
    _same(got_conv, single)
    _same(got_pool, F.max_pool2d(single, 3, 2, 1))
    _same(got_stem, stem(x))


@pytest.mark.parametrize("tile,dtype", [((16, 16), np.float64), ((24, 20), np.float32),
                                        ((200, 8), np.float64)])
def test_predict_tiled_small_cnn(compute, tile, dtype):
    """Bit for bit in float64. In float32 its first conv, 3x3 stride 1, may run as Winograd
    for the whole image and the direct conv for a tile: within the "parity" tolerance."""
    rng = np.random.default_rng(6)
    model = _small_cnn(rng, dtype)
    x = _rand(rng, (2, 3, 75, 61), dtype)
    y = ncd.predict_tiled(model, da.from_array(x, chunks=(1, 3, 20, 30)), tile=tile)
    if dtype == np.float64:
        _same(compute(y), model(x))
    else:
        assert_close(compute(y), model(x).astype(np.float64), dtype, "parity")


def test_predict_tiled_resnet_stem_and_numpy_input(compute):
    rng = np.random.default_rng(7)
    stem = _resnet_stem()
    x = _rand(rng, (2, 3, 70, 90))
    y = ncd.predict_tiled(stem, x, tile=(24, 40))  # NumPy in: chunked by the tile
    assert y.chunks[2] == (6, 6, 6) and y.chunks[3] == (10, 10, 3)
    _same(compute(y), stem(x))


def test_halo_bytes_are_the_receptive_field():
    """A 7x7 stride-1 conv over a 4x4 grid of 16x16 chunks: each block reads 3 rows and
    columns of halo on each inner side, nothing more."""
    x = da.zeros((1, 2, 64, 64), chunks=(1, 2, 16, 16))
    stats = {}
    ncd.conv2d(x, np.zeros((1, 2, 7, 7)), None, 1, 3, _stats=stats)
    row = 8 * 2  # bytes per pixel (float64, 2 channels)
    expected = 0
    for i in range(4):
        for j in range(4):
            h = 16 + 3 * ((i > 0) + (i < 3))
            w = 16 + 3 * ((j > 0) + (j < 3))
            expected += (h * w - 16 * 16) * row
    assert stats["halo_bytes"] == expected
    assert stats["read_bytes"] == expected + x.nbytes


# ---- batch partitioning --------------------------------------------------------------------

def test_predict_batch_equals_one_machine(compute):
    rng = np.random.default_rng(8)
    lenet = nc.models.lenet5(num_classes=10, in_channels=3).eval().to(np.float64)
    x = _rand(rng, (10, 3, 32, 32))
    y = ncd.predict(lenet, da.from_array(x, chunks=(3, 3, 32, 32)))
    assert y.chunks == ((3, 3, 3, 1), (10,))
    _same(compute(y), lenet(x))
    stem = _resnet_stem()
    _same(compute(ncd.predict(stem, da.from_array(x, chunks=(4, 3, 32, 32)))), stem(x))


def test_model_goes_to_each_worker_once(client):
    """One graph node holds the model; each worker unpickles it at most once for 8 chunks."""
    rng = np.random.default_rng(9)
    model = _small_cnn(rng)
    x = _rand(rng, (16, 3, 20, 20))
    y = ncd.predict(model, da.from_array(x, chunks=(2, 3, 20, 20)))
    graph = dict(y.__dask_graph__())
    model_keys = [k for k in graph if isinstance(k, str) and k.startswith("numbaconv-model-")]
    assert len(model_keys) == 1
    got = client.compute(y).result(timeout=300)
    _same(got, model(x))
    token = model_keys[0][len("numbaconv-model-"):]
    loads = client.run(lambda: dict(ncd._LOADS))
    counts = [d.get(token, 0) for d in loads.values()]
    assert max(counts) == 1, counts


def test_model_pickles_parameters_once():
    """The shipped form carries each weight once and rebuilds tracked, read-only parameters."""
    import pickle

    model = nn.Sequential(nn.Conv2d(64, 64, 3), nn.ReLU()).eval()
    blob = pickle.dumps(ncd._Model(model))
    nbytes = sum(p.data.nbytes for p in model.parameters())
    assert nbytes <= len(blob) < 1.2 * nbytes
    back = pickle.loads(blob).model
    w = back[0].weight.data
    assert not w.flags.writeable and np.array_equal(w, model[0].weight.data)
    from numbaconv import _weights
    assert _weights.version(w) is not None


# ---- fault tolerance -----------------------------------------------------------------------

class _Slow(nn.Module):
    """Identity that takes its time, so that a computation is still running when a worker is
    killed."""

    def forward(self, x):
        time.sleep(0.15)
        return x


def test_worker_killed_mid_computation(client):
    rng = np.random.default_rng(10)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _Slow()).eval().to(np.float64)
    x = _rand(rng, (24, 3, 16, 16))
    ref = model(x)
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    fut = client.compute(ncd.predict(model, da.from_array(x, chunks=(1, 3, 16, 16))))
    deadline = time.monotonic() + 120
    while not any("predict-" in str(k) for k in client.has_what().get(victim, ())):
        assert time.monotonic() < deadline, "the victim never finished a chunk"
        time.sleep(0.01)
    assert not fut.done()  # killed mid-computation, holding finished chunks
    os.kill(pids[victim], signal.SIGKILL)
    _same(fut.result(timeout=300), ref)
    # The nanny restarted the worker: a new process, and 2 workers for the next tests.
    client.wait_for_workers(2, timeout=120)
    assert pids[victim] not in client.run(os.getpid).values()


# ---- bad input -----------------------------------------------------------------------------

def test_bad_input():
    rng = np.random.default_rng(11)
    x = _rand(rng, (2, 4, 16, 16))
    xd = da.from_array(x, chunks=(1, 4, 8, 8))
    w = _rand(rng, (8, 4, 3, 3))
    with pytest.raises(TypeError, match="dask.array.from_array"):
        ncd.conv2d(x, w)
    with pytest.raises(ValueError, match="4-D"):
        ncd.conv2d(xd[0], w)
    with pytest.raises(ValueError, match=r"chunked along C.*rechunk=True"):
        ncd.conv2d(da.from_array(x, chunks=(1, 2, 8, 8)), w)
    _same(ncd.conv2d(da.from_array(x, chunks=(1, 2, 8, 8)), w, rechunk=True)
          .compute(scheduler="threads"), F.conv2d(x, w))
    unknown = da.Array(xd.dask, xd.name, ((np.nan, np.nan),) + xd.chunks[1:], dtype=xd.dtype)
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        ncd.max_pool2d(unknown, 2)
    with pytest.raises(TypeError, match="float32"):
        ncd.conv2d(xd, w.astype(np.float32))
    with pytest.raises(ValueError, match="channels"):
        ncd.conv2d(xd, _rand(rng, (8, 3, 3, 3)))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        ncd.conv2d(xd, _rand(rng, (8, 4, 17, 3)))
    with pytest.raises(ValueError, match="split="):
        ncd.conv2d(xd, w, split="rows")
    with pytest.raises(ValueError, match="parts"):
        ncd.conv2d(xd, w, split="out_channels", parts=0)
    with pytest.raises(ValueError, match="at most half"):
        ncd.max_pool2d(xd, 2, padding=2)
    with pytest.raises(ValueError, match="too small"):
        ncd.avg_pool2d(xd, 17)

    lenet = nc.models.lenet5(num_classes=10, in_channels=4).eval().to(np.float64)
    with pytest.raises(ValueError, match=r"chunked along H, W.*predict_tiled"):
        ncd.predict(lenet, xd)
    stem = _resnet_stem()
    x3 = da.from_array(_rand(rng, (2, 3, 16, 16)), chunks=(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"training mode \(1\)"):
        ncd.predict(_resnet_stem().train(), x3)
    with pytest.raises(TypeError, match="float32"):
        ncd.predict(nc.models.lenet5(in_channels=4).eval(), da.from_array(x, chunks=(1, 4, 16, 16)))
    with pytest.raises(ValueError, match=r"layer '1' \(Flatten\)"):
        ncd.predict_tiled(nn.Sequential(lenet.features, nn.Flatten(), lenet.classifier).eval(),
                          xd)
    with pytest.raises(ValueError, match="through LeNet5"):
        ncd.predict_tiled(lenet, xd)
    with pytest.raises(ValueError, match="total stride"):
        ncd.predict_tiled(stem, da.from_array(_rand(rng, (1, 3, 64, 64)), chunks=8), tile=(2, 8))
    with pytest.raises(ValueError, match="expects 3 input channels"):
        ncd.predict_tiled(stem, xd)
