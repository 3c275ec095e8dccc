"""``Module`` and ``Parameter``: PyTorch's module tree over NumPy (or CUDA) arrays.

A module holds parameters (trainable arrays), buffers (running statistics) and child modules,
registered by attribute assignment as in PyTorch, and its ``forward`` calls
:mod:`numbaconv.functional`. ``state_dict`` keys are PyTorch's dotted names, so the arrays of a
PyTorch model's ``state_dict`` load unchanged.
"""

import collections
import copy
import itertools
import threading

import numpy as np

from numbaconv import _weights
from numbaconv import device as _device
from numbaconv import functional as F

__all__ = ["Module", "Parameter", "StateDictError"]


class StateDictError(RuntimeError, ValueError):
    """``load_state_dict`` found missing or unexpected keys, or arrays of the wrong shape.

    A ``RuntimeError`` as in PyTorch, and a ``ValueError`` as every other bad input here.
    """


def _copy_array(array):
    if isinstance(array, np.ndarray):
        return array.copy()
    from numbaconv import _cuda

    return _cuda.copy(array)


def _read_only(array):
    if isinstance(array, np.ndarray):
        view = array.view()
        view.flags.writeable = False
        return view
    return array


class Parameter:
    """A trainable array of a module: ``.data`` (the values) and ``.grad`` (None until backward).

    On the CPU ``.data`` is a read-only view: kernels keep transformed copies of weights
    (packed panels, Winograd filters) keyed on the array's version, so an in-place write behind
    their back would go unseen. Assign a new array instead (``p.data = new``, a copy is taken),
    or load it with ``Module.load_state_dict``; both keep the caches right.

    Parameters
    ----------
    data : array
        Copied (to a C-contiguous array of the same dtype); NumPy or a CUDA device array.
    """

    __slots__ = ("_array", "_view", "grad", "__weakref__")

    def __deepcopy__(self, memo):
        new = Parameter.__new__(Parameter)
        new.grad = copy.deepcopy(self.grad, memo)
        new._set(_copy_array(self._array))
        memo[id(self)] = new
        return new

    def __init__(self, data):
        self.grad = None
        self.data = data

    def __reduce__(self):
        # The array once, as host data, and its device: the read-only view and the weight
        # tracking are made anew on loading (a slot-wise pickle would give two writable copies).
        grad = None if self.grad is None else np.asarray(_device.to_numpy(self.grad))
        return _unpickle_parameter, (np.asarray(_device.to_numpy(self._array)), self.device, grad)

    @property
    def data(self):
        return self._view

    @data.setter
    def data(self, value):
        if isinstance(value, Parameter):
            value = value._array
        if _device.where(value) == "cuda":
            array = _copy_array(value)
        else:
            array = np.array(value, copy=True, order="C")
            if array.dtype.kind != "f":
                raise TypeError(f"a Parameter must hold floating-point data, got dtype "
                                f"{array.dtype}")
        self._set(array)

    def _set(self, array):
        """Adopt ``array`` (owned by this parameter from now on) as the values."""
        self._array = array
        self._view = _read_only(_weights.track(array) if isinstance(array, np.ndarray) else array)

    def _write(self, values):
        """Copy ``values`` (same shape; cast to this dtype) into the parameter's own array."""
        if isinstance(self._array, np.ndarray):
            np.copyto(self._array, _device.to_numpy(values), casting="unsafe")
            _weights.changed(self._array)
        else:
            self._set(_device.to_device(np.ascontiguousarray(_device.to_numpy(values),
                                                             self._array.dtype), "cuda"))

    @property
    def shape(self):
        return tuple(self._array.shape)

    @property
    def dtype(self):
        return np.dtype(self._array.dtype)

    @property
    def size(self):
        return int(np.prod(self.shape))

    @property
    def device(self):
        return _device.where(self._array)

    def __array__(self, dtype=None, copy=None):
        # The read-only view, as ``.data``: a write through ``np.asarray(p)`` would reach the
        # values but not the version the kernels' weight caches are keyed on.
        a = _device.to_numpy(self._view)
        if dtype is not None and np.dtype(dtype) != a.dtype:
            return a.astype(dtype)  # a new array
        return a.copy() if copy else a

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device='{self.device}')"


def _unpickle_parameter(array, device, grad):
    p = _parameter(array, device)
    p.grad = grad if grad is None or device == "cpu" else _device.to_device(grad, "cuda")
    return p


class Module:
    """Base class of layers and models, as ``torch.nn.Module``.

    Subclasses set parameters, buffers and child modules as attributes in ``__init__`` (after
    ``super().__init__()``) and define ``forward``. Calling the module calls ``forward``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", collections.OrderedDict())
        object.__setattr__(self, "_buffers", collections.OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", collections.OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_saved", [])

    def __deepcopy__(self, memo):
        # Device arrays cannot be deep-copied generically; buffers are copied as arrays.
        new = object.__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key == "_buffers":
                value = collections.OrderedDict(
                    (name, None if b is None else _copy_array(b)) for name, b in value.items())
            elif key == "_saved":
                value = []  # what the last forward kept belongs to the original
            else:
                value = copy.deepcopy(value, memo)
            object.__setattr__(new, key, value)
        return new

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_saved"] = []  # what the last forward kept for backward is not part of the model
        return state

    # ---- registration ------------------------------------------------------------------------

    def _registries(self):
        try:
            return self._parameters, self._buffers, self._modules
        except AttributeError:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               "before assigning attributes") from None

    def __setattr__(self, name, value):
        params, buffers, modules = self._registries()
        if isinstance(value, Parameter):
            target = params
        elif isinstance(value, Module):
            target = modules
        elif value is None and (name in params or name in modules):
            target = params if name in params else modules  # e.g. ``self.bias = None``
        elif name in buffers:
            target = buffers  # ``self.running_mean = new_array`` replaces the buffer
        else:
            target = None
        for registry in (params, buffers, modules):
            if registry is not target:
                registry.pop(name, None)
        if target is None:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)
        target[name] = value  # replacing keeps the entry's place (state_dict order)

    def __getattr__(self, name):
        # Only called when normal lookup fails: parameters, buffers and children live in dicts.
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for registry in self._registries():
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        """Add a parameter (or ``None``, a declared-but-absent one such as a disabled bias)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter('{name}'): expected a Parameter or None, got "
                            f"{type(param).__name__}")
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    def register_buffer(self, name, array, persistent=True):
        """Add a buffer: an array that is state but not trained (e.g. BatchNorm's running mean).

        Persistent buffers are part of ``state_dict``.
        """
        self.__dict__.pop(name, None)
        self._buffers[name] = array
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name, module):
        """Add a child module (or ``None``) under ``name``."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module('{name}'): expected a Module or None, got "
                            f"{type(module).__name__}")
        self.__dict__.pop(name, None)
        self._modules[name] = module

    # ---- calling -----------------------------------------------------------------------------

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        # A call from outside any module starts a new forward pass: what the previous pass kept
        # for backward is dropped, so a forward that is never backpropagated (an accuracy check
        # in train mode) holds its activations only until the next one.
        depth = getattr(_calls, "depth", 0)
        if depth == 0:
            for m in self.modules():
                m._saved.clear()
        _calls.depth = depth + 1
        try:
            return self.forward(*args, **kwargs)
        finally:
            _calls.depth = depth

    # ---- backward ----------------------------------------------------------------------------

    def backward(self, grad_output):
        """Backpropagate ``grad_output`` (the loss gradient of this module's output) through the
        most recent train-mode forward call: returns the gradient of its input and adds the
        gradient of each parameter into ``p.grad``.

        Each train-mode call is matched by one ``backward``, last in first out (a module called
        twice in one forward pass is backpropagated twice, in reverse order). A new forward call
        of the top-level module drops what an earlier, un-backpropagated pass kept.
        """
        raise NotImplementedError(f"{type(self).__name__} has no backward(); training through "
                                  "it is not supported")

    def _save(self, *items):
        """In train mode, keep ``items`` for the matching :meth:`backward` (a no-op in eval)."""
        if self.training:
            self._saved.append(items)

    def _saved_pop(self):
        """What the latest unmatched train-mode forward kept, for :meth:`backward`."""
        if not self._saved:
            raise RuntimeError(
                f"{type(self).__name__}.backward(): there is no forward pass to backpropagate; "
                "call the module in train() mode first (eval() forwards keep nothing, and each "
                "forward is backpropagated at most once)")
        return self._saved.pop()

    @staticmethod
    def _add_grad(param, grad):
        """``param.grad += grad`` (adopting ``grad``, a fresh array, when there is none yet)."""
        if param is None or grad is None:
            return
        if param.grad is None:
            param.grad = grad
        else:
            F._accumulate(param.grad, grad)

    def _input(self, x):
        """``x`` on this module's parameters' device: a layer moves host inputs to its weights."""
        if _device.where(x) == "cpu" and self._param_device() == "cuda":
            return _device.to_device(x, "cuda")
        return x

    def _param_device(self):
        for p in self._parameters.values():
            if p is not None:
                return p.device
        for b in self._buffers.values():
            if b is not None and np.dtype(b.dtype).kind == "f":
                return _device.where(b)
        return None

    # ---- traversal ---------------------------------------------------------------------------

    def named_children(self):
        """``(name, module)`` of the immediate children, each module once."""
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        """Immediate child modules."""
        for _, m in self.named_children():
            yield m

    def named_modules(self, memo=None, prefix=""):
        """``(dotted name, module)`` for this module and every descendant, each once."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self.named_children():
            yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self):
        """This module and every descendant."""
        for _, m in self.named_modules():
            yield m

    def _named_members(self, registry, prefix, recurse):
        seen = set()
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mod_prefix, m in modules:
            for name, value in getattr(m, registry).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), value

    def named_parameters(self, prefix="", recurse=True):
        """``(dotted name, Parameter)`` pairs; a parameter shared by two modules comes once."""
        yield from self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        """Every :class:`Parameter`, for an optimiser."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        """Call ``fn(module)`` on every descendant and then on this module; returns self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ---- state -------------------------------------------------------------------------------

    def _state_entries(self, prefix=""):
        """``(key, owner module, attribute name, kind)`` of every state_dict entry, in order."""
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, self, name, "parameter"
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                yield prefix + name, self, name, "buffer"
        for name, m in self._modules.items():  # a shared module appears under each name,
            if m is not None:                  # as in PyTorch
                yield from m._state_entries(f"{prefix}{name}.")

    def state_dict(self):
        """An ordered dict of dotted name -> array: parameters (read-only views) and persistent
        buffers, named and shaped as PyTorch's.

        The arrays are the module's own (not copies); to keep them, copy them
        (``{k: np.array(v) for k, v in m.state_dict().items()}``) or save them with ``np.savez``.
        """
        out = collections.OrderedDict()
        for key, owner, name, kind in self._state_entries():
            out[key] = owner._parameters[name].data if kind == "parameter" else owner._buffers[name]
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into this module's parameters and buffers, all or nothing.

        Parameters
        ----------
        state_dict : mapping of str to array
            Keys and shapes as :meth:`state_dict` gives them (PyTorch's); values are NumPy
            arrays, CUDA device arrays or anything ``numpy.asarray`` accepts. They are copied and
            cast to the dtype of the array they replace; the mapping is not modified.
        strict : bool
            With True, keys missing from ``state_dict`` and keys this module does not have are
            errors; with False they are skipped and reported. Shape mismatches are always errors.

        Returns
        -------
        (missing_keys, unexpected_keys) : a named tuple of two lists of str

        Raises
        ------
        StateDictError
            Listing every missing key, unexpected key and shape mismatch at once. Nothing has
            been written when it is raised.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"load_state_dict(): expected a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}")
        entries = {key: (owner, name, kind) for key, owner, name, kind in self._state_entries()}
        missing = [k for k in entries if k not in state_dict]
        unexpected = [k for k in state_dict if k not in entries]
        mismatched, staged = [], []
        for key, (owner, name, kind) in entries.items():
            if key not in state_dict:
                continue
            current = owner._parameters[name] if kind == "parameter" else owner._buffers[name]
            value = state_dict[key]
            shape = tuple(getattr(value, "shape", np.shape(value)))
            if shape != tuple(current.shape):
                mismatched.append(f"{key}: the checkpoint has shape {shape}, this module "
                                  f"{tuple(current.shape)}")
                continue
            # Staged on the host, cast, before anything is written: loading is all or nothing.
            host = np.asarray(_device.to_numpy(value))
            if host.dtype.kind not in "biuf":
                mismatched.append(f"{key}: dtype {host.dtype} is not numeric")
                continue
            staged.append((owner, name, kind, host.astype(np.dtype(current.dtype), copy=True)))
        if mismatched or (strict and (missing or unexpected)):
            lines = [f"Error(s) in loading state_dict for {type(self).__name__}:"]
            if strict and missing:
                lines.append("  missing keys: " + ", ".join(missing))
            if strict and unexpected:
                lines.append("  unexpected keys: " + ", ".join(unexpected))
            if mismatched:
                lines.append("  size mismatch: " + "; ".join(mismatched))
            raise StateDictError("\n".join(lines))
        for owner, name, kind, host in staged:
            if kind == "parameter":
                owner._parameters[name]._write(host)
            else:
                old = owner._buffers[name]
                owner._buffers[name] = (host if _device.where(old) == "cpu"
                                        else _device.to_device(host, "cuda"))
        return _IncompatibleKeys(missing, unexpected)

    # ---- modes and devices -------------------------------------------------------------------

    def train(self, mode=True):
        """Training mode (BatchNorm uses batch statistics, Dropout drops); returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode): mode must be a bool, got {type(mode).__name__}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
            if not mode:
                m._saved.clear()
        return self

    def eval(self):
        """Inference mode, as ``train(False)``; returns self."""
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's ``.grad`` (to None, or to zeros with ``set_to_none=False``)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            elif isinstance(p.grad, np.ndarray):
                p.grad[...] = 0
            else:
                p.grad = _device.to_device(np.zeros(p.shape, p.dtype), "cuda")

    def to(self, device=None, dtype=None):
        """Move parameters and buffers to ``device`` ('cpu' or 'cuda') and/or cast floating-point
        ones to ``dtype`` (float32 or float64), in place; returns self.

        Gradients are dropped when the dtype changes and moved with their parameter otherwise.
        """
        if isinstance(device, (type, np.dtype)) and dtype is None:
            device, dtype = None, device
        if device is not None:
            device = _device._check_name(device)
            if device == "cuda":
                _device._require_cuda("Module.to('cuda')")
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype not in (np.float32, np.float64):
                raise TypeError(f"Module.to(dtype={dtype}): use float32 or float64")

        def convert(a):
            # Integer buffers (BatchNorm's num_batches_tracked) are host-side counters.
            if a is None or np.dtype(a.dtype).kind != "f":
                return a
            target = device or _device.where(a)
            if dtype is not None and a.dtype != dtype:
                a = np.asarray(_device.to_numpy(a)).astype(dtype)
            return _device.to_device(a, target) if _device.where(a) != target else a

        for m in self.modules():
            for p in m._parameters.values():
                if p is None:
                    continue
                new = convert(p._array)
                if new is not p._array:
                    p._set(new if _device.where(new) == "cuda" else np.ascontiguousarray(new))
                if p.grad is not None:
                    p.grad = None if p.grad.dtype != p.dtype else convert(p.grad)
            for name, b in m._buffers.items():
                m._buffers[name] = convert(b)
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    # ---- printing ----------------------------------------------------------------------------

    def extra_repr(self):
        """The settings shown between the parentheses of ``repr`` (PyTorch's convention)."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        children = [(name, repr(m)) for name, m in self._modules.items() if m is not None]
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = [f"{type(self).__name__}("]
        if extra:
            lines += ["  " + line for line in extra.split("\n")]
        for name, text in children:
            text = text.replace("\n", "\n  ")
            lines.append(f"  ({name}): {text}")
        return "\n".join(lines) + "\n)"

    def __dir__(self):
        return sorted(set(itertools.chain(super().__dir__(), self._parameters, self._buffers,
                                          self._modules)))


# How deep the current thread is in nested module calls (0: a call from user code).
_calls = threading.local()

_IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _factory(device, dtype):
    """Checked ``(device, dtype)`` of a new layer's arrays: the current device and float32 by
    default, as PyTorch's ``device=`` / ``dtype=`` factory arguments."""
    device = _device.get_device() if device is None else _device._check_name(device)
    if device == "cuda":
        _device._require_cuda("a layer with device='cuda'")
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"layers hold float32 or float64 parameters, got dtype={dtype}")
    return device, dtype


def _parameter(values, device):
    """A :class:`Parameter` holding host array ``values``, placed on ``device``."""
    p = Parameter.__new__(Parameter)
    p.grad = None
    p._set(values if device == "cpu" else _device.to_device(values, "cuda"))
    return p


def _uniform(shape, bound, device, dtype):
    """A parameter drawn from U(-bound, bound) with NumPy's global generator (``np.random.seed``
    makes it repeatable), as PyTorch's ``kaiming_uniform_(a=sqrt(5))`` and bias inits draw."""
    return _parameter(np.random.uniform(-bound, bound, size=shape).astype(dtype), device)


def _constant(shape, value, device, dtype):
    return _parameter(np.full(shape, value, dtype), device)
