"""Compilation options and scalar helpers shared by the CPU kernels."""

import numba

from numbaconv import _ops

# 'reassoc' lets LLVM vectorise reductions and 'contract' fuse multiply-adds; NaN and Inf keep
# their IEEE behaviour (no 'nnan'/'ninf'), so they pass through kernels as they do in PyTorch.
FASTMATH = {"reassoc", "contract"}


def kernel(func):
    """Compile a CPU kernel: parallel, cached on disk, with the shared fastmath flags."""
    return numba.njit(parallel=True, cache=True, fastmath=FASTMATH)(func)


def helper(func):
    """Compile a small function that kernels inline (serial, cached)."""
    return numba.njit(inline="always", cache=True, fastmath=FASTMATH)(func)


sigmoid = helper(_ops.sigmoid)
apply_act = helper(_ops.apply_act)
