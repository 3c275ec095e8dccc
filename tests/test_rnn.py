"""Recurrent layers: F.rnn / F.lstm / F.gru and their backward ops against the float64 reference
(and central differences of it), nn.RNN / LSTM / GRU against PyTorch layers with the same
weights (outputs, states and autograd gradients), CPU against CUDA, and bad input.

Tolerances. A step rounds a GEMM of I + H products and a few exp / tanh (vecmath's float32
versions: 2-6 ulp); the error then passes through the following steps, shrunk by the gates'
derivatives, so it stays a few times one step's: float32 outputs are held to 2e-6 relative and
absolute (x max(1, |ref|)), float64 ones to 1e-12. Central differences: gradcheck's GRAD_TOL.
"""

import numpy as np
import pytest

import numbaconv as nc
import reference as R
from conftest import SIM, assert_close, call_unchanged, cuda_skip_reason, host, is_device_array, on
from gradcheck import assert_grad_close

F = nc.functional

RNN_TOL = {np.float32: (2e-6, 2e-6), np.float64: (1e-12, 1e-12)}
# (op, G, nonlinearity)
OPS = [("rnn", 1, "tanh"), ("rnn", 1, "relu"), ("lstm", 4, None), ("gru", 3, None)]
OP_IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def assert_rnn_close(got, ref, dtype, what):
    got = host(got)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}"
    rtol, atol = RNN_TOL[np.dtype(dtype).type]
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * max(1.0, np.abs(ref).max(initial=0)),
                               err_msg=what)


def make(rng, op, g, dtype, t, n, i, h, bias=True, states=True, scale=0.5):
    """(positional args of F.<op>, kwargs): random input, states and weights."""
    x = rng.uniform(-1, 1, (t, n, i)).astype(dtype)
    hx = rng.uniform(-1, 1, (n, h)).astype(dtype) if states else None
    cx = rng.uniform(-1, 1, (n, h)).astype(dtype) if states else None
    w_ih = rng.uniform(-scale, scale, (g * h, i)).astype(dtype)
    w_hh = rng.uniform(-scale, scale, (g * h, h)).astype(dtype)
    b_ih = rng.uniform(-scale, scale, g * h).astype(dtype) if bias else None
    b_hh = rng.uniform(-scale, scale, g * h).astype(dtype) if bias else None
    args = (x, hx) + ((cx,) if op == "lstm" else ()) + (w_ih, w_hh, b_ih, b_hh)
    return args


def op_kwargs(op, nl, reverse, lengths):
    kw = dict(reverse=reverse, lengths=lengths)
    if op == "rnn":
        kw["nonlinearity"] = nl
    return kw


# (T, N, I, H): tiny for the simulator; the big ones cover partial panels (N % 8), several
# hidden blocks and GEMM tiles, and a hidden size that is no multiple of the block.
SMALL = [(4, 3, 5, 6), (1, 1, 2, 3)]
BIG = [(7, 19, 33, 70), (5, 2, 130, 49), (4, 1, 20, 90)]


@pytest.mark.parametrize("op, g, nl", OPS, ids=OP_IDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_forward_vs_reference(rng, device, dtype, op, g, nl, reverse, with_lengths):
    for t, n, i, h in SMALL:
        args = make(rng, op, g, dtype, t, n, i, h)
        lengths = rng.integers(0, t + 1, n) if with_lengths else None
        kw = op_kwargs(op, nl, reverse, lengths)
        got = call_unchanged(getattr(F, op), *args, **kw)
        ref = getattr(R, op)(*args, **kw)
        assert len(got) == len(ref)
        for a, b, name in zip(got, ref, ("output", "h_n", "c_n")):
            assert type(a) is np.ndarray
            assert_rnn_close(a, b, dtype, f"{op} {name} [{device}] {(t, n, i, h)}")


@pytest.mark.parametrize("op, g, nl", OPS, ids=OP_IDS)
def test_forward_big(rng, device_big, dtype, op, g, nl):
    for (t, n, i, h), reverse in zip(BIG, (False, True, False)):
        args = make(rng, op, g, dtype, t, n, i, h, scale=0.2)
        lengths = rng.integers(1, t + 1, n)
        for lens in (None, lengths):
            kw = op_kwargs(op, nl, reverse, lens)
            got, ref = getattr(F, op)(*args, **kw), getattr(R, op)(*args, **kw)
            for a, b, name in zip(got, ref, ("output", "h_n", "c_n")):
                assert_rnn_close(a, b, dtype, f"{op} {name} {(t, n, i, h)}")


@pytest.mark.parametrize("op, g, nl", OPS, ids=OP_IDS)
def test_forward_defaults(rng, device, op, g, nl):
    # hx / cx None are zeros, biases None are zeros; empty batch and empty sequence.
    t, n, i, h = 3, 2, 3, 4
    args = make(rng, op, g, np.float64, t, n, i, h, bias=False, states=False)
    kw = op_kwargs(op, nl, False, None)
    for a, b in zip(getattr(F, op)(*args, **kw), getattr(R, op)(*args, **kw)):
        assert_rnn_close(a, b, np.float64, f"{op} defaults")
    for shape in ((0, 2, 3, 4), (3, 0, 3, 4)):
        args = make(rng, op, g, np.float64, *shape)
        got = getattr(F, op)(*args, **kw)
        assert host(got[0]).shape == shape[:2] + (4,)
        if shape[0] == 0:  # no steps: the states come back unchanged
            assert np.array_equal(host(got[1]), args[1])


# ---------------------------------------------------------------------------------------------
# Backward through time
# ---------------------------------------------------------------------------------------------

def loss_fn(op, kw, grads):
    """sum(grad_k * output_k) of the reference, as a function of the op's arrays."""
    ref = getattr(R, op)

    def f(*args):
        outs = ref(*args, **kw)
        return sum(np.sum(gk * o) for gk, o in zip(grads, outs) if gk is not None)

    return f


@pytest.mark.parametrize("op, g, nl", OPS, ids=OP_IDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_backward_vs_central_differences(rng, device, dtype, op, g, nl, reverse, with_lengths):
    t, n, i, h = 3, 3, 2, 3
    args = make(rng, op, g, dtype, t, n, i, h, scale=0.8)
    lengths = np.array([3, 1, 2]) if with_lengths else None
    kw = op_kwargs(op, nl, reverse, lengths)
    outs = getattr(F, op)(*args, **kw, return_workspace=True)
    ws = outs[-1]
    grads = tuple(rng.uniform(-1, 1, host(o).shape).astype(dtype) for o in outs[:-1])
    back = getattr(F, op + "_backward")
    got = call_unchanged(back, *grads, *args, **kw, workspace=ws)
    again = back(*grads, *args, **kw)  # the forward recomputed
    assert len(got) == len(args) + 1 and got[-1] is None
    f = loss_fn(op, kw, grads)
    names = ["input", "hx"] + (["cx"] if op == "lstm" else []) + [
        "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    for k, name in enumerate(names):
        num = R.numerical_grad(f, args, k)
        assert type(got[k]) is np.ndarray
        assert_grad_close(got[k], num, dtype, what=f"{op}_backward grad_{name} [{device}]")
        assert np.array_equal(host(got[k]), host(again[k])), f"{name}: workspace vs recompute"


@pytest.mark.parametrize("op, g, nl", OPS, ids=OP_IDS)
def test_backward_none_arguments(rng, device, op, g, nl):
    # hx / biases None: their gradients are None; grad_h_n None counts as zero.
    t, n, i, h = 2, 2, 3, 2
    args = make(rng, op, g, np.float64, t, n, i, h, bias=False, states=False)
    kw = op_kwargs(op, nl, True, None)
    outs = getattr(F, op)(*args, **kw)
    go = rng.uniform(-1, 1, host(outs[0]).shape)
    nstates = 2 if op == "lstm" else 1
    got = getattr(F, op + "_backward")(go, *([None] * nstates), *args, **kw)
    assert got[1] is None and got[-2] is None and got[-3] is None and got[-1] is None
    num = R.numerical_grad(loss_fn(op, kw, (go,)), args, 0)
    assert_grad_close(got[0], num, np.float64, what=f"{op} grad_input")


@pytest.mark.parametrize("op, g, nl", OPS, ids=OP_IDS)
def test_backward_big(rng, device_big, op, g, nl):
    # Many blocks, tiles and panels: float32 against float64 on the same device.
    t, n, i, h = 6, 11, 21, 53
    args = make(rng, op, g, np.float64, t, n, i, h, scale=0.2)
    kw = op_kwargs(op, nl, True, rng.integers(1, t + 1, n))
    outs = getattr(F, op)(*args, **kw)
    grads = tuple(rng.uniform(-1, 1, host(o).shape) for o in outs)
    want = getattr(F, op + "_backward")(*grads, *args, **kw)
    args32 = tuple(None if a is None else a.astype(np.float32) for a in args)
    grads32 = tuple(a.astype(np.float32) for a in grads)
    got = getattr(F, op + "_backward")(*grads32, *args32, **kw)
    for a, b in zip(got[:-1], want[:-1]):
        b = host(b)
        assert_close(a, b, np.float32, "linear", scale=np.maximum(np.abs(b).max(), 1.0),
                     what=f"{op} float32 vs float64 gradient")


# ---------------------------------------------------------------------------------------------
# Layers against PyTorch
# ---------------------------------------------------------------------------------------------

LAYERS = [("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {}), ("GRU", {})]
LAYER_IDS = ["RNN", "RNN_relu", "LSTM", "GRU"]
CONFIGS = [  # num_layers, bidirectional, batch_first
    (1, False, False), (1, True, True), (2, False, True), (2, True, False)]
CONFIG_IDS = ["1layer", "1layer-bi-bf", "2layers-bf", "2layers-bi"]


def torch_pair(torch, name, extra, num_layers, bidirectional, batch_first, dtype, i=3, h=4,
               bias=True):
    tm = getattr(torch.nn, name)(i, h, num_layers=num_layers, bidirectional=bidirectional,
                                 batch_first=batch_first, bias=bias, **extra).double()
    m = getattr(nc.nn, name)(i, h, num_layers=num_layers, bidirectional=bidirectional,
                             batch_first=batch_first, bias=bias, dtype=dtype, **extra)
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    assert list(m.state_dict()) == list(sd)
    assert all(m.state_dict()[k].shape == v.shape for k, v in sd.items())
    m.load_state_dict(sd)
    return tm, m


@pytest.mark.parametrize("name, extra", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("num_layers, bidirectional, batch_first", CONFIGS, ids=CONFIG_IDS)
def test_layer_vs_torch(rng, device_available, dtype, name, extra, num_layers, bidirectional,
                        batch_first):
    torch = pytest.importorskip("torch")
    t, n, i, h = 3, 2, 3, 4
    tm, m = torch_pair(torch, name, extra, num_layers, bidirectional, batch_first, dtype, i, h)
    d = 2 if bidirectional else 1
    x = rng.uniform(-1, 1, (n, t, i) if batch_first else (t, n, i)).astype(dtype)
    h0 = rng.uniform(-1, 1, (num_layers * d, n, h)).astype(dtype)
    c0 = rng.uniform(-1, 1, (num_layers * d, n, h)).astype(dtype)
    lstm = name == "LSTM"
    hx = (h0, c0) if lstm else h0
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    th = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (h0, c0)]
    tout, tstate = tm(tx, tuple(th) if lstm else th[0])
    out, state = m(x, hx)
    assert device_available == "cuda" or type(out) is np.ndarray
    assert_rnn_close(out, tout.detach().numpy(), dtype, f"{name} output")
    tstates = tstate if lstm else (tstate,)
    states = state if lstm else (state,)
    for a, b in zip(states, tstates):
        assert_rnn_close(a, b.detach().numpy(), dtype, f"{name} state")
    # backward: a random linear function of output and final states
    gout = rng.uniform(-1, 1, tuple(out.shape)).astype(dtype)
    gst = [rng.uniform(-1, 1, tuple(s.shape)).astype(dtype) for s in states]
    loss = (tout * torch.tensor(gout, dtype=torch.float64)).sum()
    for s, gs in zip(tstates, gst):
        loss = loss + (s * torch.tensor(gs, dtype=torch.float64)).sum()
    loss.backward()
    gx, ghx = m.backward((gout, tuple(gst) if lstm else gst[0]))
    assert_rnn_close(gx, tx.grad.numpy(), dtype, f"{name} grad input")
    ghx = ghx if lstm else (ghx,)
    for a, b in zip(ghx, th):
        assert_rnn_close(a, b.grad.numpy(), dtype, f"{name} grad hx")
    params = dict(m.named_parameters())
    for k, p in tm.named_parameters():
        assert_rnn_close(params[k].grad, p.grad.numpy(), dtype, f"{name} grad {k}")


@pytest.mark.parametrize("name, extra", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layer_lengths_vs_torch_packed(rng, device_available, name, extra, bidirectional):
    torch = pytest.importorskip("torch")
    t, n, i, h = 4, 3, 3, 4
    tm, m = torch_pair(torch, name, extra, 2, bidirectional, True, np.float64, i, h)
    x = rng.uniform(-1, 1, (n, t, i))
    lengths = np.array([2, 4, 1])
    tx = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.tensor(lengths), batch_first=True,
                                                     enforce_sorted=False)
    tout, tstate = tm(packed)
    tout, _ = torch.nn.utils.rnn.pad_packed_sequence(tout, batch_first=True, total_length=t)
    out, state = m(x, lengths=lengths)
    assert_rnn_close(out, tout.detach().numpy(), np.float64, "packed output")
    tstates = tstate if name == "LSTM" else (tstate,)
    states = state if name == "LSTM" else (state,)
    for a, b in zip(states, tstates):
        assert_rnn_close(a, b.detach().numpy(), np.float64, "packed state")
    gout = rng.uniform(-1, 1, tuple(out.shape))
    (tout * torch.tensor(gout)).sum().backward()
    gx = m.backward(gout)
    assert_rnn_close(gx, tx.grad.numpy(), np.float64, "packed grad input")
    params = dict(m.named_parameters())
    for k, p in tm.named_parameters():
        assert_rnn_close(params[k].grad, p.grad.numpy(), np.float64, f"packed grad {k}")


@pytest.mark.parametrize("name, extra", LAYERS, ids=LAYER_IDS)
def test_layer_unbatched_no_bias(rng, device_available, name, extra):
    torch = pytest.importorskip("torch")
    tm, m = torch_pair(torch, name, extra, 2, True, False, np.float64, bias=False)
    x = rng.uniform(-1, 1, (5, 3))
    tx = torch.tensor(x, requires_grad=True)
    tout, _ = tm(tx)
    out, _ = m(x)
    assert_rnn_close(out, tout.detach().numpy(), np.float64, "unbatched output")
    gout = rng.uniform(-1, 1, tuple(out.shape))
    (tout * torch.tensor(gout)).sum().backward()
    assert_rnn_close(m.backward(gout), tx.grad.numpy(), np.float64, "unbatched grad input")


def test_layer_init_and_repr():
    m = nc.nn.LSTM(10, 16, num_layers=2, bidirectional=True, batch_first=True, dropout=0.25)
    keys = [f"{k}_l{layer}{s}" for layer in range(2) for s in ("", "_reverse")
            for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert list(m.state_dict()) == keys
    assert m.state_dict()["weight_ih_l1"].shape == (64, 32)
    for v in m.state_dict().values():
        assert v.dtype == np.float32 and np.abs(v).max() <= 0.25 and np.abs(v).max() > 0.2
    assert repr(m) == "LSTM(10, 16, num_layers=2, batch_first=True, dropout=0.25, " \
        "bidirectional=True)"
    assert repr(nc.nn.RNN(3, 4, nonlinearity="relu", bias=False)) == \
        "RNN(3, 4, nonlinearity='relu', bias=False)"
    assert len(list(nc.nn.GRU(3, 4, bias=False).parameters())) == 2


def test_layer_dropout_between_layers(rng):
    # Train mode drops between layers (a repeatable mask with np.random.seed), eval mode not;
    # the input gradient matches central differences of the same-seeded forward.
    m = nc.nn.GRU(3, 4, num_layers=2, dropout=0.5, dtype=np.float64)
    x = rng.uniform(-1, 1, (3, 2, 3))
    go = rng.uniform(-1, 1, (3, 2, 4))

    def f(x):
        np.random.seed(7)
        return np.sum(go * m(x)[0])

    m.eval()
    plain = m(x)[0]
    m.train()
    np.random.seed(7)
    dropped = m(x)[0]
    assert not np.allclose(plain, dropped)
    gx = m.backward(go)
    num = R.numerical_grad(f, (x,), 0)
    assert_grad_close(gx, num, np.float64, what="GRU dropout grad input")


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


@pytest.mark.cuda_only
@pytest.mark.parametrize("op, g, nl", OPS, ids=OP_IDS)
def test_cpu_vs_cuda(rng, cuda_device, dtype, op, g, nl):
    t, n, i, h = (3, 2, 3, 4) if SIM else (9, 21, 40, 70)
    args = make(rng, op, g, dtype, t, n, i, h)
    kw = op_kwargs(op, nl, True, rng.integers(1, t + 1, n))
    with nc.use_device("cpu"):
        want = getattr(F, op)(*args, **kw)
        grads = tuple(rng.uniform(-1, 1, o.shape).astype(dtype) for o in want)
        want_g = getattr(F, op + "_backward")(*grads, *args, **kw)
    dev = tuple(None if a is None else on("cuda", a) for a in args)
    got = getattr(F, op)(*dev, **kw, return_workspace=True)
    got_g = getattr(F, op + "_backward")(*(on("cuda", a) for a in grads), *dev, **kw,
                                         workspace=got[-1])
    for a, b in zip(got[:-1] + got_g[:-1], want + want_g[:-1]):
        assert is_device_array(a)
        b = host(b).astype(np.float64)
        assert_close(a, b, dtype, "parity", scale=np.maximum(np.abs(b).max(), 1.0),
                     what=f"{op} cuda vs cpu")


@pytest.mark.cuda_only
def test_layer_on_cuda(rng, cuda_device):
    m = nc.nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64)
    x = rng.uniform(-1, 1, (3, 2, 3))
    out, (h_n, c_n) = m(x)  # host input moved to the parameters' device
    assert is_device_array(out)
    sd = {k: host(v) for k, v in m.state_dict().items()}
    with nc.use_device("cpu"):
        ref = nc.nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, device="cpu")
        ref.load_state_dict(sd)
        rout, (rh, rc) = ref(x)
        rgx = ref.backward(np.ones_like(rout))
    gx = m.backward(np.ones(tuple(out.shape)))
    for a, b in ((out, rout), (h_n, rh), (c_n, rc), (gx, rgx)):
        assert_close(a, b, np.float64, "parity")


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

def test_functional_bad_input_raises(device):
    x, h0 = np.zeros((3, 2, 5)), np.zeros((2, 4))
    wi, wh = np.zeros((16, 5)), np.zeros((16, 4))
    with pytest.raises(ValueError, match="3-D"):
        F.lstm(np.zeros((3, 5)), h0, h0, wi, wh)
    with pytest.raises(ValueError, match="input_size"):
        F.lstm(np.zeros((3, 2, 6)), h0, h0, wi, wh)
    with pytest.raises(ValueError, match="hx"):
        F.lstm(x, np.zeros((3, 4)), h0, wi, wh)
    with pytest.raises(ValueError, match="cx"):
        F.lstm(x, h0, np.zeros((2, 5)), wi, wh)
    with pytest.raises(ValueError, match="weight_hh"):
        F.gru(x, h0, wi[:12], wh)
    with pytest.raises(ValueError, match="bias_ih"):
        F.lstm(x, h0, h0, wi, wh, np.zeros(15), np.zeros(16))
    with pytest.raises(TypeError, match="dtype"):
        F.lstm(x, h0.astype(np.float32), h0, wi, wh)
    with pytest.raises(TypeError):
        F.rnn(x.astype(np.int64), None, wi[:4], wh[:4, :])
    with pytest.raises(ValueError, match="nonlinearity"):
        F.rnn(x, None, wi[:4], wh[:4], nonlinearity="sigmoid")
    for bad in (np.array([1, 4]), np.array([1, -1]), np.array([1, 2, 3])):
        with pytest.raises(ValueError, match="lengths"):
            F.gru(x, None, wi[:12], wh[:12], lengths=bad)
    with pytest.raises(TypeError, match="lengths"):
        F.gru(x, None, wi[:12], wh[:12], lengths=np.array([1.0, 2.0]))


def test_backward_bad_input_raises(device):
    x, h0 = np.zeros((3, 2, 5)), np.zeros((2, 4))
    wi, wh = np.zeros((12, 5)), np.zeros((12, 4))
    _, _, ws = F.gru(x, h0, wi, wh, return_workspace=True)
    with pytest.raises(ValueError, match="grad_output"):
        F.gru_backward(np.zeros((3, 2, 5)), None, x, h0, wi, wh)
    with pytest.raises(ValueError, match="grad_h_n"):
        F.gru_backward(None, np.zeros((1, 4)), x, h0, wi, wh)
    with pytest.raises(ValueError, match="workspace"):
        F.gru_backward(None, None, x, h0, wi, wh, reverse=True, workspace=ws)
    with pytest.raises(TypeError, match="workspace"):
        F.gru_backward(None, None, x, h0, wi, wh, workspace=np.zeros(3))


def test_layer_bad_input_raises():
    m = nc.nn.LSTM(5, 4, num_layers=2)
    x = np.zeros((3, 2, 5), np.float32)
    with pytest.raises(ValueError, match="input_size"):
        m(np.zeros((3, 2, 6), np.float32))
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        m(np.zeros((1, 3, 2, 5), np.float32))
    with pytest.raises(ValueError, match="h_0"):
        m(x, (np.zeros((1, 2, 4), np.float32), np.zeros((2, 2, 4), np.float32)))
    with pytest.raises(ValueError, match="c_0"):
        m(x, (np.zeros((2, 2, 4), np.float32), np.zeros((2, 3, 4), np.float32)))
    with pytest.raises(TypeError, match="tuple"):
        m(x, np.zeros((2, 2, 4), np.float32))
    with pytest.raises(TypeError, match="tuple"):
        nc.nn.GRU(5, 4)(x, (np.zeros((1, 2, 4)), np.zeros((1, 2, 4))))
    with pytest.raises(ValueError, match="lengths"):
        m(x, lengths=np.array([4, 1]))
    with pytest.raises(ValueError):
        nc.nn.GRU(5, 0)
    with pytest.raises(ValueError):
        nc.nn.GRU(5, 4, dropout=1.5)
    with pytest.raises(ValueError):
        nc.nn.RNN(5, 4, nonlinearity="gelu")
    with pytest.raises(NotImplementedError, match="proj_size"):
        nc.nn.LSTM(5, 4, proj_size=2)
    with pytest.raises(RuntimeError, match="no forward pass"):
        m.backward(np.zeros((3, 2, 4), np.float32))
