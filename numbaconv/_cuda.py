"""The one module that imports ``numba.cuda``.

Everything CUDA-related in numbaconv goes through here, so the CUDA backend can move to another
package (for example numba-cuda-mlir) by changing this file alone. ``numba.cuda`` is imported
lazily: importing numbaconv never touches the CUDA driver.

Kernels in ``numbaconv/cuda/`` are declared with :func:`kernel`, which also records them in
:data:`KERNELS` so that the test suite can compile every kernel to PTX without a GPU.
"""

import os
import re
import threading
import weakref

import numpy as np

_state = {}  # "module", "error": cached results of the first import attempt
KERNELS = []  # (qualified name, python function, [signature strings]) for every declared kernel


def simulator_enabled():
    """True when ``NUMBA_ENABLE_CUDASIM=1`` runs CUDA kernels in numba's Python simulator."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _import():
    if "module" not in _state and "error" not in _state:
        try:
            import numba_cuda  # noqa: F401  numba's own deprecated CUDA target cannot build ours
            from numba import cuda  # the one numba.cuda import

            _state["module"] = cuda
            if not simulator_enabled():
                _install_pool(cuda)
        except Exception as exc:  # ImportError, or a broken CUDA toolkit install
            _state["error"] = f"numba.cuda cannot be imported ({type(exc).__name__}: {exc}); " \
                "install the extra: pip install 'numbaconv[cuda12]' or 'numbaconv[cuda13]'"
    return _state.get("module")


def cuda():
    """Return the ``numba.cuda`` module, raising ``RuntimeError`` with the reason if it is missing."""
    mod = _import()
    if mod is None:
        raise RuntimeError(_state["error"])
    return mod


def unavailable_reason():
    """Why the CUDA backend cannot run here, or ``None`` when it can (GPU or simulator)."""
    if "reason" not in _state:
        mod = _import()
        if mod is None:
            reason = _state["error"]
        elif simulator_enabled():
            reason = None
        else:
            try:
                ok = mod.is_available()
            except Exception as exc:  # driver present but broken
                ok, why = False, f"{type(exc).__name__}: {exc}"
            else:
                why = "numba.cuda.is_available() is False (no NVIDIA driver or no GPU found)"
            reason = None if ok else (
                f"no usable CUDA device: {why}; set NUMBA_ENABLE_CUDASIM=1 to use the simulator")
        _state["reason"] = reason
    return _state["reason"]


def available():
    """True when CUDA kernels can run: a usable GPU, or the simulator."""
    return unavailable_reason() is None


def is_device_array(x):
    """True for arrays that live on the GPU (anything with ``__cuda_array_interface__``)."""
    if isinstance(x, np.ndarray):
        return False
    if type(x).__name__ == "DeviceNDArray":  # numba's: skip building the interface (per call)
        return True
    if hasattr(x, "__cuda_array_interface__"):
        return True
    # The simulator's arrays are host memory dressed as device arrays, without the interface.
    return simulator_enabled() and type(x).__name__ == "FakeCUDAArray"


def as_device_array(x):
    """A numba device-array view of a device array (CuPy, PyTorch, numba), without copying.

    The producer's stream is not synchronised (numba's default for the array interface): the
    op launches on the caller's stream instead (:func:`stream_of`), which orders it after the
    producer's work without blocking the host.
    """
    if type(x).__name__ in ("DeviceNDArray", "FakeCUDAArray"):
        return x
    return cuda().as_cuda_array(x, sync=False)


# ---- streams: every launch and copy of an op goes to the caller's stream ------------------------
_launch = threading.local()  # .stream: where this thread's kernels and copies go
_EXTERNAL = {}  # raw stream handle -> numba stream object


def _external(handle):
    # A numba stream for a raw CUDA stream handle (0 or None: the default stream), made once.
    if not handle:
        return 0
    stream = _EXTERNAL.get(handle)
    if stream is None:
        stream = _EXTERNAL[handle] = cuda().external_stream(handle)
    return stream


def stream_of(x):
    """The stream that work on device array ``x`` is ordered on (0: the default stream).

    PyTorch's or CuPy's current stream for their arrays, a numba array's bound stream, else the
    stream its ``__cuda_array_interface__`` names.
    """
    module = _library(x)
    if module == "torch":
        import torch

        return _external(torch.cuda.current_stream(x.device).cuda_stream)
    if module == "cupy":
        import cupy

        return _external(cupy.cuda.get_current_stream().ptr)
    if type(x).__name__ in ("DeviceNDArray", "FakeCUDAArray"):
        return x.stream
    return _external(x.__cuda_array_interface__.get("stream"))


def call_stream(arrays):
    """The stream an op on device arrays ``arrays`` runs on: the first one's (:func:`stream_of`).
    Work queued on another argument's own, different stream is waited for first."""
    stream = stream_of(arrays[0])
    if simulator_enabled():  # the simulator runs everything synchronously
        return stream
    for x in arrays[1:]:
        if _library(x) in ("torch", "cupy"):
            continue  # their library's current stream: the same for every argument
        other = stream_of(x)
        if other and stream_key(other) != stream_key(stream):
            wait_for(stream, other)
    return stream


def _library(x):
    # The top-level package of an array's type: "torch", "cupy", "numba", ...
    return type(x).__module__.split(".")[0]


def use_stream(stream):
    """Send this thread's kernel launches and copies to ``stream`` (0: the default stream)
    until the next call; every op calls it with its caller's stream before it launches."""
    _launch.stream = stream


def current_stream():
    """The stream this thread's launches and copies go to (see :func:`use_stream`)."""
    return getattr(_launch, "stream", 0)


def wait_for(stream, other):
    """Order later work on ``stream`` after the work queued so far on ``other``, without
    blocking the host (an event recorded on one and waited for on the other)."""
    event = cuda().event(timing=False)
    event.record(stream=other)
    event.wait(stream=stream)


def to_device(a, stream=None):
    """Copy a host array to a new device array, on ``stream`` (default: the current one)."""
    stream = current_stream() if stream is None else stream
    # np.asarray(order="C") rather than np.ascontiguousarray, which makes 0-d arrays 1-d.
    return cuda().to_device(np.asarray(a, order="C"), stream=stream)


def to_host(d, stream=None):
    """Copy a device array to a new NumPy array after the work queued on ``stream`` (default:
    the current one)."""
    stream = current_stream() if stream is None else stream
    out = as_device_array(d).copy_to_host(stream=stream)
    if stream:  # an asynchronous copy: the caller is about to read the host array
        stream.synchronize()
    return out


def copy(d):
    """A new C-contiguous device array with the contents of device array ``d``."""
    d = as_device_array(d)
    out = empty(d.shape, d.dtype)
    out.copy_to_device(d if d.is_c_contiguous() else to_host(d), stream=current_stream())
    return out


def empty(shape, dtype):
    """Allocate an uninitialised C-contiguous device array."""
    return cuda().device_array(shape, dtype=dtype)


def synchronize():
    cuda().synchronize()


def device_name():
    """The GPU's name, or a word about the simulator."""
    if simulator_enabled():
        return "CUDA simulator"
    name = cuda().get_current_device().name
    return name.decode() if isinstance(name, bytes) else name


def cache_impls():
    """numba-cuda's kernel-cache implementation classes, for :mod:`numbaconv._jitcache` ([]
    where numba-cuda cannot be imported)."""
    if _import() is None:
        return []
    from numba.cuda.core import caching

    return [caching.CacheImpl]


def kernel(*signatures, half=False):
    """Declare a CUDA kernel: ``@kernel("void({T}[::1], {T}[::1])")``; it launches on
    :func:`current_stream`.

    ``{T}`` in a signature is expanded to float32 and float64, and also to float16 with
    ``half=True`` (a kernel that takes float16 arrays: an inference op that accumulates in
    float32, see :func:`numbaconv.cuda._common.widen`). The kernel is compiled lazily for the
    argument types it is called with (and cached on disk); the expanded signatures are only
    used by the PTX test, which compiles every registered kernel for sm_80 and sm_90.
    """
    dtypes = ("float16", "float32", "float64") if half else ("float32", "float64")

    def wrap(func):
        sigs = []
        for sig in signatures:
            sigs += [sig.format(T=t) for t in dtypes] if "{T}" in sig else [sig]
        KERNELS.append((f"{func.__module__}.{func.__name__}", func, sigs))
        return _Kernel(cuda().jit(cache=not simulator_enabled())(func))

    return wrap


class _Kernel:
    """A compiled kernel whose launches, ``k[grid, block](*args)``, go to the current stream."""

    __slots__ = ("dispatcher",)

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher

    def __getitem__(self, config):
        grid, block = config
        # numba warns (NumbaPerformanceWarning) about every grid under 128 blocks; numbaconv
        # launches small grids on purpose for small inputs, so its launches skip the check.
        settings = _numba_settings()
        if settings is None:
            return self.dispatcher[grid, block, current_stream()]
        warn = settings.CUDA_LOW_OCCUPANCY_WARNINGS
        settings.CUDA_LOW_OCCUPANCY_WARNINGS = 0
        try:
            return self.dispatcher[grid, block, current_stream()]
        finally:
            settings.CUDA_LOW_OCCUPANCY_WARNINGS = warn

    def __getattr__(self, name):  # the dispatcher's attributes (py_func, overloads, ...)
        return getattr(self.dispatcher, name)


def _numba_settings():
    # The numba-cuda config module its launches read (None where it has no such setting).
    if "settings" not in _state:
        import numba.cuda.dispatcher as dispatcher  # numba-cuda internals: kept in this module

        settings = getattr(dispatcher, "config", None)
        _state["settings"] = settings if hasattr(settings, "CUDA_LOW_OCCUPANCY_WARNINGS") \
            else None
    return _state["settings"]


def overload(func):
    """Give plain Python function ``func`` a typing-time implementation inside CUDA kernels.

    ``@overload(func)`` decorates ``typer(*numba_types)``, which returns the Python function to
    compile for those argument types (numba's ``overload``). ``func`` itself is what the
    simulator, which runs kernels as Python, calls.
    """

    def wrap(typer):
        if not simulator_enabled():
            from numba.cuda.extending import overload as numba_overload

            numba_overload(func, target="cuda")(typer)
        return typer

    return wrap


def is_float16(numba_type):
    """True for numba's float16 scalar type, or an array dtype (``DType``) of it."""
    return str(getattr(numba_type, "dtype", numba_type)) == "float16"


def device_function(func):
    """Compile a plain Python function (e.g. from ``numbaconv._ops``) as a CUDA device function."""
    return cuda().jit(device=True)(func)


def compile_ptx(func, signature, cc):
    """Compile kernel ``func`` (a Python function) to PTX for compute capability ``cc``.

    Works without a GPU. numba-cuda 0.30 asks the current GPU for its compute capability when it
    compiles a device function that a kernel calls (``apply_act``), which fails where there is
    no driver; for the length of this call it is answered with the target ``cc`` instead.
    """
    import contextlib
    import types

    import numba.cuda.dispatcher as dispatcher  # numba-cuda internals: kept in this one module

    @contextlib.contextmanager
    def target_device():
        original = dispatcher.get_current_device
        dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
        try:
            yield
        finally:
            dispatcher.get_current_device = original

    with target_device():
        ptx, _ = cuda().compile_ptx(func, signature, cc=cc)
    return ptx


def _nvjitlink():
    try:
        from cuda.bindings import nvjitlink  # NVIDIA's nvJitLink: ptxas without a GPU or driver
    except Exception as exc:  # cuda-bindings missing, or too old to ship nvjitlink
        raise RuntimeError(
            f"nvJitLink is unavailable ({type(exc).__name__}: {exc}); it comes with "
            "cuda-bindings: pip install 'numbaconv[cuda13]'") from None
    return nvjitlink


def nvjitlink_version():
    """The nvJitLink library's version as a string such as ``"13.0"`` (``RuntimeError`` if it
    is unavailable)."""
    nv = _nvjitlink()
    try:
        major, minor = nv.version()
    except Exception as exc:  # the bindings import but libnvJitLink.so cannot be loaded
        raise RuntimeError(f"nvJitLink is unavailable ({type(exc).__name__}: {exc})") from None
    return f"{major}.{minor}"


def _nvjitlink_link(ptx, cc, options, result):
    # Assemble PTX for sm_<cc> with nvJitLink's ptxas (plus options); return result(nv, read),
    # where read(nv.get_X_size, nv.get_X) reads one of the handle's buffers (a log, the cubin).
    nv = _nvjitlink()
    options = [f"-arch=sm_{cc[0]}{cc[1]}", *options, "-O3"]
    try:
        handle = nv.create(len(options), options)
    except Exception as exc:  # libnvJitLink.so missing, or an arch it does not know
        raise RuntimeError(f"nvJitLink is unavailable ({type(exc).__name__}: {exc})") from None

    def read(size, get):
        buf = bytearray(size(handle))  # a bytearray: the bindings write into it
        get(handle, buf)
        return bytes(buf)

    try:
        data = ptx.encode()
        try:  # add_data already compiles the PTX
            nv.add_data(handle, nv.InputType.PTX, data, len(data), "kernel")
            nv.complete(handle)
        except Exception as exc:
            raise RuntimeError(f"ptxas (nvJitLink) rejected the PTX: {exc}\n"
                               f"{_text(read(nv.get_error_log_size, nv.get_error_log))}") from None
        return result(nv, read)
    finally:
        nv.destroy(handle)


def _ptxas_log(ptx, cc):
    # Assemble PTX to SASS with nvJitLink's ptxas in verbose mode; return its info log.
    return _nvjitlink_link(ptx, cc, ["-verbose"], lambda nv, read: _text(
        read(nv.get_info_log_size, nv.get_info_log)))


def _text(log):
    return log.decode(errors="replace").rstrip("\x00")


def kernel_resources(func, signature, cc):
    """ptxas's resource usage of kernel ``func`` compiled for ``signature`` and compute
    capability ``cc``: what ``nvcc -Xptxas -v`` prints, obtained without a GPU.

    The kernel is compiled to PTX with :func:`compile_ptx` and assembled by nvJitLink (from
    cuda-bindings). These are compiler figures, not measurements on a device.

    Parameters
    ----------
    func : Python function of a kernel (the third field of a :data:`KERNELS` entry).
    signature : str, e.g. ``"void(float32[::1], float32[::1])"``.
    cc : (major, minor) tuple, e.g. ``(9, 0)``.

    Returns
    -------
    dict with int values: ``registers`` per thread, ``stack`` (bytes of stack frame per thread;
    local arrays the compiler could not keep in registers), ``spill_stores`` and
    ``spill_loads`` (bytes; summed over the entry and any device function it calls), ``smem``
    (bytes of static shared memory per block).

    Raises
    ------
    RuntimeError
        If nvJitLink is unavailable or ptxas rejects the PTX.
    """
    log = _ptxas_log(compile_ptx(func, signature, cc), cc)
    used = re.search(r"used (\d+) registers.*?(\d+) stack, (\d+) bytes smem", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if used is None or not spills:
        raise RuntimeError(f"unexpected nvJitLink info log for {signature}:\n{log}")
    return {"registers": int(used[1]), "stack": int(used[2]),
            "spill_stores": sum(int(s) for s, _ in spills),
            "spill_loads": sum(int(lo) for _, lo in spills), "smem": int(used[3])}


def nvdisasm_path():
    """Path of NVIDIA's disassembler ``nvdisasm``: the one of the nvidia-cuda-nvdisasm wheel
    (``nvidia/cu13/bin``; ``nvidia/cuda_nvdisasm/bin`` for CUDA 12), which matches the nvJitLink
    wheel, else the first on ``PATH``; ``RuntimeError`` (with the pip command) if neither."""
    import glob
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("nvidia")  # the namespace package of NVIDIA's wheels
    for root in (spec.submodule_search_locations or []) if spec else []:
        for name in ("nvdisasm", "nvdisasm.exe"):
            found = sorted(glob.glob(os.path.join(root, "*", "bin", name)))
            if found:
                return found[-1]
    found = shutil.which("nvdisasm")
    if found is None:
        raise RuntimeError("nvdisasm is unavailable (not on PATH, no NVIDIA wheel ships it): "
                           "pip install nvidia-cuda-nvdisasm")
    return found


def kernel_sass(func, signature, cc):
    """The SASS (machine code) of kernel ``func`` compiled for ``signature`` and compute
    capability ``cc``, as ``nvdisasm -c`` prints it, obtained without a GPU.

    The kernel is compiled to PTX with :func:`compile_ptx`, assembled to a cubin by nvJitLink
    (``-O3``, as in :func:`kernel_resources`) and disassembled by :func:`nvdisasm_path`'s tool.
    The text holds the kernel and the device functions it calls (division slow paths and the
    like); :func:`sass_loops` finds its loops.

    Parameters
    ----------
    func, signature, cc : as for :func:`kernel_resources`.

    Returns
    -------
    str, one instruction per line (``/*0010*/  FFMA R4, R8, R12, R4 ;``), with the branch
    targets as labels (``.L_x_12:``).

    Raises
    ------
    RuntimeError
        If nvJitLink or nvdisasm is unavailable, ptxas rejects the PTX or nvdisasm fails.
    """
    import subprocess
    import tempfile

    tool = nvdisasm_path()
    cubin = _nvjitlink_link(compile_ptx(func, signature, cc), cc, [], lambda nv, read: read(
        nv.get_linked_cubin_size, nv.get_linked_cubin))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        done = subprocess.run([tool, "-c", path], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nvdisasm failed for {signature} (exit {done.returncode}):\n"
                           f"{done.stderr}")
    return done.stdout


# An instruction line of nvdisasm: "/*0a40*/  @!P0 LDS.128 R8, [R3+0x10] ;" -> "LDS.128".
_SASS_OPCODE = re.compile(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_SASS_LABEL = re.compile(r"\s*(\.L_\w+):")
_SASS_BRANCH = re.compile(r"\bBRA\b[^`]*`\((\.L_\w+)\)")


def _sass_opcode(line):
    # The opcode's first dotted part (FFMA.FTZ -> FFMA); loads and stores keep their modifiers,
    # which give the access width (LDS vs LDS.128, LDG.E.128.CONSTANT); None if no instruction.
    m = _SASS_OPCODE.match(line)
    if m is None:
        return None
    if m[1].startswith("HFMA2") and re.search(r"HFMA2\S*\s+\S+\s+-RZ, RZ,", line):
        return "MOV"  # -0 * 0 + constant: how ptxas loads a constant, not an FMA
    return m[1] if m[1].startswith(("LD", "ST")) else m[1].split(".")[0]


def sass_opcodes(sass):
    """``collections.Counter`` of the opcodes of the SASS text ``sass`` (from
    :func:`kernel_sass`): the first dotted part (``FFMA.FTZ`` counts as ``FFMA``), except that
    loads and stores keep their modifiers (``LDS`` and ``LDS.128`` count apart) and that
    ``HFMA2.MMA Rd, -RZ, RZ, a, b``, ptxas's way of loading a constant, counts as ``MOV``."""
    import collections

    return collections.Counter(op for op in map(_sass_opcode, sass.splitlines()) if op)


def sass_loops(sass):
    """The loops of the SASS text ``sass`` (from :func:`kernel_sass`).

    A loop is a label and the last backward branch (``BRA``) to it; its body is every
    instruction between them, so a loop nested in it counts once (one trip). The one-instruction
    ``BRA`` to itself that ends every function is not a loop.

    Returns
    -------
    list, in the order of the text, of dicts: ``label`` (str), ``lines`` (first, last line
    index into ``sass.splitlines()``), ``instructions`` (int), ``opcodes``
    (``collections.Counter`` keyed as :func:`sass_opcodes`), ``contains_loop`` (bool: another
    loop lies inside it), ``parent`` (index in this list of the innermost loop enclosing it, or
    None), ``depth`` (how many loops enclose it).
    """
    import collections

    lines = sass.splitlines()
    opcodes = [_sass_opcode(line) for line in lines]
    starts, ends = {}, {}
    for i, line in enumerate(lines):
        label = _SASS_LABEL.match(line)
        if label:
            starts[label[1]] = i
            continue
        target = _SASS_BRANCH.search(line) if opcodes[i] == "BRA" else None
        if target and target[1] in starts:  # its label lies above: a backward branch
            ends[target[1]] = i
    loops = []
    for label, end in ends.items():
        body = collections.Counter(op for op in opcodes[starts[label]:end + 1] if op)
        if sum(body.values()) > 1:
            loops.append({"label": label, "lines": (starts[label], end),
                          "instructions": sum(body.values()), "opcodes": body,
                          "contains_loop": False, "parent": None, "depth": 0})
    loops.sort(key=lambda lp: lp["lines"])
    for i, inner in enumerate(loops):
        (first, last), enclosing = inner["lines"], []
        for j, outer in enumerate(loops):
            if j != i and outer["lines"][0] < first and last <= outer["lines"][1]:
                enclosing.append(j)
                outer["contains_loop"] = True
        if enclosing:  # the innermost enclosing loop starts last
            inner["parent"] = max(enclosing, key=lambda j: loops[j]["lines"][0])
            inner["depth"] = len(enclosing)
    return loops


SASS_FMA = ("FFMA", "DFMA", "HFMA2")  # fused multiply-adds (sass_opcodes keys)


def sass_fma(loop):
    """Fused multiply-adds (FFMA, DFMA, HFMA2) in one of :func:`sass_loops`' loops."""
    return sum(loop["opcodes"][op] for op in SASS_FMA)


def sass_hot_loop(loops):
    """The hot loop among :func:`sass_loops`' ``loops``: of the innermost loops (no loop inside)
    that contain FMAs, one at the deepest nesting, with the most FMAs; None if there is none.

    Depth first: a GEMM kernel's epilogue loop holds more FMAs (every branch of the fused
    activation's polynomials) than its reduction loop, nested in the staging loop, which runs
    the most."""
    inner = [lp for lp in loops if not lp["contains_loop"] and sass_fma(lp)]
    return max(inner, key=lambda lp: (lp["depth"], sass_fma(lp)), default=None)


# ---- device memory: a caching pool --------------------------------------------------------------
# Every op allocates its output; cuMemAlloc per call is slow and cuMemFree synchronises the device.
# numbaconv therefore installs a numba memory-manager plugin (EMM) that keeps freed blocks and
# hands them to later allocations of the same size class on the same stream, whose work is
# queued after the block's previous user's. It serves every numba allocation in the process.
# NUMBACONV_CUDA_POOL=0, or a NUMBA_CUDA_MEMORY_MANAGER of the user's, leaves numba's default.


def block_size(size):
    """The pool's size class for a request of ``size`` bytes: a multiple of 512 B up to 1 MiB,
    of 1 MiB above (at most 1/1024 or 512 B wasted)."""
    unit = 512 if size <= 1 << 20 else 1 << 20
    return max(unit, -(-size // unit) * unit)


class BlockPool:
    """Free device blocks, by (stream, size class) key."""

    def __init__(self):
        self.free = {}
        self.cached = 0  # bytes held

    def take(self, key):
        """A free block for ``key``, or None."""
        blocks = self.free.get(key)
        if not blocks:
            return None
        self.cached -= key[1]
        return blocks.pop()

    def give(self, key, block):
        self.free.setdefault(key, []).append(block)
        self.cached += key[1]

    def drain(self):
        """Remove and return every free block."""
        blocks = [b for bs in self.free.values() for b in bs]
        self.free.clear()
        self.cached = 0
        return blocks


def stream_key(stream):
    """A hashable key for a stream object (0: the default stream)."""
    if not stream:
        return 0
    return id(stream) if simulator_enabled() else int(stream)  # the simulator's have no handle


def _install_pool(cuda_module):
    if os.environ.get("NUMBACONV_CUDA_POOL", "1") == "0":
        return
    if os.environ.get("NUMBA_CUDA_MEMORY_MANAGER", "default") != "default":
        return  # the user's own plugin
    from numba.cuda.cudadrv import driver as drv  # numba-cuda internals: kept in this module

    class PoolMemoryManager(drv.NumbaCUDAMemoryManager):
        """numba's memory manager, with freed device blocks kept in a :class:`BlockPool`."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.pool = BlockPool()

        def memalloc(self, size):
            key = (stream_key(current_stream()), block_size(size))
            ptr = self.pool.take(key)
            if ptr is None:
                try:
                    ptr = self._attempt_allocation(lambda: drv.driver.cuMemAlloc(key[1]))
                except drv.CudaAPIError:  # out of memory even after numba's own cleanup
                    self.release()
                    ptr = drv.driver.cuMemAlloc(key[1])
            mem = drv.AutoFreePointer(weakref.proxy(self.context), ptr, size,
                                      finalizer=_back_to_pool(self.allocations, self.pool, key,
                                                              ptr))
            self.allocations[ptr] = mem  # the one strong reference, as numba's own manager
            return mem.own()

        def release(self):
            """Return the pool's free blocks to the driver."""
            for ptr in self.pool.drain():
                drv.driver.cuMemFree(ptr)

        def reset(self):
            super().reset()
            self.pool.drain()  # the context's memory goes with it

    cuda_module.set_memory_manager(PoolMemoryManager)
    _state["pool"] = PoolMemoryManager


def _back_to_pool(allocations, pool, key, ptr):
    # The finalizer of a pooled allocation; it must not refer to the pointer object itself.
    def finalize():
        allocations.pop(ptr, None)
        pool.give(key, ptr)

    return finalize
