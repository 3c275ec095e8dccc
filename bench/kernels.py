"""ptxas resource usage and theoretical occupancy of every CUDA kernel on sm_90 (H100/H200).

Usage: ``python bench/kernels.py [--out DIR]``, from the repository root. No GPU is needed:
each registered kernel (``numbaconv._cuda.KERNELS``) is compiled to PTX for its float32 and,
where registered, float16 signature (or its one signature without floats), and assembled by
nvJitLink's ptxas (:func:`numbaconv._cuda.kernel_resources`). These are static compiler
figures, not measurements on a GPU. Writes ``cuda-kernels.md`` and ``cuda-kernels.json`` to
DIR (default bench/results).

Threads per block are read from the launcher's ``kernel[grid, THREADS]`` launch in the kernel's
module when THREADS is a module constant; otherwise 256 is assumed (marked ``*``).
Occupancy follows CUDA's occupancy calculator for sm_90 at the maximum shared-memory carveout.
"""

import argparse
import ast
import importlib
import inspect
import json
import os
import re
import sys
import time

CC = (9, 0)
ASSUMED_THREADS = 256
# sm_90 (H100 / H200) per SM: registers (allocated per warp in units of 256, split evenly over
# 4 sub-partitions), warps, resident blocks, shared memory (+1 KB reserved per block, allocated
# in 128-byte units).
SM90 = {"regs": 65536, "reg_unit": 256, "sub_partitions": 4, "warps": 64, "blocks": 32,
        "smem": 228 * 1024, "smem_reserved": 1024, "smem_unit": 128}


def _ceil(a, b):
    return -(-a // b)


def occupancy(registers, smem, threads, sm=SM90):
    """Theoretical resident blocks per SM, occupancy (resident warps / max warps) and the
    resource that limits it, for a kernel with ``registers`` per thread and ``smem`` bytes of
    static shared memory launched with ``threads`` per block."""
    warps = _ceil(threads, 32)
    regs_per_warp = _ceil(registers * 32, sm["reg_unit"]) * sm["reg_unit"]
    warps_by_regs = (sm["regs"] // sm["sub_partitions"] // max(regs_per_warp, 1)) \
        * sm["sub_partitions"]
    smem_per_block = _ceil(smem, sm["smem_unit"]) * sm["smem_unit"] + sm["smem_reserved"]
    limits = {"blocks": sm["blocks"], "warps": sm["warps"] // warps,
              "registers": warps_by_regs // warps, "smem": sm["smem"] // smem_per_block}
    blocks = min(limits.values())
    limiter = min(limits, key=limits.get)
    return blocks, blocks * warps / sm["warps"], limiter


def launch_threads(name):
    """Threads per block of kernel ``name`` (``module.function``) in its launcher, or None when
    the launch does not use one module constant."""
    module_name, kernel = name.rsplit(".", 1)
    module = importlib.import_module(module_name)
    found = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
                and node.value.id == kernel and isinstance(node.slice, ast.Tuple)
                and len(node.slice.elts) == 2):
            t = node.slice.elts[1]
            value = getattr(module, t.id, None) if isinstance(t, ast.Name) else \
                getattr(t, "value", None)
            found.add(value if isinstance(value, int) else None)
    return found.pop() if len(found) == 1 and None not in found else None


def collect(progress=print):
    """One row per (kernel, float32 / float16 signature)."""
    from numbaconv import _cuda

    importlib.import_module("numbaconv.cuda")  # registers every kernel

    rows = []
    for name, func, sigs in _cuda.KERNELS:
        threads = launch_threads(name)
        for sig in sigs:
            dtype = re.search(r"float(16|32|64)", sig)  # the first float type is {T}
            dtype = dtype[0] if dtype else "-"  # no float arguments (an index table)
            if dtype == "float64":
                continue
            res = _cuda.kernel_resources(func, sig, CC)
            t = threads or ASSUMED_THREADS
            blocks, occ, limiter = occupancy(res["registers"], res["smem"], t)
            row = {"kernel": name.removeprefix("numbaconv.cuda."), "dtype": dtype, **res,
                   "threads": t, "threads_assumed": threads is None, "blocks_per_sm": blocks,
                   "occupancy": occ, "limiter": limiter}
            rows.append(row)
            progress(format_row(row))
    return rows


def format_row(r):
    spills = f"{r['spill_stores']}/{r['spill_loads']}"
    threads = f"{r['threads']}{'*' if r['threads_assumed'] else ''}"
    return (f"| {r['kernel']} | {r['dtype']} | {r['registers']} | {r['stack']} | {spills} | "
            f"{r['smem']} | {threads} | {r['blocks_per_sm']} | {100 * r['occupancy']:.0f}% | "
            f"{r['limiter']} |")


HEADER = ["| kernel | dtype | registers | stack B | spill st/ld B | static smem B | threads/block "
          "| blocks/SM | occupancy | limited by |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]


def markdown(result):
    rows = result["rows"]
    flagged = sorted({r["kernel"] for r in rows if r["stack"] or r["spill_stores"]
                      or r["spill_loads"]})
    return "\n".join([
        f"# numbaconv CUDA kernels: ptxas resources on {result['arch']} (H100 / H200)", "",
        f"Static compiler data, not a GPU measurement: PTX from numba-cuda "
        f"{result['numba_cuda']}, assembled by nvJitLink {result['nvjitlink']} (`-O3`). "
        f"numbaconv {result['commit']}, {result['when']}.",
        "Occupancy: theoretical, at the maximum shared-memory carveout (per SM: 65536 "
        "registers, 64 warps, 32 blocks, 228 KB shared, 1 KB reserved per block). "
        "Threads per block from the launcher; `*`: not a module constant, 256 assumed.",
        f"Kernels with a stack frame or spills: {', '.join(flagged) or 'none'}.", "",
        *HEADER, *(format_row(r) for r in rows), ""])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results"))
    args = parser.parse_args(argv)
    import numba_cuda

    from numbaconv import _cuda
    from numbaconv.bench import _git_commit

    print(*HEADER, sep="\n")
    result = {"what": "ptxas resource usage (static compiler data, not a GPU measurement)",
              "arch": f"sm_{CC[0]}{CC[1]}", "nvjitlink": _cuda.nvjitlink_version(),
              "numba_cuda": numba_cuda.__version__, "commit": _git_commit(),
              "when": time.strftime("%Y-%m-%d %H:%M"), "sm": SM90, "rows": collect()}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cuda-kernels.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "cuda-kernels.md"), "w") as f:
        f.write(markdown(result))
    print(f"wrote {args.out}/cuda-kernels.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
