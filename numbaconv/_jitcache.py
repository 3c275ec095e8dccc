"""numbaconv's on-disk kernel cache: kept in step with its sources, in a folder that works, and
never trusted blindly.

numba keys a cached kernel on its own source file only. Our kernels inline helpers from other
modules (``numbaconv/_ops.py``, ``_common.py``) and are built for compile-time settings (the
SIMD width), so after an edit there, a ``git pull`` or a change of setting, numba would load
machine code compiled from the old helper. So each backend's kernels are cached in a folder of
their own named by a hash of the backend's sources and settings, ``numbaconv-<hash>``: kernels
compiled from other sources are never even looked at, also when several processes with
different sources (or SIMD widths) share one cache folder. Folders of other hashes are deleted
once unused for a day.

The folder is the first usable one of: ``NUMBA_CACHE_DIR`` (a warning when it is set but not
usable), the package's ``__pycache__``, the user-wide cache (``~/.cache/numba``), a private
folder in the temporary directory (a warning: it does not survive a reboot). With none usable,
kernels compile in every process without a cache (a warning, once).

A cache file that cannot be read (truncated, garbage, of a crashed writer) is deleted, with a
warning naming it, and its kernel compiled again; a cache file that cannot be written (disk
full, folder gone) leaves that kernel uncached, with a warning. Neither ever fails a call.
"""

import glob
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings

_PREFIX = "numbaconv-"
_STALE_S = 86400  # delete the folders of other source versions unused for this long
_FOLDERS = {}  # backend package folder -> the folder its kernels are cached in, or None
_UNCACHED = _PREFIX + "uncached"  # the locators' folder when none is usable: never written
_ROOT = os.path.dirname(os.path.abspath(__file__))  # the numbaconv package
_LOCK = threading.Lock()
_TOLD = set()  # warnings given in this process (each once)


class KernelCacheWarning(UserWarning):
    """numbaconv's kernel cache is not where it was asked to be, lost an unreadable file, or
    cannot be written: calls still work, but kernels may compile again."""


def _tell(key, message):
    """Warn ``message`` once per process for ``key``."""
    with _LOCK:
        if key in _TOLD:
            return
        _TOLD.add(key)
    # Raised deep inside numba's dispatch: no line of the caller's to point at.
    warnings.warn_explicit(message, KernelCacheWarning, "numbaconv", 0,
                           module="numbaconv._jitcache")


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
    _FOLDERS[package_dir] = _choose(package_dir, _PREFIX + digest.hexdigest()[:20])
    if cache_impls is None:
        from numba.core import caching

        # CacheImpl from numba 0.62 on, _CacheImpl before
        cache_impls = [getattr(caching, "CacheImpl", None) or caching._CacheImpl]
    for impl in cache_impls:
        _install(impl, package_dir)
    if _FOLDERS[package_dir] is not None:
        _tidy(_FOLDERS[package_dir])


def folder(package_dir):
    """The folder the kernels of the backend in ``package_dir`` are cached in (None: they are
    not cached), once :func:`refresh` has run for it."""
    return _FOLDERS.get(os.path.abspath(package_dir))


def _unusable(path):
    """None when kernels can be cached in ``path`` (created if need be), else why not."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # numba's own test of a cache folder
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _private_temp():
    """This user's folder in the temporary directory, or None where it could be someone
    else's: another user who made it could plant cache files, which numba unpickles."""
    getuid = getattr(os, "getuid", None)
    base = os.path.join(tempfile.gettempdir(), f"numbaconv-cache-{getuid() if getuid else 0}")
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
        st = os.lstat(base)
    except OSError:
        return None
    if getuid is not None and (st.st_uid != getuid() or st.st_mode & 0o077):
        return None
    return base


def _choose(package_dir, name):
    """The cache folder ``name`` of the backend in ``package_dir``: in the first usable place,
    or None (no caching). Warns when that is not where the user asked, or temporary, or none."""
    from numba.core import caching, config

    # numba's subfolder per source folder under NUMBA_CACHE_DIR and the user-wide cache.
    sub = caching._CacheLocator.get_suitable_cache_subpath(os.path.join(package_dir, "x.py"))
    places = [os.path.join(package_dir, "__pycache__", name)]
    appdirs = getattr(caching, "AppDirs", None)
    if appdirs is not None:
        places.append(os.path.join(appdirs(appname="numba", appauthor=False).user_cache_dir, sub,
                                   name))
    if config.CACHE_DIR:
        places.insert(0, os.path.join(config.CACHE_DIR, sub, name))
    path, tried, temp = None, [], None
    for place in places + [None]:
        if place is None:  # the last resort, made only when needed
            temp = _private_temp()
            if temp is None:
                tried.append(f"{tempfile.gettempdir()} (no folder there private to this user)")
                break
            place = os.path.join(temp, sub, name)
        why = _unusable(place)
        if why is None:
            path = place
            break
        tried.append(f"{place} ({why})")
    if path is None:
        _tell("none", "numbaconv: no folder is writable for the kernel cache, so kernels compile "
              "again in every process (minutes). Tried: " + "; ".join(tried)
              + ". Set NUMBA_CACHE_DIR to a writable folder.")
    elif config.CACHE_DIR and path != places[0]:
        _tell("NUMBA_CACHE_DIR", f"numbaconv: NUMBA_CACHE_DIR={config.CACHE_DIR!r} cannot hold "
              f"the kernel cache: {tried[0]}; kernels are cached in {path} instead")
    if path is not None and temp is not None:
        _tell("temp", f"numbaconv: kernels are cached in the temporary folder {path}, which may "
              "not outlive a reboot: the package folder and the user cache are not writable. Set "
              "NUMBA_CACHE_DIR to a lasting writable folder.")
    return path


def _install(impl, package_dir):
    """Put a locator for numbaconv's files first in ``impl``'s list, and guard its cache files'
    reads and writes (once). A backend's own files are cached in its folder; other numbaconv
    files that ``impl`` compiles (``_ops.py``'s helpers, which the backend's hash covers) in the
    folder of ``package_dir``, the backend ``impl`` was installed for."""
    if any(getattr(c, "_numbaconv", False) for c in impl._locator_classes):
        return
    caching = sys.modules[impl.__module__]

    class Locator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        """numba's locator for a source-backed function, in its backend's folder; where no
        folder is usable it names one that is never written (loads miss, saves are skipped)."""

        _numbaconv = True

        def __init__(self, py_func, py_file, path):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = path

        def get_cache_path(self):
            return self._cache_path

        def ensure_cache_path(self):
            if os.path.basename(self._cache_path) != _UNCACHED:
                super().ensure_cache_path()

        @classmethod
        def from_function(cls, py_func, py_file):
            py_file = os.path.abspath(py_file)
            here = os.path.dirname(py_file)
            if here not in _FOLDERS and not py_file.startswith(_ROOT + os.sep):
                return None  # not numbaconv's: numba's own locators
            path = _FOLDERS.get(here, _FOLDERS[package_dir])
            return cls(py_func, py_file,
                       path or os.path.join(here, "__pycache__", _UNCACHED))

    impl._locator_classes.insert(0, Locator)
    _guard(caching.IndexDataCacheFile)


def _guard(cls):
    """Make the index/data cache files in numbaconv's folders (``cls``: numba's
    IndexDataCacheFile, or numba-cuda's) drop what they cannot unpickle and skip what they cannot
    write; other packages' caches behave as numba made them."""
    if getattr(cls, "_numbaconv", False):
        return
    load_index, load_data, save = cls._load_index, cls._load_data, cls.save

    def where(self):
        """'uncached', 'ours' or None (another package's cache)."""
        name = os.path.basename(self._cache_path)
        return "uncached" if name == _UNCACHED else "ours" if name.startswith(_PREFIX) else None

    def _load_index(self):
        kind = where(self)
        if kind == "uncached":
            return {}  # no usable folder (said once already)
        try:
            return load_index(self)
        except OSError:
            if kind is None:
                raise
            return {}  # unreadable (permissions): a miss
        except Exception as exc:  # truncated or garbage: unpickling fails in many ways
            if kind is None:
                raise
            _drop(self._index_path, exc)
            return {}

    def _load_data(self, name):
        try:
            return load_data(self, name)
        except OSError:
            raise  # numba's load() takes it as a miss (removed since the index named it)
        except Exception as exc:
            if where(self) is None:
                raise
            _drop(self._data_path(name), exc)
            raise OSError(f"dropped unreadable cache file {name}") from exc

    def _save(self, key, data):
        kind = where(self)
        if kind == "uncached":
            return None
        try:
            return save(self, key, data)
        except OSError as exc:
            if kind is None:
                raise
            _tell(("save", self._cache_path),
                  f"numbaconv: could not write to the kernel cache {self._cache_path} "
                  f"({type(exc).__name__}: {exc}); the kernels compiled now will compile again "
                  "in the next process")
            return None

    cls._load_index, cls._load_data, cls.save = _load_index, _load_data, _save
    cls._numbaconv = True


def _drop(path, exc):
    """Delete the unreadable cache file ``path`` (``exc``: why it could not be read)."""
    try:
        os.remove(path)
    except OSError:
        pass  # gone already, or another process dropped it first
    _tell(("drop", path), f"numbaconv: the kernel cache file {path} could not be read "
          f"({type(exc).__name__}: {exc}); it was deleted and its kernel is compiled again")


def _tidy(path):
    """Mark the cache folder ``path`` used, and delete other versions' folders beside it unused
    for a day (and cache files of the flat layout older numbaconv versions wrote there)."""
    base, name = os.path.split(path)
    now = time.time()
    try:
        for old in glob.glob(os.path.join(base, "*.nbi")) + glob.glob(os.path.join(base, "*.nbc")):
            os.remove(old)
        for other in glob.glob(os.path.join(base, _PREFIX + "*")):
            if os.path.basename(other) == name:
                os.utime(other)
            elif now - os.path.getmtime(other) > _STALE_S:
                shutil.rmtree(other, ignore_errors=True)
    except OSError:
        pass  # another process tidying at the same time


OPS_SOURCE = os.path.join(_ROOT, "_ops.py")
