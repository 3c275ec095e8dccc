"""Recurrent kernels: one layer and direction of an Elman RNN (tanh / relu), LSTM or GRU over a
whole (T, N, I) sequence, forward and backward through time.

Work is split the way the recurrence allows:

- the input projection of every time step is one GEMM, ``(T*N, I) @ W_ih.T``, on the SIMD
  microkernel of :mod:`numbaconv.cpu.gemm`;
- each step is one parallel region (a ``prange`` inside the serial loop over time, so no Python
  call per step) over tasks of (block of hidden units x panel of MR batch rows). A task runs the
  recurrent GEMM for all the gates of its units and then their elementwise update, so a step
  needs no second pass. The state h lives in the packed-panel layout that the microkernel reads
  (``pack``: MR rows per panel, interleaved), double-buffered between steps. Panels of one or
  two batch rows (batch 1) take a one-row kernel instead of the MR-row microkernel; the gate
  math runs in SIMD vectors for float32 (vecmath's exp and tanh);
- the weight gradients are, after the loop, the GEMMs of :func:`numbaconv.cpu.dense.linear_backward`
  over all T*N rows at once.

Gate columns are permuted so that a task's gates are contiguous: hidden units are grouped in
blocks of ``jb`` units (:func:`block_units`) and block b's columns are its units' gate 0, then
gate 1, ... (``perm`` maps a permuted column to PyTorch's row ``g * H + j``). Packed weights and
the permutation are cached per tracked weight array (numbaconv._weights).

Variable lengths: item n of the batch has ``lengths[n]`` valid steps; at steps t >= lengths[n]
its state is carried unchanged and its output is zero, which is PyTorch's packed-sequence
result for both directions (the reverse direction starts at t = lengths[n] - 1 from h0).
"""

import collections
import threading

import numpy as np
from numba import prange, types
from numba.extending import overload

from numbaconv import _weights
from numbaconv.cpu import simd, vecmath
from numbaconv.cpu._common import helper, kernel, sigmoid
from numbaconv.cpu.dense import _pack_strips, _panel_gemm, linear_backward
from numbaconv.cpu.gemm import MR, NVMAX, microkernel, pack, split_tiles, tile_span
from numbaconv.cpu.vecmath import div, select

# Modes (numbaconv.functional passes these codes).
RNN_TANH = 0
RNN_RELU = 1
LSTM = 2
GRU = 3
GATES = (1, 1, 4, 3)  # gate rows per hidden unit in weight_ih / weight_hh
EXTRA = (0, 0, 1, 1)  # per-unit values kept besides the gates: LSTM's c_t, GRU's W_hn h + b_hn


def workspace_size(mode, t, n, h):
    """Elements of the workspace ``rnn_forward`` fills and ``rnn_backward`` reads."""
    return t * n * (GATES[mode] + EXTRA[mode]) * h


def block_units(mode, lanes):
    """Hidden units per forward task block: its G gates fill one microkernel tile."""
    return max(1, NVMAX * lanes // GATES[mode])


def gate_perm(mode, h, jb):
    """perm (G*H,): permuted column c holds PyTorch's gate row perm[c] = g * H + j."""
    g_ = GATES[mode]
    cols = []
    for b0 in range(0, h, jb):
        units = np.arange(b0, min(b0 + jb, h))
        for g in range(g_):
            cols.append(g * h + units)
    return np.concatenate(cols) if cols else np.zeros(0, np.int64)


@helper
def _cols(j, h, gates, jb):
    """(column of gate 0, distance between gates) of hidden unit j in the permuted order (see
    :func:`gate_perm`): gate g sits at ``base + g * step``."""
    b0 = (j // jb) * jb
    return b0 * gates + (j - b0), min(jb, h - b0)


# ---- weight packing (cached) -----------------------------------------------------------------

@kernel
def _pack_blocks(wsf, wp, h, gates, jb):
    """Forward W_hh strips: block b's strip (H, gates*jb) at ``wsf[b*H*nrb:]``, row k holding
    ``wp[b*gates*jb + c, k]`` (wp = W_hh with permuted rows) for the block's columns c, zero
    past them."""
    nrb = gates * jb
    nblk = (h + jb - 1) // jb
    zero = wsf.dtype.type(0)
    for b in prange(nblk):
        ncols = gates * min(jb, h - b * jb)
        c0 = b * nrb
        for k in range(h):
            dst = wsf[(b * h + k) * nrb:(b * h + k + 1) * nrb]
            for c in range(ncols):
                dst[c] = wp[c0 + c, k]
            for c in range(ncols, nrb):
                dst[c] = zero


def _strips(b):
    """``b`` (KR, C) row-major as :func:`numbaconv.cpu.dense._pack_strips` column strips, and
    the row offsets for the microkernel."""
    kr, c = b.shape
    lanes = simd.lanes_of(b.dtype)
    nr = NVMAX * lanes
    n3, n2 = split_tiles.py_func(c, lanes)
    bp = np.empty(max(1, (n3 + n2) * kr * nr), b.dtype)
    if b.size:
        _pack_strips(bp, b)
    return bp, np.arange(kr, dtype=np.int64) * nr


class _Packed:
    """The layouts of one layer's weights that the kernels read."""

    def __init__(self, mode, w_ih, w_hh, b_ih, b_hh):
        g_, h = GATES[mode], w_hh.shape[1]
        dtype = w_hh.dtype
        lanes = simd.lanes_of(dtype)
        self.jb = block_units(mode, lanes)
        self.perm = gate_perm(mode, h, self.jb)
        perm = self.perm
        self.w_ih = np.ascontiguousarray(w_ih[perm])  # (GH, I), permuted rows
        self.w_hh = np.ascontiguousarray(w_hh[perm])  # (GH, H)
        # Input projection: strips of W_ih.T; both biases folded in except GRU's b_hn, which
        # sits inside r * (W_hn h + b_hn).
        self.ih_strips, self.ih_kofs = _strips(np.ascontiguousarray(self.w_ih.T))
        bias = b_ih.astype(dtype, copy=True)
        if mode == GRU:
            bias[:2 * h] += b_hh[:2 * h]
            self.bhn = np.ascontiguousarray(b_hh[2 * h:])
        else:
            bias += b_hh
            self.bhn = np.zeros(h, dtype)
        self.bias = np.ascontiguousarray(bias[perm])
        nrb = g_ * self.jb
        nblk = (h + self.jb - 1) // self.jb
        self.fwd_strips = np.zeros(max(1, nblk * h * nrb), dtype)
        if h:
            _pack_blocks(self.fwd_strips, self.w_hh, h, g_, self.jb)
        self.fwd_kofs = np.arange(h, dtype=np.int64) * nrb
        # Backward recurrence dh = dG @ W_hh: strips of the permuted W_hh over H columns.
        self.bwd_strips, self.bwd_kofs = _strips(self.w_hh)


_CACHE = collections.OrderedDict()
_CACHE_MAX = 32
_LOCK = threading.Lock()


def _key(a):
    return (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str, _weights.version(a))


def _packed(mode, w_ih, w_hh, b_ih, b_hh):
    """:class:`_Packed` for these weights, cached when every array is tracked (a layer's)."""
    keys = [_key(a) for a in (w_ih, w_hh, b_ih, b_hh)]
    if any(k[-1] is None for k in keys):
        return _Packed(mode, w_ih, w_hh, b_ih, b_hh)
    key = (mode, simd.LANES, tuple(keys))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    packed = _Packed(mode, w_ih, w_hh, b_ih, b_hh)
    with _LOCK:
        _CACHE[key] = packed
        while len(_CACHE) > _CACHE_MAX:
            _CACHE.popitem(last=False)
    return packed


# ---- forward ---------------------------------------------------------------------------------

GEMV_ROWS = 2  # panels with at most this many valid rows use the one-row kernel


@helper
def _gemv_row(dst, ap, aoff, r, src, sbase, kofs, k1, nvalid):
    """``dst[j] = sum_k ap[aoff + k*MR + r] * src[sbase + kofs[k] + j]`` for j < nvalid <= NVMAX
    vectors: one row of a panel, so a batch of one does not pay for MR rows. Two interleaved
    sets of accumulators hide the fused multiply-add latency."""
    L = simd.width(src)
    n0 = min(nvalid, L)
    n1 = min(max(nvalid - L, 0), L)
    n2 = min(max(nvalid - 2 * L, 0), L)
    c0 = c1 = c2 = d0 = d1 = d2 = simd.splat(src, 0)
    k = 0
    while k + 1 < k1:
        o = sbase + kofs[k]
        w = simd.load1(ap, aoff + k * MR + r)
        c0 = simd.fma(w, simd.load_n(src, o, n0), c0)
        c1 = simd.fma(w, simd.load_n(src, o + L, n1), c1)
        c2 = simd.fma(w, simd.load_n(src, o + 2 * L, n2), c2)
        o = sbase + kofs[k + 1]
        w = simd.load1(ap, aoff + (k + 1) * MR + r)
        d0 = simd.fma(w, simd.load_n(src, o, n0), d0)
        d1 = simd.fma(w, simd.load_n(src, o + L, n1), d1)
        d2 = simd.fma(w, simd.load_n(src, o + 2 * L, n2), d2)
        k += 2
    if k < k1:
        o = sbase + kofs[k]
        w = simd.load1(ap, aoff + k * MR + r)
        c0 = simd.fma(w, simd.load_n(src, o, n0), c0)
        c1 = simd.fma(w, simd.load_n(src, o + L, n1), c1)
        c2 = simd.fma(w, simd.load_n(src, o + 2 * L, n2), c2)
    simd.store_n(dst, 0, simd.add(c0, d0), n0)
    if n1 > 0:
        simd.store_n(dst, L, simd.add(c1, d1), n1)
    if n2 > 0:
        simd.store_n(dst, 2 * L, simd.add(c2, d2), n2)


@helper
def _gate_tile(gt, state, aoff, rows, wsf, sbase, kofs, h, ncols, nrb):
    """gt (MR, nrb) = the recurrent GEMM of one task: ``rows`` valid state rows x its ncols gate
    columns, in tiles of at most NVMAX vectors."""
    nr = NVMAX * simd.width(wsf)
    if rows > GEMV_ROWS and nrb == nr and ncols <= nr:  # one tile, straight into gt
        microkernel(gt, state, aoff, wsf, sbase, kofs, 0, h, ncols, 0)
        return
    if rows <= GEMV_ROWS:
        for r in range(rows):
            for c0 in range(0, ncols, nr):
                w = min(nr, ncols - c0)
                _gemv_row(gt[r * nrb + c0:r * nrb + c0 + w], state, aoff, r, wsf, sbase + c0,
                          kofs, h, w)
        return
    tile = np.empty(MR * nr, dtype=gt.dtype)
    for c0 in range(0, ncols, nr):
        w = min(nr, ncols - c0)
        microkernel(tile, state, aoff, wsf, sbase + c0, kofs, 0, h, w, 0)
        for r in range(MR):
            dst = gt[r * nrb + c0:r * nrb + c0 + w]
            src = tile[r * nr:r * nr + w]
            for c in range(w):
                dst[c] = src[c]


# ---- one batch row of a task's units: the gate math (float32 in SIMD vectors) ------------------
# xr: the row's G*lb gate pre-activations (input side, overwritten with the activated gates);
# g: the recurrent GEMM's G*lb values; hrow: h_t of the lb units (in: h_(t-1) for GRU);
# cr: LSTM's c (in and out); er: LSTM's c_t / GRU's W_hn h + b_hn; bhn: GRU's b_hn segment.

_F0 = np.float32(0)
_F1 = np.float32(1)


def _vsigmoid(v):
    e = vecmath.exp(-abs(v))
    return div(select(v >= _F0, _F1, e), _F1 + e)


_vsigmoid_jit = helper(_vsigmoid)


def _cell_row(mode, xr, g, hrow, cr, er, bhn, lb, save):
    """The gate math of one row (see the block comment above); the activated gates and er are
    stored only when ``save`` (a backward follows)."""


@overload(_cell_row, inline="always")
def _cell_row_overload(mode, xr, g, hrow, cr, er, bhn, lb, save):
    if xr.dtype == types.float32:
        return _cell_row_vec
    return _cell_row_scalar


def _cell_row_vec(mode, xr, g, hrow, cr, er, bhn, lb, save):
    L = simd.width(xr)
    for v0 in range(0, lb, L):
        nv = min(L, lb - v0)
        if mode == LSTM:
            gi = _vsigmoid_jit(simd.load_n(xr, v0, nv) + simd.load_n(g, v0, nv))
            gf = _vsigmoid_jit(simd.load_n(xr, lb + v0, nv) + simd.load_n(g, lb + v0, nv))
            gg = vecmath.tanh(simd.load_n(xr, 2 * lb + v0, nv) + simd.load_n(g, 2 * lb + v0, nv))
            go = _vsigmoid_jit(simd.load_n(xr, 3 * lb + v0, nv) + simd.load_n(g, 3 * lb + v0, nv))
            cn = gf * simd.load_n(cr, v0, nv) + gi * gg
            simd.store_n(hrow, v0, go * vecmath.tanh(cn), nv)
            simd.store_n(cr, v0, cn, nv)
            if save:
                simd.store_n(xr, v0, gi, nv)
                simd.store_n(xr, lb + v0, gf, nv)
                simd.store_n(xr, 2 * lb + v0, gg, nv)
                simd.store_n(xr, 3 * lb + v0, go, nv)
                simd.store_n(er, v0, cn, nv)
        elif mode == GRU:
            gr = _vsigmoid_jit(simd.load_n(xr, v0, nv) + simd.load_n(g, v0, nv))
            gz = _vsigmoid_jit(simd.load_n(xr, lb + v0, nv) + simd.load_n(g, lb + v0, nv))
            hh = simd.load_n(g, 2 * lb + v0, nv) + simd.load_n(bhn, v0, nv)
            gn = vecmath.tanh(simd.load_n(xr, 2 * lb + v0, nv) + gr * hh)
            hp = simd.load_n(hrow, v0, nv)
            simd.store_n(hrow, v0, (_F1 - gz) * gn + gz * hp, nv)
            if save:
                simd.store_n(xr, v0, gr, nv)
                simd.store_n(xr, lb + v0, gz, nv)
                simd.store_n(xr, 2 * lb + v0, gn, nv)
                simd.store_n(er, v0, hh, nv)
        else:
            v = simd.load_n(xr, v0, nv) + simd.load_n(g, v0, nv)
            if mode == RNN_TANH:
                v = vecmath.tanh(v)
            else:
                v = select(v > _F0, v, _F0)  # NaN gives 0, as the scalar form
            if save:
                simd.store_n(xr, v0, v, nv)
            simd.store_n(hrow, v0, v, nv)


def _cell_row_scalar(mode, xr, g, hrow, cr, er, bhn, lb, save):
    zero = xr.dtype.type(0)
    one = xr.dtype.type(1)
    for jj in range(lb):
        if mode == LSTM:
            gi = sigmoid(xr[jj] + g[jj])
            gf = sigmoid(xr[lb + jj] + g[lb + jj])
            gg = vecmath.tanh(xr[2 * lb + jj] + g[2 * lb + jj])
            go = sigmoid(xr[3 * lb + jj] + g[3 * lb + jj])
            cn = gf * cr[jj] + gi * gg
            hrow[jj] = go * vecmath.tanh(cn)
            cr[jj] = cn
            if save:
                xr[jj] = gi
                xr[lb + jj] = gf
                xr[2 * lb + jj] = gg
                xr[3 * lb + jj] = go
                er[jj] = cn
        elif mode == GRU:
            gr = sigmoid(xr[jj] + g[jj])
            gz = sigmoid(xr[lb + jj] + g[lb + jj])
            hh = g[2 * lb + jj] + bhn[jj]
            gn = vecmath.tanh(xr[2 * lb + jj] + gr * hh)
            hrow[jj] = (one - gz) * gn + gz * hrow[jj]
            if save:
                xr[jj] = gr
                xr[lb + jj] = gz
                xr[2 * lb + jj] = gn
                er[jj] = hh
        else:
            v = xr[jj] + g[jj]
            if mode == RNN_TANH:
                v = vecmath.tanh(v)
            else:
                v = v if v > zero else zero  # NaN gives 0
            if save:
                xr[jj] = v
            hrow[jj] = v


@kernel
def _forward_steps(mode, xw, ext, out, hp, c, wsf, kofs, bhn, lens, reverse, jb, save):
    """All T steps of one layer and direction.

    xw (T*N, GH): in, the input projections (biases folded in) in permuted columns; out, the
    activated gates (RNN: h_t). ext (T*N, H): LSTM's c_t, GRU's W_hn h + b_hn. out (T, N, H).
    hp (2, P) panel states, hp[0] holding h0 (``pack`` layout, zero padding rows). c (N, H):
    LSTM's cell state, in and out. wsf, kofs: :func:`_pack_blocks` strips. bhn (H,): GRU's b_hn.
    lens (N,) valid steps per item. The final state is left in hp[T % 2]. Without ``save``
    the gates and ext are not written back (inference).
    """
    t_, n_, h_ = out.shape
    gates = 4 if mode == LSTM else 3 if mode == GRU else 1
    nrb = gates * jb
    npan = (n_ + MR - 1) // MR
    nblk = (h_ + jb - 1) // jb
    zero = out.dtype.type(0)
    # Flat views: the row helpers take 1-D contiguous segments.
    ghw = xw.shape[1]
    eh = ext.shape[1]
    xwf = xw.reshape(xw.size)
    extf = ext.reshape(ext.size)
    outf = out.reshape(out.size)
    cf = c.reshape(c.size)
    # One scratch tile per task, allocated once (not per task and step).
    scratch = np.empty((nblk * npan, max(MR * nrb, MR * NVMAX * simd.width(wsf))), out.dtype)
    for s in range(t_):
        t = t_ - 1 - s if reverse else s
        src = hp[s % 2]
        dst = hp[(s + 1) % 2]
        for task in prange(nblk * npan):
            b = task // npan
            nb = task - b * npan
            j0 = b * jb
            lb = min(jb, h_ - j0)
            col0 = j0 * gates
            gt = scratch[task]
            _gate_tile(gt, src, nb * h_ * MR, min(MR, n_ - nb * MR), wsf, b * h_ * nrb, kofs, h_,
                       gates * lb, nrb)
            for r in range(min(MR, n_ - nb * MR)):
                n = nb * MR + r
                row = t * n_ + n
                xr = xw[row, col0:col0 + gates * lb]
                g = gt[r * nrb:r * nrb + gates * lb]
                hrow = out[t, n, j0:j0 + lb]
                if t >= lens[n]:  # past this item's end: state carried, output zero
                    for jj in range(lb):
                        p = (nb * h_ + j0 + jj) * MR + r
                        dst[p] = src[p]
                        hrow[jj] = zero
                    if not save:
                        continue
                    for q in range(gates * lb):
                        xr[q] = zero
                    if mode == LSTM or mode == GRU:
                        er = ext[row, j0:j0 + lb]
                        for jj in range(lb):
                            er[jj] = zero
                    continue
                if mode == GRU:  # h_(t-1) into the output row, where the gate math reads it
                    for jj in range(lb):
                        hrow[jj] = src[(nb * h_ + j0 + jj) * MR + r]
                _cell_row(mode, xwf[row * ghw + col0:row * ghw + col0 + gates * lb], g,
                          outf[row * h_ + j0:row * h_ + j0 + lb], cf[n * h_ + j0:n * h_ + j0 + lb],
                          extf[row * eh + j0:row * eh + j0 + lb] if eh else extf[0:0],
                          bhn[j0:j0 + lb], lb, save)
                for jj in range(lb):
                    dst[(nb * h_ + j0 + jj) * MR + r] = hrow[jj]


@kernel
def _unpack_state(hn, panel):
    """hn (N, H) = the state rows of ``panel`` (``pack`` layout)."""
    n_, h_ = hn.shape
    for n in prange(n_):
        nb = n // MR
        r = n - nb * MR
        for j in range(h_):
            hn[n, j] = panel[(nb * h_ + j) * MR + r]


def _views(mode, ws, t, n, h):
    """The workspace's gates (T*N, G*H) and extra (T*N, E*H) arrays."""
    gh = GATES[mode] * h
    gates = ws[:t * n * gh].reshape((t * n, gh))
    ext = ws[t * n * gh:].reshape((t * n, EXTRA[mode] * h))
    return gates, ext


def rnn_forward(mode, out, h_n, c_n, ws, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    """One layer and direction of a recurrent network over a sequence.

    Parameters
    ----------
    mode : RNN_TANH, RNN_RELU, LSTM or GRU.
    out : (T, N, H) array, filled with h_t (zero at steps past an item's length).
    h_n : (N, H) array, filled with the final state; c_n (N, H) LSTM's final cell state or None.
    ws : 1-D array of :func:`workspace_size` elements, filled with what backward reads, or None
        when no backward follows.
    x : (T, N, I); h0 (N, H); c0 (N, H) for LSTM, else None.
    w_ih : (G*H, I), w_hh (G*H, H), b_ih and b_hh (G*H,): PyTorch's gate order and layout.
    lengths : int64 (N,), valid steps per item, each in [0, T].
    reverse : bool, run from the last step to the first.
    """
    t_, n_, h_ = out.shape
    i_ = x.shape[2]
    dtype = out.dtype
    pk = _packed(mode, w_ih, w_hh, b_ih, b_hh)
    save = ws is not None
    if not save:  # the projections still need a home; nothing else is kept
        ws = np.empty(t_ * n_ * GATES[mode] * h_, dtype)
        xw, ext = ws.reshape((t_ * n_, GATES[mode] * h_)), np.empty((0, 0), dtype)
    else:
        xw, ext = _views(mode, ws, t_, n_, h_)
    rows = t_ * n_
    if rows:
        if i_:
            ap = np.empty(((rows + MR - 1) // MR) * MR * i_, dtype)
            pack(ap, x.reshape((rows, i_)), 1, (rows + MR - 1) // MR)
            _panel_gemm(xw, ap, pk.ih_strips, pk.ih_kofs, pk.bias)
        else:
            xw[...] = pk.bias
    npan = (n_ + MR - 1) // MR
    hp = np.zeros((2, max(1, npan * h_ * MR)), dtype)
    if h_ and n_:
        pack(hp[0], h0, 1, npan)
    c = np.ascontiguousarray(c0) if mode == LSTM else np.zeros((n_, h_), dtype)
    if mode == LSTM:
        c = c.copy()
    if rows and h_:
        _forward_steps(mode, xw, ext, out, hp, c, pk.fwd_strips, pk.fwd_kofs, pk.bhn, lengths,
                       bool(reverse), pk.jb, save)
    if n_ and h_:
        _unpack_state(h_n, hp[t_ % 2])
    if c_n is not None:
        c_n[...] = c


# ---- backward --------------------------------------------------------------------------------

@kernel
def _gather_prev(dst, seq, init, lens, reverse):
    """dst (T*N, H): the state before step t of item n: seq (T*N, H) at the previous step of
    the direction, or init (N, H) at the first valid step and at steps past the item's end."""
    rows, h_ = dst.shape
    n_ = init.shape[0]
    for row in prange(rows):
        t = row // n_
        n = row - t * n_
        p = -1
        if t < lens[n]:
            if reverse:
                if t + 1 < lens[n]:
                    p = (t + 1) * n_ + n
            elif t >= 1:
                p = (t - 1) * n_ + n
        d = dst[row]
        s = seq[p] if p >= 0 else init[n]
        for j in range(h_):
            d[j] = s[j]


# ---- backward gate math of one batch row over a run of units of one forward block ---------------
# dgs / dghs: the row's gate-gradient slots (input / hidden side; the same array but for GRU),
# gate q of run unit v at q * step + v; gws: the activated gates, same layout; es: ext (c_t /
# W_hn h + b_hn); hps, cps: h_(t-1), c_(t-1); gos: the output's gradient; dhs: in, the
# gradient reaching h_t from later steps, out, the part of h_(t-1)'s that skips W_hh; dcs:
# LSTM's dc, in and out. All 1-D contiguous segments.


def _bwd_seg(mode, dgs, dghs, gws, step, es, hps, cps, gos, dhs, dcs, seg):
    """Backward gate math of one run (see the block comment above)."""


@overload(_bwd_seg, inline="always")
def _bwd_seg_overload(mode, dgs, dghs, gws, step, es, hps, cps, gos, dhs, dcs, seg):
    if dgs.dtype == types.float32:
        return _bwd_seg_vec
    return _bwd_seg_scalar


def _bwd_seg_vec(mode, dgs, dghs, gws, step, es, hps, cps, gos, dhs, dcs, seg):
    L = simd.width(dgs)
    for v0 in range(0, seg, L):
        nv = min(L, seg - v0)
        dh = simd.load_n(dhs, v0, nv) + simd.load_n(gos, v0, nv)
        if mode == LSTM:
            gi = simd.load_n(gws, v0, nv)
            gf = simd.load_n(gws, step + v0, nv)
            gg = simd.load_n(gws, 2 * step + v0, nv)
            go = simd.load_n(gws, 3 * step + v0, nv)
            tc = vecmath.tanh(simd.load_n(es, v0, nv))
            dct = simd.load_n(dcs, v0, nv) + dh * go * (_F1 - tc * tc)
            simd.store_n(dgs, v0, dct * gg * gi * (_F1 - gi), nv)
            simd.store_n(dgs, step + v0, dct * simd.load_n(cps, v0, nv) * gf * (_F1 - gf), nv)
            simd.store_n(dgs, 2 * step + v0, dct * gi * (_F1 - gg * gg), nv)
            simd.store_n(dgs, 3 * step + v0, dh * tc * go * (_F1 - go), nv)
            simd.store_n(dcs, v0, dct * gf, nv)
            simd.store_n(dhs, v0, simd.splat(dhs, 0.0), nv)
        elif mode == GRU:
            gr = simd.load_n(gws, v0, nv)
            gz = simd.load_n(gws, step + v0, nv)
            gn = simd.load_n(gws, 2 * step + v0, nv)
            d_npre = dh * (_F1 - gz) * (_F1 - gn * gn)
            d_z = dh * (simd.load_n(hps, v0, nv) - gn) * gz * (_F1 - gz)
            d_r = d_npre * simd.load_n(es, v0, nv) * gr * (_F1 - gr)
            simd.store_n(dgs, v0, d_r, nv)
            simd.store_n(dgs, step + v0, d_z, nv)
            simd.store_n(dgs, 2 * step + v0, d_npre, nv)
            simd.store_n(dghs, v0, d_r, nv)
            simd.store_n(dghs, step + v0, d_z, nv)
            simd.store_n(dghs, 2 * step + v0, d_npre * gr, nv)
            simd.store_n(dhs, v0, dh * gz, nv)
        else:
            hv = simd.load_n(gws, v0, nv)
            if mode == RNN_TANH:
                simd.store_n(dgs, v0, dh * (_F1 - hv * hv), nv)
            else:
                simd.store_n(dgs, v0, select(hv > _F0, dh, _F0), nv)
            simd.store_n(dhs, v0, simd.splat(dhs, 0.0), nv)


def _bwd_seg_scalar(mode, dgs, dghs, gws, step, es, hps, cps, gos, dhs, dcs, seg):
    zero = dgs.dtype.type(0)
    one = dgs.dtype.type(1)
    for v in range(seg):
        dh = dhs[v] + gos[v]
        direct = zero
        if mode == LSTM:
            gi = gws[v]
            gf = gws[step + v]
            gg = gws[2 * step + v]
            go = gws[3 * step + v]
            tc = vecmath.tanh(es[v])
            dct = dcs[v] + dh * go * (one - tc * tc)
            dgs[v] = dct * gg * gi * (one - gi)
            dgs[step + v] = dct * cps[v] * gf * (one - gf)
            dgs[2 * step + v] = dct * gi * (one - gg * gg)
            dgs[3 * step + v] = dh * tc * go * (one - go)
            dcs[v] = dct * gf
        elif mode == GRU:
            gr = gws[v]
            gz = gws[step + v]
            gn = gws[2 * step + v]
            d_npre = dh * (one - gz) * (one - gn * gn)
            d_z = dh * (hps[v] - gn) * gz * (one - gz)
            d_r = d_npre * es[v] * gr * (one - gr)
            dgs[v] = d_r
            dgs[step + v] = d_z
            dgs[2 * step + v] = d_npre
            dghs[v] = d_r
            dghs[step + v] = d_z
            dghs[2 * step + v] = d_npre * gr
            direct = dh * gz
        else:
            hv = gws[v]
            if mode == RNN_TANH:
                dgs[v] = dh * (one - hv * hv)
            else:
                dgs[v] = dh if hv > zero else zero
        dhs[v] = direct


@kernel
def _backward_steps(mode, dg, dgh, dgp, dhc, dc, gout, gates_ws, ext, hprev, cprev, bstrips,
                     bkofs, lens, reverse, jb, gh0):
    """All T steps of backward through time, last step first.

    dg (T*N, GH): filled with the gradients of the gates' pre-activations (input side), dgh the
    same for the hidden side (differs from dg only for GRU's n gate; may be dg itself). dgp (2,
    P) zeroed panel buffers of one step's dgh (``pack`` layout over GH columns). dhc (N, H): in,
    the gradient of h_n; used for the non-GEMM part of dh (carried states, GRU's z * dh). dc
    (N, H): in, the gradient of c_n; out, of c0 (LSTM). gout (T, N, H) the output's gradient.
    gates_ws, ext: the forward's workspace. hprev, cprev (T*N, H): the states before each step
    (:func:`_gather_prev`). bstrips, bkofs: strips of the permuted W_hh over H columns.
    gh0 (N, H): filled with the gradient of h0.
    """
    t_, n_, h_ = gout.shape
    gates = 4 if mode == LSTM else 3 if mode == GRU else 1
    ghw = gates * h_
    lanes = simd.width(bstrips)
    nr = NVMAX * lanes
    n3, n2 = split_tiles(h_, lanes)
    ntiles = n3 + n2
    npan = (n_ + MR - 1) // MR
    zero = gout.dtype.type(0)
    scratch = np.zeros((ntiles * npan, MR * nr), gout.dtype)  # per task, zero before any GEMM
    # Flat views: the row helper takes 1-D contiguous segments.
    eh = ext.shape[1]
    dgf = dg.reshape(dg.size)
    dghf = dgh.reshape(dgh.size)
    gwsf = gates_ws.reshape(gates_ws.size)
    extf = ext.reshape(ext.size)
    hpf = hprev.reshape(hprev.size)
    cpf = cprev.reshape(cprev.size)
    goutf = gout.reshape(gout.size)
    dhcf = dhc.reshape(dhc.size)
    dcf = dc.reshape(dc.size)
    # Iteration s handles step s (time t) and, first, the recurrent GEMM of step s + 1's
    # hidden-side gate gradients (none after the last step); s = -1 only finishes h0's gradient.
    for s in range(t_ - 1, -2, -1):
        rd = dgp[(s + 3) % 2]  # step s + 1's gate gradients, panel layout
        wr = dgp[(s + 2) % 2]  # step s's, written here
        t = -1
        if s >= 0:
            t = t_ - 1 - s if reverse else s
        for task in prange(ntiles * npan):
            jt = task // npan
            nb = task - jt * npan
            p0, plen = tile_span(jt, n3, h_, lanes)
            tile = scratch[task]
            rows = min(MR, n_ - nb * MR)
            if s < t_ - 1 and rows <= GEMV_ROWS:
                for r in range(rows):
                    _gemv_row(tile[r * nr:r * nr + plen], rd, nb * ghw * MR, r, bstrips,
                              jt * ghw * nr, bkofs, ghw, plen)
            elif s < t_ - 1:
                microkernel(tile, rd, nb * ghw * MR, bstrips, jt * ghw * nr, bkofs, 0, ghw,
                            plen, 0)
            for r in range(rows):
                n = nb * MR + r
                tr = tile[r * nr:r * nr + plen]
                dr = dhc[n, p0:p0 + plen]
                if t < 0:
                    # After the first step: what reaches h0.
                    g0 = gh0[n, p0:p0 + plen]
                    for jj in range(plen):
                        g0[jj] = dr[jj] + tr[jj]
                    continue
                for jj in range(plen):
                    dr[jj] += tr[jj]
                row = t * n_ + n
                if t >= lens[n]:  # carried state: the gradient passes through unchanged
                    for jj in range(plen):
                        base, step = _cols(p0 + jj, h_, gates, jb)
                        for q in range(gates):
                            col = base + q * step
                            dg[row, col] = zero
                            dgh[row, col] = zero
                            wr[(nb * ghw + col) * MR + r] = zero
                    continue
                # Runs of units inside one forward block: their gates are contiguous.
                j = p0
                while j < p0 + plen:
                    base, step = _cols(j, h_, gates, jb)
                    b0 = (j // jb) * jb
                    seg = min(b0 + step, p0 + plen) - j
                    gb = row * ghw + base
                    glen = (gates - 1) * step + seg
                    ub = row * h_ + j
                    sb = n * h_ + j
                    _bwd_seg(mode, dgf[gb:gb + glen], dghf[gb:gb + glen], gwsf[gb:gb + glen], step,
                             extf[ub:ub + seg] if eh else extf[0:0], hpf[ub:ub + seg],
                             cpf[ub:ub + seg], goutf[ub:ub + seg], dhcf[sb:sb + seg],
                             dcf[sb:sb + seg], seg)
                    for q in range(gates):
                        for v in range(seg):
                            wr[(nb * ghw + base + q * step + v) * MR + r] = dghf[gb + q * step + v]
                    j += seg


def rnn_backward(mode, gx, gh0, gc0, gw_ih, gw_hh, gb_ih, gb_hh, gout, gh_n, gc_n, x, h0, c0,
                 w_ih, w_hh, b_ih, b_hh, lengths, reverse, out, ws):
    """Backward through time of :func:`rnn_forward` (same ``mode``, inputs and ``reverse``).

    Parameters
    ----------
    gx : (T, N, I), gh0 : (N, H), gc0 : (N, H) or None (LSTM only), gw_ih : (G*H, I),
        gw_hh : (G*H, H), gb_ih, gb_hh : (G*H,) or None: filled with the gradients.
    gout : (T, N, H), gh_n : (N, H), gc_n : (N, H) or None: the gradients of the outputs.
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse : as given to :func:`rnn_forward`.
    out, ws : what :func:`rnn_forward` filled.
    """
    t_, n_, h_ = out.shape
    i_ = x.shape[2]
    g_ = GATES[mode]
    gh = g_ * h_
    rows = t_ * n_
    dtype = out.dtype
    pk = _packed(mode, w_ih, w_hh, b_ih, b_hh)
    gates, ext = _views(mode, ws, t_, n_, h_)
    dg = np.empty((rows, gh), dtype)
    dgh = np.empty((rows, gh), dtype) if mode == GRU else dg
    hprev = np.empty((rows, h_), dtype)
    if rows and h_:
        _gather_prev(hprev, out.reshape((rows, h_)), h0, lengths, bool(reverse))
    if mode == LSTM:
        cprev = np.empty((rows, h_), dtype)
        if rows and h_:
            _gather_prev(cprev, ext, c0, lengths, bool(reverse))
        dc = np.array(gc_n, dtype, order="C")
    else:
        cprev = hprev  # not read
        dc = np.zeros((n_, h_), dtype)
    npan = (n_ + MR - 1) // MR
    dgp = np.zeros((2, max(1, npan * gh * MR)), dtype)
    dhc = np.array(gh_n, dtype, order="C")
    if n_ and h_:
        _backward_steps(mode, dg, dgh, dgp, dhc, dc, gout, gates, ext, hprev, cprev,
                        pk.bwd_strips, pk.bwd_kofs, lengths, bool(reverse), pk.jb, gh0)
    elif n_:
        gh0[...] = 0
    if gc0 is not None:
        gc0[...] = dc
    # Every step's gate gradients at once: the input, weight and bias gradients as GEMMs over
    # all T*N rows (permuted gate rows, put back in PyTorch's order below).
    perm = pk.perm
    gwi = np.empty((gh, i_), dtype)
    gbi = np.empty(gh, dtype) if gb_ih is not None else None
    linear_backward(gx.reshape((rows, i_)), gwi, gbi, dg, x.reshape((rows, i_)), pk.w_ih)
    gw_ih[perm] = gwi
    if gbi is not None:
        gb_ih[perm] = gbi
    gwh = np.empty((gh, h_), dtype)
    gbh = np.empty(gh, dtype) if gb_hh is not None else None
    linear_backward(np.empty((0, h_), dtype), gwh, gbh, dgh, hprev, pk.w_hh)
    gw_hh[perm] = gwh
    if gbh is not None:
        gb_hh[perm] = gbh


@kernel
def swap01(out, x):
    """``out (B, A, C) = x (A, B, C).transpose(1, 0, 2)``, for batch_first sequences."""
    b_, a_, c_ = out.shape
    for b in prange(b_):
        for a in range(a_):
            dst = out[b, a]
            src = x[a, b]
            for k in range(c_):
                dst[k] = src[k]
