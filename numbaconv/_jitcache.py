"""Keep numba's on-disk kernel cache in step with the sources it was compiled from.

numba keys a cached kernel on its own source file only. Our kernels inline helpers from other
modules (``numbaconv/_ops.py``, ``_common.py``), so after an edit there (or a ``git pull``) numba
would reuse machine code compiled from the old helper. Each backend calls :func:`refresh` before
it compiles anything: when the hash of the sources differs from the one stamped in the cache
folder, the cached kernels there are deleted and recompiled on first use.
"""

import glob
import hashlib
import os

_STAMP = "numbaconv-sources.sha256"


def refresh(package_dir, extra_sources=(), settings=""):
    """Delete cached kernels under ``package_dir/__pycache__`` if any source file changed, or
    the compile-time ``settings`` (e.g. the SIMD width kernels are built for) differ."""
    sources = sorted(glob.glob(os.path.join(package_dir, "*.py"))) + list(extra_sources)
    digest = hashlib.sha256(settings.encode())
    for path in sources:
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read())
    cache = os.path.join(package_dir, "__pycache__")
    stamp = os.path.join(cache, _STAMP)
    try:
        with open(stamp) as f:
            if f.read() == digest.hexdigest():
                return
    except OSError:
        pass
    try:
        for path in glob.glob(os.path.join(cache, "*.nbi")) + glob.glob(os.path.join(cache, "*.nbc")):
            os.remove(path)
        os.makedirs(cache, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(digest.hexdigest())
    except OSError:
        # A read-only install: numba then caches elsewhere and the sources cannot change anyway.
        pass


OPS_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ops.py")
