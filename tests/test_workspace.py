"""The CPU's scratch memory: the transformed-weight cache and the buffer pool."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from numbaconv import _weights
from numbaconv.cpu import workspace

F = nc.functional


@pytest.fixture
def cache():
    """The process's weight cache, emptied before and after the test, with counters reset."""
    c = workspace.WEIGHTS
    c.clear()
    c.hits = c.misses = 0
    yield c
    c.clear()


def _conv(x, w):
    return F.conv2d(x, w, padding=1)


def test_tracked_weight_is_packed_once(rng, cache):
    x = rng.standard_normal((1, 5, 7, 7)).astype(np.float32)
    w = _weights.track(rng.standard_normal((9, 5, 3, 3)).astype(np.float32))
    first = _conv(x, w)
    assert (cache.hits, cache.misses) == (0, 1)
    np.testing.assert_array_equal(_conv(x, w), first)
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.stats()["entries"] == 1 and cache.stats()["bytes"] > 0


def test_changed_weight_is_repacked(rng, cache):
    x = rng.standard_normal((1, 5, 7, 7)).astype(np.float32)
    w = _weights.track(rng.standard_normal((9, 5, 3, 3)).astype(np.float32))
    _conv(x, w)
    w *= 2  # an in-place update, as an optimiser makes
    _weights.changed(w)
    np.testing.assert_allclose(_conv(x, w), R.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-4)
    assert cache.misses == 2
    assert cache.stats()["entries"] == 1, "the stale version must be dropped, not kept"


def test_untracked_weights_are_never_cached(rng, cache):
    # Nothing tells us when a plain array changes, so a stale pack must never be used.
    x = rng.standard_normal((1, 5, 7, 7)).astype(np.float32)
    w = rng.standard_normal((9, 5, 3, 3)).astype(np.float32)
    _conv(x, w)
    w[:] = rng.standard_normal(w.shape)
    np.testing.assert_allclose(_conv(x, w), R.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-4)
    assert cache.stats()["entries"] == 0 and cache.hits == 0


def test_dead_array_does_not_alias_a_new_one(rng, cache):
    # A new array may reuse a freed one's id and memory: tracking gives it a fresh serial.
    x = rng.standard_normal((1, 5, 7, 7)).astype(np.float32)
    for _ in range(3):
        w = _weights.track(rng.standard_normal((9, 5, 3, 3)).astype(np.float32))
        np.testing.assert_allclose(_conv(x, w), R.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-4)
        del w
    assert cache.hits == 0


def test_cache_is_bounded_lru_by_bytes(rng, cache, monkeypatch):
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    ws = [_weights.track(rng.standard_normal((8, 4, 3, 3)).astype(np.float32)) for _ in range(3)]
    _conv(x, ws[0])
    one = cache.stats()["bytes"]
    monkeypatch.setattr(cache, "limit", 2 * one)
    for w in ws:
        _conv(x, w)
    assert cache.stats()["entries"] == 2 and cache.stats()["bytes"] <= 2 * one
    cache.hits = cache.misses = 0
    _conv(x, ws[2])  # most recent: kept
    _conv(x, ws[0])  # least recent: evicted
    assert (cache.hits, cache.misses) == (1, 1)


def test_cache_off(rng, cache, monkeypatch):
    monkeypatch.setattr(cache, "limit", 0)
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    w = _weights.track(rng.standard_normal((8, 4, 3, 3)).astype(np.float32))
    _conv(x, w)
    _conv(x, w)
    assert cache.stats()["entries"] == 0 and cache.hits == 0


@pytest.mark.parametrize("value", ["-1", "lots"])
def test_bad_cache_size_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("NUMBACONV_CACHE_MB", value)
    with pytest.raises(ValueError, match="NUMBACONV_CACHE_MB"):
        workspace._cache_limit()


def test_steady_state_allocates_no_scratch(rng):
    x = rng.standard_normal((2, 6, 9, 9)).astype(np.float32)
    w = rng.standard_normal((10, 6, 3, 3)).astype(np.float32)
    F.conv2d(x, w, padding=1)
    before = workspace.POOL.allocations
    for _ in range(3):
        F.conv2d(x, w, padding=1)
    assert workspace.POOL.allocations == before


def test_pool_gives_each_concurrent_user_its_own_buffer():
    pool = workspace._Pool()
    with pool.buffer(10, np.float32) as a, pool.buffer(10, np.float32) as b:
        assert a is not b and a.size >= 10 and b.size >= 10
    with pool.buffer(5, np.float32) as c:
        assert c is a or c is b  # reused, not allocated
    assert pool.allocations == 2


def test_threads_share_the_pool_safely(rng):
    import concurrent.futures

    xs = [rng.standard_normal((1, 6, 11, 11)).astype(np.float32) for _ in range(8)]
    w = _weights.track(rng.standard_normal((10, 6, 3, 3)).astype(np.float32))
    refs = [R.conv2d(x, w, padding=1) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda x: F.conv2d(x, w, padding=1), xs * 3))
    for out, ref in zip(outs, refs * 3):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_pool_keeps_a_bounded_number_of_buffers():
    pool = workspace._Pool(keep=2)
    with pool.buffer(3, np.float32), pool.buffer(5, np.float32), pool.buffer(7, np.float32):
        pass
    assert sorted(b.size for b in pool._free[np.dtype(np.float32)]) == [5, 7]


WORKQUEUE = """
import concurrent.futures
import numba, numpy as np
import numbaconv.functional as F
from numbaconv import cpu

rng = np.random.default_rng(0)
x = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)

def work(i):
    y = F.conv2d(x, w, padding=1, activation="relu")
    return F.max_pool2d(y, 2) + F.relu(x).sum()

want = work(0)
assert cpu.threading_layer() == numba.threading_layer() == "workqueue", numba.threading_layer()
with concurrent.futures.ThreadPoolExecutor(4) as ex:
    outs = list(ex.map(work, range(64)))
assert all(np.array_equal(out, want) for out in outs)
print("ok")
"""


def test_concurrent_calls_under_the_workqueue_threading_layer():
    # Numba's fallback layer aborted the process ("Concurrent access has been detected") when
    # Python threads called kernels at once: under it, launchers take turns.
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBACONV_DEVICE="cpu")
    out = subprocess.run([sys.executable, "-c", WORKQUEUE], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
