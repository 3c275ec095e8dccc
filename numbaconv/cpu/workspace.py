"""Reusable scratch memory for the CPU kernels: a buffer pool and a transformed-weight cache.

The pool hands out flat buffers and takes them back, so steady-state calls allocate nothing;
concurrent callers (threads) each get their own buffer. The weight cache keeps transformed
weights (packed panels, Winograd filters) of tracked arrays (see :mod:`numbaconv._weights`),
bounded by ``NUMBACONV_CACHE_MB`` (default 256) with least-recently-used eviction by bytes.
"""

import collections
import os
import threading

import numpy as np

from numbaconv import _weights

_ENV_MB = "NUMBACONV_CACHE_MB"


def _cache_limit():
    raw = os.environ.get(_ENV_MB, "").strip()
    if not raw:
        return 256 << 20
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if mb < 0:
        raise ValueError(f"{_ENV_MB}={raw!r} is not valid; give a size in MiB (>= 0, 0 turns the "
                         "weight cache off)")
    return int(mb * (1 << 20))


class _Pool:
    """Free flat buffers per dtype. ``take`` returns the smallest free one that is big enough."""

    def __init__(self, keep=8):
        self._lock = threading.Lock()
        self._free = collections.defaultdict(list)
        self._keep = keep
        self.allocations = 0

    def buffer(self, size, dtype):
        """A flat array of at least ``size`` elements of ``dtype``, for the ``with`` block."""
        dtype = np.dtype(dtype)
        with self._lock:
            free = self._free[dtype]
            best = -1
            for i, b in enumerate(free):
                if b.size >= size and (best < 0 or b.size < free[best].size):
                    best = i
            buf = free.pop(best) if best >= 0 else None
        if buf is None:
            buf = np.empty(max(size, 1), dtype)
            self.allocations += 1
        return _Lease(self, buf, dtype)

    def _give_back(self, buf, dtype):
        with self._lock:
            free = self._free[dtype]
            free.append(buf)
            if len(free) > self._keep:  # drop the smallest: the big ones are the costly ones
                del free[min(range(len(free)), key=lambda i: free[i].size)]

    def clear(self):
        with self._lock:
            self._free.clear()


class _WeightCache:
    """LRU (by bytes) cache of transformed weights, keyed on the array, its version and the kind
    of transform. Only arrays tracked in :mod:`numbaconv._weights` are cached, and their
    transforms are dropped when they die (a replaced parameter, a deleted layer)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries = collections.OrderedDict()
        self._dead = collections.deque()  # serials of tracked arrays that died, to drop
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.limit = _cache_limit()
        _weights.when_gone(self._gone)

    def _gone(self, serial):
        # A weakref callback, possibly from the garbage collector inside this cache's own locked
        # section: never wait for the lock. When it is held, the entries go at the end of that
        # section or at the cache's next use.
        self._dead.append(serial)
        if self._lock.acquire(blocking=False):
            try:
                self._drop_dead()
            finally:
                self._lock.release()

    def _drop_dead(self):
        """Drop the entries of arrays that died (the lock held)."""
        while self._dead:
            serial = self._dead.popleft()
            for k in [k for k in self._entries if k[0] == serial]:
                self.bytes -= self._entries.pop(k).nbytes

    def transformed(self, array, kind, size, dtype, fill):
        """A flat buffer of ``size`` elements of ``dtype`` holding ``fill(buffer)``'s transform
        of ``array``, for the ``with`` block: the cached one for a tracked array whose version
        has not changed, else a pooled buffer filled now.

        ``kind`` is a hashable description of the transform (layout, block sizes).
        """
        ver = _weights.version(array)
        if ver is None or self.limit == 0:
            return _Filled(POOL.buffer(size, dtype), fill)
        serial, ver = ver
        key = (serial, ver, array.__array_interface__["data"][0], array.shape, array.strides,
               array.dtype.str, kind)
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            self._drop_dead()
        if value is None:
            value = np.empty(size, dtype)
            fill(value)
            self._insert(key, value)
        return _Held(value)

    def _insert(self, key, value):
        with self._lock:
            # Older versions of the same array are dead weight: drop them first.
            for k in [k for k in self._entries if k[0] == key[0] and k[1] != key[1]]:
                self.bytes -= self._entries.pop(k).nbytes
            if key not in self._entries and value.nbytes <= self.limit:
                self._entries[key] = value
                self.bytes += value.nbytes
            while self.bytes > self.limit:
                _, old = self._entries.popitem(last=False)
                self.bytes -= old.nbytes
            self._drop_dead()

    def clear(self):
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def stats(self):
        with self._lock:
            self._drop_dead()
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._entries),
                "bytes": self.bytes, "limit_bytes": self.limit}


class _Lease:
    """A pooled buffer for a ``with`` block, handed back to the pool at its end (a plain class:
    a generator-based context manager costs more than a small conv's kernel launch)."""

    __slots__ = ("_pool", "_buf", "_dtype")

    def __init__(self, pool, buf, dtype):
        self._pool, self._buf, self._dtype = pool, buf, dtype

    def __enter__(self):
        return self._buf

    def __exit__(self, *exc):
        self._pool._give_back(self._buf, self._dtype)
        return False


class _Filled:
    """A pooled buffer filled on entry (an untracked weight's transform, made per call)."""

    __slots__ = ("_lease", "_fill")

    def __init__(self, lease, fill):
        self._lease, self._fill = lease, fill

    def __enter__(self):
        buf = self._lease.__enter__()
        try:
            self._fill(buf)
        except BaseException:
            self._lease.__exit__(None, None, None)
            raise
        return buf

    def __exit__(self, *exc):
        return self._lease.__exit__(*exc)


class _Held:
    """A cached transform for a ``with`` block (nothing to give back)."""

    __slots__ = ("_value",)

    def __init__(self, value):
        self._value = value

    def __enter__(self):
        return self._value

    def __exit__(self, *exc):
        return False


POOL = _Pool()
WEIGHTS = _WeightCache()
