"""Gradients of 2-D convolution on the GPU (also the forward of the transposed convolution).

Direct kernels, correct for every stride, padding, dilation and groups, not yet tiled:

- data gradient: one thread per element of ``gx`` (C order, so a warp reads neighbouring
  positions of ``grad_output`` and the same weights), gathering the taps that hit it;
- weight gradient and bias gradient: a segment of consecutive threads per element of ``gw`` /
  ``gb`` strides over the batch's output positions (coalesced reads) and tree-sums in shared
  memory, so each gradient element has one writer (no atomics).

A shared-memory tiled GEMM (like the forward's, :mod:`numbaconv.cuda.gemm`) would be faster on
large layers; these kernels favour obvious correctness.
"""

from numbaconv import _cuda
from numbaconv.cuda._common import THREADS, blocks, flat, unravel4

cuda = _cuda.cuda()

# Weight and bias gradients: a block of up to REDUCE_THREADS threads owns blockDim // seg
# consecutive gradient elements, each summed by a segment of ``seg`` consecutive threads (a power
# of two, chosen per call from the length of the sum): long sums get whole warps or the whole
# block, short ones share a block between many elements instead of idling threads.
REDUCE_THREADS = 128
REDUCE_ITEMS = 64  # a segment has about this many terms per thread, or REDUCE_THREADS threads


def _segment_sum(red, tid, seg):
    # Sums shared red[tid - tid % seg : ... + seg] into its first element, for every segment of
    # the block at once; all threads of the block call it.
    cuda.syncthreads()
    lane = tid % seg
    step = seg // 2
    while step > 0:
        if lane < step:
            red[tid] += red[tid + step]
        cuda.syncthreads()
        step //= 2


segment_sum = _cuda.device_function(_segment_sum)


@_cuda.kernel("void({T}[:, :, :, ::1], {T}[:, :, :, ::1], {T}[:, :, :, ::1], {T}[::1], "
              "UniTuple(int64, 7), boolean)")
def _grad_input(gx, go, w, b, geom, has_bias):
    """gx (N, C, H, W) = conv2d's input gradient for go (N, OC, OH, OW) and w (OC, C/groups,
    KH, KW), plus b (C,) when ``has_bias``; geom = (stride h, stride w, pad top, pad left,
    dilation h, dilation w, groups) of the conv2d. 1-D grid over gx."""
    n_, c_, h, w_ = gx.shape
    oc_, cg, kh, kw = w.shape
    oh_, ow_ = go.shape[2], go.shape[3]
    sh, sw, pt, pl, dh, dw, groups = geom
    idx = cuda.grid(1)
    if idx >= n_ * c_ * h * w_:
        return
    n, c, ih, iw = unravel4(idx, c_, h, w_)
    g = c // cg
    ci = c - g * cg
    ocg = oc_ // groups
    o0 = g * ocg
    acc = b[c] if has_bias else gx.dtype.type(0)
    for i in range(kh):
        th = ih + pt - i * dh  # = oh * sh for a tap that reaches ih
        if th < 0:
            break
        if th % sh != 0 or th // sh >= oh_:
            continue
        oh = th // sh
        for j in range(kw):
            tw = iw + pl - j * dw
            if tw < 0:
                break
            if tw % sw != 0 or tw // sw >= ow_:
                continue
            ow = tw // sw
            for o in range(ocg):
                acc += go[n, o0 + o, oh, ow] * w[o0 + o, ci, i, j]
    gx[n, c, ih, iw] = acc


@_cuda.kernel("void({T}[:, :, :, ::1], {T}[:, :, :, ::1], {T}[:, :, :, ::1], "
              "UniTuple(int64, 7), int64)")
def _grad_weight(gw, go, x, geom, seg):
    """gw (OC, C/groups, KH, KW) = go * x summed over the batch's output positions; a segment of
    ``seg`` threads per element of gw (C order, blockDim // seg per block); geom as in
    ``_grad_input``."""
    n_, c_, h, w_ = x.shape
    oc_, cg, kh, kw = gw.shape
    oh_, ow_ = go.shape[2], go.shape[3]
    sh, sw, pt, pl, dh, dw, groups = geom
    tid = cuda.threadIdx.x
    lane = tid % seg
    e = cuda.blockIdx.x * (cuda.blockDim.x // seg) + tid // seg
    valid = e < oc_ * cg * kh * kw
    acc = x.dtype.type(0)
    if valid:
        o, ci, i, j = unravel4(e, cg, kh, kw)
        c = (o // (oc_ // groups)) * cg + ci
        ohw = oh_ * ow_
        for p in range(lane, n_ * ohw, seg):
            n = p // ohw
            rem = p - n * ohw
            oh = rem // ow_
            ow = rem - oh * ow_
            ih = oh * sh - pt + i * dh
            iw = ow * sw - pl + j * dw
            if ih >= 0 and ih < h and iw >= 0 and iw < w_:
                acc += go[n, o, oh, ow] * x[n, c, ih, iw]
    red = cuda.shared.array(REDUCE_THREADS, dtype=x.dtype)
    red[tid] = acc
    segment_sum(red, tid, seg)
    if valid and lane == 0:
        gw[o, ci, i, j] = red[tid]


@_cuda.kernel("void({T}[::1], {T}[:, :, ::1], int64)")
def _grad_bias(gb, go, seg):
    """gb (OC,) = go (N, OC, S) summed over N and S; a segment of ``seg`` threads per channel."""
    n_, oc_, s_ = go.shape
    tid = cuda.threadIdx.x
    lane = tid % seg
    o = cuda.blockIdx.x * (cuda.blockDim.x // seg) + tid // seg
    acc = go.dtype.type(0)
    if o < oc_:
        for p in range(lane, n_ * s_, seg):
            n = p // s_
            acc += go[n, o, p - n * s_]
    red = cuda.shared.array(REDUCE_THREADS, dtype=go.dtype)
    red[tid] = acc
    segment_sum(red, tid, seg)
    if o < oc_ and lane == 0:
        gb[o] = red[tid]


def _segments(elements, terms):
    """(blocks, threads per block, threads per element) for ``elements`` sums of ``terms``
    terms: about REDUCE_ITEMS terms per thread, powers of two, at most REDUCE_THREADS threads
    per block (fewer when there are few elements)."""
    seg = 1
    while seg < REDUCE_THREADS and seg * REDUCE_ITEMS < terms:
        seg *= 2
    threads = seg
    while threads < REDUCE_THREADS and threads < seg * elements:
        threads *= 2
    return blocks(elements, threads // seg), threads, seg


def _geom(stride, padding, dilation, groups):
    return (int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]),
            int(dilation[0]), int(dilation[1]), int(groups))


def conv2d_backward_input(gx, go, w, b, stride, padding, dilation, groups):
    """Gradient of conv2d w.r.t. its input, plus an optional bias (conv_transpose2d's forward).

    Parameters
    ----------
    gx : (N, C, H, W) device array, filled in place; its shape is the forward input's.
    go : (N, OC, OH, OW) device array, the gradient of the forward output.
    w : (OC, C // groups, KH, KW) device array, the forward weight.
    b : (C,) device array or None.
    stride, padding, dilation : (h, w) int tuples of the forward conv; padding is (top, left).
    groups : int.
    """
    if gx.size == 0:  # a zero grid dimension is a launch error
        return
    has_bias = b is not None
    # Without a bias the output, viewed flat, stands in for it (never read).
    _grad_input[blocks(gx.size), THREADS](gx, go, w, b if has_bias else flat(gx),
                                          _geom(stride, padding, dilation, groups), has_bias)


def conv2d_backward_weight(gw, go, x, stride, padding, dilation, groups):
    """Gradient of conv2d w.r.t. its weight, summed over the batch.

    Parameters
    ----------
    gw : (OC, C // groups, KH, KW) device array, filled in place.
    go : (N, OC, OH, OW) device array.
    x : (N, C, H, W) device array, the forward input.
    stride, padding, dilation, groups : as in :func:`conv2d_backward_input`.
    """
    if gw.size == 0:
        return
    nb, threads, seg = _segments(gw.size, go.shape[0] * go.shape[2] * go.shape[3])
    _grad_weight[nb, threads](gw, go, x, _geom(stride, padding, dilation, groups), seg)


def conv2d_backward_bias(gb, go):
    """Gradient of conv2d w.r.t. its bias: ``gb (OC,) = go (N, OC, OH, OW)`` summed over
    everything but the channel dim."""
    if gb.size == 0:
        return
    n, oc = go.shape[0], go.shape[1]
    s = go.shape[2] * go.shape[3]
    nb, threads, seg = _segments(oc, n * s)
    _grad_bias[nb, threads](gb, go.reshape(n, oc, s), seg)
