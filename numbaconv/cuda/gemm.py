"""The implicit-GEMM convolution kernel on the GPU, used by conv2d and (as a 1x1 convolution of a
1x1 image) by linear.

Per group ``g`` the convolution is the product ``out[oc, p] = sum_k W[oc, k] * X[k, p]`` with
``k = (c, i, j)`` over the group's input channels and kernel taps (``K = C/groups * KH * KW``) and
``p = (n, oh, ow)`` over every output pixel of the batch. ``X`` (im2col) is never built: each
block gathers its slice of ``X`` from ``x`` straight into shared memory, zeros standing in for
the padding, through a small per-geometry table of k's offsets (no division in the loop). The
tile shape is chosen per problem from two compiled shape classes (``BIG``, ``SMALL``).

float16 data is summed in float32: the shared tiles and accumulators are float32, each float16
value is converted once as it is loaded, and the output is rounded to float16 once, at the store.
"""

import numpy as np

from numbaconv import _cuda
from numbaconv.cuda._common import (THREADS, acc_dtype, apply_act, blocks, device_id, flat,
                                    view, widen)

cuda = _cuda.cuda()

GEMM_THREADS = 256  # a 16 x 16 grid of threads per block
# 16-byte aligned shared tiles allow 128-bit loads (the simulator rejects the argument).
ALIGN = None if _cuda.simulator_enabled() else 16


def _gemm_kernel(bm, bn, bk, dtypes):
    """The implicit-GEMM kernel for one tile shape (bm, bn, bk), compile-time constants.

    A block of GEMM_THREADS (256) threads computes ``bm`` output channels x ``bn`` output pixels
    of one group, staging ``bk`` of the reduction per step. Thread (ty, tx) of a 16 x 16 grid
    owns the ``bm/16 x bn/16`` outputs in rows 64 a + 4 ty + e and columns 64 c + 4 tx + e
    (e < 4) in registers: its part of a staged row is runs of 4 consecutive words, each one
    128-bit shared load (the tiles are 16-byte aligned), and a warp's loads are broadcasts (A)
    or 256 consecutive bytes (B), free of bank conflicts.
    The shared tiles are double-buffered: the next step's global values are loaded into
    registers before the current step's products, so one barrier per step suffices and the
    loads' latency is hidden behind the arithmetic.

    Kernel arguments: out (N*OC*OH*OW,) flat; x (N*C*H*W,) flat; w (OC, C/groups*KH*KW);
    ktab (K rounded up to bk,) from ``_ktab``; b (OC,) read only when ``has_bias``; res shaped
    as out, read only when ``has_res``; geom = (N, OC, OH, OW, H, W, C*H*W, C/groups*H*W,
    stride h, stride w, pad top, pad left, groups); act, alpha: the fused activation.
    Compiled for the element types ``dtypes``. The tile sizes reach the kernel as closure
    constants: Numba folds them at compile time (shared and local array shapes must be
    constants) and keys its on-disk cache on their values.
    """
    unroll = UNROLL[bm, bn, bk]
    assert bm % 64 == 0 and bn % 64 == 0 and bk % unroll == 0, (bm, bn, bk)  # runs of 4
    rm, rn = bm // 16, bn // 16
    lda = bm + 4  # A-tile row pitch: the loader's stores hit distinct banks
    ldc = bn + 1  # epilogue staging pitch
    a_step = GEMM_THREADS // bk  # A loader: k column tid % bk, rows tid // bk + a_step q
    qa = bm // a_step
    b_step = GEMM_THREADS // bn  # B loader: pixel tid % bn, k rows tid // bn + b_step q
    qb = bk // b_step

    def kernel(out, x, w, ktab, b, res, geom, has_bias, has_res, act, alpha):
        n_, oc_, oh_, ow_, h, w_, chw, gchw, sh, sw, ph, pw, groups = geom
        k_ = w.shape[1]
        ocg = oc_ // groups
        ohw = oh_ * ow_
        np_ = n_ * ohw

        g = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * bm
        p0 = cuda.blockIdx.x * bn
        tid = cuda.threadIdx.x
        tx = tid % 16
        ty = tid // 16
        utx4, uty4 = np.uint64(4 * tx), np.uint64(4 * ty)

        acc_t = acc_dtype(x.dtype)  # float32 for float16 data
        a_s = cuda.shared.array((2, bk, lda), dtype=acc_t, alignment=ALIGN)
        b_s = cuda.shared.array((2, bk, bn), dtype=acc_t, alignment=ALIGN)
        c_s = cuda.shared.array((16, ldc), dtype=acc_t)
        # Register arrays: every index below is a constant after unrolling, so none of them
        # lives in (slow) local memory.
        acc = cuda.local.array((rm, rn), dtype=acc_t)
        af = cuda.local.array(rm, dtype=acc_t)
        bf = cuda.local.array(rn, dtype=acc_t)
        pa = cuda.local.array(qa, dtype=acc_t)  # the next step's values, in flight
        pb = cuda.local.array(qb, dtype=acc_t)
        zero = acc_t(0)
        for i in range(rm):
            for j in range(rn):
                acc[i, j] = zero

        # B loader: one output pixel, decoded once; ktab gives each reduction index's offset
        # into x and its tap's (row, column) displacement, so the loop divides nothing.
        bp = tid % bn
        bk0 = tid // bn
        p = p0 + bp
        p_ok = p < np_
        pn = p // ohw
        prem = p - pn * ohw
        poh = prem // ow_
        ih0 = poh * sh - ph
        iw0 = (prem - poh * ow_) * sw - pw
        xbase = pn * chw + g * gchw + ih0 * w_ + iw0
        if not p_ok:  # past the last pixel: every row test below fails
            ih0 = -(1 << 30)
        # One unsigned 32-bit comparison tests both bounds (a negative row wraps to a huge one);
        # rows and columns fit in 32 bits (the table's 16-bit displacements), so NVVM narrows
        # their arithmetic from numba's 64 bits.
        uh, uw = np.uint32(h), np.uint32(w_)
        # A loader: one reduction column of rows wrow + a_step q of w.
        ak = tid % bk
        am = tid // bk
        wrow = g * ocg + m0 + am
        a_rows = ocg - m0 - am  # this thread's rows a_step q below a_rows exist
        uak, uam, ubk0, ubp = np.uint64(ak), np.uint64(am), np.uint64(bk0), np.uint64(bp)

        steps = (k_ + bk - 1) // bk
        for s in range(steps + 1):
            k0 = s * bk
            if s < steps:  # fetch step s into registers
                k = k0 + ak
                for q in range(qa):
                    v = zero
                    if k < k_ and a_step * q < a_rows:
                        v = widen(w[np.uint64(wrow + a_step * q), np.uint64(k)])
                    pa[q] = v
                for q in range(qb):
                    t = ktab[np.uint64(k0 + bk0 + b_step * q)]
                    ih = np.uint32(ih0 + ((t >> 16) & 0xFFFF))
                    iw = np.uint32(iw0 + (t & 0xFFFF))
                    v = zero
                    if ih < uh and iw < uw:
                        v = widen(x[np.uint64(xbase + (t >> 32))])
                    pb[q] = v
            if s > 0:  # multiply step s - 1, staged in buffer (s - 1) % 2
                # Unsigned indices: numba adds no negative-index wraparound, so the loads of
                # a run are at constant offsets from one address, which NVVM merges into one
                # vector load.
                cur = np.uint64((s - 1) & 1)
                for kk2 in range(bk // unroll):
                    for u in range(unroll):  # a constant trip count: unrolled
                        ukk = np.uint64(kk2 * unroll + u)
                        for i in range(rm):
                            af[i] = a_s[cur, ukk, uty4 + np.uint64(i // 4 * 64 + i % 4)]
                        for j in range(rn):
                            bf[j] = b_s[cur, ukk, utx4 + np.uint64(j // 4 * 64 + j % 4)]
                        for i in range(rm):
                            for j in range(rn):
                                acc[i, j] += af[i] * bf[j]
            if s < steps:  # stage step s in buffer s % 2, last read in step s - 2
                nxt = np.uint64(s & 1)
                for q in range(qa):
                    a_s[nxt, uak, uam + np.uint64(a_step * q)] = pa[q]
                for q in range(qb):
                    b_s[nxt, ubk0 + np.uint64(b_step * q), ubp] = pb[q]
            cuda.syncthreads()

        # Epilogue in rm passes through shared memory. Pass i stages row i of every thread's
        # registers (tile rows i // 4 * 64 + 4 ty + i % 4), then each thread finishes one
        # output pixel of those rows: bias, residual, activation and a store that coalesces
        # with its neighbours'.
        pn = p // ohw
        obase = pn * oc_ * ohw + p - pn * ohw  # out[pn, 0, oh, ow], flat
        for i in range(rm):
            for j in range(rn):
                c_s[ty, j // 4 * 64 + 4 * tx + j % 4] = acc[0, j]
            for r in range(rm - 1):  # shift the next row up: register indices stay constant
                for j in range(rn):
                    acc[r, j] = acc[r + 1, j]
            cuda.syncthreads()
            if p_ok:
                for q in range(16 // b_step):
                    t = bk0 + b_step * q
                    m = m0 + i // 4 * 64 + 4 * t + i % 4
                    if m < ocg:
                        oc = g * ocg + m
                        v = c_s[t, bp]
                        if has_bias:
                            v += widen(b[oc])
                        if has_res:
                            v += widen(res[obase + oc * ohw])
                        out[obase + oc * ohw] = apply_act(v, act, alpha)  # the one rounding
            cuda.syncthreads()

    kernel.__name__ = kernel.__qualname__ = f"_conv2d_gemm_{bm}x{bn}"
    return _cuda.kernel(*[_GEMM_SIG.format(T=t) for t in dtypes])(kernel)


_GEMM_SIG = ("void({T}[::1], {T}[::1], {T}[:, ::1], int64[::1], {T}[::1], {T}[::1], "
             "UniTuple(int64, 13), boolean, boolean, int64, float64)")
# Shape classes (bm, bn, bk). The big tile does twice the products per shared-memory and global
# read of the small one, but has a quarter of its blocks: layers with few output pixels or
# channels would leave SMs idle.
BIG = (128, 128, 8)
SMALL = (64, 64, 16)
# Reduction steps per trip of the inner loop: as many as NVVM then unrolls (the loop body grows
# with the tile), so the loop's own instructions are shared by more FMAs.
UNROLL = {BIG: 2, SMALL: 4}
_GEMMS = {BIG: _gemm_kernel(*BIG, dtypes=("float16", "float32")),
          SMALL: _gemm_kernel(*SMALL, dtypes=("float16", "float32", "float64"))}


def conv2d(out, x, w, b, residual, stride, padding, dilation, groups, act, alpha):
    """2-D convolution as an implicit GEMM, filling ``out``, when the geometry fits its k table.

    Parameters as :func:`numbaconv.cuda.conv.conv2d` (``out.size > 0``).

    Returns
    -------
    bool: False, with nothing launched, when the table cannot describe the geometry (a padded
    row or dilated tap span of 0x7FFF or more, or 2**31 or more elements in a group's input).
    """
    n, oc, oh, ow = out.shape
    c, h, w_ = x.shape[1], x.shape[2], x.shape[3]
    cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    (sh, sw), (ph, pw), (dh, dw) = [(int(v[0]), int(v[1])) for v in (stride, padding, dilation)]
    # The table packs offsets in 32 bits and displacements in 16, _FAR being the out-of-bounds
    # row.
    if max(h + ph, w_ + pw, dh * (kh - 1), dw * (kw - 1)) >= _FAR or cg * h * w_ >= 2**31:
        return False
    has_bias, has_res = b is not None, residual is not None
    bias = b if has_bias else flat(w)  # a stand-in, never read: no allocation
    ocg = oc // groups
    device = device_id()
    tile = _gemm_tile(out.dtype, n * oh * ow, ocg, groups, device)
    kernel, (bm, bn, bk) = _GEMMS[tile], tile
    geom = (n, oc, oh, ow, h, w_, c * h * w_, cg * h * w_, sh, sw, ph, pw, int(groups))
    grid = (-(-n * oh * ow // bn), -(-ocg // bm), groups)
    ktab = _ktab(device, cg, kh, kw, dh, dw, h, w_, bk)
    out_f = flat(out)
    kernel[grid, GEMM_THREADS](out_f, flat(x), view(w, (oc, cg * kh * kw)), ktab, flat(bias),
                               flat(residual) if has_res else out_f, geom, has_bias, has_res,
                               int(act), float(alpha))
    return True


def _gemm_tile(dtype, n_pix, ocg, groups, device):
    """The GEMM tile for a problem: the big one where it gives every SM a block at least (its
    float64 accumulators would not fit in registers), else the small one."""
    bm, bn, _ = BIG
    if dtype != np.float64 and -(-n_pix // bn) * -(-ocg // bm) * groups >= sm_count(device):
        return BIG
    return SMALL


def sm_count(device):
    """Streaming multiprocessors of ``device``. The simulator's device has none; it counts as
    the reference GPU's (an H200: 132), so that its tests choose tiles and grids as that GPU
    would (small problems take the small tile, whose simulation is also 4 times cheaper)."""
    if device not in _SMS:
        _SMS[device] = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", REFERENCE_SMS)
    return _SMS[device]


REFERENCE_SMS = 132
_SMS = {}  # device id -> SM count
_KTABS = {}  # (device id, stream, geometry, tile depth) -> device table, reused across calls
_FAR = 0x7FFF


def _ktab(device, cg, kh, kw, dh, dw, h, w, bk):
    """The device table of reduction index k = (c, i, j) -> packed (offset of x[0, c, i dh,
    j dw] in a (C, H, W) image) << 32 | (i dh) << 16 | j dw, padded to whole steps of ``bk``
    with entries whose row displacement (_FAR) puts every read out of bounds. Filled by a kernel
    on the first use of a geometry, so no host copy or synchronisation is involved."""
    # Per stream too: a table filled on one stream is not yet safe to read on another.
    key = (device, _cuda.stream_key(_cuda.current_stream()), cg, kh, kw, dh, dw, h, w, bk)
    tab = _KTABS.get(key)
    if tab is None:
        k_ = cg * kh * kw
        if len(_KTABS) >= 64:  # many geometries: drop the old tables rather than grow
            _KTABS.clear()
        tab = _cuda.empty(-(-k_ // bk) * bk, np.int64)
        _conv2d_ktab[blocks(tab.size), THREADS](tab, (kh, kw, dh, dw, h, w, k_))
        _KTABS[key] = tab
    return tab


@_cuda.kernel("void(int64[::1], UniTuple(int64, 7))")
def _conv2d_ktab(tab, geom):
    """Fill ``_ktab``'s table, one thread per entry; geom = (KH, KW, dh, dw, H, W, K)."""
    kh, kw, dh, dw, h, w, k_ = geom
    k = cuda.grid(1)
    if k >= tab.shape[0]:
        return
    if k >= k_:
        tab[k] = _FAR << 16
        return
    khw = kh * kw
    c = k // khw
    i = (k - c * khw) // kw
    di = i * dh
    dj = (k - c * khw - i * kw) * dw
    tab[k] = ((c * h + di) * w + dj) << 32 | di << 16 | dj
