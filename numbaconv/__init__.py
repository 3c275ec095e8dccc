"""numbaconv: convolutional-network kernels in Python, JIT-compiled with Numba for CPU and CUDA."""

__version__ = "0.1.0"

from numbaconv import datasets, functional, models, nn, optim
from numbaconv.device import (cuda_available, get_device, info, set_device, to_device, to_numpy,
                              use_device)

__all__ = ["__version__", "cuda_available", "datasets", "functional", "get_device", "info",
           "models", "nn", "optim", "set_device", "to_device", "to_numpy", "use_device"]


def __getattr__(name):
    # numbaconv.distributed needs Dask (an optional extra), so it is imported on first use.
    if name == "distributed":
        import importlib

        return importlib.import_module("numbaconv.distributed")
    raise AttributeError(f"module 'numbaconv' has no attribute {name!r}")
