"""numbaconv.distributed on a LocalCluster of 1 and 2 worker processes: throughput, halo bytes
and a cost model checked against the two measured points.

Usage: ``python bench/distributed.py [--quick] [--repeat 3]`` from the repository root (needs
``pip install -e .[dask]``). Writes ``bench/results/distributed.json`` and ``distributed.md``.

Workloads (float32):

- spatial: the ResNet-18 stem (7x7/2 conv, BatchNorm, ReLU, 3x3/2 max pool) over one
  3 x S x S image with :func:`numbaconv.distributed.predict_tiled`, tiles of T x T pixels
  (chunks of the same size);
- batch: ResNet-18 at 64x64 over 32 images, 4 per task, with :func:`predict`.

Threads: each of the P worker processes gets ``NUMBA_NUM_THREADS = cores // P`` (set before the
worker process starts, through ``distributed.nanny.pre-spawn-environ``: a Nanny's ``env`` is
applied after the worker may have imported Numba), so P workers never run more Numba threads
than the machine has cores. The single-process reference runs with the same total thread
count, right before each cluster run (interleaved, so both see the same load).

Each cluster run is timed from graph submission until the result is in the workers' memory
(``persist`` + ``wait``, nothing gathered), best of ``--repeat`` after a warm-up run. The task
stream of the best run says where the time went: compute inside tile tasks, halo-cutting
tasks, and the rest (scheduling, transfers). The machine is shared: timings are noisy, hence the
best of several, with the load average recorded before and after.

Cost model of the spatial run (S x S image, P workers with t threads each, tiles of T x T),
every term measured:

    T(P, S) = T0 + ceil(n_tiles / P) * (t_task + c_px(t) * T^2 * (1 + f_halo))
                 + n_halo * t_task / P + b_halo * (P - 1) / P / B
    n_tiles = ceil(S / T)^2,  n_halo ~ n_tiles (halo-cutting tasks),  b_halo ~ S^2

- c_px(t): seconds per input pixel of the stem in this process with t threads, whole image;
- f_halo: extra input a tile reads for its receptive field, over the image (from the graph);
- t_task, T0: per-task and fixed overhead, from graphs of no-op tasks on the 1-worker cluster;
- n_halo: the graph's halo-cutting tasks; b_halo: the bytes they cut, of which (P - 1) / P cross
  between workers when chunks are spread evenly; B: transfer rate measured on the 2-worker
  cluster (loopback here; a real network is slower).
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

# This script shares its name with the dask.distributed package: keep its folder, which Python
# puts first on the import path, from shadowing it (here and in the spawned workers).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), times


def _transfers(client):
    """(bytes, seconds) of all incoming transfers logged by the workers so far."""
    logs = client.run(lambda dask_worker: [(e.get("total", 0), e.get("duration", 0.0))
                                           for e in dask_worker.transfer_incoming_log])
    total = [sum(v) for v in zip(*[x for log in logs.values() for x in log])] or [0, 0.0]
    return (int(total[0]), float(total[1])) if len(total) == 2 else (0, 0.0)


def _stream(data, wall, workers):
    """Where a run's time went, from its task stream: seconds inside tile / predict tasks,
    inside halo-cutting tasks, inside the model-loading task, and the rest of wall x workers."""
    parts = {"tiles": 0.0, "halo": 0.0, "model": 0.0, "other_tasks": 0.0}
    for t in data:
        key = str(t["key"])
        busy = sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "compute")
        kind = ("halo" if "-halo-" in key else "model" if "numbaconv-model-" in key
                else "tiles" if "predict" in key else "other_tasks")
        parts[kind] += busy
    parts = {k + "_s": v for k, v in parts.items()}
    parts["tasks"] = len(data)
    parts["idle_or_overhead_s"] = wall * workers - sum(v for k, v in parts.items()
                                                       if k.endswith("_s"))
    return parts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 1024x1024 image instead of 2048")
    ap.add_argument("--tile", type=int, default=None, help="tile side (default: side / 2)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(_HERE, "results"))
    args = ap.parse_args(argv)

    os.environ.setdefault("NUMBACONV_DEVICE", "cpu")
    import numba
    import dask
    import dask.array as da
    import distributed
    from distributed import Client, LocalCluster, get_task_stream, wait

    import numbaconv as nc
    import numbaconv.distributed as ncd

    cores = os.cpu_count() or 1
    np.random.seed(0)
    side = 1024 if args.quick else 2048
    tile = args.tile or side // 2
    r18 = nc.models.resnet18(num_classes=10).eval()
    stem = nc.nn.Sequential(r18.conv1, r18.bn1, r18.relu, r18.maxpool).eval()
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, side, side)).astype(np.float32)
    batch = rng.standard_normal((32, 3, 64, 64)).astype(np.float32)
    loads = [os.getloadavg()[0]]

    # ---- single process: the compute rate per thread count, and the references ------------
    one = {}
    for t in sorted({max(1, cores // p) for p in (1, 2)}):
        numba.set_num_threads(t)
        stem(image)
        r18(batch[:4])
        sp, _ = _best(lambda: stem(image), args.repeat)
        bt, _ = _best(lambda: r18(batch), args.repeat)
        one[t] = {"spatial_s": sp, "batch_s": bt}
    img_d = da.from_array(image, chunks=(1, 3, tile, tile))
    stats = {}
    ref_spatial = ncd.predict_tiled(stem, img_d, tile=(tile, tile), _stats=stats)
    n_tiles = stats["tasks"]
    n_halo = stats["halo_tasks"]
    f_halo = stats["halo_bytes"] / stats["input_bytes"]
    check_ref = stem(image)

    runs = {}
    for workers in (1, 2):
        threads = max(1, cores // workers)
        numba.set_num_threads(threads)
        env = {"NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": "1",
               "NUMBACONV_DEVICE": "cpu"}
        if numba.config.CACHE_DIR:
            env["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR
        pre = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in env.items()}
        with dask.config.set(pre), \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                             host="127.0.0.1", dashboard_address=":0", env=env) as cluster, \
                Client(cluster) as client:
            client.wait_for_workers(workers)
            got_threads = set(client.run(numba.get_num_threads).values())
            # The inputs live on the workers before timing starts, spread over them.
            img_w = client.persist(img_d)
            batch_w = client.persist(da.from_array(batch, chunks=(4, 3, 64, 64)))
            wait([img_w, batch_w])
            client.rebalance()
            spatial = ncd.predict_tiled(stem, img_w, tile=(tile, tile))
            batched = ncd.predict(r18, batch_w)

            def tasks():
                return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))

            def timed(a, single):
                """(single-process s, cluster s, task-stream profile) of one interleaved pair."""
                t1 = time.perf_counter()
                single()
                t1 = time.perf_counter() - t1
                base = tasks()
                with get_task_stream(client=client) as ts:
                    t2 = time.perf_counter()
                    p = client.persist(a)
                    wait(p)
                    t2 = time.perf_counter() - t2
                del p
                # Until the scheduler has forgotten this run, so that the next one finds none
                # of its results still in memory (release is asynchronous).
                while tasks() > base:
                    time.sleep(0.005)
                return t1, t2, _stream(ts.data, t2, workers)

            # Warm-up (compiles or loads kernels in the workers) and correctness.
            got = client.gather(client.compute(spatial))
            assert np.array_equal(got, check_ref), "spatial result differs from one machine"
            got = client.gather(client.compute(batched))
            np.testing.assert_allclose(got, r18(batch), rtol=1e-4, atol=1e-5)
            row = {"threads_per_worker": threads, "worker_threads_seen": sorted(got_threads)}
            if workers == 1:
                noop = [dask.delayed(int)(i) for i in range(200)]
                t_one, _ = _best(lambda: client.compute(dask.delayed(int)(0)).result(),
                                 args.repeat)
                t_noop, _ = _best(lambda: client.gather(client.compute(noop)), args.repeat)
                row.update(t0_s=t_one, t_task_s=max(0.0, (t_noop - t_one) / 199))
            b0 = _transfers(client)
            pairs = [timed(spatial, lambda: stem(image)) for _ in range(args.repeat)]
            b1 = _transfers(client)
            bpairs = [timed(batched, lambda: r18(batch)) for _ in range(args.repeat)]
            sp = min(pairs, key=lambda q: q[1])
            bt = min(bpairs, key=lambda q: q[1])
            row.update(spatial_s=sp[1], spatial_all_s=[q[1] for q in pairs],
                       spatial_single_s=min(q[0] for q in pairs),
                       spatial_profile=sp[2],
                       spatial_mpx_per_s=side ** 2 / sp[1] / 1e6,
                       batch_s=bt[1], batch_all_s=[q[1] for q in bpairs],
                       batch_single_s=min(q[0] for q in bpairs), batch_profile=bt[2],
                       batch_images_per_s=len(batch) / bt[1],
                       spatial_transfer_bytes=(b1[0] - b0[0]) // args.repeat,
                       spatial_transfer_s=(b1[1] - b0[1]) / args.repeat)
            runs[workers] = row
        loads.append(os.getloadavg()[0])

    t0, t_task = runs[1]["t0_s"], runs[1]["t_task_s"]
    moved, moved_s = runs[2]["spatial_transfer_bytes"], runs[2]["spatial_transfer_s"]
    bandwidth = moved / moved_s if moved_s > 0 else float("inf")
    halo_bytes = stats["halo_bytes"]

    def c_px(p):
        """Seconds per input pixel on one worker of P (cores // P threads), measured in this
        process with that thread count, interleaved with the cluster runs."""
        return runs[p]["spatial_single_s"] / side ** 2

    def model(p, s=side, cpx=None):
        """Seconds for an S x S image on P workers, same tile size (f_halo then stays put and
        the halo bytes and tasks grow with the image's area)."""
        cpx = c_px(min(p, 2)) if cpx is None else cpx
        tiles = (-(-s // tile)) ** 2
        t_tile = t_task + cpx * tile * tile * (1 + f_halo)
        halo_tasks = n_halo * tiles / n_tiles
        comm = halo_bytes * (s / side) ** 2 * (p - 1) / p / bandwidth
        return t0 + -(-tiles // p) * t_tile + halo_tasks * t_task / p + comm

    check = [{"workers": p, "measured_s": runs[p]["spatial_s"], "model_s": model(p),
              "error": model(p) / runs[p]["spatial_s"] - 1} for p in (1, 2)]
    # Projection: more workers of 1 thread each (one core per worker).
    projection = [{"workers": p, "side": s, "model_s": model(p, s, c_px(2) if p > 1 else None)}
                  for s in (side, 4 * side, 16 * side) for p in (1, 2, 8, 32)]
    machine = {"cpu": platform.processor() or platform.machine(), "cores": cores,
               "python": platform.python_version(), "numba": numba.__version__,
               "dask": dask.__version__, "distributed": distributed.__version__,
               "load_average_1min": loads}
    result = {
        "machine": machine, "quick": args.quick, "repeat": args.repeat,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "spatial": {"net": "resnet18 stem", "image": [1, 3, side, side], "tile": tile,
                    "tiles": n_tiles, "halo_tasks": n_halo, "dtype": "float32",
                    "input_bytes": stats["input_bytes"], "halo_bytes": halo_bytes,
                    "read_bytes": stats["read_bytes"], "halo_fraction": f_halo,
                    "output_bytes": int(np.prod(ref_spatial.shape)) * 4,
                    "one_process_s": {str(k): v["spatial_s"] for k, v in one.items()}},
        "batch": {"net": "resnet18", "images": list(batch.shape), "per_task": 4,
                  "one_process_s": {str(k): v["batch_s"] for k, v in one.items()}},
        "runs": {str(k): v for k, v in runs.items()},
        "model": {"formula": "T(P, S) = T0 + ceil(n_tiles / P) * (t_task + c_px(t) * tile^2 * "
                             "(1 + f_halo)) + n_halo * t_task / P + b_halo * (P - 1) / P / B",
                  "T0_s": t0, "t_task_s": t_task,
                  "c_px_s": {str(p): c_px(p) for p in (1, 2)}, "f_halo": f_halo,
                  "n_halo": n_halo, "b_halo_bytes": halo_bytes, "B_bytes_per_s": bandwidth,
                  "check": check, "projection": projection},
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "distributed.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "distributed.md"), "w") as f:
        f.write(_markdown(result))
    print(_markdown(result))
    return 0


def _markdown(r):
    sp, b, m = r["spatial"], r["batch"], r["model"]
    mc = r["machine"]
    lines = [
        "# numbaconv.distributed on a LocalCluster",
        "",
        f"{r['when']}, {mc['cores']} cores ({mc['cpu']}), dask {mc['dask']}; P worker processes "
        f"with cores // P Numba threads each; best of {r['repeat']}, each cluster run right "
        "after a single-process run with the same total threads. Load average (1 min) at the "
        f"start, after 1 worker, after 2: {', '.join(f'{x:.1f}' for x in mc['load_average_1min'])}"
        f" on {mc['cores']} cores. The machine is shared: where the load exceeds the cores, "
        "other processes took CPU time, and every number here is noisy.",
        "",
        f"Spatial: {sp['net']} over {sp['image']} float32, tiles {sp['tile']}x{sp['tile']} "
        f"({sp['tiles']} tile tasks, {sp['halo_tasks']} halo-cutting tasks), `predict_tiled`. "
        f"Batch: {b['net']} over {b['images']}, {b['per_task']} images per task, `predict`.",
        "",
        "| workers | threads each | spatial s | single process s | Mpixel/s | batch s | "
        "single process s | images/s | bytes moved (all transfers) | transfer s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p, row in sorted(r["runs"].items()):
        lines.append(f"| {p} | {row['threads_per_worker']} | {row['spatial_s']:.3f} | "
                     f"{row['spatial_single_s']:.3f} | {row['spatial_mpx_per_s']:.2f} | "
                     f"{row['batch_s']:.3f} | {row['batch_single_s']:.3f} | "
                     f"{row['batch_images_per_s']:.1f} | {row['spatial_transfer_bytes']:,} | "
                     f"{row['spatial_transfer_s']:.3f} |")
    lines += [
        "",
        "Where the best run's time went (task stream; seconds summed over workers; the rest of "
        "wall x workers is scheduling, transfers and idle workers):",
        "",
        "| run | workers | tasks | wall s | in tile/predict tasks | halo cutting | model load | "
        "rest |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in ("spatial", "batch"):
        for p, row in sorted(r["runs"].items()):
            q = row[f"{kind}_profile"]
            lines.append(f"| {kind} | {p} | {q['tasks']} | {row[f'{kind}_s']:.3f} | "
                         f"{q['tiles_s']:.3f} | {q['halo_s']:.3f} | {q['model_s']:.3f} | "
                         f"{q['idle_or_overhead_s']:.3f} |")
    ratio = [f"{row['spatial_profile']['tiles_s'] / row['spatial_single_s']:.2f}x with {p} "
             f"worker{'s' if p != '1' else ''}" for p, row in sorted(r["runs"].items())]
    lines += [
        "",
        "Seconds inside the spatial tile tasks (summed over workers) over the single-process "
        f"time with the same threads: {', '.join(ratio)}. Where this exceeds 1, the tiles "
        "computed more slowly than one process did on the whole image just before (the same "
        "work plus a halo of f_halo), and that, not scheduling (the 'rest' column), is where "
        "the cluster's extra time went; the cost model, whose c_px comes from the single "
        "process, misses by about this factor.",
    ]
    lines += [
        "",
        f"Halo: the tiles read {sp['halo_bytes']:,} bytes from neighbouring chunks, "
        f"{100 * sp['halo_fraction']:.2f}% of the {sp['input_bytes']:,}-byte input; they write "
        f"{sp['output_bytes']:,} bytes of output.",
        "",
        "## Cost model",
        "",
        f"`{m['formula']}`",
        "",
        f"Measured: T0 = {m['T0_s'] * 1e3:.1f} ms, t_task = {m['t_task_s'] * 1e3:.2f} ms, "
        f"c_px = {m['c_px_s']['1'] * 1e9:.1f} ns/pixel with {r['runs']['1']['threads_per_worker']}"
        f" threads, {m['c_px_s']['2'] * 1e9:.1f} with {r['runs']['2']['threads_per_worker']}, "
        f"f_halo = {m['f_halo']:.4f}, n_halo = {m['n_halo']}, b_halo = {m['b_halo_bytes']:,} B, "
        f"B = {m['B_bytes_per_s'] / 1e6:.0f} MB/s (loopback). Nothing is fitted to the cluster "
        "runs.",
        "",
        "| workers | measured s | model s | error |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {c['workers']} | {c['measured_s']:.3f} | {c['model_s']:.3f} | "
              f"{100 * c['error']:+.0f}% |" for c in m["check"]]
    lines += ["", "Projection (same tile size, one core per worker beyond 1, so the halo fraction "
              "stays and halo bytes and tasks grow with the image's area; B is loopback's, a "
              "network is slower):",
              "",
              "| image side | " + " | ".join(f"P={p}" for p in (1, 2, 8, 32)) + " |",
              "| --- | --- | --- | --- | --- |"]
    for s in sorted({row["side"] for row in m["projection"]}):
        cells = [f"{row['model_s']:.2f} s" for row in m["projection"] if row["side"] == s]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
