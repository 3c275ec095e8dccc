"""Device functions and launch helpers shared by the CUDA kernels."""

from numbaconv import _cuda, _ops


sigmoid = _cuda.device_function(_ops.sigmoid)
apply_act = _cuda.device_function(_ops.apply_act)

THREADS = 256  # threads per block for 1-D grids


def blocks(n, threads=THREADS):
    """Blocks needed to cover ``n`` items with ``threads`` per block (at least one)."""
    return max(1, (n + threads - 1) // threads)


def _nan_max(m, v):
    # v > m is False for NaN, so test v != v too: a NaN anywhere wins, as in PyTorch's max.
    return v if (v > m or v != v) else m


nan_max = _cuda.device_function(_nan_max)


def flat(a):
    """A 1-D view of a C-contiguous device array (no copy); used as a typed stand-in argument."""
    return a.reshape(a.size)
