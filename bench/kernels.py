"""ptxas resource usage and theoretical occupancy of every CUDA kernel on sm_90 (H100/H200).

Usage: ``python bench/kernels.py [--out DIR]``, from the repository root. No GPU is needed:
each registered kernel (``numbaconv._cuda.KERNELS``) is compiled to PTX for its float32 and,
where registered, float16 signature (or its one signature without floats), and assembled by
nvJitLink's ptxas (:func:`numbaconv._cuda.kernel_resources`). These are static compiler
figures, not measurements on a GPU. Writes ``cuda-kernels.md`` and ``cuda-kernels.json`` to
DIR (default bench/results).

Where nvdisasm is installed (the cuda13 extra, or pip install nvidia-cuda-nvdisasm), the
cubin's SASS (:func:`numbaconv._cuda.kernel_sass`) adds the instruction count, the FMA share of
the hot loop and, for the implicit-GEMM kernels, the FMA share of one staged reduction step;
without it the report is written without those columns and says why.

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
GEMM = re.compile(r"numbaconv\.cuda\.gemm\._conv2d_gemm_(\d+)x(\d+)$")
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


def gemm_step(name, loops, hot):
    """FMAs and instructions of one staged reduction step of implicit-GEMM kernel ``name``:
    the hot (inner) loop times its trips per step, bk / UNROLL, plus the rest of the loop that
    encloses it (staging, barrier); None for other kernels or without an enclosing loop."""
    tile = GEMM.match(name)
    if tile is None or hot is None or hot["parent"] is None:
        return None
    from numbaconv import _cuda
    from numbaconv.cuda import gemm

    fma = _cuda.sass_fma
    bm, bn = int(tile[1]), int(tile[2])
    (shape,) = [t for t in (gemm.BIG, gemm.SMALL) if t[:2] == (bm, bn)]
    trips = shape[2] // gemm.UNROLL[shape]
    outer = loops[hot["parent"]]
    return {"trips": trips,
            "fma": fma(hot) * trips + fma(outer) - fma(hot),
            "instructions": hot["instructions"] * trips + outer["instructions"]
            - hot["instructions"]}


def sass_figures(name, func, sig):
    """SASS columns of one row: total instructions, hot loop, staged GEMM step."""
    from numbaconv import _cuda

    sass = _cuda.kernel_sass(func, sig, CC)
    loops = _cuda.sass_loops(sass)
    hot = _cuda.sass_hot_loop(loops)
    return {"sass_instructions": sum(_cuda.sass_opcodes(sass).values()),
            "hot_loop": None if hot is None else {
                "label": hot["label"], "fma": _cuda.sass_fma(hot),
                "instructions": hot["instructions"],
                "opcodes": dict(hot["opcodes"].most_common())},
            "staged_step": gemm_step(name, loops, hot)}


def collect(progress=print, sass=True):
    """One row per (kernel, float32 / float16 signature); with ``sass``, the SASS figures too."""
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
            if sass:
                row.update(sass_figures(name, func, sig))
            rows.append(row)
            progress(format_row(row))
    return rows


def _share(figures):
    if figures is None:
        return "-"
    fma, n = figures["fma"], figures["instructions"]
    return f"{fma}/{n} FMA ({100 * fma / n:.0f}%)"


def format_row(r):
    spills = f"{r['spill_stores']}/{r['spill_loads']}"
    threads = f"{r['threads']}{'*' if r['threads_assumed'] else ''}"
    sass = (f" {r['sass_instructions']} | {_share(r['hot_loop'])} | "
            f"{_share(r['staged_step'])} |") if "sass_instructions" in r else ""
    return (f"| {r['kernel']} | {r['dtype']} | {r['registers']} | {r['stack']} | {spills} | "
            f"{r['smem']} | {threads} | {r['blocks_per_sm']} | {100 * r['occupancy']:.0f}% | "
            f"{r['limiter']} |{sass}")


HEADER = ["| kernel | dtype | registers | stack B | spill st/ld B | static smem B | threads/block "
          "| blocks/SM | occupancy | limited by |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
SASS_HEADER = [" SASS instructions | hot loop | GEMM staged step |", " --- | --- | --- |"]


def header(sass):
    return [line + extra for line, extra in zip(HEADER, SASS_HEADER)] if sass else HEADER


SASS_NOTE = (
    "SASS (from the cubin, disassembled by nvdisasm): *SASS instructions* counts the kernel "
    "and the device functions it calls. *Hot loop*: the loop (a label and a backward branch) "
    "that nests deepest among those holding fused multiply-adds (FFMA, DFMA, HFMA2), with the "
    "most of them; the figure is its FMAs / instructions per trip. *GEMM staged step* (the "
    "implicit-GEMM kernels): one staged bk-deep reduction step, the inner loop's instructions "
    "times its bk / UNROLL trips plus the rest of the enclosing loop (global loads into "
    "registers, shared stores, the barrier), which the main loop repeats. The FP32 peak is "
    "one FFMA per lane per cycle, and every other instruction takes an issue slot that an "
    "FFMA could have used, so this FFMA share bounds the fraction of the peak the main loop "
    "can reach, before any stall (64%: at most 64% of the peak). Static counts, not a "
    "profile.")


def markdown(result):
    rows = result["rows"]
    sass = result["sass_unavailable"] is None
    note = SASS_NOTE if sass else f"No SASS figures: {result['sass_unavailable']}."
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
        f"Kernels with a stack frame or spills: {', '.join(flagged) or 'none'}.", "", note, "",
        *header(sass), *(format_row(r) for r in rows), ""])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results"))
    args = parser.parse_args(argv)
    import numba_cuda

    from numbaconv import _cuda
    from numbaconv.bench import _git_commit

    try:
        _cuda.nvdisasm_path()
        unavailable = None
    except RuntimeError as exc:
        unavailable = str(exc)
        print(f"no SASS figures: {unavailable}")
    print(*header(unavailable is None), sep="\n")
    result = {"what": "ptxas resource usage (static compiler data, not a GPU measurement)",
              "arch": f"sm_{CC[0]}{CC[1]}", "nvjitlink": _cuda.nvjitlink_version(),
              "numba_cuda": numba_cuda.__version__, "commit": _git_commit(),
              "when": time.strftime("%Y-%m-%d %H:%M"), "sm": SM90,
              "sass_unavailable": unavailable, "rows": collect(sass=unavailable is None)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cuda-kernels.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "cuda-kernels.md"), "w") as f:
        f.write(markdown(result))
    print(f"wrote {args.out}/cuda-kernels.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
