"""conv2d_backward and conv1d_backward: against float64 central differences of the reference,
against PyTorch autograd, and CPU against CUDA."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import (assert_close, call_unchanged, cuda_skip_reason, host, is_device_array, on,
                      rand)
from gradcheck import assert_grad_close

F = nc.functional

# (id, input shape, weight shape, keyword arguments): every stride / padding / dilation / groups
# path of the kernels, on shapes small enough for central differences.
CONV2D_CASES = [
    ("plain", (2, 3, 6, 7), (4, 3, 3, 3), {}),
    ("pad1", (2, 3, 6, 7), (4, 3, 3, 3), dict(padding=1)),
    ("stride2", (2, 3, 7, 8), (4, 3, 3, 3), dict(stride=2, padding=1)),
    ("stride_pad_tuples", (1, 2, 7, 9), (3, 2, 3, 2), dict(stride=(2, 3), padding=(1, 0))),
    ("dilation2", (2, 2, 7, 7), (3, 2, 3, 3), dict(dilation=2, padding=2)),
    ("dilation_stride", (1, 2, 9, 8), (3, 2, 3, 3), dict(stride=2, dilation=(2, 1),
                                                         padding=(2, 1))),
    ("groups2", (2, 4, 6, 6), (6, 2, 3, 3), dict(groups=2, padding=1)),
    ("depthwise", (2, 4, 6, 6), (4, 1, 3, 3), dict(groups=4, padding=1)),
    ("depthwise_x2_stride2", (1, 3, 6, 5), (6, 1, 3, 3), dict(groups=3, stride=2, padding=1)),
    ("same", (2, 3, 6, 7), (4, 3, 3, 3), dict(padding="same")),
    ("same_even_dilated", (1, 2, 6, 6), (3, 2, 4, 2), dict(padding="same", dilation=(1, 2))),
    ("valid", (1, 3, 5, 6), (2, 3, 2, 3), dict(padding="valid")),
    ("pad_past_kernel", (1, 2, 4, 4), (3, 2, 1, 1), dict(padding=2)),
    ("pad_past_kernel_stride2", (1, 2, 5, 4), (3, 2, 2, 2), dict(padding=2, stride=2)),
    ("1x1_stride2", (2, 4, 7, 7), (5, 4, 1, 1), dict(stride=2)),
    ("unused_rows", (1, 2, 8, 8), (3, 2, 3, 3), dict(stride=3)),
    ("kernel_fills_input", (1, 2, 5, 5), (2, 2, 5, 5), {}),
    ("odd_blocks", (2, 5, 6, 6), (7, 5, 3, 3), dict(padding=1)),  # partial 4x4 tiles
    ("unbatched", (3, 6, 7), (4, 3, 3, 3), dict(padding=1, stride=(1, 2))),
    # tiny images with many channels: the weight gradient's im2col layout
    ("im2col", (2, 3, 2, 2), (40, 3, 3, 3), dict(padding=1)),
    ("im2col_strided_dilated", (1, 2, 5, 4), (36, 2, 2, 3), dict(stride=2, padding=1,
                                                                 dilation=(2, 1))),
]

CONV1D_CASES = [
    ("plain", (2, 3, 9), (4, 3, 3), {}),
    ("stride2_pad1", (2, 3, 10), (4, 3, 3), dict(stride=2, padding=1)),
    ("dilation_same", (1, 2, 9), (3, 2, 4), dict(dilation=2, padding="same")),
    ("groups_depthwise", (2, 4, 8), (4, 1, 3), dict(groups=4, padding=(2,))),
    ("unbatched", (3, 8), (2, 3, 2), dict(stride=3)),
]


def case(rng, dtype, xs, ws, bias, forward=R.conv2d, **kw):
    x, w = rand(rng, xs, dtype), rand(rng, ws, dtype)
    b = rand(rng, (ws[0],), dtype) if bias else None
    go = rand(rng, forward(x, w, b, **kw).shape, dtype)
    return go, x, w, b


def check_grads(fn, forward, go, x, w, b, kw, dtype, what):
    """``fn(go, x, w, b, **kw)`` against central differences of ``sum(go * forward(...))``: the
    op is linear in each argument, so the same quotient on |go| and |arguments| gives the sum of
    |products| each gradient element adds up (the absolute tolerance's unit)."""
    grads = call_unchanged(fn, go, x, w, b, **kw)
    assert isinstance(grads, tuple) and len(grads) == 3
    args = (x, w, b)
    absargs = tuple(None if a is None else np.abs(a) for a in args)
    for i, name in enumerate(("input", "weight", "bias")):
        if args[i] is None:
            assert grads[i] is None, f"{what}: grad_{name} for a None argument"
            continue
        assert type(grads[i]) is np.ndarray
        # A step of 1 is exact for a linear function and keeps the float64 rounding of the
        # difference at 1e-16 x |f| instead of 1e-10 x |f| (step 1e-6).
        num = R.numerical_grad(lambda *a: go * forward(*a, **kw), args, i, eps=1.0)
        scale = R.numerical_grad(lambda *a: np.abs(go) * forward(*a, **kw), absargs, i, eps=1.0)
        assert_grad_close(grads[i], num, dtype, scale=scale, what=f"{what} grad_{name}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in CONV2D_CASES],
                         ids=[c[0] for c in CONV2D_CASES])
def test_conv2d_backward(rng, device, dtype, xs, ws, kw, bias):
    go, x, w, b = case(rng, dtype, xs, ws, bias, **kw)
    check_grads(F.conv2d_backward, R.conv2d, go, x, w, b, kw, dtype,
                f"conv2d_backward[{device}]")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in CONV1D_CASES],
                         ids=[c[0] for c in CONV1D_CASES])
def test_conv1d_backward(rng, device, dtype, xs, ws, kw, bias):
    go, x, w, b = case(rng, dtype, xs, ws, bias, forward=R.conv1d, **kw)
    check_grads(F.conv1d_backward, R.conv1d, go, x, w, b, kw, dtype,
                f"conv1d_backward[{device}]")


def test_conv2d_backward_positional_arguments(rng, dtype):
    # The forward op's argument order: (grad_output, input, weight, bias, stride, padding,
    # dilation, groups).
    go, x, w, b = case(rng, dtype, (1, 4, 7, 7), (4, 2, 3, 3), True, stride=2, padding=1,
                       dilation=1, groups=2)
    by_name = F.conv2d_backward(go, x, w, b, stride=2, padding=1, dilation=1, groups=2)
    for got, want in zip(F.conv2d_backward(go, x, w, b, 2, 1, 1, 2), by_name):
        np.testing.assert_array_equal(got, want)


# Too many elements for central differences: float64 products by torch (below) or written out.
BIG_CASES = [
    ("resnet_3x3", (2, 16, 12, 12), (24, 16, 3, 3), dict(padding=1)),
    ("resnet_3x3_stride2", (2, 16, 13, 12), (24, 16, 3, 3), dict(stride=2, padding=1)),
    ("downsample_1x1", (3, 16, 10, 10), (32, 16, 1, 1), dict(stride=2)),
    ("stem_7x7", (2, 3, 20, 18), (16, 3, 7, 7), dict(stride=2, padding=3)),
    ("lenet_5x5", (8, 6, 14, 14), (16, 6, 5, 5), {}),
    ("depthwise", (2, 24, 11, 11), (24, 1, 3, 3), dict(groups=24, padding=1)),
    ("resnet_4x4_im2col", (2, 32, 4, 4), (48, 32, 3, 3), dict(padding=1)),
]


def _torch_grads(torch, go, x, w, b, kw, op="conv2d"):
    tensors = [None if a is None else torch.tensor(a, dtype=torch.float64, requires_grad=True)
               for a in (x, w, b)]
    getattr(torch.nn.functional, op)(*tensors, **kw).backward(
        torch.tensor(go, dtype=torch.float64))
    return [None if t is None else t.grad.numpy() for t in tensors]


def _torch_scales(torch, go, x, w, b, kw, op="conv2d"):
    """The sum of |products| behind each gradient element: the same gradients of |.|."""
    return _torch_grads(torch, np.abs(go), np.abs(x), np.abs(w),
                        None if b is None else np.abs(b), kw, op)


@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in BIG_CASES], ids=[c[0] for c in BIG_CASES])
def test_conv2d_backward_big_torch(rng, device_available_big, dtype, xs, ws, kw):
    torch = pytest.importorskip("torch")
    go, x, w, b = case(rng, dtype, xs, ws, True, **kw)
    grads = call_unchanged(F.conv2d_backward, go, x, w, b, **kw)
    for got, want, scale, name in zip(grads, _torch_grads(torch, go, x, w, b, kw),
                                      _torch_scales(torch, go, x, w, b, kw),
                                      ("input", "weight", "bias")):
        assert_close(got, want, dtype, "conv", scale=scale,
                     what=f"conv2d_backward grad_{name} vs torch")


TORCH_CASES = [c for c in CONV2D_CASES if c[0] in (
    "stride2", "dilation_stride", "groups2", "depthwise_x2_stride2", "same_even_dilated",
    "pad_past_kernel_stride2", "unbatched")]


# torch warns that it pads a copy for 'same' with an even kernel (its business, not ours)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in TORCH_CASES],
                         ids=[c[0] for c in TORCH_CASES])
def test_conv2d_backward_torch(rng, device_available, dtype, xs, ws, kw):
    torch = pytest.importorskip("torch")
    go, x, w, b = case(rng, dtype, xs, ws, True, **kw)
    grads = F.conv2d_backward(go, x, w, b, **kw)
    for got, want, scale in zip(grads, _torch_grads(torch, go, x, w, b, kw),
                                _torch_scales(torch, go, x, w, b, kw)):
        assert_close(got, want, dtype, "conv", scale=scale, what="conv2d_backward vs torch")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in CONV1D_CASES],
                         ids=[c[0] for c in CONV1D_CASES])
def test_conv1d_backward_torch(rng, device_available, dtype, xs, ws, kw):
    torch = pytest.importorskip("torch")
    go, x, w, b = case(rng, dtype, xs, ws, False, forward=R.conv1d, **kw)
    grads = F.conv1d_backward(go, x, w, None, **kw)
    assert grads[2] is None
    for got, want, scale in zip(grads[:2], _torch_grads(torch, go, x, w, None, kw, "conv1d"),
                                _torch_scales(torch, go, x, w, None, kw, "conv1d")):
        assert_close(got, want, dtype, "conv", scale=scale, what="conv1d_backward vs torch")


# ---------------------------------------------------------------------------------------------
# Edge cases and errors
# ---------------------------------------------------------------------------------------------

def test_conv2d_backward_empty_batch(device, dtype):
    # No images: the weight and bias gradients are zero sums, as in torch.
    x, w, b = np.zeros((0, 3, 5, 5), dtype), np.ones((4, 3, 3, 3), dtype), np.ones(4, dtype)
    gx, gw, gb = F.conv2d_backward(np.zeros((0, 4, 3, 3), dtype), x, w, b)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (4,)
    assert not host(gw).any() and not host(gb).any()


def test_conv2d_backward_read_only_and_strided_inputs(rng, dtype):
    # A layer's parameters are read-only views; slices are not contiguous: same results.
    go, x, w, b = case(rng, dtype, (2, 3, 6, 6), (4, 3, 3, 3), True, padding=1)
    want = F.conv2d_backward(go, x, w, b, padding=1)
    wr = w.copy()
    wr.flags.writeable = False
    xs = np.repeat(x, 2, axis=3)[:, :, :, ::2]
    got = F.conv2d_backward(go, xs, wr, b, padding=1)
    for g, c in zip(got, want):
        np.testing.assert_array_equal(g, c)


@pytest.mark.parametrize("gs", [(2, 4, 4, 4), (2, 4, 6, 6, 1), (4, 6, 6)])
def test_conv2d_backward_grad_output_shape_raises(device, gs):
    with pytest.raises(ValueError, match="grad_output"):
        F.conv2d_backward(np.zeros(gs), np.zeros((2, 3, 6, 6)), np.zeros((4, 3, 1, 1)))


@pytest.mark.parametrize("xs, ws, bs, kw", [
    ((2, 3, 6, 6), (4, 2, 3, 3), None, {}),              # channel mismatch
    ((2, 4, 6, 6), (3, 2, 3, 3), None, dict(groups=2)),  # out_channels not divisible
    ((2, 3, 6, 6), (4, 3, 3, 3), (3,), {}),              # bias shape
    ((2, 3, 2, 2), (4, 3, 3, 3), None, {}),              # kernel larger than the input
    ((2, 3, 6, 6), (4, 3, 3, 3), None, dict(padding="same", stride=2)),
    ((2, 3, 6, 6), (4, 3, 3, 3), None, dict(padding="full")),
    ((2, 3, 6, 6), (4, 3, 3, 3), None, dict(groups=0)),
    ((2, 3, 6, 6), (4, 3, 3, 3), None, dict(stride=0)),
    ((3, 6, 6, 1, 1), (4, 3, 3, 3), None, {}),           # rank
])
def test_conv2d_backward_bad_arguments_raise(device, xs, ws, bs, kw):
    # The forward op's errors, for the same arguments.
    b = None if bs is None else np.zeros(bs)
    with pytest.raises(ValueError):
        F.conv2d(np.zeros(xs), np.zeros(ws), b, **kw)
    with pytest.raises(ValueError):
        F.conv2d_backward(np.zeros((2, 4, 4, 4)), np.zeros(xs), np.zeros(ws), b, **kw)


def test_conv2d_backward_dtype_mismatch_raises(device):
    x, w = np.zeros((1, 2, 4, 4), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(TypeError):
        F.conv2d_backward(np.zeros((1, 3, 2, 2), np.float64), x, w)
    with pytest.raises(TypeError):
        F.conv2d_backward(np.zeros((1, 3, 2, 2), np.float32), x, w.astype(np.float64))
    with pytest.raises(TypeError):
        F.conv2d_backward(np.zeros((1, 3, 2, 2), np.int32), x.astype(np.int32), w)


# ---------------------------------------------------------------------------------------------
# CPU against CUDA, device arrays in and out
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def cuda_device():
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    with nc.use_device("cuda"):
        yield "cuda"


PARITY_CASES = [c for c in CONV2D_CASES if c[0] in (
    "stride2", "dilation_stride", "groups2", "depthwise_x2_stride2", "same_even_dilated",
    "odd_blocks", "unbatched")]


@pytest.mark.cuda_only
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in PARITY_CASES],
                         ids=[c[0] for c in PARITY_CASES])
def test_conv2d_backward_cpu_vs_cuda(rng, cuda_device, dtype, xs, ws, kw):
    go, x, w, b = case(rng, dtype, xs, ws, True, **kw)
    with nc.use_device("cpu"):
        want = F.conv2d_backward(go, x, w, b, **kw)
    args = [on("cuda", a) for a in (go, x, w, b)]
    got = call_unchanged(F.conv2d_backward, *args, **kw)
    for g, c, name in zip(got, want, ("input", "weight", "bias")):
        assert is_device_array(g)
        assert_close(g, c.astype(np.float64), dtype, "parity", what=f"grad_{name} cuda")


@pytest.mark.cuda_only
def test_conv1d_backward_cpu_vs_cuda(rng, cuda_device, dtype):
    go, x, w, b = case(rng, dtype, (2, 4, 9), (6, 2, 3), True, forward=R.conv1d, stride=2,
                       padding=1, groups=2)
    kw = dict(stride=2, padding=1, groups=2)
    with nc.use_device("cpu"):
        want = F.conv1d_backward(go, x, w, b, **kw)
    got = F.conv1d_backward(*(on("cuda", a) for a in (go, x, w, b)), **kw)
    for g, c in zip(got, want):
        assert is_device_array(g)
        assert_close(g, c.astype(np.float64), dtype, "parity", what="conv1d_backward cuda")
