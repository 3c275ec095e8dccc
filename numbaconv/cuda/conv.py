"""2-D convolution on the GPU: a shared-memory tiled implicit GEMM, and a direct kernel for
depthwise and other narrow groups.

Per group ``g`` the convolution is the product ``out[oc, p] = sum_k W[oc, k] * X[k, p]`` with
``k = (c, i, j)`` over the group's input channels and kernel taps (``K = C/groups * KH * KW``) and
``p = (n, oh, ow)`` over every output pixel of the batch. ``X`` (im2col) is never built: each
block gathers its ``TK x TN`` slice from ``x`` straight into shared memory, zeros standing in for
the padding.

float16 data is summed in float32: the shared tiles and accumulators are float32, each float16
value is converted once as it is loaded, and the output is rounded to float16 once, at the store.
"""

from numbaconv import _cuda
from numbaconv.cuda._common import (GEMM_THREADS, THREADS, TK, TM, TN, acc_dtype, apply_act,
                                    blocks, flat, tile_fma, unravel4, widen)

cuda = _cuda.cuda()

# GEMM tile (TM, TN, TK in numbaconv.cuda._common): a block computes TM output channels x TN
# output pixels, staging TK of the reduction at a time.

# Groups with fewer output channels than this (depthwise: 1) use the direct kernel: a 64-row
# GEMM tile would be mostly idle.
GEMM_MIN_OC = 16

_SIG = ("void({T}[:, :, :, ::1], {T}[:, :, :, ::1], {T}[:, :, :, ::1], {T}[::1], "
        "{T}[:, :, :, ::1], UniTuple(int64, 7), boolean, boolean, int64, float64)")


@_cuda.kernel(_SIG, half=True)
def _conv2d_gemm(out, x, w, b, res, geom, has_bias, has_res, act, alpha):
    """Implicit-GEMM convolution; grid (pixel tiles, channel tiles, groups), 256 threads.

    out (N, OC, OH, OW); x (N, C, H, W); w (OC, C/groups, KH, KW); b (OC,) read only when
    ``has_bias``; res (shaped as out) added before the activation, read only when ``has_res``;
    geom = (stride h, stride w, pad top, pad left, dilation h, dilation w, groups);
    act, alpha: the fused activation (numbaconv._ops codes).
    """
    n_, c_, h, w_ = x.shape
    oc_, cg, kh, kw = w.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    sh, sw, ph, pw, dh, dw, groups = geom
    ocg = oc_ // groups
    khw = kh * kw
    k_ = cg * khw
    ohw = oh_ * ow_
    np_ = n_ * ohw

    g = cuda.blockIdx.z
    m0 = cuda.blockIdx.y * TM
    p0 = cuda.blockIdx.x * TN
    tid = cuda.threadIdx.x
    tx = tid % 16
    ty = tid // 16

    acc_t = acc_dtype(x.dtype)  # float32 for float16 data
    a_s = cuda.shared.array((TK, TM), dtype=acc_t)
    b_s = cuda.shared.array((TK, TN), dtype=acc_t)
    acc = cuda.local.array(16, dtype=acc_t)
    zero = acc_t(0)
    for e in range(16):
        acc[e] = zero

    # This thread loads B column bp (one output pixel) at rows bk + 4 q: decode the pixel once.
    bp = tid % TN
    bk = tid // TN
    p = p0 + bp
    p_ok = p < np_
    pn = p // ohw
    prem = p - pn * ohw
    poh = prem // ow_
    ih0 = poh * sh - ph
    iw0 = (prem - poh * ow_) * sw - pw
    cbase = g * cg
    # ... and A column ak (one reduction index) at rows am + 16 q (output channels).
    ak = tid % TK
    am = tid // TK
    wbase = g * ocg + m0

    for k0 in range(0, k_, TK):
        # A tile: consecutive threads read consecutive k of one weight row (coalesced).
        k = k0 + ak
        kc = k // khw
        kr = k - kc * khw
        ki = kr // kw
        kj = kr - ki * kw
        for q in range(TM // 16):
            mm = am + 16 * q
            v = zero
            if k < k_ and m0 + mm < ocg:
                v = widen(w[wbase + mm, kc, ki, kj])
            a_s[ak, mm] = v
        # B tile: consecutive threads read consecutive output pixels of one tap.
        for q in range(TK // 4):
            kk = bk + 4 * q
            k = k0 + kk
            v = zero
            if p_ok and k < k_:
                c = k // khw
                tap = k - c * khw
                i = tap // kw
                ih = ih0 + i * dh
                iw = iw0 + (tap - i * kw) * dw
                if ih >= 0 and ih < h and iw >= 0 and iw < w_:
                    v = widen(x[pn, cbase + c, ih, iw])
            b_s[kk, bp] = v
        cuda.syncthreads()
        tile_fma(a_s, b_s, acc, ty, tx)
        cuda.syncthreads()

    # Epilogue: bias, residual, activation, store.
    for r in range(4):
        m = m0 + ty + 16 * r
        if m >= ocg:
            continue
        oc = g * ocg + m
        bias = widen(b[oc]) if has_bias else zero
        for c in range(4):
            p = p0 + tx + 16 * c
            if p < np_:
                n = p // ohw
                rem = p - n * ohw
                oh = rem // ow_
                ow = rem - oh * ow_
                v = acc[4 * r + c] + bias
                if has_res:
                    v += widen(res[n, oc, oh, ow])
                out[n, oc, oh, ow] = apply_act(v, act, alpha)  # the one rounding to float16


@_cuda.kernel(_SIG, half=True)
def _conv2d_direct(out, x, w, b, res, geom, has_bias, has_res, act, alpha):
    """Direct convolution, one thread per output element (1-D grid over out in C order).

    Arguments as ``_conv2d_gemm``. Neighbouring threads share (n, oc) and read neighbouring
    pixels, so input reads coalesce and weight reads are broadcasts.
    """
    n_, c_, h, w_ = x.shape
    oc_, cg, kh, kw = w.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    sh, sw, ph, pw, dh, dw, groups = geom
    idx = cuda.grid(1)
    if idx >= n_ * oc_ * oh_ * ow_:
        return
    n, oc, oh, ow = unravel4(idx, oc_, oh_, ow_)
    c0 = (oc // (oc_ // groups)) * cg
    ih0 = oh * sh - ph
    iw0 = ow * sw - pw
    acc = widen(b[oc]) if has_bias else acc_dtype(x.dtype)(0)  # float32 for float16 data
    for c in range(cg):
        for i in range(kh):
            ih = ih0 + i * dh
            if ih < 0 or ih >= h:
                continue
            for j in range(kw):
                iw = iw0 + j * dw
                if iw >= 0 and iw < w_:
                    acc += widen(x[n, c0 + c, ih, iw]) * widen(w[oc, c, i, j])
    if has_res:
        acc += widen(res[n, oc, oh, ow])
    out[n, oc, oh, ow] = apply_act(acc, act, alpha)


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
    geom = (int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]),
            int(dilation[0]), int(dilation[1]), int(groups))
    has_bias = b is not None
    # Without a bias the weights, viewed flat, stand in for it (never read): no allocation.
    bias = b if has_bias else flat(w)
    has_res = residual is not None
    res = residual if has_res else out  # stands in, never read
    ocg = oc // groups
    if ocg >= GEMM_MIN_OC:
        grid = ((n * oh * ow + TN - 1) // TN, (ocg + TM - 1) // TM, groups)
        _conv2d_gemm[grid, GEMM_THREADS](out, x, w, bias, res, geom, has_bias, has_res, int(act),
                                         float(alpha))
    else:
        _conv2d_direct[blocks(out.size), THREADS](out, x, w, bias, res, geom, has_bias, has_res,
                                                   int(act), float(alpha))
