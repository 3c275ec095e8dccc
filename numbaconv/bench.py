"""Benchmarks: numbaconv next to PyTorch (when installed) and the machine's sgemm ceiling.

Run with ``python -m numbaconv bench [--quick]``. Every timed result is first checked against an
independent float64 computation of sampled output elements, so a fast wrong kernel cannot
report a number. The layer shapes live here (not only in ``bench/``) so that the command works
from an installed package; ``bench/shapes.py`` re-exports them.
"""

import json
import os
import platform
import time

import numpy as np

from numbaconv import device as _device
from numbaconv import functional as F

# (name, C, OC, H=W, kernel, stride, padding, groups) per layer; batch is chosen by the run.
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
QUICK = [layer for layer in RESNET50 if ".3x3." in layer[0] or ".1x1." in layer[0]][:8]


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


def _timeit(fn, sync, budget=0.5, min_runs=3, max_runs=50):
    """Median seconds per call after one warm-up call (JIT compile, caches)."""
    fn()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _torch():
    # torch's OpenMP workers spin after each call and steal the cores numba's threads need;
    # a passive wait policy (set before torch loads) keeps the side-by-side timing fair.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        return None
    return torch


def sgemm_ceiling(size=1024):
    """GFLOP/s of the host BLAS (NumPy's) on a float32 square matmul: the machine's ceiling."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    t = _timeit(lambda: a @ a, lambda: None, budget=0.5)
    return 2.0 * size ** 3 / t / 1e9


def machine():
    """A short description of the machine that ran the benchmark."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba

    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": numba.get_num_threads(),
            "simd_lanes_f32": _device.simd_width(), "python": platform.python_version(),
            "numba": numba.__version__, "numpy": np.__version__}
    if _device.get_device() == "cuda":
        from numbaconv import _cuda

        info["gpu"] = _cuda.device_name()
    return info


def run_conv(layers, batch, dtype=np.float32, with_torch=True, progress=print):
    """Time conv2d on ``layers`` at ``batch`` on the current device; return result rows."""
    dev = _device.get_device()
    torch = _torch() if with_torch else None
    sync = (lambda: None)
    if dev == "cuda":
        from numbaconv import _cuda

        sync = _cuda.synchronize
    rng = np.random.default_rng(0)
    rows = []
    for name, c, oc, hw, k, s, p, g in layers:
        x = rng.standard_normal((batch, c, hw, hw)).astype(dtype)
        w = (rng.standard_normal((oc, c // g, k, k)) / np.sqrt(c // g * k * k)).astype(dtype)
        xd, wd = _device.to_device(x, dev), _device.to_device(w, dev)
        out = F.conv2d(xd, wd, stride=s, padding=p, groups=g)
        err = _sample_check(out, x, w, s, p, g, rng)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        if not err < tol:
            raise AssertionError(f"{name}: conv2d result differs from the float64 reference "
                                 f"(relative error {err:.2e} > {tol:.0e})")
        oh = out.shape[2]
        flops = conv_flops(batch, c, oc, oh, oh, k, g)
        t = _timeit(lambda: F.conv2d(xd, wd, stride=s, padding=p, groups=g), sync)
        row = {"layer": name, "batch": batch, "dtype": np.dtype(dtype).name, "device": dev,
               "numbaconv_ms": t * 1e3, "numbaconv_gflops": flops / t / 1e9, "max_rel_err": err}
        if torch is not None:
            row.update(_torch_conv(torch, dev, x, w, s, p, g, flops))
        rows.append(row)
        progress(_format_row(row))
    return rows


def _torch_conv(torch, dev, x, w, s, p, g, flops):
    import numba

    torch.set_num_threads(numba.get_num_threads())
    tdev = "cuda" if dev == "cuda" else "cpu"
    tx, tw = torch.from_numpy(x).to(tdev), torch.from_numpy(w).to(tdev)
    sync = torch.cuda.synchronize if tdev == "cuda" else (lambda: None)
    res = {}
    modes = [("torch", False)] if tdev == "cpu" else [("cudnn", False), ("cudnn_tf32", True)]
    for label, tf32 in modes:
        if tdev == "cuda":
            torch.backends.cudnn.allow_tf32 = tf32
        with torch.no_grad():
            t = _timeit(lambda: torch.nn.functional.conv2d(tx, tw, stride=s, padding=p, groups=g),
                        sync)
        res[f"{label}_ms"] = t * 1e3
        res[f"{label}_gflops"] = flops / t / 1e9
    return res


def _format_row(row):
    line = (f"{row['layer']:<30} b={row['batch']:<3} {row['numbaconv_gflops']:8.1f} GFLOP/s "
            f"({row['numbaconv_ms']:8.2f} ms)")
    for label in ("torch", "cudnn", "cudnn_tf32"):
        if f"{label}_gflops" in row:
            ratio = row[f"{label}_ms"] / row["numbaconv_ms"]
            line += f" | {label} {row[f'{label}_gflops']:8.1f} GFLOP/s, {label}/nc time {ratio:5.2f}"
    return line


def run_elementwise(shape=(8, 64, 56, 56), dtype=np.float32, progress=print):
    """GB/s of the memory-bound ops (activation, pooling, batch_norm) on the current device."""
    dev = _device.get_device()
    sync = (lambda: None)
    if dev == "cuda":
        from numbaconv import _cuda

        sync = _cuda.synchronize
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    mean, var = rng.standard_normal(c).astype(dtype), rng.random(c).astype(dtype) + 0.5
    xd = _device.to_device(x, dev)
    md, vd = _device.to_device(mean, dev), _device.to_device(var, dev)
    nbytes = x.nbytes
    ops = [
        ("relu", lambda: F.relu(xd), 2 * nbytes,
         lambda y: np.maximum(x.astype(np.float64), 0)),
        ("batch_norm", lambda: F.batch_norm(xd, md, vd), 2 * nbytes,
         lambda y: (x - mean[None, :, None, None].astype(np.float64))
         / np.sqrt(var[None, :, None, None].astype(np.float64) + 1e-5)),
        ("max_pool2d 3x3 s2", lambda: F.max_pool2d(xd, 3, 2, 1), nbytes * 5 // 4,
         None),
    ]
    rows = []
    for name, fn, moved, ref in ops:
        y = _device.to_numpy(fn())
        if ref is not None:
            err = float(np.max(np.abs(y - ref(y))))
            if not err < 1e-4:
                raise AssertionError(f"{name}: differs from the float64 reference by {err:.2e}")
        t = _timeit(fn, sync)
        row = {"op": name, "shape": list(shape), "device": dev, "ms": t * 1e3,
               "gbytes_per_s": moved / t / 1e9}
        rows.append(row)
        progress(f"{name:<30} {row['gbytes_per_s']:8.1f} GB/s ({row['ms']:.2f} ms)")
    return rows


def write_results(result, out_dir, stem):
    """Write ``result`` as JSON and a Markdown table under ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, stem + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"# {stem}", "", f"Machine: {json.dumps(result['machine'])}", "",
             f"sgemm ceiling (NumPy BLAS, float32): {result['sgemm_gflops']:.1f} GFLOP/s", "",
             "| layer | batch | numbaconv GFLOP/s | peer GFLOP/s | peer time / numbaconv time |",
             "| --- | --- | --- | --- | --- |"]
    for row in result["conv"]:
        peer = next((p for p in ("torch", "cudnn") if f"{p}_gflops" in row), None)
        peer_g = f"{row[peer + '_gflops']:.1f} ({peer})" if peer else "-"
        ratio = f"{row[peer + '_ms'] / row['numbaconv_ms']:.2f}" if peer else "-"
        lines.append(f"| {row['layer']} | {row['batch']} | {row['numbaconv_gflops']:.1f} | "
                     f"{peer_g} | {ratio} |")
    if result.get("memory_bound"):
        lines += ["", "| op | GB/s |", "| --- | --- |"]
        lines += [f"| {r['op']} | {r['gbytes_per_s']:.1f} |" for r in result["memory_bound"]]
    with open(os.path.join(out_dir, stem + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(quick=False, sets=None, batches=None, out_dir=None, with_torch=True):
    """Run the benchmark, print a table and (with ``out_dir``) save it."""
    dev = _device.get_device()
    print(f"numbaconv bench on {dev}; every result is checked against a float64 reference")
    if quick:
        layers, batches = QUICK, batches or [1]
    else:
        layers = [layer for s in (sets or list(SETS)) for layer in SETS[s]]
        batches = batches or [1, 32]
    result = {"machine": machine(), "device": dev, "sgemm_gflops": sgemm_ceiling(),
              "conv": [], "memory_bound": []}
    print(f"sgemm ceiling (NumPy BLAS, float32): {result['sgemm_gflops']:.1f} GFLOP/s")
    for b in batches:
        result["conv"] += run_conv(layers, b, with_torch=with_torch)
    result["memory_bound"] = run_elementwise(shape=(1, 64, 56, 56) if quick else (8, 64, 56, 56))
    gm = _geomean_ratio(result["conv"])
    if gm is not None:
        print(f"geometric mean of peer time / numbaconv time: {gm:.2f}")
        result["geomean_peer_over_numbaconv"] = gm
    if out_dir:
        stem = f"{'quick' if quick else 'conv'}-{dev}"
        write_results(result, out_dir, stem)
        print(f"saved {os.path.join(out_dir, stem)}.json and .md")
    return result


def _geomean_ratio(rows):
    peer = "torch" if any("torch_ms" in r for r in rows) else "cudnn"
    ratios = [r[f"{peer}_ms"] / r["numbaconv_ms"] for r in rows if f"{peer}_ms" in r]
    return float(np.exp(np.mean(np.log(ratios)))) if ratios else None
