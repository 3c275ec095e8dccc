"""Recurrent kernels on the GPU: one layer and direction of an RNN (tanh / relu), LSTM or GRU
over a (T, N, I) sequence, forward and backward through time.

The input projection of all steps is one tiled GEMM (:func:`numbaconv.cuda.dense.linear`);
each step is one launch with a thread per (batch item, hidden unit) that runs the unit's G
recurrent dot products and its elementwise update; the weight gradients are GEMMs over all T*N
rows (:func:`numbaconv.cuda.dense.linear_backward`). Same launchers, modes, workspace size and
length semantics as :mod:`numbaconv.cpu.rnn`; the workspace layout is this backend's own
(PyTorch's gate order, (T*N, G*H) activated gates then (T*N, E*H) extra values).
"""

import math

from numbaconv import _cuda
from numbaconv.cuda._common import THREADS, blocks, sigmoid
from numbaconv.cuda.dense import linear, linear_backward

cuda = _cuda.cuda()

RNN_TANH = 0
RNN_RELU = 1
LSTM = 2
GRU = 3
GATES = (1, 1, 4, 3)
EXTRA = (0, 0, 1, 1)


def workspace_size(mode, t, n, h):
    """Elements of the workspace ``rnn_forward`` fills and ``rnn_backward`` reads."""
    return t * n * (GATES[mode] + EXTRA[mode]) * h


@_cuda.kernel("void(int64, int64, {T}[:, ::1], {T}[:, ::1], {T}[:, :, ::1], {T}[:, ::1], "
              "{T}[:, ::1], {T}[:, ::1], {T}[:, ::1], {T}[::1], int64[::1])")
def _step_forward(mode, t, xw, ext, out, hsrc, hdst, c, w_hh, b_hh, lens):
    """Step t for thread (n, j): xw (T*N, G*H) holds x @ W_ih.T + b_ih and is overwritten with
    the activated gates; ext (T*N, H) gets LSTM's c_t / GRU's W_hn h + b_hn; hsrc -> hdst (N, H)
    the state, c (N, H) LSTM's cell state in place."""
    n_, h_ = hsrc.shape
    idx = cuda.grid(1)
    if idx >= n_ * h_:
        return
    n = idx // h_
    j = idx - n * h_
    row = t * n_ + n
    zero = out.dtype.type(0)
    one = out.dtype.type(1)
    if t >= lens[n]:  # past this item's end: state carried, output zero
        hdst[n, j] = hsrc[n, j]
        out[t, n, j] = zero
        return
    gates = 4 if mode == LSTM else 3 if mode == GRU else 1
    a0 = b_hh[j]
    a1 = zero
    a2 = zero
    a3 = zero
    if gates > 1:
        a1 = b_hh[h_ + j]
        a2 = b_hh[2 * h_ + j]
    if gates > 3:
        a3 = b_hh[3 * h_ + j]
    for k in range(h_):
        hv = hsrc[n, k]
        a0 += w_hh[j, k] * hv
        if gates > 1:
            a1 += w_hh[h_ + j, k] * hv
            a2 += w_hh[2 * h_ + j, k] * hv
        if gates > 3:
            a3 += w_hh[3 * h_ + j, k] * hv
    if mode == LSTM:
        gi = sigmoid(xw[row, j] + a0)
        gf = sigmoid(xw[row, h_ + j] + a1)
        gg = math.tanh(xw[row, 2 * h_ + j] + a2)
        go = sigmoid(xw[row, 3 * h_ + j] + a3)
        cn = gf * c[n, j] + gi * gg
        hv = go * math.tanh(cn)
        xw[row, j] = gi
        xw[row, h_ + j] = gf
        xw[row, 2 * h_ + j] = gg
        xw[row, 3 * h_ + j] = go
        c[n, j] = cn
        ext[row, j] = cn
    elif mode == GRU:
        gr = sigmoid(xw[row, j] + a0)
        gz = sigmoid(xw[row, h_ + j] + a1)
        gn = math.tanh(xw[row, 2 * h_ + j] + gr * a2)
        hv = (one - gz) * gn + gz * hsrc[n, j]
        xw[row, j] = gr
        xw[row, h_ + j] = gz
        xw[row, 2 * h_ + j] = gn
        ext[row, j] = a2
    elif mode == RNN_TANH:
        hv = math.tanh(xw[row, j] + a0)
        xw[row, j] = hv
    else:
        hv = xw[row, j] + a0
        hv = hv if hv > zero else zero
        xw[row, j] = hv
    out[t, n, j] = hv
    hdst[n, j] = hv


def _split(mode, ws, t, n, h):
    gh = GATES[mode] * h
    gates = ws[:t * n * gh].reshape((t * n, gh))
    ext = ws[t * n * gh:].reshape((t * n, max(1, EXTRA[mode]) * h)) if EXTRA[mode] else \
        ws[:t * n * h].reshape((t * n, h))  # a typed stand-in, never written for RNN modes
    return gates, ext


def rnn_forward(mode, out, h_n, c_n, ws, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    """One layer and direction of a recurrent network over a sequence.

    Parameters
    ----------
    mode : RNN_TANH, RNN_RELU, LSTM or GRU.
    out : (T, N, H) device array, filled with h_t (zero past an item's length).
    h_n : (N, H) final state; c_n (N, H) LSTM's final cell state or None.
    ws : 1-D device array of :func:`workspace_size` elements, filled for backward, or None.
    x : (T, N, I); h0 (N, H); c0 (N, H) for LSTM, else None.
    w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H,): PyTorch's layout and gate order.
    lengths : int64 (N,) device array, valid steps per item.
    reverse : bool, run from the last step to the first.
    """
    t_, n_, h_ = out.shape
    i_ = x.shape[2]
    if out.size == 0:
        if h_n.size:
            h_n.copy_to_device(h0, stream=_cuda.current_stream())
        if c_n is not None and c_n.size:
            c_n.copy_to_device(c0, stream=_cuda.current_stream())
        return
    if ws is None:
        ws = _cuda.empty((workspace_size(mode, t_, n_, h_),), out.dtype)
    xw, ext = _split(mode, ws, t_, n_, h_)
    linear(xw, x.reshape((t_ * n_, i_)), w_ih, b_ih)
    hbuf = [_cuda.copy(h0), _cuda.empty((n_, h_), out.dtype)]
    c = _cuda.copy(c0) if mode == LSTM else hbuf[1]
    grid = blocks(n_ * h_)
    for s in range(t_):
        t = t_ - 1 - s if reverse else s
        _step_forward[grid, THREADS](mode, t, xw, ext, out, hbuf[s % 2], hbuf[(s + 1) % 2], c,
                                     w_hh, b_hh, lengths)
    h_n.copy_to_device(hbuf[t_ % 2], stream=_cuda.current_stream())
    if c_n is not None:
        c_n.copy_to_device(c, stream=_cuda.current_stream())


@_cuda.kernel("void({T}[:, ::1], {T}[:, ::1], {T}[:, ::1], int64[::1], boolean)")
def _gather_prev(dst, seq, init, lens, reverse):
    """dst (T*N, H): the state before each step: seq (T*N, H) at the previous step of the
    direction, or init (N, H) at the first valid step and past the item's end."""
    rows, h_ = dst.shape
    n_ = init.shape[0]
    idx = cuda.grid(1)
    if idx >= rows * h_:
        return
    row = idx // h_
    j = idx - row * h_
    t = row // n_
    n = row - t * n_
    p = -1
    if t < lens[n]:
        if reverse:
            if t + 1 < lens[n]:
                p = (t + 1) * n_ + n
        elif t >= 1:
            p = (t - 1) * n_ + n
    dst[row, j] = seq[p, j] if p >= 0 else init[n, j]


@_cuda.kernel("void(int64, int64, {T}[:, ::1], {T}[:, ::1], {T}[:, ::1], {T}[:, ::1], "
              "{T}[:, ::1], {T}[:, :, ::1], {T}[:, ::1], {T}[:, ::1], {T}[:, ::1], {T}[:, ::1], "
              "int64[::1])")
def _step_backward(mode, t, dg, dgh, dh, dd, dc, gout, gates_ws, ext, hprev, cprev, lens):
    """Elementwise part of step t for thread (n, j): from dh (N, H), the gradient reaching h_t
    through later steps, fill row t*N + n of dg / dgh (T*N, G*H) (input- and hidden-side gate
    gradients), dd (N, H) the part of h_(t-1)'s gradient that skips W_hh, and dc (LSTM)."""
    n_, h_ = dh.shape
    idx = cuda.grid(1)
    if idx >= n_ * h_:
        return
    n = idx // h_
    j = idx - n * h_
    row = t * n_ + n
    zero = dh.dtype.type(0)
    one = dh.dtype.type(1)
    gates = 4 if mode == LSTM else 3 if mode == GRU else 1
    d = dh[n, j]
    if t >= lens[n]:  # carried state: the gradient passes through
        dd[n, j] = d
        for q in range(gates):
            dg[row, q * h_ + j] = zero
            dgh[row, q * h_ + j] = zero
        return
    d += gout[t, n, j]
    direct = zero
    if mode == LSTM:
        gi = gates_ws[row, j]
        gf = gates_ws[row, h_ + j]
        gg = gates_ws[row, 2 * h_ + j]
        go = gates_ws[row, 3 * h_ + j]
        tc = math.tanh(ext[row, j])
        dct = dc[n, j] + d * go * (one - tc * tc)
        dg[row, j] = dct * gg * gi * (one - gi)
        dg[row, h_ + j] = dct * cprev[row, j] * gf * (one - gf)
        dg[row, 2 * h_ + j] = dct * gi * (one - gg * gg)
        dg[row, 3 * h_ + j] = d * tc * go * (one - go)
        dc[n, j] = dct * gf
    elif mode == GRU:
        gr = gates_ws[row, j]
        gz = gates_ws[row, h_ + j]
        gn = gates_ws[row, 2 * h_ + j]
        d_npre = d * (one - gz) * (one - gn * gn)
        d_z = d * (hprev[row, j] - gn) * gz * (one - gz)
        d_r = d_npre * ext[row, j] * gr * (one - gr)
        direct = d * gz
        dg[row, j] = d_r
        dg[row, h_ + j] = d_z
        dg[row, 2 * h_ + j] = d_npre
        dgh[row, j] = d_r
        dgh[row, h_ + j] = d_z
        dgh[row, 2 * h_ + j] = d_npre * gr
    elif mode == RNN_TANH:
        hv = gates_ws[row, j]
        dg[row, j] = d * (one - hv * hv)
    else:
        dg[row, j] = d if gates_ws[row, j] > zero else zero
    dd[n, j] = direct


@_cuda.kernel("void(int64, {T}[:, ::1], {T}[:, ::1], {T}[:, ::1], {T}[:, ::1])")
def _step_dh(t, dh, dd, dgh, w_hh):
    """dh (N, H) = dd + dgh[t*N + n] @ w_hh (G*H, H): the gradient reaching h_(t-1)."""
    n_, h_ = dh.shape
    idx = cuda.grid(1)
    if idx >= n_ * h_:
        return
    n = idx // h_
    j = idx - n * h_
    row = t * n_ + n
    acc = dd[n, j]
    for k in range(w_hh.shape[0]):
        acc += dgh[row, k] * w_hh[k, j]
    dh[n, j] = acc


def rnn_backward(mode, gx, gh0, gc0, gw_ih, gw_hh, gb_ih, gb_hh, gout, gh_n, gc_n, x, h0, c0,
                 w_ih, w_hh, b_ih, b_hh, lengths, reverse, out, ws):
    """Backward through time of :func:`rnn_forward`; arguments as ``numbaconv.cpu.rnn``'s."""
    t_, n_, h_ = out.shape
    i_ = x.shape[2]
    gh = GATES[mode] * h_
    rows = t_ * n_
    dtype = out.dtype
    gates, ext = _split(mode, ws, t_, n_, h_)
    dg = _cuda.empty((rows, gh), dtype)
    dgh = _cuda.empty((rows, gh), dtype) if mode == GRU else dg
    hprev = _cuda.empty((rows, h_), dtype)
    dh = _cuda.copy(gh_n)
    dc = _cuda.copy(gc_n) if mode == LSTM else dh
    if rows and h_:
        grid = blocks(rows * h_)
        _gather_prev[grid, THREADS](hprev, out.reshape((rows, h_)), h0, lengths, bool(reverse))
        cprev = hprev
        if mode == LSTM:
            cprev = _cuda.empty((rows, h_), dtype)
            _gather_prev[grid, THREADS](cprev, ext, c0, lengths, bool(reverse))
        dd = _cuda.empty((n_, h_), dtype)
        grid = blocks(n_ * h_)
        for s in range(t_ - 1, -1, -1):
            t = t_ - 1 - s if reverse else s
            _step_backward[grid, THREADS](mode, t, dg, dgh, dh, dd, dc, gout, gates, ext, hprev,
                                          cprev, lengths)
            _step_dh[grid, THREADS](t, dh, dd, dgh, w_hh)
    gh0.copy_to_device(dh, stream=_cuda.current_stream())
    if gc0 is not None:
        gc0.copy_to_device(dc, stream=_cuda.current_stream())
    linear_backward(gx.reshape((rows, i_)), gw_ih, gb_ih, dg, x.reshape((rows, i_)), w_ih)
    linear_backward(_cuda.empty((0, h_), dtype), gw_hh, gb_hh, dgh, hprev, w_hh)


@_cuda.kernel("void({T}[:, :, ::1], {T}[:, :, ::1])")
def _swap01(out, x):
    """out (B, A, C) = x (A, B, C) with the first two axes swapped; thread per element."""
    b_, a_, c_ = out.shape
    idx = cuda.grid(1)
    if idx >= b_ * a_ * c_:
        return
    k = idx % c_
    r = idx // c_
    a = r % a_
    b = r // a_
    out[b, a, k] = x[a, b, k]


def swap01(out, x):
    """``out (B, A, C) = x (A, B, C).transpose(1, 0, 2)``, for batch_first sequences."""
    if out.size:
        _swap01[blocks(out.size), THREADS](out, x)
