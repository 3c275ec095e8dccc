"""Which algorithm runs a conv: a shape heuristic, or measured choices (``NUMBACONV_AUTOTUNE=1``).

With autotuning on, the first call of each conv shape times every applicable algorithm on the
call's own arrays and keeps the fastest. Choices persist on disk in ``numbaconv-autotune.json``
beside the compiled kernels (``NUMBA_CACHE_DIR`` when set), keyed by the shape, dtype, thread
count and SIMD width, and stamped with the numbaconv version. A file that is corrupt, of another
version or of unexpected structure is ignored and rebuilt, never trusted: a wrong entry can only
name an algorithm, and a name that is not applicable to the call is ignored too.
"""

import json
import os
import tempfile
import threading
import time

import numba

from numbaconv.cpu import simd

_ENV = "NUMBACONV_AUTOTUNE"
_FILE = "numbaconv-autotune.json"
_FORMAT = 1


def enabled():
    """Whether ``NUMBACONV_AUTOTUNE`` asks for measured choices ('1'; '0' or unset: heuristic)."""
    raw = os.environ.get(_ENV, "").strip()
    if raw in ("", "0"):
        return False
    if raw == "1":
        return True
    raise ValueError(f"{_ENV}={raw!r} is not valid; use 1 (measure and remember the fastest "
                     "algorithm per shape) or 0 (shape heuristic)")


def _folder():
    if numba.config.CACHE_DIR:
        return numba.config.CACHE_DIR
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
    if os.access(os.path.dirname(here), os.W_OK):
        return here
    return os.path.join(os.path.expanduser("~"), ".cache", "numbaconv")


def _stamp():
    import numbaconv

    return {"format": _FORMAT, "numbaconv": numbaconv.__version__, "lanes": simd.LANES}


class _Store:
    """The on-disk table of choices, loaded on first use, rewritten atomically on each change."""

    def __init__(self):
        self._lock = threading.Lock()
        self._choices = None
        self.path = None

    def _load(self):
        self.path = os.path.join(_folder(), _FILE)
        self._choices = {}
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return  # missing or corrupt: start afresh
        if (isinstance(data, dict) and data.get("stamp") == _stamp()
                and isinstance(data.get("choices"), dict)):
            self._choices = {k: v for k, v in data["choices"].items()
                             if isinstance(k, str) and isinstance(v, str)}

    def get(self, key):
        with self._lock:
            if self._choices is None:
                self._load()
            return self._choices.get(key)

    def put(self, key, name):
        with self._lock:
            if self._choices is None:
                self._load()
            self._choices[key] = name
            data = {"stamp": _stamp(), "choices": self._choices}
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=0, sort_keys=True)
                os.replace(tmp, self.path)  # readers never see a half-written file
            except OSError:
                pass  # read-only: the choice still holds for this process

    def forget(self):
        """Drop the in-memory table so that the next use reloads the file (tests)."""
        with self._lock:
            self._choices = None


STORE = _Store()


def _time(run, repeats=3):
    run()  # compiles on first use, and warms the caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def choose(key, candidates, default):
    """Name of the algorithm to run for ``key``.

    Parameters
    ----------
    key : tuple
        Everything the choice depends on besides threads and SIMD width (shapes, stride, ...).
    candidates : dict
        Applicable algorithm names -> zero-argument callables that run the call.
    default : str
        The heuristic's choice, used when autotuning is off.
    """
    if not enabled() or len(candidates) < 2:
        return default
    skey = repr(key + (numba.get_num_threads(),))
    known = STORE.get(skey)
    if known in candidates:
        return known
    times = {name: _time(run) for name, run in candidates.items()}
    best = min(times, key=times.get)
    STORE.put(skey, best)
    return best
