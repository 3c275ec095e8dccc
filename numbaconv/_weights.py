"""Versions of weight arrays, so that their transformed copies can be cached safely.

NumPy does not say when an array changes in place, so a cached transform (packed GEMM panels,
Winograd-transformed filters) of a plain array could silently go stale. A transform is therefore
cached only for arrays whose owner vouches for them: :func:`track` starts versioning an array
(the layers do this for their parameters) and :func:`changed` bumps its version after an in-place
update (layers and optimisers call it). Untracked arrays are transformed on every call, into a
pooled buffer, as PyTorch's eager mode reorders weights on every call.
"""

import itertools
import threading
import weakref

# Re-entrant: a tracked array can die (a weakref callback) inside a locked section, when the
# garbage collector runs there.
_LOCK = threading.RLock()
_TRACKED = {}  # id(array) -> [weakref to the array, serial, version]
_SERIALS = itertools.count()  # never reused, unlike ids and data pointers of freed arrays
_GONE = []  # callables taking the serial of a tracked array that died


def when_gone(hook):
    """Call ``hook(serial)`` when a tracked array dies (its serial as :func:`version` gave it),
    from the weakref callback: ``hook`` must not block, and may run inside any code, its own
    locked sections included (the garbage collector)."""
    _GONE.append(hook)


def _forget(key, ref):
    with _LOCK:
        entry = _TRACKED.get(key)
        if entry is None or entry[0] is not ref:
            return
        del _TRACKED[key]
    for hook in _GONE:
        hook(entry[1])


def track(array):
    """Version ``array`` from now on; returns it. The caller calls :func:`changed` after each
    in-place update of its contents."""
    key = id(array)
    with _LOCK:
        entry = _TRACKED.get(key)
        if entry is None or entry[0]() is not array:
            _TRACKED[key] = [weakref.ref(array, lambda ref, key=key: _forget(key, ref)),
                             next(_SERIALS), 0]
    return array


def changed(array):
    """Bump the version of a tracked ``array`` (no effect on an untracked one)."""
    with _LOCK:
        entry = _TRACKED.get(id(array))
        if entry is not None and entry[0]() is array:
            entry[2] += 1


def version(array):
    """``(serial, version)`` of a tracked ``array``, or None when nobody vouches for its contents.

    A view (reshape, slice) of a tracked array shares its version: it changes with it. The
    serial is unique to this tracking of the array, so together with the view's own data
    pointer, shape and strides it is a safe cache key.
    """
    with _LOCK:
        while array is not None:
            entry = _TRACKED.get(id(array))
            if entry is not None and entry[0]() is array:
                return entry[1], entry[2]
            array = getattr(array, "base", None)
    return None
