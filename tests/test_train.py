"""Training through layers: ``Module.backward``, train-mode BatchNorm2d and Dropout, the models'
backward (skip connections, concatenation), and a three-step SGD run against PyTorch."""

import copy

import numpy as np
import pytest

import numbaconv as nc
import numbaconv.models as M
from numbaconv import functional as F
from numbaconv import nn

from conftest import assert_close, host, is_device_array, rand
from gradcheck import assert_grad_close
from reference import numerical_grad
from test_models import block_models, torch_models


@pytest.fixture(autouse=True)
def seeded():
    np.random.seed(0)  # layer initialisation and dropout masks
    yield


def loss_weights(rng, shape):
    return rng.uniform(-1.0, 1.0, shape)


def forward_backward(model, x, w):
    """``sum(model(x) * w)`` and its gradient with respect to ``x`` (parameters get theirs)."""
    out = model(x)
    g = nc.to_device(np.asarray(w, host(out).dtype), "cuda" if is_device_array(out) else "cpu")
    return out, model.backward(g)


def small_cnn(dtype=np.float32):
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, dtype=dtype), nn.BatchNorm2d(3, dtype=dtype), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=dtype), nn.Tanh(),
        nn.AvgPool2d(2, 1), nn.Flatten(), nn.Linear(4, 5, dtype=dtype), nn.LeakyReLU(0.1),
        nn.Dropout(0.0))


# ---- the saving protocol -------------------------------------------------------------------------

def test_backward_needs_a_train_mode_forward(rng):
    m = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    x = rand(rng, (4, 3), np.float32)
    with pytest.raises(RuntimeError, match=r"ReLU\.backward\(\).*train\(\) mode"):
        m.backward(np.ones((4, 2), np.float32))
    m.eval()(x)
    with pytest.raises(RuntimeError, match="train"):
        m.backward(np.ones((4, 2), np.float32))
    m.train()(x)
    m.backward(np.ones((4, 2), np.float32))
    with pytest.raises(RuntimeError, match="at most once"):  # already backpropagated
        m.backward(np.ones((4, 2), np.float32))


def test_a_new_forward_drops_the_last_one(rng):
    m = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    x1, x2 = rand(rng, (4, 3), np.float64), rand(rng, (4, 3), np.float64)
    m.double()
    m(x1)
    m(x2)
    assert [len(mod._saved) for mod in m.modules()] == [0, 1, 1]
    g = m.backward(np.ones((4, 2)))
    ref = np.ones((4, 2)) * (x2 @ host(m[0].weight.data).T + host(m[0].bias.data) > 0)
    assert_grad_close(g, ref @ host(m[0].weight.data), np.float64, what="grad_input")
    m(x1)
    m.eval()
    assert all(not mod._saved for mod in m.modules())


def test_a_module_called_twice_is_backpropagated_twice(rng):
    """The same Tanh at both ends of a Sequential: its two saved inputs are used last in, first
    out. Checked against central differences in float64."""
    act = nn.Tanh()
    m = nn.Sequential(act, nn.Linear(3, 3, dtype=np.float64), act)
    x = rand(rng, (2, 3), np.float64)
    w = loss_weights(rng, (2, 3))
    _, gx = forward_backward(m, x, w)
    ref = numerical_grad(lambda x: m(x) * w, [x], 0)
    assert_grad_close(gx, ref, np.float64, what="twice-called Tanh")


def test_parameter_gradients_accumulate_until_zero_grad(rng):
    m = nn.Linear(3, 2, dtype=np.float64)
    x1, x2 = rand(rng, (4, 3), np.float64), rand(rng, (4, 3), np.float64)
    g1, g2 = rand(rng, (4, 2), np.float64), rand(rng, (4, 2), np.float64)
    m(x1)
    m.backward(g1)
    first = m.weight.grad
    m(x2)
    m.backward(g2)
    assert m.weight.grad is first  # summed in place
    assert_grad_close(m.weight.grad, g1.T @ x1 + g2.T @ x2, np.float64, what="weight.grad")
    assert_grad_close(m.bias.grad, g1.sum(0) + g2.sum(0), np.float64, what="bias.grad")
    m.zero_grad()
    assert m.weight.grad is None and m.bias.grad is None


def test_inputs_are_not_modified(rng):
    m = small_cnn(np.float64)
    x = rand(rng, (2, 2, 8, 8), np.float64)
    x0 = x.copy()
    w = loss_weights(rng, (2, 5))
    w0 = w.copy()
    forward_backward(m, x, w)
    assert np.array_equal(x, x0) and np.array_equal(w, w0)


def test_fused_layers_are_for_inference(rng):
    x = rand(rng, (2, 4, 5, 5), np.float32)
    f = nn.fuse(nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU())).train()
    f(x)
    with pytest.raises(RuntimeError, match="fused activation or residual"):
        f.backward(np.ones((2, 4, 3, 3), np.float32))
    block = nn.fuse(M.BasicBlock(4, 4)).train()
    block(x)
    with pytest.raises(NotImplementedError, match="FusedBasicBlock has no backward"):
        block.backward(np.ones((2, 4, 5, 5), np.float32))


# ---- gradients against float64 central differences -----------------------------------------------

def central_difference_check(m, x, w):
    """Input and parameter gradients of ``sum(m(x) * w)`` (float64, train mode) against central
    differences. BatchNorm in train mode normalises by the batch, so every perturbed forward
    is a function of the parameters alone (the running statistics it updates are not read)."""
    m.zero_grad()
    _, gx = forward_backward(m, x, w)
    assert_grad_close(gx, numerical_grad(lambda x: host(m(x)) * w, [x], 0), np.float64,
                      what="input")
    for name, p in m.named_parameters():
        def f(values, p=p):
            p.data = values
            return host(m(x)) * w
        original = host(p.data).copy()
        ref = numerical_grad(f, [original], 0)
        p.data = original
        assert_grad_close(p.grad, ref, np.float64, what=name)


def test_sequential_backward_central_differences(rng):
    m = small_cnn(np.float64)
    central_difference_check(m, rand(rng, (2, 2, 8, 8), np.float64), loss_weights(rng, (2, 5)))


LAYERS = {
    "conv1d": (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1, dilation=1, groups=1), (2, 2, 7)),
    "conv2d_groups": (lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), (2, 4, 5, 5)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1,
                                                    output_padding=1), (2, 3, 3, 4)),
    "max_pool": (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 2, 6, 5)),
    "avg_pool": (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 2, 6, 5)),
    "adaptive_avg": (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 2, 5, 7)),
    "adaptive_max": (lambda: nn.AdaptiveMaxPool2d(2), (2, 2, 5, 5)),
    "relu6": (lambda: nn.ReLU6(), (3, 8)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), (3, 8)),
    "sigmoid": (lambda: nn.Sigmoid(), (3, 8)),
    "silu": (lambda: nn.SiLU(), (3, 8)),
    "gelu": (lambda: nn.GELU(), (3, 8)),
    "gelu_tanh": (lambda: nn.GELU("tanh"), (3, 8)),
    "hardswish": (lambda: nn.Hardswish(), (3, 8)),
    "softmax": (lambda: nn.Softmax(dim=1), (3, 4, 2)),
    "log_softmax": (lambda: nn.LogSoftmax(dim=-1), (3, 4, 2)),
    "flatten": (lambda: nn.Sequential(nn.Flatten(1, 2), nn.Linear(6, 2)), (2, 2, 3)),
    "identity": (lambda: nn.Identity(), (2, 3)),
    "bn_no_affine": (lambda: nn.BatchNorm2d(3, affine=False), (3, 3, 2, 2)),
    "bn_no_stats": (lambda: nn.BatchNorm2d(3, track_running_stats=False), (3, 3, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_backward_central_differences(name, rng):
    """Every layer's backward (input and parameter gradients), float64, train mode."""
    make, shape = LAYERS[name]
    m = make().double()
    x = rand(rng, shape, np.float64)
    if name == "max_pool" or name == "adaptive_max":
        x += np.arange(x.size).reshape(shape) * 1e-2  # no ties within a window
    central_difference_check(m, x, loss_weights(rng, host(m(x)).shape))


@pytest.mark.parametrize("what", ["basic", "basic_down", "inverted_res", "inverted_t1", "fire"])
def test_block_backward_central_differences(what, rng):
    """Each model block's backward (residual adds, downsample, concatenation), float64."""
    _, m, shape = next(b for b in block_models(True) if b[0] == what)
    m.double()
    x = rand(rng, shape, np.float64)
    w = loss_weights(rng, host(m(x)).shape)
    central_difference_check(m, x, w)


# ---- layers in train mode ------------------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_training_matches_torch(momentum, rng):
    torch = pytest.importorskip("torch")
    ours = nn.BatchNorm2d(3, momentum=momentum, dtype=np.float64)
    theirs = torch.nn.BatchNorm2d(3, momentum=momentum).double()
    for step in range(3):
        x = rand(rng, (4, 3, 5, 5), np.float64) * (step + 1) + step
        y = ours(x)
        ty = theirs(torch.from_numpy(x))
        assert_close(y, ty.detach().numpy(), np.float64, "norm", what=f"step {step}")
    for k, v in theirs.state_dict().items():
        assert_close(np.asarray(ours.state_dict()[k], np.float64), v.numpy().astype(np.float64),
                     np.float64, "norm", what=k)
    assert int(ours.num_batches_tracked) == 3
    ours.eval(), theirs.eval()
    x = rand(rng, (2, 3, 4, 4), np.float64)
    assert_close(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), np.float64, "norm",
                 what="eval")


def test_batchnorm_without_running_stats_uses_the_batch(rng):
    bn = nn.BatchNorm2d(3, track_running_stats=False, dtype=np.float64).eval()
    x = rand(rng, (4, 3, 2, 2), np.float64) + 5
    y = bn(x)
    mean, var = x.mean((0, 2, 3), keepdims=True), x.var((0, 2, 3), keepdims=True)
    assert_close(y, (x - mean) / np.sqrt(var + 1e-5), np.float64, "norm")
    assert bn.running_mean is None and "running_mean" not in bn.state_dict()


def test_dropout_layer(rng):
    d = nn.Dropout(0.25)
    x = rand(rng, (50, 40), np.float32)
    np.random.seed(7)
    y = d(x)
    np.random.seed(7)
    keep = np.random.random_sample(x.shape) >= 0.25
    scale = np.float32(1 / 0.75)  # torch's x * (1 / (1 - p))
    assert np.array_equal(y, np.where(keep, x * scale, 0))
    g = rand(rng, x.shape, np.float32)
    assert np.array_equal(d.backward(g), np.where(keep, g * scale, 0))
    d.eval()
    assert d(x) is x


# ---- models against PyTorch autograd -------------------------------------------------------------

# Large enough that the last BatchNorms see 8 values per channel: with 2 (a 1x1 map at batch 2)
# the normalisation is ill-conditioned and float64 rounding differences grow to ~1e-9.
TORCH_INPUT = {"lenet5": (2, 1, 32, 32), "resnet18": (2, 3, 64, 64),
               "mobilenet_v2": (2, 3, 64, 64), "squeezenet1_1": (2, 3, 33, 33)}


@pytest.mark.parametrize("name", sorted(TORCH_INPUT))
def test_model_backward_matches_torch_autograd(name, rng):
    """A train-mode forward and backward of each model in float64 (batch statistics, dropout with
    p = 0): the input gradient, every parameter gradient and the updated running statistics
    equal PyTorch autograd's."""
    torch = pytest.importorskip("torch")
    kwargs = {"dropout": 0.0} if name in ("mobilenet_v2", "squeezenet1_1") else {}
    torch.manual_seed(0)
    theirs = torch_models(torch)[name](**({"num_classes": 10} if name != "lenet5" else {}))
    for mod in theirs.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    theirs.double().train()
    ours = getattr(M, name)(**({"num_classes": 10} if name != "lenet5" else {}), **kwargs)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    ours.double().train()
    x = rand(rng, TORCH_INPUT[name], np.float64)
    out, gx = forward_backward(ours, x, w := loss_weights(rng, (2, 10)))
    tx = torch.from_numpy(x).requires_grad_()
    tout = theirs(tx)
    (tout * torch.from_numpy(w)).sum().backward()
    assert_close(out, tout.detach().numpy(), np.float64, "parity", what=f"{name} output")
    assert_grad_close(gx, tx.grad.numpy(), np.float64, what=f"{name} input")
    grads = dict(ours.named_parameters())
    for k, p in theirs.named_parameters():
        assert_grad_close(grads[k].grad, p.grad.numpy(), np.float64, what=f"{name} {k}")
    state = ours.state_dict()
    for k, v in theirs.state_dict().items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert np.allclose(host(state[k]), v.numpy(), rtol=1e-10, atol=1e-12), k


@pytest.mark.parametrize("optimizer", ["sgd", "sgd_nesterov", "adam"])
def test_three_training_steps_match_pytorch(optimizer, rng):
    """Three steps of a small CNN (conv, BatchNorm, ReLU, pooling, linear) with cross-entropy,
    SGD with momentum and weight decay (or Adam), in float32: the weights, BatchNorm's running
    statistics and the losses equal PyTorch's within float32 tolerance."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    theirs = tnn.Sequential(tnn.Conv2d(1, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(),
                            tnn.MaxPool2d(2), tnn.Conv2d(4, 8, 3), tnn.ReLU(),
                            tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(8, 10))
    ours = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    if optimizer == "adam":
        opt = nc.optim.Adam(ours.parameters(), lr=0.01, weight_decay=1e-3)
        topt = torch.optim.Adam(theirs.parameters(), lr=0.01, weight_decay=1e-3)
    else:
        nesterov = optimizer == "sgd_nesterov"
        opt = nc.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3,
                           nesterov=nesterov)
        topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3,
                               nesterov=nesterov)
    for step in range(3):
        x = rand(rng, (8, 1, 10, 10), np.float32)
        y = rng.integers(0, 10, 8)
        logits = ours(x)
        loss = F.cross_entropy(logits, y)
        ours.backward(F.cross_entropy_backward(1.0, logits, y)[0])
        opt.step()
        ours.zero_grad()
        tloss = tnn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        topt.zero_grad()
        assert abs(float(loss) - tloss.item()) <= 1e-5 * (1 + abs(tloss.item())), step
    for k, v in theirs.state_dict().items():
        got = np.asarray(ours.state_dict()[k])
        if got.dtype.kind == "f":
            assert_close(got, v.numpy().astype(np.float64), np.float32,
                         "parity", scale=np.abs(v.numpy()).max() + 1, what=k)
        else:
            assert got == v.numpy(), k


# ---- devices -------------------------------------------------------------------------------------

def test_training_step_on_device_equals_cpu(device, rng):
    """Each block and a small CNN: a train-mode forward, backward and SGD step on the device give
    the CPU's output, gradients and weights; gradients stay on the parameters' device."""
    # basic_down's backward covers basic's and inverted_res's covers inverted_t1's (the
    # simulator runs every GPU thread in Python: each block costs ~35 s there).
    with nc.use_device("cpu"):
        models = [(what, m, shape) for what, m, shape in block_models(True)
                  if what in ("basic_down", "inverted_res", "fire")]
        models.append(("cnn", small_cnn(), (2, 2, 8, 8)))
    for what, ref, shape in models:
        m = copy.deepcopy(ref).to(device)
        x = rand(rng, shape, np.float32)
        w = loss_weights(rng, host(ref(x)).shape)
        results = []
        for model, where in ((ref, "cpu"), (m, device)):
            with nc.use_device(where):
                out, gx = forward_backward(model, nc.to_device(x, where), w)
                grads = {k: host(p.grad) for k, p in model.named_parameters()}
                nc.optim.SGD(model.parameters(), lr=0.5, momentum=0.9).step()
                results.append((host(out), host(gx), grads,
                                {k: host(p.data) for k, p in model.named_parameters()}))
        assert all(p.grad is not None and p.device == device for p in m.parameters()), what
        (out0, gx0, g0, p0), (out1, gx1, g1, p1) = results
        assert_close(out1, out0.astype(np.float64), np.float32, "parity",
                     scale=np.abs(out0).max() + 1, what=f"{what} out")
        assert_close(gx1, gx0.astype(np.float64), np.float32, "parity",
                     scale=np.abs(gx0).max() + 1, what=f"{what} grad_input")
        for k in g0:
            for part, got, want in (("grad", g1[k], g0[k]), ("data", p1[k], p0[k])):
                assert_close(got, want.astype(np.float64), np.float32, "parity",
                             scale=np.abs(want).max() + 1, what=f"{what} {k}.{part}")


def test_add_cat_split(device, dtype, rng):
    a, b = rand(rng, (2, 3, 4, 5), dtype), rand(rng, (2, 2, 4, 5), dtype)
    c = rand(rng, (2, 3, 4, 5), dtype)
    da, db, dc = (nc.to_device(v) for v in (a, b, c))
    assert_close(F._add(da, dc, "relu"), np.maximum(a.astype(np.float64) + c, 0), dtype,
                 "elementwise")
    cat = F._cat_channels(da, db)
    assert is_device_array(cat) == (device == "cuda")
    assert np.array_equal(host(cat), np.concatenate([a, b], 1))
    first, second = F._split_channels(cat, 3)
    assert np.array_equal(host(first), a) and np.array_equal(host(second), b)
    acc = nc.to_device(a.copy())
    F._accumulate(acc, dc)
    assert_close(acc, a.astype(np.float64) + c, dtype, "elementwise")
    with pytest.raises(ValueError, match="shapes differ"):
        F._add(da, db)
