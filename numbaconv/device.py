"""Which device runs the kernels, and moving arrays between host and GPU.

The starting device comes from the environment variable ``NUMBACONV_DEVICE`` (``cpu``, ``cuda`` or
``auto``), read in exactly one place, :func:`_device_from_env`. Host arrays are ``numpy.ndarray``;
device arrays are anything with ``__cuda_array_interface__`` (numba, CuPy, PyTorch CUDA tensors).
"""

import contextlib
import contextvars
import os
import threading

import numpy as np

from numbaconv import _cuda

DEVICES = ("cpu", "cuda")
_ENV = "NUMBACONV_DEVICE"
_ENV_VALUES = ("cpu", "cuda", "auto")

_lock = threading.Lock()
_global = {}  # "device": set by set_device or resolved from the environment on first use
_override = contextvars.ContextVar("numbaconv_device", default=None)  # use_device, per context


def _device_from_env():
    """Resolve NUMBACONV_DEVICE; the only place that reads it."""
    value = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if value not in _ENV_VALUES:
        raise ValueError(f"{_ENV}={os.environ[_ENV]!r} is not valid; use one of "
                         f"{', '.join(_ENV_VALUES)} (auto = cuda when a usable GPU is present)")
    if value == "auto":
        return "cuda" if cuda_available() else "cpu"
    if value == "cuda":
        _require_cuda(f"{_ENV}=cuda")
    return value


def _require_cuda(who):
    reason = _cuda.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"{who} asks for the CUDA device, but it cannot be used: {reason}")


def _check_name(name):
    if not isinstance(name, str) or name.lower() not in DEVICES:
        raise ValueError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    return name.lower()


def cuda_available():
    """Return True when the CUDA backend can run (a usable GPU, or ``NUMBA_ENABLE_CUDASIM=1``)."""
    return _cuda.available()


def get_device():
    """Return the current device, ``'cpu'`` or ``'cuda'``.

    Raises
    ------
    ValueError
        If ``NUMBACONV_DEVICE`` holds an unknown value.
    RuntimeError
        If ``NUMBACONV_DEVICE=cuda`` but CUDA cannot be used; the message gives the reason.
    """
    dev = _override.get()
    if dev is not None:
        return dev
    with _lock:
        if "device" not in _global:
            _global["device"] = _device_from_env()
        return _global["device"]


def set_device(name):
    """Make ``name`` (``'cpu'`` or ``'cuda'``) the current device for host inputs.

    Raises ``RuntimeError`` with the reason when ``'cuda'`` is asked for but cannot be used.
    """
    name = _check_name(name)
    if name == "cuda":
        _require_cuda("set_device('cuda')")
    with _lock:
        _global["device"] = name


@contextlib.contextmanager
def use_device(name):
    """Context manager that runs host inputs on ``name`` inside the ``with`` block.

    Examples
    --------
    >>> with nc.use_device("cpu"):
    ...     y = nc.functional.relu(x)
    """
    name = _check_name(name)
    if name == "cuda":
        _require_cuda("use_device('cuda')")
    token = _override.set(name)
    try:
        yield name
    finally:
        _override.reset(token)


def where(x):
    """Return ``'cuda'`` for a device array and ``'cpu'`` for anything else."""
    return "cuda" if _cuda.is_device_array(x) else "cpu"


def to_device(x, device=None):
    """Return ``x`` on ``device`` (default: the current device), copying only when it must move.

    On ``'cuda'`` the result is a numba device array (device arrays are returned unchanged);
    on ``'cpu'`` it is a NumPy array.
    """
    device = get_device() if device is None else _check_name(device)
    if device == "cpu":
        return to_numpy(x)
    _require_cuda("to_device(x, 'cuda')")
    if _cuda.is_device_array(x):
        return x
    return _cuda.to_device(np.asarray(x), stream=0)


def to_numpy(x):
    """Return ``x`` as a NumPy array, copying device arrays to the host."""
    if _cuda.is_device_array(x):
        return _cuda.to_host(x, stream=_cuda.stream_of(x))  # after the work that made x
    return np.asarray(x)


def like(out, template):
    """Return device array ``out`` as the same kind of array as ``template`` (CuPy, torch, numba)."""
    module = type(template).__module__.split(".")[0]
    if module == "cupy":
        import cupy

        return cupy.asarray(out)
    if module == "torch":
        import torch

        return torch.as_tensor(out, device=template.device)
    return out


def simd_width():
    """float32 lanes of the CPU kernels' vectors: 16 (AVX-512), 8 (AVX2) or 1, from the host's
    features unless ``NUMBACONV_SIMD_WIDTH`` forces one."""
    from numbaconv.cpu import simd

    return simd.LANES


def cache_dir():
    """Folder the CPU kernels are cached in, or None where no folder is usable (they compile in
    every process); see :mod:`numbaconv._jitcache`."""
    from numbaconv import _jitcache, cpu

    return _jitcache.folder(os.path.dirname(cpu.__file__))


def info():
    """Print versions, devices, threads, SIMD width and the kernel cache folder."""
    import llvmlite
    import llvmlite.binding as llvm
    import numba

    import numbaconv

    lines = [
        f"numbaconv {numbaconv.__version__}",
        f"numba     {numba.__version__}",
        f"llvmlite  {llvmlite.__version__}",
        f"numpy     {np.__version__}",
    ]
    try:
        from importlib.metadata import version

        lines.append(f"numba-cuda {version('numba-cuda')}")
    except Exception:
        lines.append("numba-cuda not installed")
    try:
        lines.append(f"device    {get_device()}  ({_ENV}={os.environ.get(_ENV, 'auto')})")
    except (ValueError, RuntimeError) as exc:
        lines.append(f"device    error: {exc}")
    reason = _cuda.unavailable_reason()
    lines.append(f"cuda      {'available: ' + _cuda.device_name() if reason is None else reason}")
    lines.append(f"threads   {numba.get_num_threads()} (NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS})")
    from numbaconv.cpu import simd, workspace

    lines.append(f"simd      {simd_width()} float32 lanes (host CPU: {llvm.get_host_cpu_name()}, "
                 f"{simd.host_lanes()} lanes native)")
    folder = cache_dir()
    lines.append(f"cache     {folder or 'none: no writable folder, kernels compile in every process'}")
    st = workspace.WEIGHTS.stats()
    lines.append(f"weights   {st['entries']} transformed weights cached, {st['bytes'] / 2**20:.1f} "
                 f"of {st['limit_bytes'] / 2**20:.0f} MiB (NUMBACONV_CACHE_MB); {st['hits']} hits, "
                 f"{st['misses']} misses")
    print("\n".join(lines))
