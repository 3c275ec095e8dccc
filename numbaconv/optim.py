"""Optimisers with ``torch.optim``'s update rules: :class:`SGD` and :class:`Adam`.

They update :class:`numbaconv.nn.Parameter` objects in place from their ``.grad`` arrays (a
parameter whose ``.grad`` is None is skipped), with one update kernel per parameter on the device
where it lives (``numbaconv.cpu.optim`` / ``numbaconv.cuda.optim``). The arithmetic is
``torch.optim``'s single-tensor path, operation for operation, so a few steps agree with PyTorch
to within rounding.

Example
-------
>>> opt = nc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
>>> model.backward(grad_logits)
>>> opt.step(); opt.zero_grad()
"""

import numbers

import numpy as np

from numbaconv import _cuda, _weights
from numbaconv import device as _device
from numbaconv.functional import _backend
from numbaconv.nn.module import Parameter

__all__ = ["Adam", "Optimizer", "SGD"]


def _number(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def _state_array(value, like):
    """``value`` (host or device array) as a new C-contiguous array with ``like``'s shape, dtype
    and device."""
    a = np.array(_device.to_numpy(value), dtype=like.dtype, order="C", copy=True)
    if a.size != like.size:
        raise ValueError(f"optimizer state of shape {a.shape} does not fit a parameter of shape "
                         f"{tuple(like.shape)}")
    a = a.reshape(like.shape)
    return _cuda.to_device(a) if _device.where(like) == "cuda" else a


class Optimizer:
    """Base class: parameter groups, ``zero_grad``, ``step`` and the state dict.

    Parameters
    ----------
    params : iterable of Parameter, or of dicts
        The parameters, or parameter groups: dicts with a ``"params"`` entry and any
        hyper-parameter overriding the defaults for that group (e.g. its own ``lr``).
    defaults : dict
        The hyper-parameters of a group that does not set them.
    """

    def __init__(self, params, defaults):
        if isinstance(params, Parameter):
            raise TypeError("params must be an iterable of Parameters or of dicts, not a single "
                            "Parameter")
        self.defaults = dict(defaults)
        self.state = {}  # Parameter -> dict of state arrays (and Adam's "step")
        self.param_groups = []
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, param_group):
        """Add a group: a dict with ``"params"`` and optional hyper-parameters."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a parameter group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        params = group.get("params")
        params = [params] if isinstance(params, Parameter) else list(params or ())
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer can only update numbaconv.nn.Parameter objects, got "
                                f"{type(p).__name__}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter group holds the same Parameter twice")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise TypeError(f"unknown hyper-parameter(s) {sorted(unknown)} in a parameter group")
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group):
        raise NotImplementedError

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's ``.grad`` (to None, or to zeros with ``set_to_none=False``)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                elif isinstance(p.grad, np.ndarray):
                    p.grad[...] = 0
                else:
                    p.grad = _device.to_device(np.zeros(p.shape, p.dtype), "cuda")

    def step(self, closure=None):
        """Update every parameter that has a ``.grad``; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                device, flat_p, flat_g = self._flat(p)
                state = self.state.setdefault(p, {})
                for name, value in state.items():
                    # The parameter moved (Module.to) or changed dtype since the state was made.
                    if name != "step" and (_device.where(value) != device
                                           or np.dtype(value.dtype) != p.dtype):
                        state[name] = _state_array(value, p._array)
                self._update(_backend(device), p, flat_p, flat_g, group, state)
                # Cached transforms of this weight (packed panels, Winograd filters) are stale.
                _weights.changed(p._array)
        return loss

    @staticmethod
    def _flat(p):
        """(device, 1-D view of the parameter's own array, 1-D gradient on the same device)."""
        a, g = p._array, p.grad
        device = _device.where(a)
        if device == "cpu":
            if not isinstance(g, np.ndarray):
                raise ValueError(f"the gradient of {p!r} must be a NumPy array on the CPU like "
                                 f"its parameter, got {type(g).__name__}")
            g = np.ascontiguousarray(g)
            if not g.flags.writeable:  # one kernel specialisation; the kernels only read it
                g = g.copy()
        else:
            if not _cuda.is_device_array(g):
                raise ValueError(f"the gradient of {p!r} must be a CUDA device array like its "
                                 f"parameter, got {type(g).__name__}")
            g = _cuda.as_device_array(g)
            if not g.is_c_contiguous():
                g = _cuda.copy(g)
        if tuple(g.shape) != tuple(a.shape):
            raise ValueError(f"the gradient of {p!r} has shape {tuple(g.shape)}; expected "
                             f"{tuple(a.shape)}")
        if np.dtype(g.dtype) != np.dtype(a.dtype):
            raise TypeError(f"the gradient of {p!r} has dtype {np.dtype(g.dtype)}; expected "
                            f"{np.dtype(a.dtype)}")
        if np.dtype(a.dtype) == np.float16:
            raise TypeError(f"cannot update the float16 parameter {p!r}: float16 is supported on "
                            "CUDA for inference (forward) ops only; train in float32")
        return device, a.reshape(a.size), g.reshape(g.size)

    def _update(self, backend, p, flat_p, flat_g, group, state):
        raise NotImplementedError

    # ---- state dict ------------------------------------------------------------------------

    def state_dict(self):
        """``{"state": {index: {name: array or number}}, "param_groups": [...]}`` as PyTorch's:
        parameters are numbered in group order, and each group lists its hyper-parameters and
        ``"params"`` (the indices). The state arrays are the optimiser's own (not copies)."""
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load hyper-parameters and state saved by :meth:`state_dict` (of this optimiser class,
        over parameters of the same shapes in the same order). Arrays are copied onto each
        parameter's device and dtype."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(groups)} parameter groups; this "
                             f"optimizer has {len(self.param_groups)}")
        for saved, group in zip(groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 "match the size of the optimizer's group")
        new_groups = []
        by_index = {}
        for saved, group in zip(groups, self.param_groups):
            new = dict(group)
            new.update({k: v for k, v in saved.items() if k != "params" and k in self.defaults})
            self._check_group(new)
            new_groups.append(new)
            by_index.update(zip(saved["params"], group["params"]))
        new_state = {}
        for key, entries in state_dict["state"].items():
            p = by_index.get(key)
            if p is None:
                raise ValueError(f"loaded state dict has state for parameter {key!r}, which no "
                                 "group lists")
            new_state[p] = {name: (float(_device.to_numpy(v)) if name == "step"
                                   else _state_array(v, p._array))
                            for name, v in entries.items()}
        self.param_groups = new_groups
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Per parameter: ``d = grad + weight_decay * p``; with momentum, ``buf = d`` on the first step
    and ``buf = momentum * buf + (1 - dampening) * d`` after, then ``d = d + momentum * buf``
    (nesterov) or ``d = buf``; finally ``p -= lr * d``.

    Parameters
    ----------
    params : iterable of Parameter or of parameter-group dicts
    lr : float, default 1e-3
    momentum, dampening, weight_decay : float, default 0
    nesterov : bool, default False; needs momentum > 0 and dampening == 0
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, group):
        for name in ("lr", "momentum", "dampening", "weight_decay"):
            value = _number(group[name], name)
            if name != "dampening" and value < 0:
                raise ValueError(f"Invalid {name.replace('lr', 'learning rate')}: {value}")
        group["nesterov"] = bool(group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _update(self, backend, p, flat_p, flat_g, group, state):
        momentum = float(group["momentum"])
        buf = None
        first = False
        if momentum != 0:
            buf = state.get("momentum_buffer")
            first = buf is None
            if first:  # filled with the first gradient by the kernel
                buf = (np.empty(p.shape, p.dtype) if isinstance(p._array, np.ndarray)
                       else _cuda.empty(p.shape, p.dtype))
                state["momentum_buffer"] = buf
            buf = buf.reshape(buf.size)
        backend.sgd(flat_p, flat_g, buf, float(group["lr"]), momentum, float(group["dampening"]),
                    float(group["weight_decay"]), group["nesterov"], first)


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (L2 weight decay added to the gradient, as PyTorch).

    Per parameter, at step ``t``: ``d = grad + weight_decay * p``,
    ``m = lerp(m, d, 1 - beta1)``, ``v = beta2 * v + (1 - beta2) * d * d`` (with amsgrad,
    ``vmax = max(vmax, v)`` replaces v below), and
    ``p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)``.

    Parameters
    ----------
    params : iterable of Parameter or of parameter-group dicts
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999), each in [0, 1)
    eps : float, default 1e-8
    weight_decay : float, default 0
    amsgrad : bool, default False
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad))

    def _check_group(self, group):
        for name in ("lr", "eps", "weight_decay"):
            value = _number(group[name], name)
            if value < 0:
                raise ValueError(f"Invalid {name.replace('lr', 'learning rate')}: {value}")
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}")
        group["betas"] = tuple(_number(b, "betas") for b in betas)
        for i, b in enumerate(group["betas"]):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        group["amsgrad"] = bool(group["amsgrad"])

    def _update(self, backend, p, flat_p, flat_g, group, state):
        amsgrad = group["amsgrad"]
        names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
        if "step" not in state:
            state["step"] = 0.0
        for name in names:
            if name not in state:
                zeros = np.zeros(p.shape, p.dtype)
                state[name] = zeros if isinstance(p._array, np.ndarray) else _cuda.to_device(zeros)
        state["step"] += 1
        step = state["step"]
        beta1, beta2 = group["betas"]
        lr = float(group["lr"])
        # Scalars in float64 as PyTorch computes them; the kernel casts them to p's dtype.
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        flat = [state[name].reshape(state[name].size) for name in names]
        backend.adam(flat_p, flat_g, flat[0], flat[1], flat[2] if amsgrad else None,
                     lr / bias_correction1, beta1, beta2, float(group["eps"]),
                     float(group["weight_decay"]), bias_correction2 ** 0.5)
