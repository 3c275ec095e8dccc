"""Keep numba's on-disk kernel cache in step with the sources it was compiled from.

numba keys a cached kernel on its own source file only. Our kernels inline helpers from other
modules (``numbaconv/_ops.py``, ``_common.py``) and are built for compile-time settings (the
SIMD width), so after an edit there, a ``git pull`` or a change of setting, numba would load
machine code compiled from the old helper. So each backend's kernels are cached in a folder of
their own named by a hash of the backend's sources and settings, ``numbaconv-<hash>``, inside
the folder numba would use (``NUMBA_CACHE_DIR``, else the package's ``__pycache__``, else the
user-wide cache): kernels compiled from other sources are never even looked at, also when
several processes with different sources (or SIMD widths) share one cache folder. Folders of
other hashes are deleted once unused for a day.
"""

import glob
import hashlib
import os
import shutil
import time

_PREFIX = "numbaconv-"
_STALE_S = 86400  # delete the folders of other source versions unused for this long
_DIGESTS = {}  # backend package folder -> digest of its sources and settings


def refresh(package_dir, extra_sources=(), settings="", cache_impls=None):
    """Cache the kernels of the backend in ``package_dir`` (its ``*.py`` files) under the hash of
    those sources, ``extra_sources`` and ``settings`` (e.g. the SIMD width kernels are built
    for), through numba's cache implementations ``cache_impls`` (default: numba's CPU one).

    Call before the backend's first kernel is compiled or loaded.
    """
    sources = sorted(glob.glob(os.path.join(package_dir, "*.py"))) + list(extra_sources)
    digest = hashlib.sha256(settings.encode())
    for path in sources:
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read())
    package_dir = os.path.abspath(package_dir)
    _DIGESTS[package_dir] = digest.hexdigest()[:20]
    if cache_impls is None:
        from numba.core import caching

        # CacheImpl from numba 0.62 on, _CacheImpl before
        cache_impls = [getattr(caching, "CacheImpl", None) or caching._CacheImpl]
    for impl in cache_impls:
        _install(impl)
    _tidy(package_dir)


def _cache_bases(caching, py_file):
    """The folders numba would cache ``py_file``'s kernels in, in its order of preference."""
    config = caching.config
    sub = caching._CacheLocator.get_suitable_cache_subpath(py_file)
    if config.CACHE_DIR:
        return [os.path.join(config.CACHE_DIR, sub)]
    bases = [os.path.join(os.path.dirname(py_file), "__pycache__")]
    appdirs = getattr(caching, "AppDirs", None)
    if appdirs is not None:  # a read-only install: the user-wide folder
        bases.append(os.path.join(appdirs(appname="numba", appauthor=False).user_cache_dir, sub))
    return bases


def _install(impl):
    """Put a locator for numbaconv's backend files first in ``impl``'s list (once)."""
    if any(getattr(c, "_numbaconv", False) for c in impl._locator_classes):
        return
    import sys

    caching = sys.modules[impl.__module__]

    class Locator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        """numba's locator for a source-backed function, in the folder of its backend's hash."""

        _numbaconv = True

        def __init__(self, py_func, py_file, path):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = path

        def get_cache_path(self):
            return self._cache_path

        @classmethod
        def from_function(cls, py_func, py_file):
            digest = _DIGESTS.get(os.path.dirname(os.path.abspath(py_file)))
            if digest is None:  # not a numbaconv backend file: numba's own locators
                return None
            for base in _cache_bases(caching, py_file):
                self = cls(py_func, py_file, os.path.join(base, _PREFIX + digest))
                try:
                    self.ensure_cache_path()
                except OSError:
                    continue
                return self
            return None

    impl._locator_classes.insert(0, Locator)


def _tidy(package_dir):
    """Mark this version's folder used, and delete other versions' folders unused for a day
    (and cache files of the flat layout older numbaconv versions wrote into ``__pycache__``)."""
    from numba.core import config

    digest = _DIGESTS[package_dir]
    if config.CACHE_DIR:
        from numba.core import caching

        bases = [os.path.join(config.CACHE_DIR, caching._CacheLocator.get_suitable_cache_subpath(
            os.path.join(package_dir, "__init__.py")))]
    else:
        bases = [os.path.join(package_dir, "__pycache__")]
    now = time.time()
    for base in bases:
        try:
            for path in glob.glob(os.path.join(base, "*.nbi")) + glob.glob(
                    os.path.join(base, "*.nbc")):
                os.remove(path)
            for path in glob.glob(os.path.join(base, _PREFIX + "*")):
                if os.path.basename(path) == _PREFIX + digest:
                    os.utime(path)
                elif now - os.path.getmtime(path) > _STALE_S:
                    shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # a read-only install, or another process tidying at the same time


OPS_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ops.py")
