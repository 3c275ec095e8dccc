"""``python -m numbaconv demo``: train LeNet-5 on the bundled handwritten digits.

The main job: :func:`train` fits :func:`numbaconv.models.lenet5` to the training split of the
bundled UCI digits (8x8 images, upscaled 4x to LeNet's 32x32 by repetition, shifted by up to one
pixel each epoch) with SGD (momentum, weight decay, a cosine learning-rate schedule) through the
layers' explicit backward, on the current device, and reports held-out accuracy and training
images/s. :func:`main` prints it with a progress bar and saves the history as JSON and a
loss / accuracy plot as SVG (no plotting library needed).

``--zoo`` instead times fused inference of the model zoo (:func:`run_zoo`): untrained weights,
so speed only.
"""

import json
import math
import os
import time

import numpy as np

from numbaconv import datasets, models, nn
from numbaconv import device as _device
from numbaconv import functional as F
from numbaconv import optim
from numbaconv._progress import Progress

# name -> (constructor, input channels, image side). The 8x8 digits are upscaled by repetition.
ZOO = {
    "lenet5": (lambda: models.lenet5(num_classes=10, input_size=32), 1, 32),
    "resnet18": (lambda: models.resnet18(num_classes=10), 3, 64),
    "mobilenet_v2": (lambda: models.mobilenet_v2(num_classes=10), 3, 64),
    "squeezenet1_1": (lambda: models.squeezenet1_1(num_classes=10), 3, 64),
}


def upscale(images, side, channels=1):
    """(N, 1, 8, 8) digits as (N, channels, side, side) float32 images, upscaled by repetition."""
    k = side // 8
    x = np.repeat(np.repeat(images, k, axis=2), k, axis=3)
    return np.ascontiguousarray(np.repeat(x, channels, axis=1))


def digits_as(channels, side, split="test"):
    """The bundled digits as (N, channels, side, side) float32 images, upscaled by repetition."""
    x, y = datasets.load_digits(split)
    return upscale(x, side, channels), y


def shifted(images, rng):
    """Each (N, 1, 8, 8) image moved by -1, 0 or 1 pixel along each axis, zeros shifted in."""
    n = len(images)
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dy, dx = rng.integers(0, 3, n), rng.integers(0, 3, n)
    rows = dy[:, None] + np.arange(8)  # (N, 8) source rows in the padded image
    cols = dx[:, None] + np.arange(8)
    return padded[np.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]][:, None]


def _accuracy(model, x, y, batch=512):
    model.eval()
    hits = 0
    for i in range(0, len(x), batch):
        logits = _device.to_numpy(model(_device.to_device(x[i:i + batch])))
        hits += int((logits.argmax(axis=1) == y[i:i + batch]).sum())
    return hits / len(x)


def train(epochs=30, batch=32, lr=0.05, seed=0, progress=None):
    """Train LeNet-5 on the bundled digits; returns ``(model, history)``.

    Parameters
    ----------
    epochs : int
        Passes over the 1,438 training images.
    batch : int
        Images per step.
    lr : float
        SGD's starting learning rate (momentum 0.9, weight decay 5e-4), decayed to 0 along a
        half cosine over the epochs.
    seed : int
        Seeds the initialisation (NumPy's global generator) and the shuffling and shifts.
    progress : Progress or None
        Counts one step per epoch (a new bar when None).

    Returns
    -------
    model : LeNet5, in eval mode, on the current device
    history : dict of lists, one entry per epoch: ``loss`` (mean training cross-entropy),
        ``test_accuracy`` (held-out split), ``seconds`` (training time of the epoch), and
        ``images_per_s``; plus ``device``, ``train_images``, ``test_images``.
    """
    if not (isinstance(epochs, int) and epochs >= 1 and isinstance(batch, int) and batch >= 1):
        raise ValueError(f"demo: epochs and batch must be positive ints, got {epochs!r}, "
                         f"{batch!r}")
    if not lr > 0:
        raise ValueError(f"demo: the learning rate must be positive, got {lr!r}")
    x8, y = datasets.load_digits("train")
    test_x, test_y = digits_as(1, 32, "test")
    np.random.seed(seed)
    rng = np.random.default_rng(seed)
    model = models.lenet5(num_classes=10, input_size=32)
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    history = {"device": _device.get_device(), "train_images": len(y),
               "test_images": len(test_y), "loss": [], "test_accuracy": [], "seconds": [],
               "images_per_s": []}
    bar = progress or Progress(epochs, "train")
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        model.train()
        order = rng.permutation(len(y))
        x = upscale(shifted(x8, rng), 32)
        total = 0.0
        t0 = time.perf_counter()
        for i in range(0, len(y), batch):
            idx = order[i:i + batch]
            target = _device.to_device(y[idx])
            logits = model(_device.to_device(x[idx]))
            total += float(_device.to_numpy(F.cross_entropy(logits, target))) * len(idx)
            model.backward(F.cross_entropy_backward(1.0, logits, target)[0])
            opt.step()
            model.zero_grad()
        seconds = time.perf_counter() - t0
        acc = _accuracy(model, test_x, test_y)
        history["loss"].append(total / len(y))
        history["test_accuracy"].append(acc)
        history["seconds"].append(seconds)
        history["images_per_s"].append(len(y) / seconds)
        bar.log(f"epoch {epoch + 1:3d}/{epochs}  loss {total / len(y):.4f}  held-out accuracy "
                f"{100 * acc:5.1f}%  {len(y) / seconds:7.0f} img/s")
    if progress is None:
        bar.close()
    model.eval()
    return model, history


def plot_svg(history, path):
    """Write the training loss and held-out accuracy per epoch as a two-panel SVG line plot."""
    w, h, pad = 360, 240, 44
    panels = [("training loss", history["loss"], 0.0, max(history["loss"]) * 1.05, "{:.2f}"),
              ("held-out accuracy (%)", [100 * a for a in history["test_accuracy"]],
               min(90.0, 100 * min(history["test_accuracy"])), 100.0, "{:.0f}")]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h}" '
             'font-family="sans-serif" font-size="11">',
             f'<rect width="{2 * w}" height="{h}" fill="white"/>']
    n = len(history["loss"])
    for k, (title, values, lo, hi, fmt) in enumerate(panels):
        x0, x1, y0, y1 = k * w + pad, (k + 1) * w - 12, h - pad + 10, 24
        hi = hi if hi > lo else lo + 1

        def px(i):
            return x0 + (x1 - x0) * (i / max(n - 1, 1))

        def py(v):
            return y0 - (y0 - y1) * (min(max(v, lo), hi) - lo) / (hi - lo)

        parts.append(f'<text x="{(x0 + x1) / 2}" y="14" text-anchor="middle">{title}</text>')
        parts.append(f'<path d="M{x0},{y1} V{y0} H{x1}" fill="none" stroke="black"/>')
        for v in (lo, (lo + hi) / 2, hi):
            parts.append(f'<text x="{x0 - 4}" y="{py(v) + 4:.1f}" text-anchor="end">'
                         f'{fmt.format(v)}</text>')
        parts.append(f'<text x="{x0}" y="{y0 + 16}" text-anchor="middle">1</text>')
        parts.append(f'<text x="{x1}" y="{y0 + 16}" text-anchor="middle">{n}</text>')
        parts.append(f'<text x="{(x0 + x1) / 2}" y="{y0 + 30}" text-anchor="middle">epoch</text>')
        points = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline points="{points}" fill="none" stroke="#1f77b4" '
                     'stroke-width="2"/>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def main(epochs=30, batch=32, lr=0.05, seed=0, out="numbaconv-demo"):
    """Train (see :func:`train`) with a progress bar, print the result, and save
    ``<out>/history.json`` and ``<out>/training.svg``. Returns the history."""
    dev = _device.get_device()
    print(f"numbaconv demo on {dev}: LeNet-5 learns the bundled UCI handwritten digits "
          f"(1,438 training and 359 held-out 8x8 images, upscaled to 32x32), {epochs} epochs. "
          "The first epoch compiles the kernels, or loads them from the on-disk cache.")
    t0 = time.perf_counter()
    _, history = train(epochs, batch, lr, seed)
    wall = time.perf_counter() - t0
    rates = history["images_per_s"][1:] or history["images_per_s"]
    history["wall_s"] = wall
    history["train_images_per_s"] = float(np.median(rates))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump(history, f, indent=1)
    plot_svg(history, os.path.join(out, "training.svg"))
    print(f"\nheld-out accuracy {100 * history['test_accuracy'][-1]:.1f}% "
          f"({history['test_images']} images), training {history['train_images_per_s']:.0f} "
          f"images/s (median epoch after the first), {wall:.1f} s in all")
    print(f"saved {os.path.join(out, 'history.json')} and {os.path.join(out, 'training.svg')}")
    return history


def run_zoo(names=None, batch=64, rounds=2, progress=None):
    """Time each model's fused inference over the held-out digits; return one row per model.

    Parameters
    ----------
    names : list of str or None
        Models from :data:`ZOO` (default: all).
    batch : int
        Images per forward call.
    rounds : int
        Passes over the data after a warm-up batch (which compiles, or loads compiled kernels);
        the best pass is reported.
    """
    names = list(ZOO) if names is None else names
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise ValueError(f"demo: unknown model(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(ZOO)}")
    if batch < 1 or rounds < 1:
        raise ValueError("demo: batch and rounds must be positive")
    bar = progress or Progress(len(names) * (rounds + 1), "demo")
    dev = _device.get_device()
    rows = []
    for name in names:
        make, channels, side = ZOO[name]
        np.random.seed(0)
        model = nn.fuse(make().eval())
        x, _ = digits_as(channels, side)
        t0 = time.perf_counter()
        _device.to_numpy(model(x[:batch]))
        warm = time.perf_counter() - t0
        bar.log(f"{name:<14} first batch {warm:6.2f} s (compile or load kernels)")
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            for i in range(0, len(x), batch):
                _device.to_numpy(model(x[i:i + batch])).argmax(axis=1)
            best = min(best, time.perf_counter() - t0)
            bar.log(f"{name:<14} pass over {len(x)} images: {time.perf_counter() - t0:6.2f} s")
        rows.append({"model": name, "device": dev, "images": len(x), "batch": batch,
                     "image": [channels, side, side], "images_per_s": len(x) / best,
                     "first_batch_s": warm})
    if progress is None:
        bar.close()
    return rows


def main_zoo(names=None, batch=64, rounds=2):
    """Run :func:`run_zoo` and print a table; returns the rows."""
    dev = _device.get_device()
    print(f"numbaconv demo on {dev}: the model zoo (fused for inference) on the bundled UCI "
          "digits, held-out split; untrained weights, so this measures speed only")
    rows = run_zoo(names, batch, rounds)
    print(f"\n{'model':<14} {'input':>10} {'img/s':>10} {'first batch':>12}")
    for r in rows:
        c, h, w = r["image"]
        print(f"{r['model']:<14} {f'{c}x{h}x{w}':>10} {r['images_per_s']:10.1f} "
              f"{r['first_batch_s']:10.2f} s")
    return rows
