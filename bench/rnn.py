"""Recurrent layers: numbaconv's LSTM and GRU next to PyTorch's, in one process, on the CPU.

Usage: ``python bench/rnn.py [--quick] [--threads 2] [--budget 1.0]``, from the repository root.
Shapes: LSTM and GRU, one layer, hidden 256 and 512 (input size = hidden size), sequence 100,
batch 1 and 32, float32; timed for inference (eval-mode forward; torch under ``no_grad``) and
for a training step (train-mode forward, backward of a random output gradient into every
parameter and the input, gradients cleared). Times are the best of alternating rounds
(numbaconv, PyTorch, ...); results are checked against PyTorch's (same weights), and saved to
``bench/results/rnn.json`` and ``rnn.md``.

OpenMP wait policy. A recurrent layer is T dependent steps, each one parallel region, so how
long idle OpenMP workers spin before sleeping decides whether a step pays a thread wake-up (about
10 us each here). Both libraries use libgomp; each policy runs in a process of its own:
``passive`` (the default; ``OMP_WAIT_POLICY=PASSIVE``: workers sleep at once, what ``numbaconv
bench`` uses when PyTorch shares its process) and, with ``--policies passive spin``, ``spin``
(``GOMP_SPINCOUNT=100000`` for both libraries: workers spin about 0.1 ms; on a machine whose
cores other processes share, spinning workers fight them and the times explode).
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
POLICIES = {"spin": {"GOMP_SPINCOUNT": "100000"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def flops(cell, t, n, i, h):
    """Multiply-adds x 2 of the forward's GEMMs (the elementwise gate math left out)."""
    g = {"LSTM": 4, "GRU": 3}[cell]
    return 2.0 * t * n * g * h * (i + h)


def _time_rounds(fns, budget, min_runs=3, max_runs=30):
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_runs or (time.perf_counter() - start < budget * len(fns)
                                and rounds < max_runs):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        rounds += 1
    return {k: 1e3 * min(v) for k, v in times.items()}


def run_one(cell, h, n, t, budget, threads):
    """Time one shape; returns the result row."""
    import numba
    import numpy as np
    import torch

    import numbaconv as nc

    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    i = h
    torch.manual_seed(0)
    tm = getattr(torch.nn, cell)(i, h)
    m = getattr(nc.nn, cell)(i, h, device="cpu")
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((t, n, i), dtype=np.float32)
    go = rng.standard_normal((t, n, h), dtype=np.float32)
    tx, tgo = torch.from_numpy(x), torch.from_numpy(go)

    def nc_forward():
        return m(x)[0]

    def torch_forward():
        with torch.no_grad():
            return tm(tx)[0]

    def nc_train():
        m.zero_grad()
        m(x)
        return m.backward(go)

    def torch_train():
        tm.zero_grad()
        txg = tx.detach().requires_grad_()
        tm(txg)[0].backward(tgo)
        return txg.grad

    m.eval()
    ref = torch_forward().numpy()
    err = float(np.abs(nc_forward() - ref).max() / max(np.abs(ref).max(), 1e-30))
    fwd = _time_rounds({"numbaconv": nc_forward, "torch": torch_forward}, budget)
    m.train()
    gref = torch_train().numpy()
    gerr = float(np.abs(nc_train() - gref).max() / max(np.abs(gref).max(), 1e-30))
    train = _time_rounds({"numbaconv": nc_train, "torch": torch_train}, budget)
    fl = flops(cell, t, n, i, h)
    return {"cell": cell, "hidden": h, "input": i, "seq": t, "batch": n, "dtype": "float32",
            "threads": threads, "gflop_forward": fl / 1e9,
            "forward_max_rel_err": err, "train_input_grad_max_rel_err": gerr,
            "numbaconv_forward_ms": fwd["numbaconv"], "torch_forward_ms": fwd["torch"],
            "forward_torch_over_nc": fwd["torch"] / fwd["numbaconv"],
            "numbaconv_train_ms": train["numbaconv"], "torch_train_ms": train["torch"],
            "train_torch_over_nc": train["torch"] / train["numbaconv"],
            "numbaconv_forward_gflops": fl / fwd["numbaconv"] / 1e6}


def worker(args):
    """The child process: every shape under the inherited wait policy, JSON on stdout."""
    rows = []
    for cell in args.cells:
        for h in args.hidden:
            for n in args.batch:
                row = run_one(cell, h, n, args.seq, args.budget, args.threads)
                print(f"  {args.policy:7s} {cell} hidden {h} batch {n}: forward "
                      f"{row['numbaconv_forward_ms']:.2f} ms vs torch {row['torch_forward_ms']:.2f} "
                      f"({row['forward_torch_over_nc']:.2f}x), train {row['numbaconv_train_ms']:.2f} "
                      f"vs {row['torch_train_ms']:.2f} ({row['train_torch_over_nc']:.2f}x)",
                      file=sys.stderr, flush=True)
                rows.append(dict(row, policy=args.policy))
    import torch

    from numbaconv import bench

    print(json.dumps({"rows": rows, "machine": bench.machine(torch)}))


def geomean(values):
    import math

    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def markdown(result):
    m = result["machine"]
    lines = ["# numbaconv recurrent layers (cpu)", "",
             f"{m['cpu']} (LLVM: {m['llvm_host_cpu']}), {m['cores']} cores, {result['threads']} "
             f"threads (numbaconv and torch), {m['simd_lanes_f32']} float32 SIMD lanes; numbaconv "
             f"{m['numbaconv']} ({m.get('commit')}), numba {m['numba']}, torch {m.get('torch')}.",
             f"Run {result['when']}: `{result['args']}`; load average before the run "
             f"{result['load_average']:.1f}.",
             "One layer, input size = hidden size, sequence 100, float32. Forward: eval mode "
             "(torch under no_grad). Train step: forward, backward of a random output gradient "
             "into all parameters and the input, zero_grad. Best of alternating rounds in one "
             "process; other processes shared the 2 cores, so both columns are lower bounds.",
             "Wait policy (module docstring of bench/rnn.py): `passive` = OMP_WAIT_POLICY=PASSIVE "
             "for both libraries (numbaconv then pays a thread wake-up, about 10 us here, per "
             "step); `spin` = GOMP_SPINCOUNT=100000 for both.",
             "", "## Targets", "",
             "| what | measured | target | holds |", "| --- | --- | --- | --- |"]
    for policy in POLICIES:
        rows = [r for r in result["rows"] if r["policy"] == policy]
        if not rows:
            continue
        worst = min(r["forward_torch_over_nc"] for r in rows)
        gm = geomean(r["forward_torch_over_nc"] for r in rows)
        lines.append(f"| forward, {policy}: geomean torch/nc over {len(rows)} shapes | {gm:.2f}x "
                     f"| ≥ 1.00x | {'yes' if gm >= 1 else '**no**'} |")
        lines.append(f"| forward, {policy}: worst shape torch/nc | {worst:.2f}x | - | - |")
        gt = geomean(r["train_torch_over_nc"] for r in rows)
        lines.append(f"| train step, {policy}: geomean torch/nc | {gt:.2f}x | - | - |")
    lines += ["", "## Shapes", "",
              "| policy | cell | hidden | batch | nc fwd ms | torch fwd ms | torch/nc | nc GFLOP/s "
              "| nc train ms | torch train ms | torch/nc | max rel err |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(
            f"| {r['policy']} | {r['cell']} | {r['hidden']} | {r['batch']} | "
            f"{r['numbaconv_forward_ms']:.2f} | {r['torch_forward_ms']:.2f} | "
            f"{r['forward_torch_over_nc']:.2f}x | {r['numbaconv_forward_gflops']:.0f} | "
            f"{r['numbaconv_train_ms']:.2f} | {r['torch_train_ms']:.2f} | "
            f"{r['train_torch_over_nc']:.2f}x | "
            f"{max(r['forward_max_rel_err'], r['train_input_grad_max_rel_err']):.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="hidden 256, a short budget")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=1.0, help="seconds per timed function")
    p.add_argument("--policies", nargs="+", default=["passive"], choices=list(POLICIES))
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--policy", default="spin", help=argparse.SUPPRESS)
    p.add_argument("--cells", nargs="+", default=["LSTM", "GRU"])
    p.add_argument("--hidden", nargs="+", type=int, default=[256, 512])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    p.add_argument("--seq", type=int, default=100)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.quick:
        args.hidden, args.budget = [256], min(args.budget, 0.3)
    load = os.getloadavg()[0]
    rows, machine = [], None
    for policy in args.policies:
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        env.update(POLICIES[policy])
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--policy", policy,
               "--threads", str(args.threads), "--budget", str(args.budget), "--seq",
               str(args.seq), "--cells", *args.cells, "--hidden", *map(str, args.hidden),
               "--batch", *map(str, args.batch)]
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        part = json.loads(done.stdout.strip().splitlines()[-1])
        rows += part["rows"]
        machine = part["machine"]
    result = {"machine": machine, "section": "rnn", "quick": args.quick,
              "threads": args.threads, "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "args": "bench/rnn.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "load_average": load, "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    stem = "rnn-quick" if args.quick else "rnn"
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    text = markdown(result)
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
