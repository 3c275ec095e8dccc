"""Training benchmark: one SGD step (forward, cross-entropy, backward, update) of LeNet-5 (batch
64, 1x32x32) and ResNet-18 (batch 8, 3x64x64, 1000 classes) next to PyTorch eager with the same
weights and thread count, and the demo (``python -m numbaconv demo``) in a fresh process with a
warm and with an empty kernel cache.

Each library's step is timed twice: alone in a fresh process under the user's OpenMP wait
policy (the main number: how each runs for its users), and both in one process with
``OMP_WAIT_POLICY=PASSIVE``, which PyTorch needs there but which makes Numba's threads sleep
between kernel calls (a LeNet step is ~30 short calls, each paying a wake-up).

Usage: ``python bench/train.py [--budget S] [--no-demo]`` from the repository root. Writes
``bench/results/train.json`` and ``train.md``. Before a number is kept, the first step's loss
and updated weights are checked against PyTorch's.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import numba

import numbaconv as nc
from numbaconv import _benchnets, models
from numbaconv import bench as B
from numbaconv import functional as F

torch = None  # loaded by main() (with PASSIVE set first) or by a child that times torch

HERE = os.path.dirname(os.path.abspath(__file__))
LR, MOMENTUM, WD = 0.01, 0.9, 1e-4


def torch_lenet5():
    tnn = torch.nn

    class LeNet5(tnn.Module):
        def __init__(self):
            super().__init__()
            self.features = tnn.Sequential(tnn.Conv2d(1, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2),
                                           tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2))
            self.classifier = tnn.Sequential(tnn.Linear(400, 120), tnn.ReLU(),
                                             tnn.Linear(120, 84), tnn.ReLU(),
                                             tnn.Linear(84, 10))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    return LeNet5()


def pair(name):
    """(numbaconv model, torch model or None, input shape, classes) with equal weights."""
    np.random.seed(0)
    if name == "lenet5":
        ours, shape, classes = models.lenet5(), (64, 1, 32, 32), 10
        theirs = torch_lenet5() if torch is not None else None
    else:
        ours, shape, classes = models.resnet18(), (8, 3, 64, 64), 1000
        theirs = _benchnets.torch_net(torch, "resnet18") if torch is not None else None
    state = {k: np.array(v) for k, v in ours.state_dict().items()}
    if theirs is not None:
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        theirs.train()
    return ours.train(), theirs, shape, classes


def steps(name):
    ours, theirs, shape, classes = pair(name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    y = rng.integers(0, classes, shape[0])
    opt = nc.optim.SGD(ours.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)

    def nc_step():
        logits = ours(x)
        loss = F.cross_entropy(logits, y)
        ours.backward(F.cross_entropy_backward(1.0, logits, y)[0])
        opt.step()
        ours.zero_grad()
        return float(loss)

    fns = {"numbaconv": nc_step}
    if theirs is not None:
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        topt = torch.optim.SGD(theirs.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)

        def torch_step():
            loss = torch.nn.functional.cross_entropy(theirs(tx), ty)
            loss.backward()
            topt.step()
            topt.zero_grad()
            return loss.item()

        fns["torch"] = torch_step
    return ours, theirs, fns, shape


def check_first_step(name, ours, theirs, fns):
    """Both libraries' first step from the same weights: equal loss and updated weights."""
    if theirs is None:
        fns["numbaconv"]()
        return None
    a, b = fns["numbaconv"](), fns["torch"]()
    worst = 0.0
    sd = theirs.state_dict()
    for k, v in ours.state_dict().items():
        ref = sd[k].detach().numpy()
        if ref.dtype.kind == "f":
            worst = max(worst, float(np.abs(np.asarray(v) - ref).max() / (np.abs(ref).max() + 1)))
    if abs(a - b) > 1e-4 * (1 + abs(b)) or worst > 1e-4:
        raise AssertionError(f"{name}: first step differs from PyTorch's (loss {a} vs {b}, "
                             f"weights {worst:.2e})")
    return {"loss_numbaconv": a, "loss_torch": b, "max_weight_diff_rel": worst}


def alone(lib, name, budget):
    """Time ``lib``'s step of ``name`` in a fresh process with only that library loaded and the
    user's wait policy (as bench.py's scaling section does)."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if B._USER_WAIT_POLICY is not None:
        env["OMP_WAIT_POLICY"] = B._USER_WAIT_POLICY
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", lib, name,
                          "--budget", str(budget)], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1][7:])


def child(lib, name, budget):
    global torch
    if lib == "torch":
        import torch as torch_module

        torch = torch_module
        torch.set_num_threads(numba.get_num_threads())
    _, _, fns, _ = steps(name)
    print("RESULT " + json.dumps(B._time_rounds({lib: fns[lib]}, budget=budget, min_runs=5,
                                                max_runs=200)[lib]))


def _timings(timed, batch):
    out = {lib: {**t, "images_per_s": batch / (t["median_ms"] / 1e3)} for lib, t in timed.items()}
    if "torch" in timed:
        out["ratio_torch_over_numbaconv"] = timed["torch"]["median_ms"] / \
            timed["numbaconv"]["median_ms"]
    return out


def run_steps(budget):
    rows = []
    for name in ("lenet5", "resnet18"):
        ours, theirs, fns, shape = steps(name)
        check = check_first_step(name, ours, theirs, fns)
        row = {"model": name, "batch": shape[0], "image": list(shape[1:]), "check": check}
        row["together"] = _timings(B._time_rounds(fns, budget=budget, min_runs=5,
                                                  max_runs=200), shape[0])
        row["alone"] = _timings({lib: alone(lib, name, budget) for lib in fns}, shape[0])
        rows.append(row)
        for how in ("alone", "together"):
            t = row[how]
            print(f"{name:<9} b{shape[0]:<3} {how:<8} numbaconv {t['numbaconv']['median_ms']:8.2f}"
                  f" ms" + (f"  torch {t['torch']['median_ms']:8.2f} ms  ratio "
                            f"{t['ratio_torch_over_numbaconv']:.2f}x" if "torch" in t else ""))
    return rows


def run_demo(cold):
    """``python -m numbaconv demo`` in a fresh process (kernel cache empty when ``cold``)."""
    env = dict(os.environ, NUMBACONV_DEVICE="cpu")
    env.pop("OMP_WAIT_POLICY", None)
    with tempfile.TemporaryDirectory() as tmp:
        if cold:
            env["NUMBA_CACHE_DIR"] = os.path.join(tmp, "cache")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "numbaconv", "demo", "--out", tmp], env=env,
                       check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        with open(os.path.join(tmp, "history.json")) as f:
            h = json.load(f)
    return {"cache": "empty" if cold else "warm", "process_wall_s": wall,
            "test_accuracy": h["test_accuracy"][-1], "epochs": len(h["loss"]),
            "first_epoch_s": h["seconds"][0], "train_images_per_s": h["train_images_per_s"]}


def to_markdown(result):
    m = result["machine"]
    lines = [f"# Training benchmark ({result['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} numbaconv threads"
             + (f", PyTorch {m['torch']} with {m['torch_threads']} threads" if "torch" in m
                else "") + f"; numbaconv {m['commit']}.", "",
             "One SGD step (momentum 0.9, weight decay 1e-4): forward, cross-entropy, backward, "
             "update, from the same weights in both libraries (the first step's loss and "
             "weights checked equal). Median of the timed steps. *alone*: each library in a "
             "fresh process of its own, the user's OpenMP wait policy; *together*: both in one "
             "process with OMP_WAIT_POLICY=PASSIVE (Numba's threads then sleep between kernel "
             "calls).", "",
             "| model | batch | input | timed | numbaconv ms | img/s | PyTorch ms | img/s | "
             "PyTorch time / numbaconv time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["steps"]:
        for how in ("alone", "together"):
            t, n = r[how].get("torch"), r[how]["numbaconv"]
            lines.append(f"| {r['model']} | {r['batch']} | {'x'.join(map(str, r['image']))} | "
                         f"{how} | {n['median_ms']:.2f} | {n['images_per_s']:.0f} | "
                         + (f"{t['median_ms']:.2f} | {t['images_per_s']:.0f} | "
                            f"{r[how]['ratio_torch_over_numbaconv']:.2f}x |" if t
                            else "- | - | - |"))
    if result.get("demo"):
        lines += ["", "`python -m numbaconv demo` (LeNet-5, 30 epochs on the bundled digits) in "
                  "a fresh process:", "",
                  "| kernel cache | wall time s | first epoch s | training img/s | held-out "
                  "accuracy |", "| --- | --- | --- | --- | --- |"]
        for d in result["demo"]:
            lines.append(f"| {d['cache']} | {d['process_wall_s']:.1f} | {d['first_epoch_s']:.1f} "
                         f"| {d['train_images_per_s']:.0f} | {100 * d['test_accuracy']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    global torch
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timing per library")
    p.add_argument("--no-demo", action="store_true", help="skip the demo runs")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--child", nargs=2, metavar=("LIB", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(*args.child, args.budget)
    torch = B._torch()  # sets OMP_WAIT_POLICY=PASSIVE before torch loads
    if torch is not None:
        torch.set_num_threads(numba.get_num_threads())
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": B.machine(torch),
              "load_average": os.getloadavg(), "steps": run_steps(args.budget)}
    if not args.no_demo:
        result["demo"] = [run_demo(cold=False), run_demo(cold=True)]
        for d in result["demo"]:
            print(f"demo, {d['cache']} cache: {d['process_wall_s']:.1f} s, "
                  f"{100 * d['test_accuracy']:.1f}%")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "train.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "train.md"), "w") as f:
        f.write(to_markdown(result))
    print(f"wrote {os.path.join(args.out, 'train.md')}")


if __name__ == "__main__":
    main()
