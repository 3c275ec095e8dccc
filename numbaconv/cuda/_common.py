"""Device functions and launch helpers shared by the CUDA kernels."""

from numbaconv import _cuda, _ops

sigmoid = _cuda.device_function(_ops.sigmoid)
apply_act = _cuda.device_function(_ops.apply_act)

THREADS = 256  # threads per block for 1-D grids


def blocks(n, threads=THREADS):
    """Blocks needed to cover ``n`` items with ``threads`` per block (at least one)."""
    return max(1, (n + threads - 1) // threads)
