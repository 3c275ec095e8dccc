"""Recurrent layers ``RNN``, ``LSTM`` and ``GRU`` with PyTorch's arguments, initialisation and
state_dict keys (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` and
their ``_reverse`` forms), so a PyTorch layer's weights load unchanged.

Each layer and direction is one call of :func:`numbaconv.functional.rnn` / ``lstm`` / ``gru``
over the whole sequence; layers run bottom up, a bidirectional layer's two outputs are
concatenated along the features, and dropout (train mode only) is applied between layers.

Variable-length batches: instead of PyTorch's ``PackedSequence``, ``forward`` takes the padded
batch and ``lengths=`` (one per item); the outputs equal those of PyTorch's
``pack_padded_sequence`` -> layer -> ``pad_packed_sequence(total_length=T)`` (zeros past each
item's end; ``h_n`` is each item's state at its own last step).
"""

import math
import numbers

from numbaconv import functional as F
from numbaconv.nn.module import Module, _factory, _uniform

__all__ = ["GRU", "LSTM", "RNN"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _positive_int(cls, name, v):
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{cls}: {name} must be a positive int, got {v!r}")
    return int(v)


class _RNNBase(Module):
    """Shared by :class:`RNN`, :class:`LSTM` and :class:`GRU` (PyTorch's ``RNNBase``)."""

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__()
        cls = type(self).__name__
        self.mode = mode
        self.input_size = _positive_int(cls, "input_size", input_size)
        self.hidden_size = _positive_int(cls, "hidden_size", hidden_size)
        self.num_layers = _positive_int(cls, "num_layers", num_layers)
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
                or not 0 <= dropout <= 1):
            raise ValueError(f"{cls}: dropout should be a number in range [0, 1] representing "
                             f"the probability of an element being zeroed, got {dropout!r}")
        if not isinstance(proj_size, numbers.Integral) or proj_size < 0:
            raise ValueError(f"{cls}: proj_size should be a non-negative int, got {proj_size!r}")
        if proj_size:
            raise NotImplementedError(f"{cls}: proj_size > 0 (LSTM with projections) is not "
                                      "supported")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = 0
        device, dtype = _factory(device, dtype)
        gates, h = _GATES[mode], self.hidden_size
        # PyTorch's init: every weight and bias from U(-1/sqrt(H), 1/sqrt(H)), registered layer
        # by layer, forward direction first, in state_dict order.
        bound = 1.0 / math.sqrt(h)
        for layer in range(self.num_layers):
            layer_in = self.input_size if layer == 0 else h * self._directions()
            for suffix in self._suffixes():
                name = f"l{layer}{suffix}"
                setattr(self, f"weight_ih_{name}", _uniform((gates * h, layer_in), bound, device,
                                                            dtype))
                setattr(self, f"weight_hh_{name}", _uniform((gates * h, h), bound, device, dtype))
                if self.bias:
                    setattr(self, f"bias_ih_{name}", _uniform((gates * h,), bound, device, dtype))
                    setattr(self, f"bias_hh_{name}", _uniform((gates * h,), bound, device, dtype))

    def _directions(self):
        return 2 if self.bidirectional else 1

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    def flatten_parameters(self):
        """A no-op, for code written for PyTorch's cuDNN weights."""

    def _weights(self, layer, suffix):
        name = f"l{layer}{suffix}"
        ps = [getattr(self, f"{kind}_{name}") for kind in ("weight_ih", "weight_hh")]
        if self.bias:
            ps += [getattr(self, f"{kind}_{name}") for kind in ("bias_ih", "bias_hh")]
        else:
            ps += [None, None]
        return ps

    # ---- the one-layer-one-direction op ------------------------------------------------------

    def _op(self, x, h0, c0, params, reverse, lengths, workspace):
        data = [None if p is None else p.data for p in params]
        if self.mode == "LSTM":
            return F.lstm(x, h0, c0, *data, reverse=reverse, lengths=lengths,
                          return_workspace=workspace)
        if self.mode == "GRU":
            return F.gru(x, h0, *data, reverse=reverse, lengths=lengths,
                         return_workspace=workspace)
        return F.rnn(x, h0, *data, nonlinearity="tanh" if self.mode == "RNN_TANH" else "relu",
                     reverse=reverse, lengths=lengths, return_workspace=workspace)

    def _op_backward(self, grads, x, h0, c0, params, reverse, lengths, workspace):
        data = [None if p is None else p.data for p in params]
        if self.mode == "LSTM":
            return F.lstm_backward(*grads, x, h0, c0, *data, reverse=reverse, lengths=lengths,
                                   workspace=workspace)
        if self.mode == "GRU":
            return F.gru_backward(*grads[:2], x, h0, *data, reverse=reverse, lengths=lengths,
                                  workspace=workspace)
        return F.rnn_backward(*grads[:2], x, h0, *data,
                              nonlinearity="tanh" if self.mode == "RNN_TANH" else "relu",
                              reverse=reverse, lengths=lengths, workspace=workspace)

    # ---- checks ------------------------------------------------------------------------------

    def _check_state(self, name, state, batched, n):
        if state is None:
            return None
        want = (self.num_layers * self._directions(),) + ((n,) if batched else ()) + \
            (self.hidden_size,)
        if not hasattr(state, "shape") or tuple(state.shape) != want:
            got = tuple(state.shape) if hasattr(state, "shape") else type(state).__name__
            raise ValueError(f"{type(self).__name__}: expected {name} of shape {want} "
                             f"(num_layers * num_directions, {'batch, ' if batched else ''}"
                             f"hidden_size), got {got}")
        state = self._input(state)
        return state if batched else state.reshape((want[0], 1, want[1]))

    def _split_hx(self, hx):
        if self.mode != "LSTM":
            if isinstance(hx, tuple):
                raise TypeError(f"{type(self).__name__}: hx must be one array (h_0), not a tuple")
            return hx, None
        if hx is None:
            return None, None
        if not isinstance(hx, tuple) or len(hx) != 2:
            raise TypeError("LSTM: hx must be a tuple (h_0, c_0) of two arrays")
        return hx

    # ---- forward / backward ------------------------------------------------------------------

    def forward(self, input, hx=None, lengths=None):
        """Run the layers over ``input``.

        Parameters
        ----------
        input : array (T, N, input_size), (N, T, input_size) with ``batch_first``, or
            (T, input_size) unbatched
        hx : initial state(s) (num_layers * num_directions, N, hidden_size) ((..., hidden_size)
            unbatched), zeros when None; for LSTM a tuple ``(h_0, c_0)``
        lengths : int array (N,) or None; valid steps per item of a padded batch (module
            docstring)

        Returns
        -------
        ``(output, h_n)`` for RNN and GRU, ``(output, (h_n, c_n))`` for LSTM; output is
        (T, N, num_directions * hidden_size) (batch first with ``batch_first``).
        """
        cls = type(self).__name__
        if not hasattr(input, "shape") or len(input.shape) not in (2, 3):
            got = f"{len(input.shape)}-D" if hasattr(input, "shape") else type(input).__name__
            raise ValueError(f"{cls}: expected a 2-D (unbatched) or 3-D (batched) input, got "
                             f"{got}")
        batched = len(input.shape) == 3
        if tuple(input.shape)[-1] != self.input_size:
            raise ValueError(f"{cls}: input.size(-1) must be equal to input_size. Expected "
                             f"{self.input_size}, got {tuple(input.shape)[-1]}")
        x = self._input(input)
        if not batched:
            x = x.reshape((x.shape[0], 1, x.shape[1]))
        elif self.batch_first:
            x = F._swap01(x)
        t, n = int(x.shape[0]), int(x.shape[1])
        if lengths is not None and not batched:
            raise ValueError(f"{cls}: lengths needs a batched (3-D) input")
        h0_all, c0_all = self._split_hx(hx)
        h0_all = self._check_state("h_0" if self.mode == "LSTM" else "hx", h0_all, batched, n)
        c0_all = self._check_state("c_0", c0_all, batched, n)
        if (h0_all is None) != (c0_all is None) and self.mode == "LSTM":
            raise ValueError("LSTM: give both h_0 and c_0, or neither")
        training = self.training
        nd = self._directions()
        layers = []  # per layer: (input, [per direction: (h0, c0, workspace)], dropout mask)
        h_n, c_n = [], []
        layer_in = x
        for layer in range(self.num_layers):
            pre, mask = layer_in, None
            if layer > 0 and self.dropout and training:
                layer_in, mask = F.dropout(pre, self.dropout, training=True, return_mask=True)
            outs, saved = [], []
            for d, suffix in enumerate(self._suffixes()):
                k = layer * nd + d
                h0 = None if h0_all is None else h0_all[k]
                c0 = None if c0_all is None else c0_all[k]
                res = self._op(layer_in, h0, c0, self._weights(layer, suffix), d == 1, lengths,
                               training)
                outs.append(res[0])
                h_n.append(res[1])
                if self.mode == "LSTM":
                    c_n.append(res[2])
                saved.append((h0, c0, res[-1] if training else None))
            layers.append((layer_in, saved, mask, pre))
            layer_in = outs[0] if nd == 1 else _cat_features(outs[0], outs[1])
        out = layer_in
        self._save(batched, lengths, h0_all is not None, layers, t, n)
        if batched and self.batch_first:
            out = F._swap01(out)
        elif not batched:
            out = out.reshape((t, out.shape[2]))
        h_n = _stack(h_n, batched)
        if self.mode == "LSTM":
            return out, (h_n, _stack(c_n, batched))
        return out, h_n

    def backward(self, grad_output):
        """Backpropagate through the latest train-mode forward.

        ``grad_output`` is the gradient of ``output``, or a tuple shaped as the forward's
        result (``(g_output, g_h_n)``, LSTM ``(g_output, (g_h_n, g_c_n))``), any entry None.
        Adds the parameter gradients into ``p.grad`` and returns the gradient of ``input``, or
        ``(grad_input, grad_hx)`` when the forward was given ``hx`` (``grad_hx`` shaped as hx:
        a tuple ``(g_h_0, g_c_0)`` for LSTM).
        """
        batched, lengths, had_hx, layers, t, n = self._saved_pop()
        g_out, g_h, g_c = (None if g is None else self._input(g)
                           for g in self._split_grads(grad_output))
        nd, h = self._directions(), self.hidden_size
        if g_out is not None:
            if not batched:
                g_out = g_out.reshape((t, 1, tuple(g_out.shape)[-1]))
            elif self.batch_first:
                g_out = F._swap01(g_out)
        if g_h is not None and not batched:
            g_h = g_h.reshape((g_h.shape[0], 1, h))
        if g_c is not None and not batched:
            g_c = g_c.reshape((g_c.shape[0], 1, h))
        g_h0, g_c0 = [None] * (self.num_layers * nd), [None] * (self.num_layers * nd)
        for layer in range(self.num_layers - 1, -1, -1):
            layer_in, saved, mask, pre = layers[layer]
            if g_out is None:
                g_dirs = [None] * nd
            elif nd == 1:
                g_dirs = [g_out]
            else:
                g_dirs = _split_features(g_out, h)
            g_in = None
            for d, suffix in enumerate(self._suffixes()):
                k = layer * nd + d
                h0, c0, ws = saved[d]
                params = self._weights(layer, suffix)
                grads = (g_dirs[d], None if g_h is None else g_h[k],
                         None if g_c is None else g_c[k])
                res = self._op_backward(grads, layer_in, h0, c0, params, d == 1, lengths, ws)
                gx, g_h0[k] = res[0], res[1]
                if self.mode == "LSTM":
                    g_c0[k] = res[2]
                for p, g in zip(params, res[-5:-1]):
                    self._add_grad(p, g)
                g_in = gx if g_in is None else F._add(g_in, gx)
            if mask is not None:
                (g_in,) = F.dropout_backward(g_in, pre, self.dropout, training=True, mask=mask)
            g_out = g_in
        g_x = g_out
        if not batched:
            g_x = g_x.reshape((t, g_x.shape[2]))
        elif self.batch_first:
            g_x = F._swap01(g_x)
        if not had_hx:
            return g_x
        gh = _stack(g_h0, batched)
        if self.mode == "LSTM":
            return g_x, (gh, _stack(g_c0, batched))
        return g_x, gh

    def _split_grads(self, grad_output):
        if not isinstance(grad_output, tuple):
            return grad_output, None, None
        if len(grad_output) != 2:
            raise ValueError(f"{type(self).__name__}.backward(): a tuple grad_output must match "
                             "the forward's (output, h_n) structure")
        g_out, g_state = grad_output
        if self.mode == "LSTM":
            if g_state is None:
                return g_out, None, None
            if not isinstance(g_state, tuple) or len(g_state) != 2:
                raise ValueError("LSTM.backward(): the state gradient must be a tuple "
                                 "(g_h_n, g_c_n)")
            return g_out, g_state[0], g_state[1]
        return g_out, g_state, None

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s


def _cat_features(a, b):
    t, n, h = (int(v) for v in a.shape)
    return F._cat_channels(a.reshape((t * n, h)), b.reshape((t * n, h))).reshape((t, n, 2 * h))


def _split_features(g, h):
    t, n, _ = (int(v) for v in g.shape)
    first, second = F._split_channels(g.reshape((t * n, 2 * h)), h)
    return [first.reshape((t, n, h)), second.reshape((t, n, h))]


def _stack(states, batched):
    """(L*D, N, H) from L*D arrays (N, H) on one device ((L*D, H) unbatched)."""
    n, h = (int(v) for v in states[0].shape)
    flat = states[0].reshape((1, n * h))
    for s in states[1:]:
        flat = F._cat_channels(flat, s.reshape((1, n * h)))
    k = len(states)
    return flat.reshape((k, n, h)) if batched else flat.reshape((k, h))


class RNN(_RNNBase):
    """Elman RNN, ``h_t = tanh(W_ih x_t + b_ih + W_hh h_(t-1) + b_hh)`` (or relu), as
    ``torch.nn.RNN``.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int
    nonlinearity : 'tanh' | 'relu'
    bias : bool
    batch_first : bool, input and output (N, T, features)
    dropout : float, dropout on each layer's output but the last, in train mode
    bidirectional : bool
    device, dtype : as every layer
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: unknown nonlinearity {nonlinearity!r}; use 'tanh' or 'relu'")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype)
        self.nonlinearity = nonlinearity


class LSTM(_RNNBase):
    """Long short-term memory, as ``torch.nn.LSTM`` (gates i, f, g, o); ``proj_size`` must be 0.

    Parameters as :class:`RNN` (no ``nonlinearity``), plus ``proj_size``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype)


class GRU(_RNNBase):
    """Gated recurrent unit, as ``torch.nn.GRU`` (gates r, z, n;
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``).

    Parameters as :class:`RNN` (no ``nonlinearity``).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype)
