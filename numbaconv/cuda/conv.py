"""2-D convolution on the GPU: the tiled implicit GEMM (:mod:`numbaconv.cuda.gemm`) for groups of
16 output channels or more, a kernel of its own for depthwise convolution (one input channel per
group), and a direct kernel for other narrow groups. All three fuse bias, residual and
activation, and compute float16 data in float32 (rounded once, at the store).
"""

import numpy as np

from numbaconv import _cuda
from numbaconv.cuda import gemm
from numbaconv.cuda._common import (THREADS, acc_dtype, apply_act, blocks, device_id, flat,
                                    unravel4, widen)

cuda = _cuda.cuda()

# Groups with fewer output channels than this use the direct kernel (unless they read one input
# channel: the depthwise kernel): a 64-row GEMM tile would be mostly idle.
GEMM_MIN_OC = 16

_SIG = ("void({T}[:, :, :, ::1], {T}[:, :, :, ::1], {T}[:, :, :, ::1], {T}[::1], "
        "{T}[:, :, :, ::1], UniTuple(int64, 7), boolean, boolean, int64, float64)")  # direct


# ---- one input channel per group (depthwise, channel multipliers, single-channel images) ----

def _depthwise_kernel(fkh, fkw):
    """The kernel for convolutions whose groups read one input channel each (``C/groups == 1``),
    with the kernel size ``fkh x fkw`` and dilation 1 fixed at compile time (0, 0: any size and
    dilation, read from ``geom``).

    Grid (OC, N, row tiles x column tiles), 2-D blocks (bw, bh): a block covers one output plane
    (n, oc) over ``bw`` columns and ``bh * rows`` rows, thread (tx, ty) the outputs (ty + bh r,
    tx), r < rows. A warp's threads take neighbouring columns, so its loads of x and stores of
    out coalesce; the block's weights and bias are the same for every thread (broadcasts), and
    the neighbouring windows' overlap is served from L1. A fixed size keeps the weights in
    registers for all of a thread's outputs and unrolls the taps, which then load at constant
    offsets from one address per kernel row.

    Arrays are flat (C order): out (N*OC*OH*OW,); x (N*C*H*W,); w (OC*KH*KW,); b (OC,) read
    only when ``has_bias``; res (shaped as out) added before the activation, read only when
    ``has_res``; geom = (C, H, W, OC, OH, OW, KH, KW, stride h, stride w, pad top, pad left,
    dilation h, dilation w, rows, column tiles); act, alpha: the fused activation.
    """
    nw = max(fkh * fkw, 1)

    def kernel(out, x, w, b, res, geom, has_bias, has_res, act, alpha):
        c_, h, w_, oc_, oh_, ow_, kh, kw, sh, sw, ph, pw, dh, dw, rows, tiles_w = geom
        if fkh:  # compile-time constants: the loops below unroll
            kh, kw, dh, dw = fkh, fkw, 1, 1
        oc = cuda.blockIdx.x
        n = cuda.blockIdx.y
        tile_h = cuda.blockIdx.z // tiles_w
        ow = (cuda.blockIdx.z - tile_h * tiles_w) * cuda.blockDim.x + cuda.threadIdx.x
        if ow >= ow_:
            return
        bh = cuda.blockDim.y
        xp = (n * c_ + oc // (oc_ // c_)) * h * w_  # the group's one input plane
        op = (n * oc_ + oc) * oh_ * ow_ + ow
        acc_t = acc_dtype(x.dtype)  # float32 for float16 data
        wr = cuda.local.array(nw, dtype=acc_t)  # used when the size is fixed: registers
        if fkh:
            for e in range(fkh * fkw):
                wr[e] = widen(w[oc * (fkh * fkw) + e])
        bias = widen(b[oc]) if has_bias else acc_t(0)
        iw0 = ow * sw - pw
        iw_in = iw0 >= 0 and iw0 + (kw - 1) * dw < w_
        for r in range(rows):
            oh = (tile_h * rows + r) * bh + cuda.threadIdx.y
            if oh >= oh_:
                return
            ih0 = oh * sh - ph
            v = bias
            if ih0 >= 0 and ih0 + (kh - 1) * dh < h and iw_in:  # inside: no tap tests
                for i in range(kh):
                    # Unsigned: known >= 0, so numba adds no negative-index wraparound.
                    row = np.uint64(xp + (ih0 + i * dh) * w_ + iw0)
                    for j in range(kw):
                        wv = wr[i * fkw + j] if fkh else widen(w[(oc * kh + i) * kw + j])
                        v += widen(x[row + np.uint64(j * dw)]) * wv
            else:
                for i in range(kh):
                    ih = ih0 + i * dh
                    if ih >= 0 and ih < h:
                        for j in range(kw):
                            iw = iw0 + j * dw
                            if iw >= 0 and iw < w_:
                                wv = wr[i * fkw + j] if fkh else widen(w[(oc * kh + i) * kw + j])
                                v += widen(x[np.uint64(xp + ih * w_ + iw)]) * wv
            o = np.uint64(op + oh * ow_)
            if has_res:
                v += widen(res[o])
            out[o] = apply_act(v, act, alpha)  # the one rounding

    name = f"_conv2d_depthwise_{fkh}x{fkw}" if fkh else "_conv2d_depthwise"
    kernel.__name__ = kernel.__qualname__ = name
    return _cuda.kernel("void({T}[::1], {T}[::1], {T}[::1], {T}[::1], {T}[::1], "
                        "UniTuple(int64, 16), boolean, boolean, int64, float64)", half=True)(kernel)


# The fixed-size variant for undilated 3x3 (MobileNet's, EfficientNet's and ResNeXt's depthwise
# layers), the general one for the rest.
_DEPTHWISE = {(3, 3, 1, 1): _depthwise_kernel(3, 3), None: _depthwise_kernel(0, 0)}
DW_THREADS = 256


def _depthwise_shape(n, oc, oh, ow, device):
    """Block (bw, bh), rows per thread and the grid's tile counts for ``_depthwise_kernel``.

    Blocks are as wide as the output (8, 16 or 32 columns) so small maps do not leave most
    threads idle; a thread takes up to 4 rows (weights and index arithmetic shared by them)
    while the grid still gives every SM several blocks."""
    bw = 32 if ow > 16 else 16 if ow > 8 else 8
    bh = min(DW_THREADS // bw, 1 << max(oh - 1, 0).bit_length())
    tiles_w = -(-ow // bw)
    rows = min(4, -(-oh // bh))
    while rows > 1 and n * oc * tiles_w * -(-oh // (bh * rows)) < 8 * gemm.sm_count(device):
        rows //= 2
    tiles_h = -(-oh // (bh * rows))
    return (bw, bh), rows, tiles_h, tiles_w


# The direct kernel's thread computes this many neighbouring outputs of a row: its index
# arithmetic (divisions) is shared by them, and their overlapping input reads hit the cache.
ROW_RUN = 4


@_cuda.kernel(_SIG, half=True)
def _conv2d_direct(out, x, w, b, res, geom, has_bias, has_res, act, alpha):
    """Direct convolution; a thread computes ROW_RUN consecutive outputs of one output row
    (1-D grid over (n, oc, oh, run) in C order).

    out (N, OC, OH, OW); x (N, C, H, W); w (OC, C/groups, KH, KW); b (OC,) read only when
    ``has_bias``; res (shaped as out) added before the activation, read only when ``has_res``;
    geom = (stride h, stride w, pad top, pad left, dilation h, dilation w, groups);
    act, alpha: the fused activation (numbaconv._ops codes). Neighbouring threads read
    neighbouring input pixels, and weight reads are broadcasts.
    """
    n_, c_, h, w_ = x.shape
    oc_, cg, kh, kw = w.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    sh, sw, ph, pw, dh, dw, groups = geom
    runs = (ow_ + ROW_RUN - 1) // ROW_RUN
    idx = cuda.grid(1)
    if idx >= n_ * oc_ * oh_ * runs:
        return
    n, oc, oh, run = unravel4(idx, oc_, oh_, runs)
    ow0 = run * ROW_RUN
    c0 = (oc // (oc_ // groups)) * cg
    ih0 = oh * sh - ph
    iw0 = ow0 * sw - pw
    acc = cuda.local.array(ROW_RUN, dtype=acc_dtype(x.dtype))  # float32 for float16 data
    for r in range(ROW_RUN):
        acc[r] = widen(b[oc]) if has_bias else acc_dtype(x.dtype)(0)
    for c in range(cg):
        for i in range(kh):
            ih = ih0 + i * dh
            if ih < 0 or ih >= h:
                continue
            for j in range(kw):
                wv = widen(w[oc, c, i, j])
                for r in range(ROW_RUN):
                    iw = iw0 + r * sw + j * dw
                    if iw >= 0 and iw < w_:
                        acc[r] += widen(x[n, c0 + c, ih, iw]) * wv
    for r in range(ROW_RUN):
        ow = ow0 + r
        if ow < ow_:
            v = acc[r]
            if has_res:
                v += widen(res[n, oc, oh, ow])
            out[n, oc, oh, ow] = apply_act(v, act, alpha)


def conv2d(out, x, w, b, residual, stride, padding, dilation, groups, act, alpha):
    """2-D convolution with a fused bias, residual and activation, filling ``out``.

    Parameters
    ----------
    out : (N, OC, OH, OW) device array, filled in place; every array has one dtype, float16,
        float32 or float64.
    x : (N, C, H, W) device array.
    w : (OC, C // groups, KH, KW) device array.
    b : (OC,) device array or None.
    residual : device array shaped as out, or None; added after the bias, before ``act``.
    stride, padding, dilation : (h, w) int tuples; padding is top/left, the bottom/right padding
        is implied by out's shape.
    groups : int.
    act : int, a numbaconv._ops.ACT_* code applied after the bias; alpha : float, its parameter.
    """
    n, oc, oh, ow = out.shape
    if out.size == 0:  # a zero grid dimension is a launch error
        return
    has_bias = b is not None
    # Without a bias the weights, viewed flat, stand in for it (never read): no allocation.
    bias = b if has_bias else flat(w)
    has_res = residual is not None
    res = residual if has_res else out  # stands in, never read
    cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    (sh, sw), (ph, pw), (dh, dw) = [(int(v[0]), int(v[1])) for v in (stride, padding, dilation)]
    if cg == 1:
        block, rows, tiles_h, tiles_w = _depthwise_shape(n, oc, oh, ow, device_id())
        if n < 2**16 and tiles_h * tiles_w < 2**16:  # grid y and z limits
            kernel = _DEPTHWISE.get((kh, kw, dh, dw), _DEPTHWISE[None])
            geom = (x.shape[1], x.shape[2], x.shape[3], oc, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw,
                    rows, tiles_w)
            out_f = flat(out)
            kernel[(oc, n, tiles_h * tiles_w), block](out_f, flat(x), flat(w), flat(bias),
                                                      flat(residual) if has_res else out_f, geom,
                                                      has_bias, has_res, int(act), float(alpha))
            return
    if oc // groups >= GEMM_MIN_OC and gemm.conv2d(out, x, w, b, residual, stride, padding,
                                                   dilation, groups, act, alpha):
        return
    geom = (sh, sw, ph, pw, dh, dw, int(groups))
    runs = n * oc * oh * (-(-ow // ROW_RUN))
    _conv2d_direct[blocks(runs), THREADS](out, x, w, bias, res, geom, has_bias, has_res,
                                          int(act), float(alpha))
