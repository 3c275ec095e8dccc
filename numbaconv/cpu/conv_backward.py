"""Gradients of 2-D convolution on the CPU (also the forward of the transposed convolution).

Data gradient (``conv2d_backward_input``; it is conv_transpose2d's forward): the cross-correlation
of ``grad_output`` with the weights flipped in both spatial dims and transposed within each group
(``wt[g*Cg + c, o] = w[g*OCg + o, c, ::-1, ::-1]``), run by the forward :func:`numbaconv.cpu.conv2d`
(implicit GEMM, Winograd or depthwise, as it picks) with stride 1 on a zero-padded copy of
``grad_output`` (the forward's own padding path would copy it too, or gather when the padding
dwarfs the image). A strided conv is split by stride phase of the input: each phase is such a
correlation with the sub-kernel of the taps that reach it, so no multiply hits an inserted zero.
On small maps (the forward's row path, :func:`numbaconv.cpu.conv.rows_conv`) each phase reads
one NHWC copy of grad_output through a tap table instead, with its taps packed straight from w.

Weight gradient (``conv2d_backward_weight``): ``gw[o, k] = sum_{n, p} go[n, o, p] * X[k, (n, p)]``
with ``k = (c, kh, kw)``. As in the forward's workspace, the input is copied once into zero-padded
planes split by stride phase and laid out image after image (``[c][phase][n][q][r]``, ``Hq x Wq``
per image), and ``grad_output`` onto the same ``Hq x Wq`` grid with zeros off the ``OH x OW``
corner (``[o][n][q][r]``). Then every tap's row of X is one contiguous run of the workspace at a
fixed offset, and both operands of every dot product are long contiguous rows that run over the
whole batch. Where the planes' halo (positions off each image's OH x OW corner) would waste
more work than it saves (small images, many channels), im2col rows are built instead. A task
owns an MR x NR block of ``gw`` (output channels x taps), keeps its MR*NR
partial sums in SIMD registers over the whole reduction and writes its block once: the batch
reduction has a single writer per element (no atomics, no races). When the reduction is short
(N*OH*OW <= OUTER_MAX_P: small maps) it runs as an outer-product GEMM on the forward's
microkernel instead (:func:`_backward_weight_outer`), with no horizontal sums.
"""

import functools

import numpy as np
from numba import prange

from numbaconv._ops import ACT_NONE
from numbaconv.cpu import simd
from numbaconv.cpu._common import helper, kernel
from numbaconv.cpu.conv import conv2d, rows_applies, rows_conv, rows_input, rows_panels
from numbaconv.cpu.gemm import MR as GMR
from numbaconv.cpu.gemm import NVMAX, microkernel, split_tiles, tile_span
from numbaconv.cpu.winograd import winograd_applies
from numbaconv.cpu.workspace import POOL

MR = 6  # output channels per weight-gradient task (rows of _dot_tile)
NR = 4  # taps per weight-gradient task


# ---- data gradient --------------------------------------------------------------------------

@helper
def _span(off, s, n, size):
    """(r0, r1): the r in [0, n) with ``0 <= off + r*s < size`` are r0 <= r < r1."""
    r0 = 0 if off >= 0 else (-off + s - 1) // s
    r1 = min(n, (size - 1 - off) // s + 1) if size - 1 - off >= 0 else 0
    return r0, max(r0, r1)


@kernel
def _spread(z, go, sh, sw, ph, pw):
    """``z`` (N, OC, HZ, WZ): zeros, except ``z[n, o, ph + oh*sh, pw + ow*sw] = go[n, o, oh, ow]``
    wherever that lies inside z (``ph``, ``pw`` may be negative: the grid is then cropped)."""
    n_, oc_, hz, wz = z.shape
    oh_, ow_ = go.shape[2], go.shape[3]
    zero = z.dtype.type(0)
    o0, o1 = _span(pw, sw, ow_, wz)
    q0, q1 = _span(ph, sh, oh_, hz)
    for t in prange(n_ * oc_):
        n = t // oc_
        o = t - n * oc_
        plane = z[n, o]
        for i in range(hz):
            zr = plane[i]
            for j in range(wz):
                zr[j] = zero
        for q in range(q0, q1):
            zr = plane[ph + q * sh]
            gr = go[n, o, q]
            for r in range(o0, o1):
                zr[pw + r * sw] = gr[r]


def _phase_taps(a, k, s, p, d):
    """The taps of one output phase along one dim: for input positions ``a + s*u`` the taps
    ``t`` with ``(a + p - t*d) % s == 0`` reach grad_output row ``u + (a + p - t*d) // s``.
    Returns (taps in descending order, so that offsets ascend; first offset; offset step)."""
    taps = [t for t in range(k - 1, -1, -1) if (a + p - t * d) % s == 0]
    if not taps:
        return taps, 0, 1
    step = (taps[0] - taps[1]) * d // s if len(taps) > 1 else 1
    return taps, (a + p - taps[0] * d) // s, step


@kernel
def _phase_weight(wt, w, groups, rows, cols):
    """``wt[g*Cg + c, o, i, j] = w[g*OCg + o, c, rows[i], cols[j]]``: the sub-kernel of taps
    ``rows`` x ``cols`` (flipped: :func:`_phase_taps` lists them in descending order) with input
    and output channels swapped within each group, the weight of the transposed direction."""
    oc_, cg, _, _ = w.shape
    ocg = oc_ // groups
    mh, mw = rows.shape[0], cols.shape[0]
    for t in prange(groups * cg):
        g = t // cg
        c = t - g * cg
        for o in range(ocg):
            src = w[g * ocg + o, c]
            dst = wt[t, o]
            for i in range(mh):
                for j in range(mw):
                    dst[i, j] = src[rows[i], cols[j]]


def conv2d_backward_input(gx, go, w, b, stride, padding, dilation, groups):
    """Gradient of conv2d w.r.t. its input, plus an optional bias (conv_transpose2d's forward).

    ``gx[n, g*Cg + c, ih, iw] = b[g*Cg + c] + sum go[n, g*OCg + o, oh, ow] * w[g*OCg + o, c, kh, kw]``
    over ``ih = oh*sh - pt + kh*dh``, ``iw = ow*sw - pl + kw*dw``.

    Each stride phase of gx (the positions ``ih = a + sh*u``, ``iw = c + sw*v``) is a stride-1
    correlation of grad_output with the taps that reach that phase (flipped, channels swapped
    within each group), run by the forward :func:`numbaconv.cpu.conv2d` on a zero-padded copy of
    grad_output; for stride 1 there is one phase, written straight into gx.

    Parameters
    ----------
    gx : (N, C, H, W) array, filled in place; its shape is the forward input's.
    go : (N, OC, OH, OW) array, the gradient of the forward output.
    w : (OC, C // groups, KH, KW) array, the forward weight.
    b : (C,) array or None.
    stride, padding, dilation : (h, w) int tuples of the forward conv; padding is (top, left).
    groups : int.
    """
    if gx.size == 0:
        return
    n, c, h, w_ = gx.shape
    (sh, sw), (pt, pl), (dh, dw) = stride, padding, dilation
    phase = (n, c, -(-h // sh), -(-w_ // sw))
    # Where the forward would run Winograd on the padded grad_output, that path stays.
    wino = (stride == (1, 1) and dilation == (1, 1) and w.shape[2:] == (3, 3) and groups == 1
            and gx.dtype == np.float32
            and winograd_applies((n, go.shape[1], h + 2, w_ + 2), gx.shape, (0, 0), gx.dtype))
    if go.shape[1] > 0 and not wino and rows_applies(go.shape, c, phase, groups):
        _backward_input_rows(gx, go, w, b, stride, padding, dilation)
        return
    for a in range(min(sh, h)):
        rows, r0, rstep = _phase_taps(a, w.shape[2], sh, pt, dh)
        for cc in range(min(sw, w_)):
            cols, c0, cstep = _phase_taps(cc, w.shape[3], sw, pl, dw)
            out = gx if sh == 1 and sw == 1 else np.empty(
                (n, c, len(range(a, h, sh)), len(range(cc, w_, sw))), gx.dtype)
            if not rows or not cols or go.shape[1] == 0:  # no tap reaches this phase
                out[...] = 0
                if b is not None:
                    out += b.reshape(1, -1, 1, 1)
            else:
                wt = np.empty((c, w.shape[0] // groups, len(rows), len(cols)), gx.dtype)
                _phase_weight(wt, w, groups, np.array(rows, np.int64), np.array(cols, np.int64))
                # grad_output rows r0 + u + t*rstep for output row u and tap t: padded (or
                # cropped) so that the correlation reads from row 0, with stride 1.
                hz = out.shape[2] + (len(rows) - 1) * rstep
                wz = out.shape[3] + (len(cols) - 1) * cstep
                if r0 == 0 and c0 == 0 and hz <= go.shape[2] and wz <= go.shape[3]:
                    z = go
                else:
                    z = np.empty((n, go.shape[1], hz, wz), gx.dtype)
                    _spread(z, go, 1, 1, -r0, -c0)
                conv2d(out, z, wt, b, None, (1, 1), (0, 0), (rstep, cstep), groups, ACT_NONE,
                       0.0)
            if out is not gx:
                gx[:, :, a::sh, cc::sw] = out


def _backward_input_rows(gx, go, w, b, stride, padding, dilation):
    """:func:`conv2d_backward_input` on the forward's row path (small maps, groups 1): each
    stride phase of gx is written in place from one NHWC copy of grad_output, with the phase's
    taps packed straight from ``w`` (flipped and transposed by :func:`rows_panels`)."""
    n, c, h, w_ = gx.shape
    (sh, sw), (pt, pl), (dh, dw) = stride, padding, dilation
    with rows_input(go) as zs:
        for a in range(min(sh, h)):
            rows, r0, rstep = _phase_taps(a, w.shape[2], sh, pt, dh)
            for cc in range(min(sw, w_)):
                cols, c0, cstep = _phase_taps(cc, w.shape[3], sw, pl, dw)
                out = gx[:, :, a::sh, cc::sw]
                if not rows or not cols:  # no tap reaches this phase
                    out[...] = 0
                    if b is not None:
                        out += b.reshape(1, -1, 1, 1)
                    continue
                # Phase position u reads grad_output row r0 + u + i*rstep for its i-th tap.
                roffs = tuple(r0 + i * rstep for i in range(len(rows)))
                coffs = tuple(c0 + j * cstep for j in range(len(cols)))
                with rows_panels(w, tuple(rows), tuple(cols), 1, gx.dtype) as wp:
                    rows_conv(out, zs, go.shape, wp, len(rows) * len(cols), (1, 1), roffs,
                              coffs, b, None, ACT_NONE, 0.0)


# ---- weight gradient ------------------------------------------------------------------------

@kernel
def _fill_taps(ws, x, rph, cph, sh, sw, pt, pl, hq, wq):
    """The weight gradient's input workspace: ``ws[((c*NRP + i)*NCP + j)*R + (n*hq + q)*wq + r]
    = x[n, c, q*sh + rph[i] - pt, r*sw + cph[j] - pl]``, zero outside x; ``R = N*hq*wq``."""
    n_, c_, h, w_ = x.shape
    nrp, ncp = rph.shape[0], cph.shape[0]
    plane = hq * wq
    blk = n_ * plane
    zero = ws.dtype.type(0)
    for t in prange(c_ * n_):
        c = t // n_
        n = t - c * n_
        for i in range(nrp):
            q0, q1 = _span(rph[i] - pt, sh, hq, h)
            for j in range(ncp):
                off = cph[j] - pl
                r0, r1 = _span(off, sw, wq, w_)
                base = ((c * nrp + i) * ncp + j) * blk + n * plane
                dst = ws[base:base + plane]
                for e in range(q0 * wq):
                    dst[e] = zero
                for q in range(q0, q1):
                    row = dst[q * wq:(q + 1) * wq]
                    xr = x[n, c, q * sh + rph[i] - pt]
                    for r in range(r0):
                        row[r] = zero
                    if sw == 1:
                        for r in range(r0, r1):
                            row[r] = xr[r + off]
                    else:
                        for r in range(r0, r1):
                            row[r] = xr[r * sw + off]
                    for r in range(r1, wq):
                        row[r] = zero
                for e in range(q1 * wq, plane):
                    dst[e] = zero


@kernel
def _fill_grad(gz, go, hq, wq, rp):
    """``gz[o*rp + (n*hq + q)*wq + r] = go[n, o, q, r]`` for q < OH, r < OW; zero elsewhere,
    including each row's tail from ``N*hq*wq`` to ``rp``."""
    n_, oc_, oh_, ow_ = go.shape
    plane = hq * wq
    zero = gz.dtype.type(0)
    for t in prange(oc_ * n_):
        o = t // n_
        n = t - o * n_
        base = o * rp + n * plane
        end = (o + 1) * rp if n == n_ - 1 else base + plane
        dst = gz[base:end]
        for e in range(end - base):
            dst[e] = zero
        for q in range(oh_):
            src = go[n, o, q]
            row = dst[q * wq:q * wq + ow_]
            for r in range(ow_):
                row[r] = src[r]


@helper
def _dot_tile(out, o0, k0, nro, nrk, a, a0, a1, a2, a3, a4, a5, b, b0, b1, b2, b3, npos):
    """``out[o0 + r, k0 + j] = sum_{p < npos} a[a_r + p] * b[b_j + p]`` for r < nro <= 6,
    j < nrk <= 4; npos is a multiple of the vector width. The 24 sums stay in vector registers
    (the unused ones are computed and dropped); per step 6 aligned loads of ``a`` and 4
    (unaligned) of ``b`` feed 24 FMAs."""
    L = simd.width(b)
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = c20 = c21 = c22 = c23 = \
        c30 = c31 = c32 = c33 = c40 = c41 = c42 = c43 = c50 = c51 = c52 = c53 = simd.splat(b, 0)
    for p in range(0, npos, L):
        x0 = simd.load(b, b0 + p)
        x1 = simd.load(b, b1 + p)
        x2 = simd.load(b, b2 + p)
        x3 = simd.load(b, b3 + p)
        g = simd.load(a, a0 + p)
        c00 = simd.fma(g, x0, c00)
        c01 = simd.fma(g, x1, c01)
        c02 = simd.fma(g, x2, c02)
        c03 = simd.fma(g, x3, c03)
        g = simd.load(a, a1 + p)
        c10 = simd.fma(g, x0, c10)
        c11 = simd.fma(g, x1, c11)
        c12 = simd.fma(g, x2, c12)
        c13 = simd.fma(g, x3, c13)
        g = simd.load(a, a2 + p)
        c20 = simd.fma(g, x0, c20)
        c21 = simd.fma(g, x1, c21)
        c22 = simd.fma(g, x2, c22)
        c23 = simd.fma(g, x3, c23)
        g = simd.load(a, a3 + p)
        c30 = simd.fma(g, x0, c30)
        c31 = simd.fma(g, x1, c31)
        c32 = simd.fma(g, x2, c32)
        c33 = simd.fma(g, x3, c33)
        g = simd.load(a, a4 + p)
        c40 = simd.fma(g, x0, c40)
        c41 = simd.fma(g, x1, c41)
        c42 = simd.fma(g, x2, c42)
        c43 = simd.fma(g, x3, c43)
        g = simd.load(a, a5 + p)
        c50 = simd.fma(g, x0, c50)
        c51 = simd.fma(g, x1, c51)
        c52 = simd.fma(g, x2, c52)
        c53 = simd.fma(g, x3, c53)
    if nro > 0:
        out[o0 + 0, k0 + 0] = simd.hsum(c00)
    if nro > 0 and nrk > 1:
        out[o0 + 0, k0 + 1] = simd.hsum(c01)
    if nro > 0 and nrk > 2:
        out[o0 + 0, k0 + 2] = simd.hsum(c02)
    if nro > 0 and nrk > 3:
        out[o0 + 0, k0 + 3] = simd.hsum(c03)
    if nro > 1:
        out[o0 + 1, k0 + 0] = simd.hsum(c10)
    if nro > 1 and nrk > 1:
        out[o0 + 1, k0 + 1] = simd.hsum(c11)
    if nro > 1 and nrk > 2:
        out[o0 + 1, k0 + 2] = simd.hsum(c12)
    if nro > 1 and nrk > 3:
        out[o0 + 1, k0 + 3] = simd.hsum(c13)
    if nro > 2:
        out[o0 + 2, k0 + 0] = simd.hsum(c20)
    if nro > 2 and nrk > 1:
        out[o0 + 2, k0 + 1] = simd.hsum(c21)
    if nro > 2 and nrk > 2:
        out[o0 + 2, k0 + 2] = simd.hsum(c22)
    if nro > 2 and nrk > 3:
        out[o0 + 2, k0 + 3] = simd.hsum(c23)
    if nro > 3:
        out[o0 + 3, k0 + 0] = simd.hsum(c30)
    if nro > 3 and nrk > 1:
        out[o0 + 3, k0 + 1] = simd.hsum(c31)
    if nro > 3 and nrk > 2:
        out[o0 + 3, k0 + 2] = simd.hsum(c32)
    if nro > 3 and nrk > 3:
        out[o0 + 3, k0 + 3] = simd.hsum(c33)
    if nro > 4:
        out[o0 + 4, k0 + 0] = simd.hsum(c40)
    if nro > 4 and nrk > 1:
        out[o0 + 4, k0 + 1] = simd.hsum(c41)
    if nro > 4 and nrk > 2:
        out[o0 + 4, k0 + 2] = simd.hsum(c42)
    if nro > 4 and nrk > 3:
        out[o0 + 4, k0 + 3] = simd.hsum(c43)
    if nro > 5:
        out[o0 + 5, k0 + 0] = simd.hsum(c50)
    if nro > 5 and nrk > 1:
        out[o0 + 5, k0 + 1] = simd.hsum(c51)
    if nro > 5 and nrk > 2:
        out[o0 + 5, k0 + 2] = simd.hsum(c52)
    if nro > 5 and nrk > 3:
        out[o0 + 5, k0 + 3] = simd.hsum(c53)


@kernel
def _grad_weight(gw, gz, ws, kofs, rp, gstride, groups):
    """``gw (OC, K)[o, k] = sum_p gz[o*rp + p] * ws[g*gstride + kofs[k] + p]`` over p < rp, g the
    group of o. A task owns MR channels x NR taps of one group; the last channel and tap are
    repeated to fill a partial block (their sums are computed and dropped). Taps are the fastest
    index, so a thread's consecutive tasks reuse the same rows of gz from cache."""
    oc_, k_ = gw.shape
    ocg = oc_ // groups
    nob = (ocg + MR - 1) // MR
    ntb = (k_ + NR - 1) // NR
    for t in prange(groups * nob * ntb):
        g = t // (nob * ntb)
        rem = t - g * nob * ntb
        ob = rem // ntb
        tb = rem - ob * ntb
        o0 = g * ocg + ob * MR
        olast = g * ocg + ocg - 1
        k0 = tb * NR
        base = g * gstride
        _dot_tile(gw, o0, k0, min(MR, ocg - ob * MR), min(NR, k_ - k0),
                  gz, o0 * rp, min(o0 + 1, olast) * rp, min(o0 + 2, olast) * rp,
                  min(o0 + 3, olast) * rp, min(o0 + 4, olast) * rp, min(o0 + 5, olast) * rp,
                  ws, base + kofs[k0], base + kofs[min(k0 + 1, k_ - 1)],
                  base + kofs[min(k0 + 2, k_ - 1)], base + kofs[min(k0 + 3, k_ - 1)], rp)


@kernel
def _fill_cols(ws, x, kh, kw, sh, sw, pt, pl, dh, dw, oh_, ow_, rp):
    """im2col rows of the weight gradient: ``ws[k*rp + (n*OH + oh)*OW + ow] = x[n, c, oh*sh - pt +
    i*dh, ow*sw - pl + j*dw]`` for tap ``k = (c*kh + i)*kw + j`` (zero outside x, and past
    ``N*OH*OW`` in each row)."""
    n_, c_, h, w_ = x.shape
    plane = oh_ * ow_
    zero = ws.dtype.type(0)
    for k in prange(c_ * kh * kw):
        c = k // (kh * kw)
        i = (k // kw) % kh
        j = k % kw
        row = ws[k * rp:(k + 1) * rp]
        q0, q1 = _span(i * dh - pt, sh, oh_, h)
        r0, r1 = _span(j * dw - pl, sw, ow_, w_)
        for n in range(n_):
            img = row[n * plane:(n + 1) * plane]
            for e in range(plane):
                img[e] = zero
            for q in range(q0, q1):
                xr = x[n, c, q * sh - pt + i * dh]
                dst = img[q * ow_:(q + 1) * ow_]
                off = j * dw - pl
                for r in range(r0, r1):
                    dst[r] = xr[r * sw + off]
        for e in range(n_ * plane, rp):
            row[e] = zero


@functools.lru_cache(maxsize=256)
def _weight_plan(n, c, oc, oh, ow, cg, kh, kw, sh, sw, dh, dw, lanes):
    """How to lay out a weight gradient's operands: ('grid', hq, wq, rph, cph, kofs, rp, size,
    total, group stride) for the stride-phase planes (module docstring), or ('cols', oh, ow, None,
    None, kofs, rp, size, total, group stride) for im2col rows, when the planes' halo (the
    positions off the OH x OW corner of each Hq x Wq image, computed and dropped by every
    channel) would cost more multiply-adds than writing the im2col rows costs."""
    qh, qw = (kh - 1) * dh // sh, (kw - 1) * dw // sw
    hq, wq = oh + qh, ow + qw
    useful = n * oh * ow
    blk = n * hq * wq
    # about 32 multiply-add lanes per cycle against about one im2col element written per cycle
    if oc * (blk - useful) > 32 * useful:
        rp = -(-useful // lanes) * lanes
        k_ = cg * kh * kw
        size = c * kh * kw * rp
        return ("cols", oh, ow, None, None, np.arange(k_, dtype=np.int64) * rp, rp, size, size,
                k_ * rp)
    rph = sorted({(i * dh) % sh for i in range(kh)})
    cph = sorted({(j * dw) % sw for j in range(kw)})
    rp = -(-blk // lanes) * lanes
    kofs = np.array([((ci * len(rph) + rph.index((i * dh) % sh)) * len(cph)
                      + cph.index((j * dw) % sw)) * blk + (i * dh // sh) * wq + (j * dw // sw)
                     for ci in range(cg) for i in range(kh) for j in range(kw)], np.int64)
    size = c * len(rph) * len(cph) * blk
    # Reads run up to rp positions past a tap's offset: the last plane's tap rows need a tail.
    tail = (rp - blk) + qh * wq + qw
    return ("grid", hq, wq, np.array(rph, np.int64), np.array(cph, np.int64), kofs, rp, size,
            size + tail, cg * len(rph) * len(cph) * blk)


def _aligned_empty(size, dtype, align=64):
    """An uninitialised 1-D array of ``size`` elements whose data starts on an ``align``-byte
    boundary."""
    dtype = np.dtype(dtype)
    buf = np.empty(size + align // dtype.itemsize, dtype)
    off = (-buf.ctypes.data % align) // dtype.itemsize
    return buf[off:off + size]


# Short reductions (few positions, many channels): an outer-product GEMM instead of dot products.
#
# With N*OH*OW = 32 (a 2x2 map at batch 8) every dot product of _dot_tile is two vectors long
# and ends in a horizontal sum. Instead ``gw (OC x K) = go (OC x P) . X^T (P x K)`` on the
# forward's microkernel: go packed in panels of MR channels (broadcast), the rows of im2col
# transposed (``xt[p, k]``, contiguous along the taps) as vectors, so a tile of MR channels x
# 2-3 vectors of taps is a P-step register-blocked reduction with no horizontal sums.

OUTER_MAX_P = 512  # largest N*OH*OW that takes the outer-product path (measured)


@kernel
def _fill_xt(xt, x, kh, kw, sh, sw, pt, pl, dh, dw, oh_, ow_, kst):
    """Transposed im2col: ``xt[p*kst + (c*kh + i)*kw + j] = x[n, c, oh*sh - pt + i*dh, ow*sw -
    pl + j*dw]`` (zero outside x) for p = (n*OH + oh)*OW + ow; row stride kst >= C*kh*kw."""
    n_, c_, h, w_ = x.shape
    k_ = c_ * kh * kw
    zero = xt.dtype.type(0)
    for p in prange(n_ * oh_ * ow_):
        n = p // (oh_ * ow_)
        s = p - n * oh_ * ow_
        oh = s // ow_
        ow = s - oh * ow_
        row = xt[p * kst:p * kst + k_]
        for c in range(c_):
            xc = x[n, c]
            for i in range(kh):
                ih = oh * sh - pt + i * dh
                dst = row[(c * kh + i) * kw:(c * kh + i + 1) * kw]
                if ih < 0 or ih >= h:
                    for j in range(kw):
                        dst[j] = zero
                    continue
                xr = xc[ih]
                for j in range(kw):
                    iw = ow * sw - pl + j * dw
                    dst[j] = xr[iw] if iw >= 0 and iw < w_ else zero


@kernel
def _pack_go(gp, go, groups, nbg):
    """``gp[((g*nbg + ob)*P + p)*MR + r] = go[n, g*OCg + ob*MR + r, s]`` for p = n*S + s (zero
    past the group's channels): the broadcast panels of :func:`_grad_weight_outer`."""
    n_, oc_, s_ = go.shape
    ocg = oc_ // groups
    npos = n_ * s_
    zero = gp.dtype.type(0)
    for blk in prange(groups * nbg):
        g = blk // nbg
        ob = blk - g * nbg
        dst = gp[blk * npos * GMR:(blk + 1) * npos * GMR]
        for r in range(GMR):
            o = ob * GMR + r
            if o < ocg:
                for n in range(n_):
                    src = go[n, g * ocg + o]
                    for q in range(s_):
                        dst[(n * s_ + q) * GMR + r] = src[q]
            else:
                for p in range(npos):
                    dst[p * GMR + r] = zero


@kernel
def _grad_weight_outer(gw2, gp, xt, kofs, groups, nbg):
    """``gw2 (OC, Kg)[o, k] = sum_p go[o, p] * xt[kofs[p] + g*Kg + k]``, g the group of o, p < P
    = len(kofs). A task owns one tile of 2-3 vectors of taps and sweeps every channel block of
    its group over it (the tile's columns of xt stay in L1/L2)."""
    oc_, kg = gw2.shape
    ocg = oc_ // groups
    lanes = simd.width(xt)
    nr = NVMAX * lanes
    npos = kofs.shape[0]
    n3, n2 = split_tiles(kg, lanes)
    nt = n3 + n2
    for t in prange(groups * nt):
        g = t // nt
        jt = t - g * nt
        k0, klen = tile_span(jt, n3, kg, lanes)
        tile = np.empty(GMR * nr, dtype=gw2.dtype)
        for ob in range(nbg):
            microkernel(tile, gp, (g * nbg + ob) * npos * GMR, xt, g * kg + k0, kofs, 0, npos,
                        klen, 0)
            o0 = g * ocg + ob * GMR
            for r in range(min(GMR, ocg - ob * GMR)):
                dst = gw2[o0 + r, k0:k0 + klen]
                src = tile[r * nr:r * nr + klen]
                for j in range(klen):
                    dst[j] = src[j]


@functools.lru_cache(maxsize=64)
def _outer_kofs(npos, kst):
    kofs = np.arange(npos, dtype=np.int64) * kst
    kofs.flags.writeable = False
    return kofs


def _row_stride(k_, lanes):
    """Row stride of xt: whole vectors, but not a multiple of 64 elements, which would put the
    rows a tile reads into a few of L1's sets."""
    kst = -(-k_ // lanes) * lanes
    return kst + lanes if kst % 64 == 0 else kst


def _backward_weight_outer(gw, go, x, stride, padding, dilation, groups):
    """:func:`conv2d_backward_weight` as the outer-product GEMM above (pooled scratch: the
    transposed im2col, P x C*KH*KW, and go's panels, OC x P)."""
    n, c = x.shape[0], x.shape[1]
    oc, cg, kh, kw = gw.shape
    oh, ow = go.shape[2], go.shape[3]
    (sh, sw), (pt, pl), (dh, dw) = stride, padding, dilation
    npos = n * oh * ow
    k_ = c * kh * kw
    nbg = -(-(oc // groups) // GMR)
    kst = _row_stride(k_, simd.lanes_of(gw.dtype))
    with POOL.buffer(npos * kst, gw.dtype) as xt, \
            POOL.buffer(groups * nbg * npos * GMR, gw.dtype) as gp:
        _fill_xt(xt, x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, kst)
        _pack_go(gp, go.reshape(n, oc, oh * ow), groups, nbg)
        _grad_weight_outer(gw.reshape(oc, cg * kh * kw), gp, xt, _outer_kofs(npos, kst), groups,
                           nbg)


def conv2d_backward_weight(gw, go, x, stride, padding, dilation, groups):
    """Gradient of conv2d w.r.t. its weight, summed over the batch.

    ``gw[o, c, kh, kw] = sum go[n, o, oh, ow] * x[n, g*Cg + c, oh*sh - pt + kh*dh, ow*sw - pl +
    kw*dw]`` (zero outside x), g the group of output channel o.

    Parameters
    ----------
    gw : (OC, C // groups, KH, KW) array, filled in place.
    go : (N, OC, OH, OW) array, the gradient of the forward output.
    x : (N, C, H, W) array, the forward input.
    stride, padding, dilation : (h, w) int tuples of the forward conv; padding is (top, left).
    groups : int.
    """
    if gw.size == 0:
        return
    n, c = x.shape[0], x.shape[1]
    oc, cg, kh, kw = gw.shape
    if n == 0:
        gw[...] = 0
        return
    if n * go.shape[2] * go.shape[3] <= OUTER_MAX_P and simd.LANES > 1:
        _backward_weight_outer(gw, go, x, stride, padding, dilation, groups)
        return
    (sh, sw), (pt, pl), (dh, dw) = stride, padding, dilation
    layout, hq, wq, rph, cph, kofs, rp, size, total, gstride = _weight_plan(
        n, c, oc, go.shape[2], go.shape[3], cg, kh, kw, sh, sw, dh, dw,
        simd.lanes_of(gw.dtype))
    ws = _aligned_empty(total, gw.dtype)
    if layout == "cols":
        _fill_cols(ws, x, kh, kw, sh, sw, pt, pl, dh, dw, hq, wq, rp)
    else:
        ws[size:] = 0
        _fill_taps(ws, x, rph, cph, sh, sw, pt, pl, hq, wq)
    gz = _aligned_empty(oc * rp, gw.dtype)  # rows start on cache lines (rp is whole vectors)
    _fill_grad(gz, go, hq, wq, rp)
    _grad_weight(gw.reshape(oc, cg * kh * kw), gz, ws, kofs, rp, gstride, groups)


@kernel
def _grad_bias(gb, go):
    """gb (OC,) = go (N, OC, S) summed over N and S; a task owns one channel."""
    n_, oc_, s_ = go.shape
    for o in prange(oc_):
        acc = gb.dtype.type(0)
        for n in range(n_):
            row = go[n, o]
            for i in range(s_):
                acc += row[i]
        gb[o] = acc


def conv2d_backward_bias(gb, go):
    """Gradient of conv2d w.r.t. its bias: ``gb (OC,) = go (N, OC, OH, OW)`` summed over
    everything but the channel dim."""
    if gb.size == 0:
        return
    n, oc = go.shape[0], go.shape[1]
    _grad_bias(gb, go.reshape(n, oc, go.shape[2] * go.shape[3]))
