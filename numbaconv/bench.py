"""Benchmarks: numbaconv next to PyTorch (when installed) and the machine's own ceilings.

Run with ``python -m numbaconv bench [--quick] [--only SECTION ...]``. Sections:

conv         conv2d on the ResNet-50, MobileNetV2 and VGG-16 layer sets (GFLOP/s), next to
             PyTorch (oneDNN on CPU) and the machine's measured sgemm ceiling (the better of
             NumPy's BLAS and torch.mm).
scaling      dense conv2d at 1 thread and at all threads (``numba.set_num_threads``; PyTorch's
             ``torch.set_num_threads`` likewise).
elementwise  every pooling op, every activation and batch_norm in GB/s (bytes read + written),
             as a share of a measured bandwidth ceiling: a Numba parallel copy of the same size.
overhead     host time per call of small ops (batch 1, 8 channels, 8x8 image) on inputs already
             on the device, next to PyTorch's: on a GPU, the launch cost.
e2e          ResNet-18 and MobileNetV2 inference through ``numbaconv.models``: the time of
             ``nn.fuse(model)(x)`` (BatchNorm folded, activations and residual adds in the conv
             epilogue; the path a user takes), next to the same network in PyTorch eager
             (``torch.nn`` modules with BatchNorm, eval, no_grad) and to the unfused model.
memory       ResNet-18's eval forward at batch 1 and 32, each in a fresh process: peak
             NumPy-side memory (tracemalloc), the rise of the resident set over the forward, the
             weights, the input and a lower bound (the largest layer's input + output); PyTorch
             eager's resident set likewise.
startup      in fresh processes: ``import numbaconv`` and the first conv2d call with the on-disk
             cache warm; the fused ResNet-18's first forward with an empty cache
             (``NUMBA_CACHE_DIR`` set to a new folder), compile included.

Every timed result is first checked (conv: sampled outputs against a float64 direct sum;
memory-bound ops: a float64 NumPy reference; networks: PyTorch's logits, fused and unfused), so
a fast wrong kernel cannot report a number; a failed check raises :class:`BenchCheckError`. Timed
functions run in alternating rounds (numbaconv, PyTorch, numbaconv, ...) so that load from other
processes hits both alike; the reported time is the best round, the median is kept too.

The layer shapes live here (not only in ``bench/``) so that the command works from an installed
package; ``bench/shapes.py`` re-exports them.
"""

import os

# Set in the children that time one library alone (thread scaling): no wait-policy change there.
_ALONE = "NUMBACONV_BENCH_ALONE"
_USER_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY") or None  # before _torch() sets it

import contextlib  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import prange  # noqa: E402

from numbaconv import _weights  # noqa: E402
from numbaconv import device as _device  # noqa: E402
from numbaconv import functional as F  # noqa: E402
from numbaconv import nn  # noqa: E402
from numbaconv._benchnets import NETS, build, randomize_batchnorm, torch_net  # noqa: E402
from numbaconv._progress import Progress  # noqa: E402

# (name, C, OC, H=W, kernel, stride, padding, groups) per layer; batch is chosen by the run.
# A name starts with its set's name.
RESNET50 = [
    ("resnet50.stem7x7s2", 3, 64, 224, 7, 2, 3, 1),
    ("resnet50.3x3.56", 64, 64, 56, 3, 1, 1, 1),
    ("resnet50.3x3.28", 128, 128, 28, 3, 1, 1, 1),
    ("resnet50.3x3.14", 256, 256, 14, 3, 1, 1, 1),
    ("resnet50.3x3.7", 512, 512, 7, 3, 1, 1, 1),
    ("resnet50.3x3s2.56", 128, 128, 56, 3, 2, 1, 1),
    ("resnet50.3x3s2.28", 256, 256, 28, 3, 2, 1, 1),
    ("resnet50.1x1.56.256-64", 256, 64, 56, 1, 1, 0, 1),
    ("resnet50.1x1.56.64-256", 64, 256, 56, 1, 1, 0, 1),
    ("resnet50.1x1.28.512-128", 512, 128, 28, 1, 1, 0, 1),
    ("resnet50.1x1.14.1024-256", 1024, 256, 14, 1, 1, 0, 1),
    ("resnet50.1x1.7.2048-512", 2048, 512, 7, 1, 1, 0, 1),
]
MOBILENETV2 = [
    ("mobilenetv2.dw3x3.112.32", 32, 32, 112, 3, 1, 1, 32),
    ("mobilenetv2.dw3x3s2.112.96", 96, 96, 112, 3, 2, 1, 96),
    ("mobilenetv2.dw3x3.56.144", 144, 144, 56, 3, 1, 1, 144),
    ("mobilenetv2.dw3x3.28.192", 192, 192, 28, 3, 1, 1, 192),
    ("mobilenetv2.dw3x3.14.576", 576, 576, 14, 3, 1, 1, 576),
    ("mobilenetv2.dw3x3.7.960", 960, 960, 7, 3, 1, 1, 960),
    ("mobilenetv2.pw1x1.56.24-144", 24, 144, 56, 1, 1, 0, 1),
    ("mobilenetv2.pw1x1.28.192-32", 192, 32, 28, 1, 1, 0, 1),
    ("mobilenetv2.pw1x1.14.384-64", 384, 64, 14, 1, 1, 0, 1),
    ("mobilenetv2.pw1x1.7.960-320", 960, 320, 7, 1, 1, 0, 1),
]
VGG16 = [
    ("vgg16.3x3.224.3-64", 3, 64, 224, 3, 1, 1, 1),
    ("vgg16.3x3.224.64-64", 64, 64, 224, 3, 1, 1, 1),
    ("vgg16.3x3.112.128", 128, 128, 112, 3, 1, 1, 1),
    ("vgg16.3x3.56.256", 256, 256, 56, 3, 1, 1, 1),
    ("vgg16.3x3.28.512", 512, 512, 28, 3, 1, 1, 1),
    ("vgg16.3x3.14.512", 512, 512, 14, 3, 1, 1, 1),
]
SETS = {"resnet50": RESNET50, "mobilenetv2": MOBILENETV2, "vgg16": VGG16}
# A few layers of every kind (3x3, strided 3x3, 1x1, VGG 3x3, depthwise) for ``--quick``.
_QUICK_NAMES = ("resnet50.3x3.56", "resnet50.3x3.14", "resnet50.3x3s2.28",
                "resnet50.1x1.56.256-64", "resnet50.1x1.14.1024-256", "vgg16.3x3.28.512",
                "mobilenetv2.dw3x3.56.144", "mobilenetv2.dw3x3.14.576")
QUICK = [layer for s in SETS.values() for layer in s if layer[0] in _QUICK_NAMES]
SECTIONS = ("conv", "scaling", "elementwise", "overhead", "e2e", "memory", "startup")

CONV_RTOL = 1e-5  # sampled conv outputs, relative to |patch| * |filter| (float32)
ELEMENTWISE_TOL = 1e-5  # |y - ref| / max(1, |ref|), float32
E2E_RTOL = 1e-3  # max |logits - torch logits| / max |torch logits|
ALLOC_SLACK = 16 << 10  # Python objects of one call; more than this counts as an allocation

TARGETS = {"dense": 1.0, "depthwise": 2.0, "e2e": 1.0, "bandwidth_pct": 80.0, "scaling": 1.8,
           "first_call_s": 0.5, "cold_resnet18_s": 60.0}
# The CUDA targets (issue 7) compare with cuDNN, TF32 off, at batch 32: dense conv over the
# ResNet-50 set only, end to end on ResNet-18 only, and a small call's host time in microseconds.
GPU_TARGETS = {"dense": 0.7, "depthwise": 1.0, "e2e": 0.5, "overhead_us": 20.0}


class BenchCheckError(AssertionError):
    """A benchmarked result differs from its reference: no timing is reported for it."""


# ---------------------------------------------------------------------------------------------
# Timing, machine, ceilings
# ---------------------------------------------------------------------------------------------

def _call(fn):
    fn()


def _time_rounds(fns, budget=0.5, min_runs=3, max_runs=50, before=None):
    """Time each of ``fns`` ({label: callable}) in alternating rounds after one warm-up call each.

    Stops after ``min_runs`` rounds once ``budget`` seconds per function have passed. ``before``,
    if given, is called untimed with each function just before its timed call (e.g. to run it
    once more, so that its data is where its own last call left it). Returns
    {label: {"best_ms", "median_ms", "runs"}}.
    """
    for fn in fns.values():
        fn()
    times = {label: [] for label in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_runs or (time.perf_counter() - start < budget * len(fns)
                                and rounds < max_runs):
        for label, fn in fns.items():
            if before is not None:
                before(fn)
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
        rounds += 1
    return {label: {"best_ms": 1e3 * min(t), "median_ms": 1e3 * float(np.median(t)),
                    "runs": len(t)} for label, t in times.items()}


def _torch():
    """torch, or None when it is not installed.

    Where both libraries share the process, PyTorch's OpenMP workers spin after each call and
    steal the cores Numba's threads need, so a passive wait policy is set before torch loads
    (it applies to Numba's OpenMP threads too: they sleep between calls, which costs short
    multi-threaded calls a wake-up; thread scaling is therefore timed in processes of their own).
    """
    if "torch" not in sys.modules and not os.environ.get(_ALONE):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if os.environ["OMP_WAIT_POLICY"].upper() != "PASSIVE":
            print("note: OMP_WAIT_POLICY is not PASSIVE; PyTorch's spinning threads will slow "
                  "numbaconv in the same process")
    try:
        import torch
    except ImportError:
        return None
    return torch


def _peer_torch(dev, with_torch=True):
    """torch where it can run on ``dev`` (a CUDA build for 'cuda'), else None."""
    torch = _torch() if with_torch else None
    if torch is not None and dev == "cuda" and not torch.cuda.is_available():
        return None
    return torch


def _torch_available():
    import importlib.util

    return importlib.util.find_spec("torch") is not None


@contextlib.contextmanager
def _threads(n, torch=None):
    """Run the block with ``n`` Numba threads (and ``n`` PyTorch threads)."""
    old = numba.get_num_threads()
    old_t = torch.get_num_threads() if torch is not None else None
    numba.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)
        if torch is not None:
            torch.set_num_threads(old_t)


def sgemm_ceiling(size=1024, budget=0.5, torch=None):
    """GFLOP/s of a float32 square matmul: the machine's ceiling for conv.

    Returns {"numpy": GFLOP/s of NumPy's BLAS, "torch": of torch.mm (when given), "best": the
    higher}. Multithreaded BLAS loses much of its speed when another process takes a core, so
    the two are timed in the same rounds and the better one is the ceiling.
    """
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    fns = {"numpy": lambda: a @ a}
    if torch is not None:
        ta = torch.from_numpy(a)
        fns["torch"] = lambda: torch.mm(ta, ta)
    timed = _time_rounds(fns, budget)
    res = {label: 2.0 * size ** 3 / t["best_ms"] / 1e6 for label, t in timed.items()}
    res["best"] = max(res.values())
    return res


def _git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                             capture_output=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, text=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine(torch=None):
    """CPU model, cores, threads, SIMD lanes and versions of the machine running the benchmark."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import llvmlite
    import llvmlite.binding as llvm

    import numbaconv

    info = {"cpu": cpu, "llvm_host_cpu": llvm.get_host_cpu_name(),
            "isa": [f for f in ("avx512f", "avx2", "fma", "neon", "asimd") if f in flags],
            "cores": os.cpu_count(), "threads": numba.get_num_threads(),
            "simd_lanes_f32": _device.simd_width(), "python": platform.python_version(),
            "numbaconv": numbaconv.__version__, "numba": numba.__version__,
            "llvmlite": llvmlite.__version__, "numpy": np.__version__, "commit": _git_commit()}
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    if _device.get_device() == "cuda":
        from numbaconv import _cuda

        info["gpu"] = _cuda.device_name()
    return info


def _sync_for(dev):
    if dev == "cuda":
        from numbaconv import _cuda

        return _cuda.synchronize
    return lambda: None


def _geomean(values):
    values = [v for v in values if v is not None]
    return float(np.exp(np.mean(np.log(values)))) if values else None


# ---------------------------------------------------------------------------------------------
# conv2d layers
# ---------------------------------------------------------------------------------------------

def conv_flops(n, c, oc, oh, ow, k, groups):
    """Multiply-adds counted as 2 FLOPs, as everyone reports conv speed."""
    return 2.0 * n * oc * oh * ow * (c // groups) * k * k


def _sample_check(out, x, w, stride, pad, groups, rng, samples=64):
    """Max relative error of ``out`` at random positions against a float64 direct sum."""
    out = _device.to_numpy(out)
    n, oc, oh, ow = out.shape
    k = w.shape[2]
    cpg = w.shape[1]
    ocpg = oc // groups
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    err = 0.0
    for _ in range(samples):
        b, o, i, j = (rng.integers(0, d) for d in (n, oc, oh, ow))
        g = o // ocpg
        patch = xp[b, g * cpg:(g + 1) * cpg, i * stride:i * stride + k, j * stride:j * stride + k]
        ref = float(np.sum(patch * w[o].astype(np.float64)))
        scale = float(np.sqrt(np.sum(patch ** 2) * np.sum(w[o].astype(np.float64) ** 2))) + 1e-30
        err = max(err, abs(float(out[b, o, i, j]) - ref) / scale)
    return err


def _steady_alloc(fn):
    """Bytes allocated during one more call of ``fn`` beyond what it returns (tracemalloc's peak:
    NumPy arrays, and arrays made inside Numba kernels, which it sees too)."""
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        y = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not was:
            tracemalloc.stop()
    return max(0, peak - base - getattr(y, "nbytes", 0))


def layer_kind(layer):
    """'dense', 'depthwise' or 'grouped' for a layer tuple."""
    _, c, oc, _, _, _, _, g = layer
    if g == 1:
        return "dense"
    return "depthwise" if g == c == oc else "grouped"


def run_conv(layers, batch, dtype=np.float32, with_torch=True, budget=0.5, tracked=True,
             progress=print):
    """Check, then time conv2d on ``layers`` at ``batch`` on the current device; return rows.

    ``tracked`` vouches for the weights as a layer does, so their packed form is cached across
    calls (PyTorch eager reorders its weights on every call).
    """
    dev = _device.get_device()
    torch = _peer_torch(dev, with_torch)
    sync = _sync_for(dev)
    rng = np.random.default_rng(0)
    rows = []
    for layer in layers:
        name, c, oc, hw, k, s, p, g = layer
        x = rng.standard_normal((batch, c, hw, hw)).astype(dtype)
        w = (rng.standard_normal((oc, c // g, k, k)) / np.sqrt(c // g * k * k)).astype(dtype)
        xd, wd = _device.to_device(x, dev), _device.to_device(w, dev)
        if tracked and dev == "cpu":
            _weights.track(wd)
        out = F.conv2d(xd, wd, stride=s, padding=p, groups=g)
        err = _sample_check(out, x, w, s, p, g, rng)
        tol = CONV_RTOL if dtype == np.float32 else 1e-12
        if not err < tol:
            raise BenchCheckError(f"{name}: conv2d result differs from the float64 reference "
                                  f"(relative error {err:.2e} > {tol:.0e}); not timed")
        oh = out.shape[2]
        flops = conv_flops(batch, c, oc, oh, oh, k, g)

        def nc_call():
            y = F.conv2d(xd, wd, stride=s, padding=p, groups=g)
            sync()
            return y

        fns = {"numbaconv": nc_call}
        if torch is not None:
            fns.update(_torch_conv_fns(torch, dev, x, w, s, p, g))
        timed = _time_rounds(fns, budget)
        row = {"layer": name, "set": name.split(".")[0], "kind": layer_kind(layer),
               "batch": batch, "dtype": np.dtype(dtype).name, "device": dev,
               "threads": numba.get_num_threads(), "weights": "tracked" if tracked else "untracked",
               "gflop": flops / 1e9, "max_rel_err": err}
        for label, t in timed.items():
            row[f"{label}_ms"] = t["best_ms"]
            row[f"{label}_median_ms"] = t["median_ms"]
            row[f"{label}_gflops"] = flops / t["best_ms"] / 1e6
        row["runs"] = timed["numbaconv"]["runs"]
        if dev == "cpu":
            row["steady_alloc_bytes"] = _steady_alloc(nc_call)
            row["input_output_bytes"] = x.nbytes + out.nbytes
        rows.append(row)
        progress(_format_row(row))
    return rows


def _torch_conv_fns(torch, dev, x, w, s, p, g):
    tdev = "cuda" if dev == "cuda" else "cpu"
    tx, tw = torch.from_numpy(x).to(tdev), torch.from_numpy(w).to(tdev)
    conv = torch.nn.functional.conv2d
    if tdev == "cpu":
        def call():
            with torch.no_grad():
                return conv(tx, tw, stride=s, padding=p, groups=g)
        return {"torch": call}

    def cudnn(tf32):
        def call():
            torch.backends.cudnn.allow_tf32 = tf32
            with torch.no_grad():
                y = conv(tx, tw, stride=s, padding=p, groups=g)
            torch.cuda.synchronize()
            return y
        return call
    return {"cudnn": cudnn(False), "cudnn_tf32": cudnn(True)}


def _peer(row):
    return next((p for p in ("torch", "cudnn") if f"{p}_ms" in row), None)


def _format_row(row):
    line = (f"{row['layer']:<30} b={row['batch']:<3} {row['numbaconv_gflops']:7.1f} GFLOP/s "
            f"({row['numbaconv_ms']:8.2f} ms)")
    for label in ("torch", "cudnn", "cudnn_tf32"):
        if f"{label}_gflops" in row:
            ratio = row[f"{label}_ms"] / row["numbaconv_ms"]
            line += f" | {label} {row[f'{label}_gflops']:7.1f} GFLOP/s, {label}/nc {ratio:5.2f}"
    return line


# ---------------------------------------------------------------------------------------------
# Thread scaling
# ---------------------------------------------------------------------------------------------

def _time_thread_rounds(fns, counts, torch, budget, min_runs=3, max_runs=30, burst=3):
    """Best seconds of each of ``fns`` at each thread count in ``counts``, in rounds that visit
    every count, so that load from other processes hits all alike. The thread count is switched
    outside the timed calls, and the first call after a switch is not timed: OpenMP runtimes
    re-form their thread team when the count changes, a cost a program running at one thread
    count does not pay. Then ``burst`` calls are timed. Returns {count: {label: best ms}}."""
    times = {n: {label: [] for label in fns} for n in counts}
    for n in counts:
        with _threads(n, torch):
            for fn in fns.values():
                fn()
    start = time.perf_counter()
    rounds = 0
    while rounds < min_runs or (time.perf_counter() - start < budget * len(fns) * len(counts)
                                and rounds < max_runs):
        for n in counts:
            with _threads(n, torch):
                for label, fn in fns.items():
                    fn()
                    for _ in range(burst):
                        t0 = time.perf_counter()
                        fn()
                        times[n][label].append(time.perf_counter() - t0)
        rounds += 1
    return {n: {label: 1e3 * min(t) for label, t in per.items()} for n, per in times.items()}


_SCALING_CHILD = """
import json, sys
from numbaconv import bench
layers, batch, lib, budget = json.loads(sys.argv[1])
rows = bench.run_scaling([tuple(la) for la in layers], batch, budget=budget, libs=(lib,),
                         alone=False, progress=lambda line: None)
print("RESULT " + json.dumps({"rows": rows}))
"""


def run_scaling(layers, batch, with_torch=True, budget=0.5, progress=print,
                libs=("numbaconv", "torch"), alone=True):
    """Dense conv2d time at 1 thread over time at all threads, numbaconv and PyTorch (CPU).

    With ``alone`` each library is timed in a fresh process of its own, with the OpenMP wait
    policy the user's environment gives (the side-by-side sections set PASSIVE for PyTorch's
    sake, which makes Numba's threads sleep between calls too): the scaling a program using one
    of them sees. ``libs`` chooses the libraries.
    """
    libs = [lib for lib in libs if lib == "numbaconv" or (with_torch and _torch_available())]
    if alone:
        merged = {}
        for lib in libs:
            res = _child(_SCALING_CHILD, [[list(la) for la in layers], batch, lib, budget],
                         env={_ALONE: "1"})
            for row in res["rows"]:
                merged.setdefault(row["layer"], {}).update(row)
        rows = [merged[la[0]] for la in layers]
        for row in rows:
            row["method"] = "each library alone in a fresh process"
            progress(f"{row['layer']:<30} b={batch:<3} {row['threads']} threads vs 1: numbaconv "
                     f"{row['numbaconv_speedup']:.2f}x"
                     + (f", torch {row['torch_speedup']:.2f}x" if "torch_speedup" in row else ""))
        return rows
    torch = _torch() if "torch" in libs else None
    nmax = numba.get_num_threads()
    rng = np.random.default_rng(2)
    rows = []
    for name, c, oc, hw, k, s, p, g in layers:
        x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
        w = _weights.track((rng.standard_normal((oc, c // g, k, k)) / np.sqrt(c * k * k / g))
                   .astype(np.float32))

        def nc_call():
            return F.conv2d(x, w, stride=s, padding=p, groups=g)

        fns = {"numbaconv": nc_call} if "numbaconv" in libs else {}
        if torch is not None:
            fns.update(_torch_conv_fns(torch, "cpu", x, w, s, p, g))
        per = _time_thread_rounds(fns, (1, nmax), torch, budget)
        row = {"layer": name, "batch": batch, "threads": nmax}
        for label in fns:
            row[f"{label}_1t_ms"] = per[1][label]
            row[f"{label}_{nmax}t_ms"] = per[nmax][label]
            row[f"{label}_speedup"] = per[1][label] / per[nmax][label]
        rows.append(row)
        progress(f"{name:<30} b={batch:<3} {nmax} threads vs 1: "
                 + ", ".join(f"{label} {row[label + '_speedup']:.2f}x" for label in fns))
    return rows


# ---------------------------------------------------------------------------------------------
# Memory-bound ops
# ---------------------------------------------------------------------------------------------

COPY_CHUNK = 65536  # float32 elements per parallel task of the copy


@numba.njit(parallel=True, cache=True)
def _copy_kernel(dst, src, chunk):
    """dst[:] = src[:] for 1-D arrays, in tasks of ``chunk`` elements across threads."""
    n = src.shape[0]
    for t in prange((n + chunk - 1) // chunk):
        lo = t * chunk
        hi = min(n, lo + chunk)
        # Slices indexed from 0: LLVM knows the index is non-negative and vectorises the loop
        # (indexing src[i] from lo leaves a negative-index select in it, and half the speed).
        d = dst[lo:hi]
        s = src[lo:hi]
        for i in range(hi - lo):
            d[i] = s[i]


def _copy_fn(nbytes):
    """A checked call of the Numba parallel copy of ``nbytes`` bytes, and the bytes it moves."""
    n = max(1, nbytes // 4)
    src = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    dst = np.empty_like(src)
    _copy_kernel(dst, src, COPY_CHUNK)
    if not np.array_equal(dst, src):
        raise BenchCheckError("bandwidth ceiling: the copy kernel did not copy")
    return (lambda: _copy_kernel(dst, src, COPY_CHUNK)), 2 * src.nbytes


def _pool_windows(x, k, s, p, fill):
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
    return np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]


def _adaptive_max_ref(x, o):
    h, w = x.shape[2:]
    out = np.empty(x.shape[:2] + (o, o))
    for i in range(o):
        for j in range(o):
            hs, he = (i * h) // o, -(-((i + 1) * h) // o)
            ws, we = (j * w) // o, -(-((j + 1) * w) // o)
            out[:, :, i, j] = x[:, :, hs:he, ws:we].max(axis=(2, 3))
    return out


_erf = np.vectorize(math.erf, otypes=[np.float64])
_C = math.sqrt(2.0 / math.pi)

# name, functional call, torch.nn.functional call, float64 reference (on the sampled inputs for
# activations, on the whole tensor otherwise), elementwise?
_ELEMENTWISE = [
    ("relu", lambda F, a: F.relu(a["x"]), lambda x: np.maximum(x, 0.0), True),
    ("relu6", lambda F, a: F.relu6(a["x"]), lambda x: np.clip(x, 0.0, 6.0), True),
    ("leaky_relu", lambda F, a: F.leaky_relu(a["x"], 0.01),
     lambda x: np.where(x > 0, x, 0.01 * x), True),
    ("sigmoid", lambda F, a: F.sigmoid(a["x"]), lambda x: 1.0 / (1.0 + np.exp(-x)), True),
    ("tanh", lambda F, a: F.tanh(a["x"]), np.tanh, True),
    ("silu", lambda F, a: F.silu(a["x"]), lambda x: x / (1.0 + np.exp(-x)), True),
    ("gelu", lambda F, a: F.gelu(a["x"]), lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
     True),
    ("gelu_tanh", lambda F, a: F.gelu(a["x"], approximate="tanh"),
     lambda x: 0.5 * x * (1.0 + np.tanh(_C * (x + 0.044715 * x ** 3))), True),
    ("hardswish", lambda F, a: F.hardswish(a["x"]),
     lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0, True),
    ("batch_norm", lambda F, a: F.batch_norm(a["x"], a["mean"], a["var"], a["gamma"], a["beta"]),
     None, False),
    ("max_pool2d 3x3 s2 p1", lambda F, a: F.max_pool2d(a["x"], 3, 2, 1),
     lambda x: _pool_windows(x, 3, 2, 1, -np.inf).max(axis=(-2, -1)), False),
    ("avg_pool2d 3x3 s2 p1", lambda F, a: F.avg_pool2d(a["x"], 3, 2, 1),
     lambda x: _pool_windows(x, 3, 2, 1, 0.0).mean(axis=(-2, -1)), False),
    ("adaptive_avg_pool2d 1", lambda F, a: F.adaptive_avg_pool2d(a["x"], 1),
     lambda x: x.mean(axis=(2, 3), keepdims=True), False),
    ("adaptive_max_pool2d 7", lambda F, a: F.adaptive_max_pool2d(a["x"], 7),
     lambda x: _adaptive_max_ref(x, 7), False),
]


def _elementwise_error(name, y, x64, ref, sampled, args, rng):
    if name == "batch_norm":
        sh = (1, -1, 1, 1)
        ref_y = ((x64 - args["mean"].reshape(sh)) / np.sqrt(args["var"].reshape(sh) + 1e-5)
                 * args["gamma"].reshape(sh) + args["beta"].reshape(sh))
        got = y
    elif sampled:
        idx = rng.integers(0, x64.size, 8192)
        ref_y, got = ref(x64.reshape(-1)[idx]), y.reshape(-1)[idx]
    else:
        ref_y, got = ref(x64), y
    if got.shape != ref_y.shape:
        return math.inf
    return float(np.max(np.abs(got - ref_y) / np.maximum(1.0, np.abs(ref_y))))


def run_elementwise(shape=(32, 64, 56, 56), dtype=np.float32, with_torch=True, budget=0.5,
                    ops=None, progress=print):
    """Check, then time the memory-bound ops (every activation, pooling op, batch_norm) on
    ``shape``: GB/s of bytes read + written, and the share of a copy's GB/s at that size.

    Every timed call (numbaconv, PyTorch and the copy alike) comes right after an untimed call of
    the same function, so its data is where its own last call left it: in cache when it fits
    (the last-level cache here is 480 MiB), as an op's input is when the layer before it has just
    written it. numbaconv and the copy alternate; PyTorch is timed in rounds of its own after
    them, because its slow pooling slowed whatever ran next (the copy too).

    Returns (rows, best copy GB/s seen); the ceiling is None off the CPU.
    """
    dev = _device.get_device()
    torch = _peer_torch(dev, with_torch)
    sync = _sync_for(dev)
    rng = np.random.default_rng(1)
    c = shape[1]
    # Spread over [-9, 9] or so, so that relu6 / hardswish clip and sigmoid saturates somewhere.
    host = {"x": (3.0 * rng.standard_normal(shape)).astype(dtype),
            "mean": (0.1 * rng.standard_normal(c)).astype(dtype),
            "var": (rng.random(c) + 0.5).astype(dtype),
            "gamma": (rng.random(c) + 0.5).astype(dtype),
            "beta": (0.1 * rng.standard_normal(c)).astype(dtype)}
    args = {k: _device.to_device(v, dev) for k, v in host.items()}
    x64 = host["x"].astype(np.float64)
    # The copy runs in the rounds of every op, so that it sees the load the ops see.
    copy, copy_bytes = _copy_fn(host["x"].nbytes) if dev == "cpu" else (None, 0)
    ceiling = None
    targs = ({k: torch.from_numpy(v).to("cuda" if dev == "cuda" else "cpu")
              for k, v in host.items()} if torch is not None else None)
    rows = []
    for name, call, ref, sampled in _ELEMENTWISE:
        if ops is not None and name.split()[0] not in ops and name not in ops:
            continue
        y = _device.to_numpy(call(F, args))
        err = _elementwise_error(name, y.astype(np.float64), x64, ref, sampled,
                                 {k: v.astype(np.float64) for k, v in host.items()}, rng)
        if not err < ELEMENTWISE_TOL:
            raise BenchCheckError(f"{name}: differs from the float64 reference by {err:.2e} "
                                  f"(> {ELEMENTWISE_TOL:.0e}); not timed")
        moved = host["x"].nbytes + y.nbytes

        def nc_call(call=call):
            r = call(F, args)
            sync()
            return r

        fns = {"numbaconv": nc_call}
        if copy is not None:
            fns["copy"] = copy
        timed = _time_rounds(fns, budget, before=_call)
        if torch is not None:
            # PyTorch in rounds of its own: its slow pools (20-35 ms a call) left the calls after
            # them slower, ours and the copy alike (max_pool2d's copy read 28.7 GB/s in those
            # rounds, 53.5 in others), even with an untimed call in between.
            tsync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

            def t_call(call=call):
                with torch.no_grad():
                    r = call(torch.nn.functional, targs)
                tsync()
                return r
            timed.update(_time_rounds({"torch": t_call}, budget, before=_call))
        row = {"op": name, "shape": list(shape), "dtype": np.dtype(dtype).name, "device": dev,
               "bytes": moved, "max_err": err, "timed": "second of two calls"}
        for label in ("numbaconv", "torch"):
            if label in timed:
                row[f"{label}_ms"] = timed[label]["best_ms"]
                row[f"{label}_gbs"] = moved / timed[label]["best_ms"] / 1e6
        if copy is not None:
            row["copy_same_rounds_gbs"] = copy_bytes / timed["copy"]["best_ms"] / 1e6
            ceiling = max(ceiling or 0.0, row["copy_same_rounds_gbs"])
        rows.append(row)
        line = f"{name:<30} {row['numbaconv_gbs']:8.1f} GB/s ({row['numbaconv_ms']:.2f} ms)"
        if copy is not None:
            line += f", copy {row['copy_same_rounds_gbs']:.1f} GB/s"
        if "torch_gbs" in row:
            line += f" | torch {row['torch_gbs']:8.1f} GB/s"
        progress(line)
    # The ceiling is the best copy seen in any op's rounds: load from other processes only ever
    # lowers a reading, and a slow op leaves few copy samples in its own rounds.
    for row in rows:
        if ceiling:
            row["ceiling_gbs"] = ceiling
            row["pct_of_ceiling"] = 100.0 * row["numbaconv_gbs"] / ceiling
    if ceiling:
        progress(f"{'bandwidth ceiling (numba copy)':<30} {ceiling:8.1f} GB/s, best of all rounds; "
                 + ", ".join(f"{r['op'].split()[0]} {r['pct_of_ceiling']:.0f}%" for r in rows))
    return rows, ceiling


# ---------------------------------------------------------------------------------------------
# Host overhead of small calls
# ---------------------------------------------------------------------------------------------

OVERHEAD_CALLS = 200  # calls per timed round; the device is synchronised once per round
# (name, numbaconv or torch.nn.functional call, float64 NumPy reference) on batch-1 8x8 inputs.
_OVERHEAD_OPS = [
    ("conv2d 3x3 8->8", lambda F, a: F.conv2d(a["x"], a["w"], a["b"], padding=1),
     lambda a: np.einsum("nchwij,ocij->nohw", _pool_windows(a["x"], 3, 1, 1, 0.0), a["w"])
     + a["b"][None, :, None, None]),
    ("relu", lambda F, a: F.relu(a["x"]), lambda a: np.maximum(a["x"], 0)),
    ("max_pool2d 2x2", lambda F, a: F.max_pool2d(a["x"], 2),
     lambda a: _pool_windows(a["x"], 2, 2, 0, -np.inf).max(axis=(-2, -1))),
    ("linear 512->10", lambda F, a: F.linear(a["v"], a["lw"], a["lb"]),
     lambda a: a["v"] @ a["lw"].T + a["lb"]),
]


def run_overhead(with_torch=True, budget=0.5, calls=OVERHEAD_CALLS, progress=print):
    """Host time per call of small ops (batch 1, 8 channels, 8x8 image; inputs already on the
    current device), next to PyTorch's on the same device.

    Each timed round makes ``calls`` calls and then synchronises the device once, so on a GPU a
    round's time per call is the host's cost of a launch whenever that exceeds the kernel's run
    time (a few microseconds here). Every op's result is checked first.
    """
    dev = _device.get_device()
    torch = _peer_torch(dev, with_torch)
    sync = _sync_for(dev)
    rng = np.random.default_rng(5)
    shapes = {"x": (1, 8, 8, 8), "w": (8, 8, 3, 3), "b": (8,), "v": (1, 512), "lw": (10, 512),
              "lb": (10,)}
    host = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    args = {k: _device.to_device(v, dev) for k, v in host.items()}
    host64 = {k: v.astype(np.float64) for k, v in host.items()}
    tdev = "cuda" if dev == "cuda" else "cpu"
    targs = ({k: torch.from_numpy(v).to(tdev) for k, v in host.items()}
             if torch is not None else None)
    tsync = (torch.cuda.synchronize if dev == "cuda" else (lambda: None)) if torch else None
    rows = []
    for name, call, ref in _OVERHEAD_OPS:
        want = ref(host64)
        got = _device.to_numpy(call(F, args)).astype(np.float64)
        err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
        if not err < CONV_RTOL:
            raise BenchCheckError(f"overhead {name}: differs from the float64 reference by "
                                  f"{err:.2e} (> {CONV_RTOL:.0e}); not timed")

        def nc_round(call=call):
            for _ in range(calls):
                call(F, args)
            sync()
        fns = {"numbaconv": nc_round}
        if torch is not None:
            def t_round(call=call):
                with torch.no_grad():
                    for _ in range(calls):
                        call(torch.nn.functional, targs)
                tsync()
            fns["torch"] = t_round
        timed = _time_rounds(fns, budget)
        row = {"op": name, "device": dev, "calls": calls, "max_err": err}
        for label, t in timed.items():
            row[f"{label}_us"] = 1e3 * t["best_ms"] / calls
        rows.append(row)
        progress(f"{name:<30} {row['numbaconv_us']:8.1f} us per call"
                 + (f" | torch {row['torch_us']:8.1f} us" if "torch_us" in row else ""))
    return rows


# ---------------------------------------------------------------------------------------------
# Networks end to end, through numbaconv.models (the builders are in numbaconv._benchnets)
# ---------------------------------------------------------------------------------------------

def _path(net, small, fused=True):
    """The timed numbaconv call, in words, for the rows."""
    args = {"resnet18": "num_classes=10" if small else "",
            "mobilenetv2": "num_classes=10, width_mult=0.25" if small else ""}[net]
    call = f"models.{'mobilenet_v2' if net == 'mobilenetv2' else net}({args})"
    return f"nn.fuse({call})(x)" if fused else f"{call}(x)"


def _logits_error(got, ref):
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def run_e2e(nets=NETS, batches=(1, 32), image=224, with_torch=True, budget=1.0, small=False,
            progress=print):
    """Images/s of each network's inference through ``numbaconv.models`` next to PyTorch eager
    on the current device (a CUDA build of PyTorch on 'cuda').

    The model (eval, NumPy-seeded initialisation, BatchNorm statistics and affine parameters away
    from the identity) and its PyTorch twin share one state_dict. The timed numbaconv call is
    ``nn.fuse(model)(x)``; the unfused ``model(x)`` is timed in the same rounds (the
    ``numbaconv_unfused_*`` columns: what fusion gains). Both paths' logits are checked against
    PyTorch's (``E2E_RTOL``) before anything is timed; without PyTorch there is no reference
    and nothing is timed. ``small`` runs the cheap variants of :func:`numbaconv._benchnets.build`.
    """
    dev = _device.get_device()
    torch = _peer_torch(dev, with_torch)
    if torch is None:
        progress(f"e2e: skipped (needs PyTorch on {dev} as the reference for the logits)")
        return []
    sync = _sync_for(dev)
    tdev = "cuda" if dev == "cuda" else "cpu"
    tsync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if dev == "cuda":  # the target compares with fp32 eager: no TF32 in cuDNN or cuBLAS
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(numba.get_num_threads())
    rows = []
    for net in nets:
        model = build(net, small)
        tmodel = torch_net(torch, net, randomize_batchnorm(model), small).to(tdev)
        model.to(dev)
        fused = nn.fuse(model)
        for batch in batches:
            x = np.random.default_rng(batch).standard_normal((batch, 3, image, image),
                                                             dtype=np.float32)
            tx = torch.from_numpy(x).to(tdev)
            xd = _device.to_device(x, dev)
            with torch.no_grad():
                ref = tmodel(tx).cpu().numpy()
            errs = {"fused": _logits_error(_device.to_numpy(fused(xd)), ref),
                    "unfused": _logits_error(_device.to_numpy(model(xd)), ref)}
            for which, err in errs.items():
                if not err < E2E_RTOL:
                    raise BenchCheckError(
                        f"{net} batch {batch}: numbaconv's {which} logits differ from PyTorch's "
                        f"by {err:.2e} of their largest (> {E2E_RTOL:.0e}); not timed")

            def t_call():
                with torch.no_grad():
                    y = tmodel(tx)
                tsync()
                return y

            def synced(fn):
                def call():
                    y = fn(xd)
                    sync()
                    return y
                return call
            timed = _time_rounds({"numbaconv": synced(fused), "numbaconv_unfused": synced(model),
                                  "torch": t_call}, budget)
            row = {"net": net, "batch": batch, "image": image, "device": dev,
                   "threads": numba.get_num_threads(),
                   "small": small, "path": _path(net, small),
                   "unfused_path": _path(net, small, fused=False),
                   "torch_path": "torch.nn eager, eval, no_grad"
                   + (", fp32 (TF32 off)" if dev == "cuda" else ""),
                   "logits_rel_err": errs["fused"], "unfused_logits_rel_err": errs["unfused"]}
            for label, t in timed.items():
                row[f"{label}_ms"] = t["best_ms"]
                row[f"{label}_median_ms"] = t["median_ms"]
                row[f"{label}_images_per_s"] = batch / t["best_ms"] * 1e3
            row["torch_over_numbaconv"] = row["torch_ms"] / row["numbaconv_ms"]
            row["fusion_speedup"] = row["numbaconv_unfused_ms"] / row["numbaconv_ms"]
            rows.append(row)
            progress(f"{net:<12} b={batch:<3} fused {row['numbaconv_images_per_s']:8.1f} img/s"
                     f" | unfused {row['numbaconv_unfused_images_per_s']:8.1f} | torch "
                     f"{row['torch_images_per_s']:8.1f} | torch/nc "
                     f"{row['torch_over_numbaconv']:.2f} (logits err {errs['fused']:.1e})")
    return rows


# ---------------------------------------------------------------------------------------------
# Peak memory of an eval forward, in fresh processes
# ---------------------------------------------------------------------------------------------

# The peak resident set is read from VmHWM: getrusage's ru_maxrss also counts the parent's
# peak, which exec hands down. glibc gives a freed block back to the system only if it was mapped
# on its own (above the mmap threshold); the default threshold grows with use, after which freed
# activations stay resident and the next forward's rise no longer shows what it needs.
_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
RSS_METHOD = ("peak resident set over the second forward minus the resident set before it "
              "(VmHWM of /proc/self/status, reset through /proc/self/clear_refs; "
              f"glibc MALLOC_MMAP_THRESHOLD_={_MEMORY_ENV['MALLOC_MMAP_THRESHOLD_']} so freed "
              "arrays leave the process)")
TRACED_METHOD = ("input + peak of tracemalloc over the third forward (NumPy-side arrays made "
                 "during it, in NumPy or inside Numba kernels: activations, output, per-call "
                 "scratch; pooled workspaces kept from earlier calls are not in it)")

_MEMORY_CHILD = """
import gc, json, sys, tracemalloc
import numpy as np
net, small, image, batch, impl = json.loads(sys.argv[1])


def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def nbytes_of(values, seen):
    total = 0
    for v in values:
        if hasattr(v, "nbytes") and hasattr(v, "__array_interface__"):
            key = v.__array_interface__["data"][0]
            if key not in seen:
                seen.add(key)
                total += v.nbytes
    return total


from numbaconv import _benchnets as nets
x = np.random.default_rng(0).standard_normal((batch, 3, image, image), dtype=np.float32)
res = {"input_bytes": x.nbytes}
if impl == "torch":
    import torch
    model = nets.torch_net(torch, net, None, small)
    tx = torch.from_numpy(x)
    res["weights_bytes"] = sum(t.numel() * t.element_size() for t in model.state_dict().values())

    def forward():
        with torch.no_grad():
            return model(tx)
else:
    from numbaconv import nn
    from numbaconv.cpu import workspace
    model = nets.build(net, small)
    if impl == "fused":
        model = nn.fuse(model)
    res["weights_bytes"] = sum(v.nbytes for v in model.state_dict().values())

    def forward():
        return model(x)
forward()  # compiles or loads the kernels, packs the weights, fills the workspace pool
gc.collect()
before = status()["VmRSS"]
res["peak_reset"] = reset_peak()
y = forward()
res["max_rss_bytes"] = status()["VmHWM"]
res["rss_before_bytes"] = before
res["rss_rise_bytes"] = max(0, res["max_rss_bytes"] - before)
del y
if impl != "torch":
    res["weight_cache_bytes"] = workspace.WEIGHTS.stats()["bytes"]
    pool = getattr(workspace.POOL, "_free", {})
    res["workspace_pool_bytes"] = sum(b.nbytes for free in pool.values() for b in free)
    gc.collect()
    tracemalloc.start()
    y = forward()
    res["traced_forward_bytes"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del y
    # The lower bound: a layer's input(s) and output are alive together, and so is the
    # network's input, which the caller holds.
    largest = [0, "", 0]

    def wrap(name, fn):
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            seen = set()
            b = nbytes_of(args, seen) + nbytes_of(kwargs.values(), seen) + nbytes_of([out], seen)
            if b > largest[0]:
                largest[:] = [b, name, b + nbytes_of([x], seen)]
            return out
        return call
    for name, m in model.named_modules():
        if not list(m.children()):
            m.forward = wrap(name, m.forward)
    forward()
    res["largest_layer_io_bytes"], res["largest_layer"], res["lower_bound_bytes"] = largest
print("RESULT " + json.dumps(res))
"""

_IMPLS = {"fused": "numbaconv nn.fuse(model)", "unfused": "numbaconv model (unfused)",
          "torch": "torch eager, no_grad"}


def run_memory(nets=("resnet18",), batches=(1, 32), image=224, small=False, with_torch=True,
               unfused=True, progress=print):
    """Peak memory of one eval forward, each (net, batch, implementation) in a fresh process
    (CPU): the fused model, the unfused one (``unfused``) and PyTorch eager (``with_torch``).

    In the child the model is built and run once (kernels compiled or loaded, weights packed,
    workspace pool filled), then measured on later forwards; see ``RSS_METHOD`` and
    ``TRACED_METHOD``. Next to those: the weights' and the input's bytes, the packed-weight
    cache and the workspace pool (numbaconv), and the lower bound of any forward: the largest
    input(s) + output of a single leaf layer (recorded by wrapping each leaf's ``forward``),
    plus the network's input where that layer does not read it (the caller holds it).
    """
    impls = ["fused"] + (["unfused"] if unfused else [])
    if with_torch and _torch() is not None:
        impls.append("torch")
    rows = []
    for net in nets:
        for batch in batches:
            for impl in impls:
                res = _child(_MEMORY_CHILD, [net, small, image, batch, impl], env=_MEMORY_ENV)
                row = dict(res, net=net, batch=batch, image=image, small=small, impl=_IMPLS[impl],
                           rss_method=RSS_METHOD)
                if "traced_forward_bytes" in row:
                    row["traced_method"] = TRACED_METHOD
                    row["traced_peak_bytes"] = row["input_bytes"] + row["traced_forward_bytes"]
                rows.append(row)
                line = (f"{net:<12} b={batch:<3} {_IMPLS[impl]:<26} RSS rise "
                        f"{_mib(row['rss_rise_bytes']):7.1f} MiB")
                if "traced_peak_bytes" in row:
                    line += (f", traced peak {_mib(row['traced_peak_bytes']):7.1f} MiB, lower "
                             f"bound {_mib(row['lower_bound_bytes']):7.1f} MiB "
                             f"({row['largest_layer']})")
                progress(line)
    return rows


def _mib(nbytes):
    return nbytes / (1 << 20)


# ---------------------------------------------------------------------------------------------
# Start-up: fresh processes
# ---------------------------------------------------------------------------------------------

_FIRST_CALL_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import numbaconv
from numbaconv import functional as F
t1 = time.perf_counter()
import numpy as np
n, c, oc, hw, k, p = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
w = rng.standard_normal((oc, c, k, k), dtype=np.float32)
b = rng.standard_normal(oc, dtype=np.float32)
t2 = time.perf_counter()
F.conv2d(x, w, b, padding=p)
t3 = time.perf_counter()
F.conv2d(x, w, b, padding=p)
t4 = time.perf_counter()
print("RESULT " + json.dumps({"import_s": t1 - t0, "first_call_s": t3 - t2,
                              "second_call_s": t4 - t3}))
"""

_COLD_NET_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from numbaconv import _benchnets as nets
from numbaconv import nn
t1 = time.perf_counter()
net, small, image = json.loads(sys.argv[1])
model = nn.fuse(nets.build(net, small))
import numpy as np
x = np.random.default_rng(0).standard_normal((1, 3, image, image), dtype=np.float32)
t2 = time.perf_counter()
model(x)
t3 = time.perf_counter()
model(x)
t4 = time.perf_counter()
print("RESULT " + json.dumps({"import_s": t1 - t0, "build_s": t2 - t1, "first_forward_s": t3 - t2,
                              "total_s": (t1 - t0) + (t3 - t2), "second_forward_s": t4 - t3}))
"""


def _child(code, arg, env=None, timeout=900):
    full = dict(os.environ, NUMBACONV_DEVICE=_device.get_device())
    full.update(env or {})
    if _ALONE in full:  # a library alone: the wait policy the user's environment gives
        full.pop("OMP_WAIT_POLICY", None)
        if _USER_WAIT_POLICY is not None:
            full["OMP_WAIT_POLICY"] = _USER_WAIT_POLICY
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(arg)], env=full, text=True,
                          capture_output=True, timeout=timeout)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child process failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    res["process_wall_s"] = wall
    return res


def run_startup(first_call=True, cold=True, layer=(1, 64, 64, 56, 3, 1), repeats=3,
                cold_net="resnet18", small=False, image=224, empty_cache=True, progress=print):
    """Start-up costs in fresh processes (CPU).

    first_call: ``import numbaconv`` and the first ``F.conv2d`` call (``layer`` = (N, C, OC, H=W,
    K, padding), float32 with bias) with the on-disk cache warm: one process warms the cache, then
    the best of ``repeats`` processes is kept.
    cold: ``cold_net``'s first forward at batch 1 with an empty cache (``NUMBA_CACHE_DIR`` is a new
    temporary folder), compile included; reported as import + first forward. ``empty_cache``
    False runs the same with the cache as it is (for tests of this code).
    """
    out = {}
    if first_call:
        _child(_FIRST_CALL_CHILD, list(layer))
        runs = [_child(_FIRST_CALL_CHILD, list(layer)) for _ in range(repeats)]
        best = min(runs, key=lambda r: r["first_call_s"])
        out["first_call"] = dict(best, layer=list(layer), runs=len(runs),
                                 all_first_call_s=[r["first_call_s"] for r in runs],
                                 best_import_s=min(r["import_s"] for r in runs))
        progress(f"{'first conv2d call, warm cache':<30} {best['first_call_s']:8.3f} s "
                 f"(import numbaconv {out['first_call']['best_import_s']:.2f} s; best of "
                 f"{len(runs)} fresh processes)")
    if cold:
        tmp = tempfile.mkdtemp(prefix="numbaconv-cold-cache-")
        try:
            res = _child(_COLD_NET_CHILD, [cold_net, small, image],
                         env={"NUMBA_CACHE_DIR": tmp} if empty_cache else None)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out["cold"] = dict(res, net=cold_net, image=image, small=small, empty_cache=empty_cache)
        what = "empty cache" if empty_cache else "cache as is"
        progress(f"{cold_net + ' forward, ' + what:<30} {res['total_s']:8.1f} s "
                 f"(import {res['import_s']:.1f} s + first forward {res['first_forward_s']:.1f} s;"
                 f" then {res['second_forward_s'] * 1e3:.0f} ms)")
    return out


# ---------------------------------------------------------------------------------------------
# Summary against the targets, results on disk
# ---------------------------------------------------------------------------------------------

def _row(what, value, target, unit, detail="", higher=True):
    holds = None
    if value is not None and target is not None:
        holds = bool(value >= target) if higher else bool(value <= target)
    return {"what": what, "value": value, "target": target, "unit": unit, "holds": holds,
            "detail": detail}


def summarize(result):
    """Rows that match the issue's targets table, from whatever sections ``result`` holds.

    On the CPU the peer is PyTorch (oneDNN) and the targets are :data:`TARGETS`; on CUDA it is
    cuDNN with TF32 off, the targets are :data:`GPU_TARGETS` and hold at batch 32 (other batches
    are reported without one).
    """
    rows = []
    gpu = result.get("device") == "cuda"
    targets = GPU_TARGETS if gpu else TARGETS
    peer = "cudnn" if gpu else "torch"
    conv = result.get("conv", [])
    batches = sorted({r["batch"] for r in conv})

    def target(key, batch):
        return targets[key] if not gpu or batch == 32 else None

    dense_sets = ("resnet50",) if gpu else ("resnet50", "vgg16")
    dense_what = "ResNet-50" if gpu else "ResNet-50 + VGG-16"
    for b in batches:
        dense = [r for r in conv if r["batch"] == b and r["kind"] == "dense"
                 and r["set"] in dense_sets and f"{peer}_ms" in r]
        if dense:
            gm = _geomean([r[f"{peer}_ms"] / r["numbaconv_ms"] for r in dense])
            rows.append(_row(f"dense conv2d, {dense_what}, batch {b}: geomean {peer}/nc",
                             gm, target("dense", b), "x", f"{len(dense)} layers"))
    for b in batches:
        dw = [r for r in conv if r["batch"] == b and r["kind"] == "depthwise" and f"{peer}_ms" in r]
        if dw:
            gm = _geomean([r[f"{peer}_ms"] / r["numbaconv_ms"] for r in dw])
            rows.append(_row(f"depthwise conv2d, MobileNetV2, batch {b}: geomean {peer}/nc", gm,
                             target("depthwise", b), "x", f"{len(dw)} layers"))
    for b in batches:
        pw = [r for r in conv if r["batch"] == b and r["set"] == "mobilenetv2"
              and r["kind"] == "dense" and f"{peer}_ms" in r]
        if pw:
            gm = _geomean([r[f"{peer}_ms"] / r["numbaconv_ms"] for r in pw])
            rows.append(_row(f"pointwise conv2d, MobileNetV2, batch {b}: geomean {peer}/nc", gm,
                             None, "x", f"{len(pw)} layers (no target)"))
    for r in result.get("e2e", []):
        unfused = r.get("numbaconv_unfused_images_per_s")
        goal = target("e2e", r["batch"]) if not gpu or r["net"] == "resnet18" else None
        rows.append(_row(f"{r['net']} inference, batch {r['batch']}: torch/nc time",
                         r["torch_over_numbaconv"], goal, "x",
                         f"{r['numbaconv_images_per_s']:.1f} vs {r['torch_images_per_s']:.1f} "
                         f"img/s, image {r['image']}; {r.get('path', 'functional calls')}"
                         + (f"; unfused {unfused:.1f} img/s" if unfused else "")))
    over = result.get("overhead", [])
    if over:
        worst = max(over, key=lambda r: r["numbaconv_us"])
        rows.append(_row("host time of one small op call (batch 1, 8x8 image): worst op", worst[
            "numbaconv_us"], GPU_TARGETS["overhead_us"] if gpu else None, "us",
            f"{worst['op']}; " + ", ".join(f"{r['op'].split()[0]} {r['numbaconv_us']:.1f}"
                                           for r in over)
            + ("" if gpu else " (no CPU target)"), higher=False))
    for r in result.get("memory", []):
        if "traced_peak_bytes" not in r or not r["impl"].startswith("numbaconv nn.fuse"):
            continue
        torch_rows = [t for t in result["memory"] if t["impl"].startswith("torch")
                      and (t["net"], t["batch"], t["image"]) == (r["net"], r["batch"], r["image"])]
        rows.append(_row(f"{r['net']} eval forward, batch {r['batch']}: peak / lower bound",
                         r["traced_peak_bytes"] / r["lower_bound_bytes"], None, "x",
                         f"fused: input + NumPy-side peak {_mib(r['traced_peak_bytes']):.1f} MiB, "
                         f"lower bound {_mib(r['lower_bound_bytes']):.1f} MiB ({r['largest_layer']}"
                         f" in+out + network input), resident set rise "
                         f"{_mib(r['rss_rise_bytes']):.1f} MiB"
                         + "".join(f"; torch eager resident set rise "
                                   f"{_mib(t['rss_rise_bytes']):.1f} MiB" for t in torch_rows)
                         + " (no target)"))
    allmem = [r for r in result.get("elementwise", []) if "pct_of_ceiling" in r]
    for shape in sorted({tuple(r["shape"]) for r in allmem}):
        mem = [r for r in allmem if tuple(r["shape"]) == shape]
        worst = min(mem, key=lambda r: r["pct_of_ceiling"])
        rows.append(_row(f"pooling, activations, batch_norm {'x'.join(map(str, shape))}: "
                         "worst % of copy bandwidth",
                         worst["pct_of_ceiling"], TARGETS["bandwidth_pct"], "%",
                         f"{worst['op']}; ceiling {worst['ceiling_gbs']:.1f} GB/s; "
                         f"{sum(r['pct_of_ceiling'] >= TARGETS['bandwidth_pct'] for r in mem)}"
                         f"/{len(mem)} ops hold"))
    scal = result.get("scaling", [])
    if scal:
        n = scal[0]["threads"]
        gm = _geomean([r["numbaconv_speedup"] for r in scal])
        tg = _geomean([r.get("torch_speedup") for r in scal])
        rows.append(_row(f"dense conv2d, {n} threads vs 1: geomean speedup", gm,
                         TARGETS["scaling"], "x",
                         f"{len(scal)} layers, batch {scal[0]['batch']}"
                         + (f"; torch {tg:.2f}x" if tg else "")))
    alloc = [r for r in conv if "steady_alloc_bytes" in r]
    if alloc:
        worst = max(alloc, key=lambda r: r["steady_alloc_bytes"])
        rows.append(_row("conv2d steady-state allocation per call beyond the output",
                         worst["steady_alloc_bytes"], ALLOC_SLACK, "bytes",
                         f"worst {worst['layer']} b={worst['batch']}; tracemalloc peak, arrays made "
                         "inside Numba kernels included", higher=False))
    st = result.get("startup", {})
    if "first_call" in st:
        fc = st["first_call"]
        rows.append(_row("first conv2d call in a fresh process, warm cache", fc["first_call_s"],
                         TARGETS["first_call_s"], "s",
                         f"import numbaconv {fc['best_import_s']:.2f} s", higher=False))
    if "cold" in st:
        c = st["cold"]
        what = "an empty cache" if c.get("empty_cache", True) else "the cache as it was"
        rows.append(_row(f"{c['net']} forward with {what}, compile included",
                         c["total_s"], TARGETS["cold_resnet18_s"] if c["net"] == "resnet18"
                         and not c["small"] and c.get("empty_cache", True) else None, "s",
                         f"import {c['import_s']:.1f} s + first forward "
                         f"{c['first_forward_s']:.1f} s", higher=False))
    return rows


# Rows of a section are merged with an earlier run's by these keys (a new row replaces an old).
_KEYS = {"conv": ("layer", "batch", "dtype", "device"), "scaling": ("layer", "batch"),
         "elementwise": ("op", "shape", "dtype", "device"), "e2e": ("net", "batch", "image"),
         "memory": ("net", "batch", "image", "impl"), "overhead": ("op", "device")}


def merge_results(old, new):
    """``new`` with the rows of ``old`` that it did not measure again (same machine only)."""
    if not old or old.get("machine", {}).get("cpu") != new["machine"].get("cpu"):
        return new
    merged = dict(new)
    for sec, keys in _KEYS.items():
        fresh = {tuple(json.dumps(r[k]) for k in keys) for r in new.get(sec, [])}
        kept = [r for r in old.get(sec, [])
                if tuple(json.dumps(r.get(k)) for k in keys) not in fresh]
        merged[sec] = kept + new.get(sec, [])
    merged["startup"] = dict(old.get("startup", {}), **new.get("startup", {}))
    if new.get("bandwidth_ceiling_gbs") is None and "bandwidth_ceiling_gbs" in old:
        merged["bandwidth_ceiling_gbs"] = old["bandwidth_ceiling_gbs"]
    merged["runs"] = old.get("runs", []) + new.get("runs", [])
    return merged


def _fmt(v, unit):
    if v is None:
        return "-"
    if unit == "bytes":
        return f"{v:.0f} B"
    if unit == "s":
        return f"{v:.2f} s"
    if unit == "%":
        return f"{v:.1f}%"
    if unit == "us":
        return f"{v:.1f} µs"
    return f"{v:.2f}{unit}"


def to_markdown(result):
    """The results as Markdown tables: summary against the targets first, then every section."""
    m = result["machine"]
    lines = [f"# numbaconv benchmark ({result['device']})", "",
             f"{m['cpu']} (LLVM: {m.get('llvm_host_cpu')}), {m['cores']} cores, "
             f"{m['threads']} threads, {m['simd_lanes_f32']} float32 SIMD lanes; "
             f"numbaconv {m.get('numbaconv')} ({m.get('commit')}), numba {m['numba']}, "
             f"numpy {m['numpy']}, torch {m.get('torch', '-')}, python {m['python']}.",
             f"Runs: {', '.join(r['when'] + ' ' + r['args'] for r in result.get('runs', []))}.",
             "Times are the best of alternating rounds (numbaconv, PyTorch, ...) in one process; "
             "other processes may have shared the cores.",
             "Conv GFLOP/s count the direct convolution's 2*N*OC*OH*OW*(C/groups)*KH*KW for every "
             "algorithm, so where Winograd runs (3x3 stride-1 layers) the rate is an effective "
             "one and can exceed the sgemm ceiling.", ""]
    if result.get("sgemm_gflops"):
        parts = ", ".join(f"{k} {v:.1f}" for k, v in result.get("sgemm", {}).items())
        lines += [f"sgemm ceiling (float32, 1024^3): {result['sgemm_gflops']:.1f} GFLOP/s"
                  + (f" ({parts})" if parts else ""), ""]
    summary = result.get("summary", [])
    if summary:
        lines += ["## Targets", "", "| what | measured | target | holds | detail |",
                  "| --- | --- | --- | --- | --- |"]
        for r in summary:
            tgt = "-" if r["target"] is None else ("≥ " if r["unit"] not in ("s", "bytes")
                                                    else "≤ ") + _fmt(r["target"], r["unit"])
            holds = {True: "yes", False: "**no**", None: "-"}[r["holds"]]
            lines.append(f"| {r['what']} | {_fmt(r['value'], r['unit'])} | {tgt} | {holds} | "
                         f"{r['detail']} |")
        lines.append("")
    if result.get("conv"):
        sg = result.get("sgemm_gflops") or math.nan
        lines += ["## conv2d", "", "| layer | batch | numbaconv GFLOP/s | % of sgemm | "
                  "peer GFLOP/s | peer time / numbaconv time | max rel err |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in result["conv"]:
            p = _peer(r)
            pg = f"{r[p + '_gflops']:.1f} ({p})" if p else "-"
            ratio = f"{r[p + '_ms'] / r['numbaconv_ms']:.2f}" if p else "-"
            lines.append(f"| {r['layer']} | {r['batch']} | {r['numbaconv_gflops']:.1f} | "
                         f"{100 * r['numbaconv_gflops'] / sg:.0f}% | {pg} | {ratio} | "
                         f"{r['max_rel_err']:.1e} |")
        lines.append("")
    if result.get("scaling"):
        n = result["scaling"][0]["threads"]
        lines += ["## Thread scaling (dense conv2d)", "",
                  f"| layer | batch | numbaconv 1t ms | numbaconv {n}t ms | speedup | "
                  "torch speedup |", "| --- | --- | --- | --- | --- | --- |"]
        for r in result["scaling"]:
            ts = f"{r['torch_speedup']:.2f}" if "torch_speedup" in r else "-"
            lines.append(f"| {r['layer']} | {r['batch']} | {r['numbaconv_1t_ms']:.2f} | "
                         f"{r[f'numbaconv_{n}t_ms']:.2f} | {r['numbaconv_speedup']:.2f} | {ts} |")
        lines.append("")
    if result.get("elementwise"):
        lines += ["## Memory-bound ops (bytes read + written)", ""]
        if any(r.get("timed") == "second of two calls" for r in result["elementwise"]):
            lines += ["Each timed call (numbaconv, torch and the copy) follows an untimed call of "
                      "the same function, so its data is where its own last call left it (in "
                      "cache when it fits, as after the layer that wrote it); numbaconv and the "
                      "copy alternate, torch is timed in rounds of its own.", ""]
        lines += ["| op | shape | numbaconv GB/s | % of copy | torch GB/s | copy GB/s |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in result["elementwise"]:
            pct = f"{r['pct_of_ceiling']:.0f}%" if "pct_of_ceiling" in r else "-"
            tg = f"{r['torch_gbs']:.1f}" if "torch_gbs" in r else "-"
            cg = f"{r['ceiling_gbs']:.1f}" if "ceiling_gbs" in r else "-"
            lines.append(f"| {r['op']} | {'x'.join(map(str, r['shape']))} | "
                         f"{r['numbaconv_gbs']:.1f} | {pct} | {tg} | {cg} |")
        lines.append("")
    if result.get("overhead"):
        lines += ["## Host time of small calls (batch 1, 8 channels, 8x8 image)", "",
                  f"Each round makes {result['overhead'][0]['calls']} calls on inputs already on "
                  "the device, then synchronises once.", "",
                  "| op | numbaconv µs per call | torch µs per call |", "| --- | --- | --- |"]
        for r in result["overhead"]:
            tu = f"{r['torch_us']:.1f}" if "torch_us" in r else "-"
            lines.append(f"| {r['op']} | {r['numbaconv_us']:.1f} | {tu} |")
        lines.append("")
    if result.get("e2e"):
        paths = sorted({r.get("path", "functional calls") for r in result["e2e"]})
        lines += ["## Inference end to end", "",
                  f"numbaconv: {'; '.join(paths)} (BatchNorm folded, activation and residual add "
                  "in the conv epilogue); unfused: the same model without nn.fuse; torch: the "
                  "same network from torch.nn modules with BatchNorm, eager, eval, no_grad. "
                  "Logits checked against torch's before timing.", "",
                  "| net | batch | numbaconv img/s | unfused img/s | torch img/s | torch/nc | "
                  "fusion speedup | logits rel err |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in result["e2e"]:
            unf = r.get("numbaconv_unfused_images_per_s")
            lines.append(f"| {r['net']} | {r['batch']} | {r['numbaconv_images_per_s']:.1f} | "
                         f"{'-' if unf is None else f'{unf:.1f}'} | "
                         f"{r['torch_images_per_s']:.1f} | {r['torch_over_numbaconv']:.2f} | "
                         f"{_fmt(r.get('fusion_speedup'), 'x')} | {r['logits_rel_err']:.1e} |")
        lines.append("")
    if result.get("memory"):
        mem = result["memory"]
        lines += ["## Peak memory (eval forward, one fresh process per row)", "",
                  f"- resident set rise: {mem[0]['rss_method']}.",
                  f"- traced peak: {TRACED_METHOD}.",
                  "- lower bound: the largest input(s) + output of any single leaf layer, plus the "
                  "network's input where that layer does not read it (the caller holds it).",
                  "- weight cache and pool: numbaconv's packed/transformed weights and pooled "
                  "workspaces, kept between calls (not part of the rise).", "",
                  "| net | batch | image | implementation | weights MiB | input MiB | "
                  "lower bound MiB (layer) | traced peak MiB | resident set rise MiB | "
                  "weight cache MiB | workspace pool MiB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

        def mib(r, key):
            return f"{_mib(r[key]):.1f}" if r.get(key) is not None else "-"
        for r in mem:
            bound = (f"{mib(r, 'lower_bound_bytes')} ({r['largest_layer']})"
                     if "largest_layer" in r else "-")
            lines.append(f"| {r['net']} | {r['batch']} | {r['image']} | {r['impl']} | "
                         f"{mib(r, 'weights_bytes')} | {mib(r, 'input_bytes')} | {bound} | "
                         f"{mib(r, 'traced_peak_bytes')} | {mib(r, 'rss_rise_bytes')} | "
                         f"{mib(r, 'weight_cache_bytes')} | {mib(r, 'workspace_pool_bytes')} |")
        lines.append("")
    st = result.get("startup", {})
    if st:
        lines += ["## Start-up (fresh processes)", ""]
        if "first_call" in st:
            fc = st["first_call"]
            lines.append(f"- warm cache: import numbaconv {fc['best_import_s']:.2f} s, first "
                         f"conv2d {fc['first_call_s']:.3f} s, second {fc['second_call_s']:.4f} s "
                         f"(layer N, C, OC, H, K, pad = {fc['layer']})")
        if "cold" in st:
            c = st["cold"]
            lines.append(f"- empty cache: {c['net']} through nn.fuse(models...), import "
                         f"{c['import_s']:.1f} s + first forward {c['first_forward_s']:.1f} s = "
                         f"{c['total_s']:.1f} s; second forward "
                         f"{c['second_forward_s'] * 1e3:.0f} ms")
        lines.append("")
    return "\n".join(lines)


def plot(result, path):
    """GFLOP/s per layer (numbaconv, peer, sgemm ceiling), one panel per batch, and a panel of
    the networks' images/s (fused, unfused, PyTorch eager). Returns False (with a printed note)
    when matplotlib is not installed or there is nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, no plot (pip install 'numbaconv[bench]')")
        return False
    conv = result.get("conv", [])
    e2e = result.get("e2e", [])
    batches = sorted({r["batch"] for r in conv})
    if not batches and not e2e:
        return False
    width = max([8.0] + [0.45 * sum(r["batch"] == b for r in conv) for b in batches])
    fig, axes = plt.subplots(len(batches) + bool(e2e), 1, squeeze=False,
                             figsize=(width, 4.5 * (len(batches) + bool(e2e))))
    for ax, b in zip(axes[:, 0], batches):
        rows = [r for r in conv if r["batch"] == b]
        pos = np.arange(len(rows))
        ax.bar(pos - 0.2, [r["numbaconv_gflops"] for r in rows], 0.4, label="numbaconv")
        p = _peer(rows[0])
        if p:
            ax.bar(pos + 0.2, [r.get(p + "_gflops", 0.0) for r in rows], 0.4, label=p)
        if result.get("sgemm_gflops"):
            ax.axhline(result["sgemm_gflops"], color="k", ls="--", lw=1,
                       label=f"sgemm ceiling {result['sgemm_gflops']:.0f}")
        ax.set_xticks(pos)
        ax.set_xticklabels([r["layer"] for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"conv2d float32, batch {b}, {rows[0]['threads']} threads "
                     f"({result['machine']['cpu']})", fontsize=9)
        ax.legend(fontsize=8)
    if e2e:
        ax = axes[-1, 0]
        pos = np.arange(len(e2e))
        series = [("numbaconv (nn.fuse)", "numbaconv_images_per_s"),
                  ("numbaconv unfused", "numbaconv_unfused_images_per_s"),
                  ("PyTorch eager", "torch_images_per_s")]
        for i, (label, key) in enumerate(series):
            ax.bar(pos + (i - 1) * 0.27, [r.get(key, np.nan) for r in e2e], 0.27, label=label)
        ax.set_xticks(pos)
        ax.set_xticklabels([f"{r['net']}\nbatch {r['batch']}" for r in e2e], fontsize=8)
        ax.set_ylabel("images / s")
        ax.set_title(f"inference end to end, image {e2e[0]['image']}, {e2e[0]['threads']} "
                     "threads", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(result, out_dir, stem, merge=True):
    """Write ``stem``.json, .md and .png under ``out_dir`` (merged with an earlier run of the
    same machine unless ``merge`` is False). Returns the result as written."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, stem + ".json")
    if merge and os.path.exists(path):
        try:
            with open(path) as f:
                result = merge_results(json.load(f), result)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"note: not merging with {path} ({exc})")
    result["summary"] = summarize(result)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, stem + ".md"), "w") as f:
        f.write(to_markdown(result) + "\n")
    plot(result, os.path.join(out_dir, stem + ".png"))
    return result


def print_summary(rows, progress=print):
    for r in rows:
        holds = {True: "holds", False: "DOES NOT HOLD", None: ""}[r["holds"]]
        tgt = "" if r["target"] is None else f" (target {_fmt(r['target'], r['unit'])})"
        progress(f"  {r['what']}: {_fmt(r['value'], r['unit'])}{tgt} {holds}  {r['detail']}")


def main(quick=False, sets=None, batches=None, only=None, nets=None, elementwise_shape=None,
         out_dir=None, with_torch=True, merge=True, tracked=True, budget=None, argv_text=""):
    """Run the chosen sections, print the tables and the summary, and (with ``out_dir``) save
    ``cpu[-quick].json/.md/.png`` (``gpu[-quick].*`` on CUDA) there. Returns the result dictionary."""
    dev = _device.get_device()
    torch = _torch() if with_torch else None
    if torch is not None:
        torch.set_num_threads(numba.get_num_threads())
    sections = list(only or SECTIONS)
    if dev != "cpu":
        skipped = [s for s in sections if s in ("scaling", "memory", "startup")]
        if skipped:
            print(f"note: {', '.join(skipped)} run on the CPU only; skipped on {dev}")
        sections = [s for s in sections if s not in skipped]
    budget = budget or (0.2 if quick else 0.5)
    if quick:
        layers = QUICK if not sets else [la for la in QUICK if la[0].split(".")[0] in sets]
        batches = batches or [1]
    else:
        layers = [layer for s in (sets or list(SETS)) for layer in SETS[s]]
        batches = batches or [1, 32]
    mem_nets = nets or ["resnet18"]
    nets = nets or list(NETS)
    dense = [la for la in layers if layer_kind(la) == "dense"]
    if quick:
        dense = dense[:2]
    shape = tuple(elementwise_shape or ((4, 64, 56, 56) if quick else (32, 64, 56, 56)))
    cold = not quick or bool(only)
    steps = {"conv": len(layers) * len(batches), "scaling": len(dense),
             "elementwise": len(_ELEMENTWISE) + (dev == "cpu"), "overhead": len(_OVERHEAD_OPS),
             "e2e": len(nets) * len(batches),
             "memory": len(mem_nets) * len(batches) * (2 + (torch is not None)),
             "startup": 1 + cold}
    bar = Progress(sum(steps[s] for s in sections), "bench")
    bar.note(f"numbaconv bench on {dev}, {numba.get_num_threads()} threads, sections "
             f"{', '.join(sections)}; every result is checked against a reference before timing")
    result = {"machine": machine(torch), "device": dev, "quick": quick,
              "runs": [{"when": datetime.datetime.now().isoformat(timespec="seconds"),
                        "args": argv_text or "", "sections": sections}]}
    if "conv" in sections:
        sg = sgemm_ceiling(torch=torch)
        result["conv"] = []
        for b in batches:
            result["conv"] += run_conv(layers, b, with_torch=with_torch, budget=budget,
                                       tracked=tracked, progress=bar.log)
        # Measured again after the layers: other processes' load makes one reading too low.
        again = sgemm_ceiling(torch=torch)
        result["sgemm"] = {k: max(v, again[k]) for k, v in sg.items()}
        result["sgemm_gflops"] = result["sgemm"]["best"]
        bar.note("sgemm ceiling (float32 1024^3, best of before and after the layers): "
                 + ", ".join(f"{k} {v:.1f}" for k, v in result["sgemm"].items()) + " GFLOP/s")
    if "scaling" in sections:
        if numba.get_num_threads() < 2:
            bar.log("scaling: skipped (1 thread)")
        else:
            result["scaling"] = run_scaling(dense, min(batches), with_torch=with_torch,
                                            budget=budget, progress=bar.log)
    if "elementwise" in sections:
        result["elementwise"], result["bandwidth_ceiling_gbs"] = run_elementwise(
            shape, with_torch=with_torch, budget=budget, progress=bar.log)
    if "overhead" in sections:
        result["overhead"] = run_overhead(with_torch=with_torch, budget=budget, progress=bar.log)
    if "e2e" in sections:
        result["e2e"] = run_e2e(nets, batches, with_torch=with_torch, budget=max(budget, 0.5),
                                progress=bar.log)
    if "memory" in sections:
        result["memory"] = run_memory(mem_nets, batches, with_torch=with_torch, progress=bar.log)
    if "startup" in sections:
        if not cold:
            bar.note("startup: the empty-cache ResNet-18 compile is skipped with --quick "
                     "(use --only startup)")
        result["startup"] = run_startup(first_call=True, cold=cold, progress=bar.log)
    bar.close()
    if out_dir:
        # "gpu", as the CUDA targets' issue names the file; the result's machine names the GPU.
        stem = {"cuda": "gpu"}.get(dev, dev) + ("-quick" if quick else "")
        result = write_results(result, out_dir, stem, merge=merge)
        png = os.path.exists(os.path.join(out_dir, stem + ".png"))
        print(f"saved {os.path.join(out_dir, stem)}.json, .md" + (" and .png" if png else ""))
    else:
        result["summary"] = summarize(result)
    print("summary against the targets:")
    print_summary(result["summary"])
    return result
