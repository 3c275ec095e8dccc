"""``python -m numbaconv demo``: the model zoo on the bundled digits, with throughput.

Each model of :mod:`numbaconv.models` is built with 10 classes on the current device, fused for
inference (:func:`numbaconv.nn.fuse`) and run over the held-out digits, upscaled to the model's
input size. The weights are untrained (PyTorch's initialisation), so this shows speed, not
accuracy; training arrives with the training release.
"""

import time

import numpy as np

from numbaconv import datasets, models, nn
from numbaconv import device as _device
from numbaconv._progress import Progress

# name -> (constructor, input channels, image side). The 8x8 digits are upscaled by repetition.
ZOO = {
    "lenet5": (lambda: models.lenet5(num_classes=10, input_size=32), 1, 32),
    "resnet18": (lambda: models.resnet18(num_classes=10), 3, 64),
    "mobilenet_v2": (lambda: models.mobilenet_v2(num_classes=10), 3, 64),
    "squeezenet1_1": (lambda: models.squeezenet1_1(num_classes=10), 3, 64),
}


def digits_as(channels, side, split="test"):
    """The bundled digits as (N, channels, side, side) float32 images, upscaled by repetition."""
    x, y = datasets.load_digits(split)
    k = side // 8
    x = np.repeat(np.repeat(x, k, axis=2), k, axis=3)
    return np.ascontiguousarray(np.repeat(x, channels, axis=1)), y


def run(names=None, batch=64, rounds=2, progress=None):
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


def main(names=None, batch=64, rounds=2):
    """Run :func:`run` and print a table; returns the rows."""
    dev = _device.get_device()
    print(f"numbaconv demo on {dev}: the model zoo (fused for inference) on the bundled UCI "
          "digits, held-out split; untrained weights, so this measures speed only")
    rows = run(names, batch, rounds)
    print(f"\n{'model':<14} {'input':>10} {'img/s':>10} {'first batch':>12}")
    for r in rows:
        c, h, w = r["image"]
        print(f"{r['model']:<14} {f'{c}x{h}x{w}':>10} {r['images_per_s']:10.1f} "
              f"{r['first_batch_s']:10.2f} s")
    return rows
