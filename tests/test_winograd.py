"""Winograd F(4x4, 3x3) conv (numbaconv.cpu.winograd) against the float64 reference.

The launcher is called directly, so these tests cover it whatever conv2d's dispatch picks. Both
schedules (fused for few channels, blocked for many) run, with tile rows long (row transform)
and short (gathered transform), panels split across blocks and tasks, and every epilogue.
"""

import numpy as np
import pytest

import reference as R
from conftest import assert_close, rand, tol
from numbaconv._ops import ACTIVATIONS, ACT_NONE
from numbaconv.cpu import simd
from numbaconv.cpu import winograd as W

# float32 tolerance (rtol, atol x scale, scale = conv(|x|, |w|) + |b| + |residual| as in
# conftest). Winograd sums 36 products of *transformed* values per channel: B^T d B has entries
# up to ~4x |d| (B's rows sum to 6.5 in absolute value), G g G^T up to ~1.3x |g|, and the output
# transform A^T M A recombines them with weights up to 8 that cancel. Each value carries float32
# rounding from the transforms, so the error relative to the scale is 3-4x a direct sum's:
# measured max 0.9-1.2e-6 on the ResNet-50 / VGG-16 3x3 layers (direct conv: 2.6-3.7e-7) and
# up to 1.2e-6 in these tests. 5e-6 leaves 4x headroom and is still below the conv family's
# 1e-5. float64 keeps the conv family's tolerance: the same growth stays ~1e-15.
WINOGRAD_F32 = (1e-5, 5e-6)


def _pad_ref(x, w, b, res, pads, act, alpha):
    """Float64 reference and error scale for explicit (top, bottom, left, right) padding."""
    pt, pb, pl, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ref = R.conv2d(xp, w, b)
    scale = R.conv2d(np.abs(xp), np.abs(w), None if b is None else np.abs(b))
    if res is not None:
        ref = ref + res
        scale = scale + np.abs(res)
    name = {v: k for k, v in ACTIVATIONS.items()}.get(act)
    if name == "leaky_relu":
        ref = R.leaky_relu(ref, alpha)
    elif name == "gelu_tanh":
        ref = R.gelu(ref, approximate="tanh")
    elif name is not None:
        ref = getattr(R, name)(ref)
    return ref, scale


def run(rng, dtype, n, c, oc, h, w, pads=(1, 1, 1, 1), bias=True, residual=False,
        act=ACT_NONE, alpha=0.0, x_scale=1.0):
    pt, pb, pl, pr = pads
    oh, ow = h + pt + pb - 2, w + pl + pr - 2
    x = rand(rng, (n, c, h, w), dtype) * dtype(x_scale)
    wt = rand(rng, (oc, c, 3, 3), dtype)
    b = rand(rng, (oc,), dtype) if bias else None
    res = rand(rng, (n, oc, oh, ow), dtype) if residual else None
    out = np.full((n, oc, oh, ow), np.nan, dtype)
    before = [a.copy() for a in (x, wt)]
    W.winograd_conv2d(out, x, wt, b, res, (pt, pl), act, alpha)
    assert all(np.array_equal(a, a0) for a, a0 in zip((x, wt), before)), "inputs modified"
    ref, scale = _pad_ref(x, wt, b, res, pads, act, alpha)
    what = f"winograd {(n, c, oc, h, w)} pads={pads} {np.dtype(dtype).name}"
    if dtype == np.float64:
        assert_close(out, ref, dtype, "conv", scale=scale, what=what)
        return out, ref, scale
    assert np.isfinite(out).all(), f"{what}: non-finite output"
    rtol, atol = WINOGRAD_F32
    err = np.abs(out - ref)
    limit = rtol * np.abs(ref) + atol * scale
    worst = np.unravel_index(np.argmax(err - limit), err.shape)
    assert (err <= limit).all(), (f"{what}: {(err > limit).sum()} values out of tolerance; worst "
                                  f"at {worst}: got {out[worst]!r}, expected {ref[worst]!r}")
    return out, ref, scale


# (id, N, C, OC, H, W, pads (top, bottom, left, right)). Channel counts are not multiples of 8;
# C <= ~140 runs the fused schedule, more the blocked one; W >= 29 (8+ tiles a row) the row
# input transform, less the gathered one.
CASES = [
    ("basic", 2, 3, 5, 7, 7, (1, 1, 1, 1)),
    ("odd_sizes", 3, 17, 19, 9, 11, (1, 1, 1, 1)),
    ("image_1x1", 3, 4, 6, 1, 1, (1, 1, 1, 1)),
    ("image_2x2", 1, 5, 9, 2, 2, (1, 1, 1, 1)),
    ("no_padding", 2, 5, 11, 13, 6, (0, 0, 0, 0)),
    ("top_left_only", 1, 6, 10, 10, 9, (1, 0, 1, 0)),
    ("bottom_right_only", 2, 7, 3, 8, 10, (0, 1, 0, 1)),
    ("padding_2", 1, 4, 4, 5, 6, (2, 2, 2, 2)),
    ("uneven", 1, 9, 13, 6, 15, (2, 0, 0, 1)),
    ("wide_rows", 1, 11, 10, 9, 70, (1, 1, 1, 1)),
    ("wide_batch", 3, 12, 21, 30, 33, (1, 1, 1, 1)),
    ("single_oc", 2, 16, 1, 12, 12, (1, 1, 1, 1)),
    ("blocked", 2, 150, 17, 5, 6, (1, 0, 1, 1)),
    ("blocked_wide", 1, 160, 20, 31, 40, (1, 1, 1, 1)),
    ("blocked_batch", 3, 145, 35, 9, 11, (1, 1, 1, 1)),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("n, c, oc, h, w, pads", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_winograd(rng, dtype, n, c, oc, h, w, pads, bias):
    run(rng, dtype, n, c, oc, h, w, pads, bias=bias)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS), ids=sorted(ACTIVATIONS))
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_winograd_epilogue(rng, dtype, act, residual):
    # Pre-activations cover the interesting ranges (< -3, > 6); both schedules.
    code = ACTIVATIONS[act]
    alpha = 0.1 if act == "leaky_relu" else 0.0
    run(rng, dtype, 2, 6, 10, 9, 37, residual=residual, act=code, alpha=alpha, x_scale=3.0)
    run(rng, dtype, 1, 150, 9, 6, 7, residual=residual, act=code, alpha=alpha, x_scale=0.5)


@pytest.mark.parametrize("knobs", [
    dict(FUSED_V_BYTES=0, V_BLOCK_BYTES=1),  # blocked, one tile row per block
    dict(FUSED_V_BYTES=0, V_BLOCK_BYTES=200_000),  # blocked, blocks that split panels
    dict(FUSED_V_BYTES=1 << 30, OB_CHUNK_FUSED=1),  # fused, one channel block per pass
], ids=["blocked_rows", "blocked_split", "fused_chunk1"])
def test_winograd_schedules(rng, dtype, monkeypatch, knobs):
    # The same shapes under other schedules: blocks, panels and chunks fall elsewhere.
    for name, value in knobs.items():
        monkeypatch.setattr(W, name, value)
    run(rng, dtype, 2, 20, 27, 23, 29, residual=True)
    run(rng, dtype, 3, 9, 8, 7, 5, pads=(1, 0, 0, 1))


def test_winograd_more_threads_than_tasks(rng, dtype):
    # Few tiles and channels: fewer tasks than workers in both phases.
    run(rng, dtype, 1, 3, 2, 3, 3)
    run(rng, dtype, 1, 200, 3, 3, 3)


def test_transform_matrices():
    # A^T [(G g) * (B^T d)] is the 1-D correlation y_i = sum_k g_k d_{i+k}, exactly (float64).
    rng = np.random.default_rng(0)
    for _ in range(20):
        g, d = rng.standard_normal(3), rng.standard_normal(6)
        y = W.AT @ ((W.G @ g) * (W.BT @ d))
        np.testing.assert_allclose(y, [g @ d[i:i + 3] for i in range(4)], rtol=0, atol=1e-13)


@pytest.mark.parametrize("oc, c", [(16, 8), (13, 5), (3, 40)])
def test_filter_transform(rng, dtype, oc, c):
    # ap[((k * nb + ob) * C + c) * MR + r] = (G w G^T)[k], zero past OC; rounded once.
    w = rand(rng, (oc, c, 3, 3), dtype)
    nb = -(-oc // W.MR)
    ap = np.full(W.NXI * nb * c * W.MR, np.nan, dtype)
    W._filter_transform(ap, w, nb)
    u = np.einsum("ij,ocjk,lk->iloc", W.G, w.astype(np.float64), W.G)
    u = np.concatenate([u, np.zeros((6, 6, nb * W.MR - oc, c))], axis=2)
    ref = u.reshape(W.NXI, nb, W.MR, c).transpose(0, 1, 3, 2).ravel()
    rtol = 1e-7 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(ap, ref.astype(dtype), rtol=rtol, atol=rtol * np.abs(ref).max())


def test_error_against_direct_scale(rng):
    # A realistic layer: the float32 error stays within WINOGRAD_F32 and far under the conv
    # family's tolerance, in both schedules.
    for c, hw in [(64, 30), (256, 9)]:
        out, ref, scale = run(rng, np.float32, 2, c, c, hw, hw)
        assert (np.abs(out - ref) / scale).max() < WINOGRAD_F32[1]
    assert WINOGRAD_F32[1] <= tol("conv", np.float32)[1]


@pytest.mark.parametrize("shape, expect", [
    (((1, 64, 56, 56), (1, 64, 56, 56)), True),      # ResNet-50 3x3 at 56: fused
    (((32, 512, 7, 7), (32, 512, 7, 7)), True),      # 7x7 at batch 32: blocked
    (((1, 512, 7, 7), (1, 512, 7, 7)), False),       # 4 tiles: scratch over input + output
    (((1, 128, 28, 28), (1, 128, 28, 28)), False),   # blocks too small to pay off
])
def test_winograd_applies(shape, expect, monkeypatch):
    # The heuristic depends on the worker count; pin it to this machine's two.
    monkeypatch.setattr(W.numba, "get_num_threads", lambda: 2)
    expect = expect and simd.LANES > 1  # never with scalar code (NUMBACONV_SIMD_WIDTH=1)
    assert W.winograd_applies(shape[0], shape[1], (1, 1)) is expect


def test_winograd_scratch_within_bound(monkeypatch):
    # Whenever winograd_applies says yes, V and the workers' scratch fit in input + output.
    monkeypatch.setattr(W.numba, "get_num_threads", lambda: 2)
    for n in (1, 4, 32):
        for c, hw in [(3, 224), (64, 56), (128, 28), (256, 14), (512, 7), (512, 28), (16, 9)]:
            xs, os_ = (n, c, hw, hw), (n, c, hw, hw)
            if W.winograd_applies(xs, os_, (1, 1)):
                p = W._plan(xs, c, os_, np.float32)
                assert p.vsize + p.ssize <= 2 * n * c * hw * hw



def test_winograd_nan_propagates(rng, dtype):
    # A NaN input reaches every output whose window holds it (the transforms also spread it
    # over the rest of those 4x4 tiles, which the direct conv would not).
    x = rand(rng, (1, 4, 9, 10), dtype)
    x[0, 2, 4, 5] = np.nan
    w = rand(rng, (5, 4, 3, 3), dtype)
    out = np.zeros((1, 5, 9, 10), dtype)
    W.winograd_conv2d(out, x, w, None, None, (1, 1), ACT_NONE, 0.0)
    ref = R.conv2d(x, w, padding=1)
    assert np.isnan(out[np.isnan(ref)]).all()


@pytest.mark.parametrize("nwk", [1, 2, 3, 5])
@pytest.mark.parametrize("tiles, nb, c", [(196, 8, 64), (3136, 8, 3), (4, 3, 16), (49, 64, 512),
                                          (200, 1, 8)])
def test_fused_tasks_cover_every_panel_block_once(tiles, nb, c, nwk):
    nr = W.NVMAX * simd.LANES
    tasks, soff = W._fused_tasks(tiles, nb, c, simd.LANES, nwk)
    seen = np.zeros((-(-tiles // nr), nb), int)
    assert soff[0] == 0 and soff[-1] == len(tasks) and len(soff) == nwk + 1
    for jt, ob0, ob1 in tasks:
        seen[jt, ob0:ob1] += 1
    assert (seen == 1).all()


@pytest.mark.parametrize("nwk", [1, 2, 3])
@pytest.mark.parametrize("pblk, plast, nb, obchunk", [(112, 84, 32, 8), (28, 21, 64, 4),
                                                      (48, 48, 5, 2), (7, 3, 2, 1)])
def test_blocked_tasks_cover_every_panel_block_once(pblk, plast, nb, obchunk, nwk):
    nr = W.NVMAX * simd.LANES
    tasks, soff = W._blocked_tasks(pblk, plast, nb, obchunk, 64, simd.LANES, nwk)
    assert soff.shape == (2, nwk + 1)
    for i, p in enumerate((pblk, plast)):
        seen = np.zeros((-(-p // nr), nb), int)
        for jt, ob0, ob1 in tasks[soff[i, 0]:soff[i, -1]]:
            seen[jt, ob0:ob1] += 1
        assert (seen == 1).all()


def test_winograd_finite_only_declines_nonfinite(rng):
    # finite_only: a NaN in the input or the weight makes the launcher decline without writing.
    x = rand(rng, (1, 4, 9, 10), np.float32)
    w = rand(rng, (5, 4, 3, 3), np.float32)
    out = np.zeros((1, 5, 9, 10), np.float32)
    assert W.winograd_conv2d(out, x, w, None, None, (1, 1), ACT_NONE, 0.0, finite_only=True)
    bad = x.copy()
    bad[0, 1, 2, 3] = np.inf
    out[:] = 7
    assert not W.winograd_conv2d(out, bad, w, None, None, (1, 1), ACT_NONE, 0.0,
                                 finite_only=True)
    assert (out == 7).all()
    wb = w.copy()
    wb[2, 1, 0, 0] = np.nan
    assert not W.winograd_conv2d(out, x, wb, None, None, (1, 1), ACT_NONE, 0.0, finite_only=True)
    assert (out == 7).all()
