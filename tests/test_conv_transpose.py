"""conv_transpose2d, its backward and nn.ConvTranspose2d: against the float64 reference, float64
central differences, PyTorch, and CPU against CUDA."""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import (assert_close, call_unchanged, check_op, cuda_skip_reason, host,
                      is_device_array, on, rand)
from gradcheck import assert_grad_close
from numbaconv.nn.conv_transpose import ConvTranspose2d

F = nc.functional

# (id, input shape, weight shape (C_in, C_out // groups, KH, KW), keyword arguments)
CASES = [
    ("plain", (2, 3, 4, 5), (3, 2, 3, 3), {}),
    ("stride2_pad1", (2, 3, 4, 4), (3, 2, 3, 3), dict(stride=2, padding=1)),
    ("output_padding", (1, 3, 4, 5), (3, 2, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("tuples", (1, 2, 3, 4), (2, 3, 3, 2), dict(stride=(2, 3), padding=(1, 0),
                                                output_padding=(1, 2))),
    ("dilation", (2, 2, 4, 4), (2, 2, 3, 3), dict(dilation=2, padding=1)),
    ("output_padding_by_dilation", (1, 2, 3, 3), (2, 2, 2, 2), dict(dilation=3,
                                                                    output_padding=2)),
    ("groups2", (2, 4, 3, 4), (4, 3, 3, 3), dict(groups=2, stride=2)),
    ("depthwise", (2, 3, 4, 4), (3, 1, 3, 3), dict(groups=3, padding=1)),
    ("depthwise_x2", (1, 3, 3, 4), (3, 2, 2, 2), dict(groups=3, stride=2)),
    ("big_padding", (1, 2, 5, 5), (2, 2, 3, 3), dict(padding=2)),
    ("kernel_4_stride_2", (1, 2, 3, 3), (2, 3, 4, 4), dict(stride=2, padding=1)),
    ("unbatched", (3, 4, 4), (3, 2, 3, 3), dict(stride=2, output_padding=1)),
]


def case(rng, dtype, xs, ws, bias, **kw):
    x, w = rand(rng, xs, dtype), rand(rng, ws, dtype)
    b = rand(rng, (ws[1] * kw.get("groups", 1),), dtype) if bias else None
    return x, w, b


def _abs_scale(x, w, b, kw):
    """The sum of |products| behind each output element."""
    return R.conv_transpose2d(np.abs(x), np.abs(w), None if b is None else np.abs(b), **kw)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_conv_transpose2d(rng, device, dtype, xs, ws, kw, bias):
    x, w, b = case(rng, dtype, xs, ws, bias, **kw)
    check_op("conv_transpose2d", (x, w, b), kw, dtype, "conv", device,
             scale=_abs_scale(x, w, b, kw))


def test_conv_transpose2d_is_conv2d_input_gradient(rng, dtype):
    # The definition the kernels share: conv_transpose2d(g, w) is conv2d's input gradient.
    x, w = rand(rng, (2, 4, 9, 8), dtype), rand(rng, (6, 2, 3, 3), dtype)
    go = rand(rng, (2, 6, 5, 4), dtype)
    gx, _, _ = F.conv2d_backward(go, x, w, None, stride=2, padding=1, groups=2)
    # output_padding (0, 1) recovers the width that conv2d's floor division dropped
    out = F.conv_transpose2d(go, w, stride=2, padding=1, output_padding=(0, 1), groups=2)
    assert out.shape == gx.shape == x.shape
    np.testing.assert_array_equal(out, gx)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_conv_transpose2d_backward(rng, device, dtype, xs, ws, kw, bias):
    x, w, b = case(rng, dtype, xs, ws, bias, **kw)
    go = rand(rng, R.conv_transpose2d(x, w, b, **kw).shape, dtype)
    grads = call_unchanged(F.conv_transpose2d_backward, go, x, w, b, **kw)
    assert isinstance(grads, tuple) and len(grads) == 3
    args = (x, w, b)
    absargs = tuple(None if a is None else np.abs(a) for a in args)
    for i, name in enumerate(("input", "weight", "bias")):
        if args[i] is None:
            assert grads[i] is None
            continue
        assert type(grads[i]) is np.ndarray
        # linear in each argument: a step of 1 is exact (see test_conv_backward)
        num = R.numerical_grad(lambda *a: go * R.conv_transpose2d(*a, **kw), args, i, eps=1.0)
        scale = R.numerical_grad(lambda *a: np.abs(go) * R.conv_transpose2d(*a, **kw), absargs,
                                 i, eps=1.0)
        assert_grad_close(grads[i], num, dtype, scale=scale,
                          what=f"conv_transpose2d_backward grad_{name}[{device}]")


TORCH_CASES = [
    ("stride2_outpad", (2, 8, 5, 6), (8, 4, 4, 4), dict(stride=2, padding=1, output_padding=1)),
    ("groups_dilation", (2, 6, 5, 5), (6, 2, 3, 3), dict(groups=3, dilation=2, stride=(1, 2))),
    ("depthwise", (1, 8, 6, 6), (8, 1, 3, 3), dict(groups=8, stride=2, padding=1)),
    ("decoder", (2, 8, 5, 5), (8, 4, 2, 2), dict(stride=2)),
]


@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in TORCH_CASES],
                         ids=[c[0] for c in TORCH_CASES])
def test_conv_transpose2d_torch(rng, device_available, dtype, xs, ws, kw):
    torch = pytest.importorskip("torch")
    x, w, b = case(rng, dtype, xs, ws, True, **kw)
    tensors = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w, b)]
    y = torch.nn.functional.conv_transpose2d(*tensors, **kw)
    out = F.conv_transpose2d(x, w, b, **kw)
    assert_close(out, y.detach().numpy(), dtype, "conv", scale=_abs_scale(x, w, b, kw),
                 what="conv_transpose2d vs torch")
    go = rand(rng, tuple(y.shape), dtype)
    y.backward(torch.tensor(go, dtype=torch.float64))
    abs_t = [torch.tensor(np.abs(a), dtype=torch.float64, requires_grad=True) for a in (x, w, b)]
    torch.nn.functional.conv_transpose2d(*abs_t, **kw).backward(
        torch.tensor(np.abs(go), dtype=torch.float64))
    grads = F.conv_transpose2d_backward(go, x, w, b, **kw)
    for got, t, s, name in zip(grads, tensors, abs_t, ("input", "weight", "bias")):
        assert_close(got, t.grad.numpy(), dtype, "conv", scale=s.grad.numpy(),
                     what=f"conv_transpose2d_backward grad_{name} vs torch")


# ---------------------------------------------------------------------------------------------
# Errors (torch's, as ValueError / TypeError)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("xs, ws, bs, kw, err", [
    ((1, 4, 5, 5), (4, 2, 3, 3), None, dict(stride=2, output_padding=2), ValueError),
    ((1, 4, 5, 5), (4, 2, 3, 3), None, dict(output_padding=1), ValueError),
    ((1, 4, 5, 5), (4, 2, 3, 3), None, dict(padding=5), ValueError),
    ((1, 4, 5, 5), (4, 2, 3, 3), None, dict(groups=3), ValueError),
    ((1, 3, 5, 5), (4, 2, 3, 3), None, {}, ValueError),
    ((1, 4, 5, 5), (4, 2, 3, 3), (3,), {}, ValueError),
    ((1, 4, 5, 5), (4, 2, 3, 3), None, dict(padding="same"), TypeError),
    ((1, 4, 5, 5), (4, 2, 3), None, {}, ValueError),
    ((4, 5), (4, 2, 3, 3), None, {}, ValueError),
    ((1, 4, 5, 5), (4, 2, 3, 3), None, dict(stride=0), ValueError),
])
def test_conv_transpose2d_bad_arguments_raise(device, xs, ws, bs, kw, err):
    torch = pytest.importorskip("torch")
    b = None if bs is None else np.zeros(bs)
    with pytest.raises((RuntimeError, TypeError, ValueError)):  # torch raises too
        torch.nn.functional.conv_transpose2d(torch.zeros(xs), torch.zeros(ws),
                                             None if b is None else torch.zeros(bs), **kw)
    with pytest.raises(err):
        F.conv_transpose2d(np.zeros(xs), np.zeros(ws), b, **kw)
    with pytest.raises(err):
        F.conv_transpose2d_backward(np.zeros((1, 2, 11, 11)), np.zeros(xs), np.zeros(ws), b, **kw)


def test_conv_transpose2d_backward_grad_output_shape_raises(device):
    with pytest.raises(ValueError, match="grad_output"):
        F.conv_transpose2d_backward(np.zeros((1, 2, 6, 6)), np.zeros((1, 4, 5, 5)),
                                    np.zeros((4, 2, 3, 3)))


def test_conv_transpose2d_empty_batch(device, dtype):
    x, w, b = np.zeros((0, 3, 4, 4), dtype), np.ones((3, 2, 3, 3), dtype), np.ones(2, dtype)
    assert F.conv_transpose2d(x, w, b).shape == (0, 2, 6, 6)
    gx, gw, gb = F.conv_transpose2d_backward(np.zeros((0, 2, 6, 6), dtype), x, w, b)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (2,)
    assert not host(gw).any() and not host(gb).any()


# ---------------------------------------------------------------------------------------------
# CPU against CUDA
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def cuda_device():
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    with nc.use_device("cuda"):
        yield "cuda"


PARITY_CASES = [c for c in CASES if c[0] in ("output_padding", "groups2", "depthwise_x2",
                                             "unbatched")]


@pytest.mark.cuda_only
@pytest.mark.parametrize("xs, ws, kw", [c[1:] for c in PARITY_CASES],
                         ids=[c[0] for c in PARITY_CASES])
def test_conv_transpose2d_cpu_vs_cuda(rng, cuda_device, dtype, xs, ws, kw):
    x, w, b = case(rng, dtype, xs, ws, True, **kw)
    go = rand(rng, R.conv_transpose2d(x, w, b, **kw).shape, dtype)
    with nc.use_device("cpu"):
        want_y = F.conv_transpose2d(x, w, b, **kw)
        want = F.conv_transpose2d_backward(go, x, w, b, **kw)
    y = call_unchanged(F.conv_transpose2d, *(on("cuda", a) for a in (x, w, b)), **kw)
    assert is_device_array(y)
    assert_close(y, want_y.astype(np.float64), dtype, "parity", what="conv_transpose2d cuda")
    got = F.conv_transpose2d_backward(*(on("cuda", a) for a in (go, x, w, b)), **kw)
    for g, c, name in zip(got, want, ("input", "weight", "bias")):
        assert is_device_array(g)
        assert_close(g, c.astype(np.float64), dtype, "parity", what=f"grad_{name} cuda")


# ---------------------------------------------------------------------------------------------
# nn.ConvTranspose2d
# ---------------------------------------------------------------------------------------------

def test_conv_transpose2d_layer_shapes_and_init():
    np.random.seed(0)
    m = ConvTranspose2d(6, 8, 3, stride=2, groups=2)
    assert m.weight.shape == (6, 4, 3, 3) and m.bias.shape == (8,)
    # torch's fan_in for a transposed conv's weight: weight.shape[1] * KH * KW
    bound = 1 / np.sqrt(4 * 9)
    w = host(m.weight.data)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(host(m.bias.data)).max() <= bound
    assert ConvTranspose2d(2, 3, 2, bias=False).bias is None
    assert list(m.state_dict()) == ["weight", "bias"]


@pytest.mark.parametrize("kwargs", [dict(in_channels=0, out_channels=2, kernel_size=3),
                                    dict(in_channels=3, out_channels=4, kernel_size=3, groups=2),
                                    dict(in_channels=4, out_channels=3, kernel_size=3, groups=2),
                                    dict(in_channels=2, out_channels=2, kernel_size=3,
                                         padding_mode="reflect"),
                                    dict(in_channels=2, out_channels=2, kernel_size=3,
                                         padding="same")])
def test_conv_transpose2d_layer_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ConvTranspose2d(**kwargs)


def test_conv_transpose2d_layer_matches_torch(rng, device_available):
    torch = pytest.importorskip("torch")
    tm = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=(1, 0), output_padding=1,
                                  groups=2, dilation=(1, 2))
    m = ConvTranspose2d(4, 6, (3, 2), stride=2, padding=(1, 0), output_padding=1, groups=2,
                        dilation=(1, 2))
    assert repr(m) == repr(tm)
    assert repr(ConvTranspose2d(3, 5, 4, bias=False)) == repr(
        torch.nn.ConvTranspose2d(3, 5, 4, bias=False))
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = rand(rng, (2, 4, 5, 5), np.float32)
    want = tm(torch.tensor(x)).detach().numpy()
    assert_close(m(x), want.astype(np.float64), np.float32, "conv", what="ConvTranspose2d")
    # output_size picks the output padding, as in torch
    want = tm(torch.tensor(x), output_size=[9, 11]).detach().numpy()
    got = m(x, output_size=(9, 11))
    assert got.shape == want.shape
    assert_close(got, want.astype(np.float64), np.float32, "conv", what="output_size")
    with pytest.raises(ValueError, match="output size"):
        m(x, output_size=(12, 12))
