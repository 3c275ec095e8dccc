"""Bundled sample data: the UCI 8x8 handwritten digits (see ``numbaconv/data/LICENSE-digits.txt``)."""

import os

import numpy as np

__all__ = ["load_digits"]

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "digits.npz")


def load_digits(split=None, dtype=np.float32, test_fraction=0.2):
    """The 1,797 UCI handwritten digits (8x8, 10 classes), as scikit-learn ships them.

    Parameters
    ----------
    split : None, 'train' or 'test'
        None gives all images. 'train' / 'test' give a fixed, class-stratified split
        (``test_fraction`` of each class held out, chosen with a fixed seed), the same on every
        machine.
    dtype : float32 or float64
        Images are scaled from 0..16 to [0, 1].
    test_fraction : float in (0, 1)

    Returns
    -------
    images : array (N, 1, 8, 8) of ``dtype``
    labels : int64 array (N,) with values 0..9
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"load_digits(): split={split!r} is not valid; use None, 'train' or "
                         "'test'")
    if not 0 < test_fraction < 1:
        raise ValueError(f"load_digits(): test_fraction must be in (0, 1), got {test_fraction!r}")
    with np.load(_PATH) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
    if split is not None:
        rng = np.random.default_rng(20261124)
        test = np.zeros(len(labels), bool)
        for c in range(10):
            idx = rng.permutation(np.flatnonzero(labels == c))
            test[idx[:int(round(test_fraction * len(idx)))]] = True
        keep = test if split == "test" else ~test
        images, labels = images[keep], labels[keep]
    return (images[:, None] / np.asarray(16, dtype)).astype(dtype), labels
