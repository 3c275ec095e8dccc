"""numbaconv on Dask: batch-, spatially- and channel-partitioned execution on a cluster.

An optional extra (``pip install numbaconv[dask]``): ``dask.array`` holds the data,
``dask.distributed`` (or Dask's threaded scheduler) runs the tasks, and every task calls the
ordinary single-machine numbaconv op on its piece, on its worker's current device.

Three ways to cut the work:

- **Batch** (:func:`predict`): an (N, C, H, W) array chunked along N; each chunk of images goes
  through the whole model on one worker. The model travels once: it is one node of the task
  graph, which each worker fetches once and keeps, however many chunks it runs.
- **Space** (:func:`conv2d`, :func:`max_pool2d`, :func:`avg_pool2d`, :func:`predict_tiled`):
  one image (or a few) chunked along H and W. Each output block reads the input rows and
  columns its windows cover, exactly the receptive field: the pieces of neighbouring chunks
  (halos) are cut out where they live and only they travel. Stride, padding, dilation,
  ``ceil_mode`` and chunk boundaries that do not fall on the stride are handled by running
  each block's op with the op's own padding on a tile whose origin sits on the stride grid, so
  that every output value is computed from the same inputs as on one machine. A halo wider than a neighbouring chunk is gathered from every chunk it spans.
- **Output channels** (``conv2d(..., split='out_channels')``): model parallelism. Each part
  holds a slice of the weight's output channels, gets the whole input and computes its
  channels; the parts are concatenated along C. It pays when the weights are large and the
  images small (late ResNet layers: 512x512x3x3 weights, 7x7 images): every worker then
  receives ``1/parts`` of the weights and the whole, small, input, instead of all the weights.
  With large images the input sent to every part dominates, and spatial or batch
  partitioning move less.

Equality with one machine. Every block runs the ordinary ``numbaconv.functional`` op (or the
model's layers) on a tile whose origin sits on the op's stride grid, so each output is computed
from the same input values as on one machine. Whether it is also computed by the same
arithmetic depends on the dtype and the op:

- float64: always, so results equal single-machine numbaconv bit for bit. float64
  convolutions always run the direct convolution, and it and the pools compute each output
  by arithmetic that does not depend on the array's size.
- float32: pooling is bit for bit. For ungrouped float32 convolutions the CPU backend picks
  the algorithm by the array's size (and the thread count): Winograd F(4x4, 3x3) for 3x3
  stride-1 ones, a batch-folded path for maps of at most 64 outputs, else the direct
  convolution; a block, smaller than the whole, may get another one. Their roundings differ:
  the result then agrees with one machine within float32 tolerance (the conv tolerances of
  ``tests/conftest.py``, about 1e-5 relative), not bit for bit. Where block and whole run the
  same algorithm they are bit-equal (block edges stay on the 4x4 output tile grid for 3x3
  stride-1 convolutions).

The same holds for :func:`predict` against one call on the whole batch.

Fault tolerance is Dask's: a task lost with its worker is run again elsewhere from the graph,
which holds everything a task needs (model, weights, halo cuts), so a computation survives
workers dying as long as one is left.

Examples
--------
>>> import numpy as np, dask.array as da, numbaconv as nc, numbaconv.distributed as ncd
>>> from dask.distributed import Client
>>> client = Client("tcp://scheduler:8786")              # or LocalCluster()
>>> x = da.random.random((64, 3, 224, 224), chunks=(8, 3, 224, 224)).astype("float32")
>>> model = nc.models.resnet18().eval()
>>> logits = ncd.predict(model, x).compute()             # (64, 1000), 8 images per task
>>> img = da.random.random((1, 3, 8192, 8192), chunks=(1, 3, 2048, 2048)).astype("float32")
>>> w = np.random.rand(64, 3, 7, 7).astype("float32")
>>> y = ncd.conv2d(img, w, stride=2, padding=3)          # halos of exactly 3 rows / columns
"""

import collections
import copy
import io
import math
import numbers
import operator
import os
import pickle
import threading

import numpy as np

from numbaconv import _convshape
from numbaconv import device as _device
from numbaconv import functional as F
from numbaconv import nn

try:
    import cloudpickle
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
    from dask.task_spec import DataNode, List, Task, TaskRef
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "numbaconv.distributed needs Dask 2025.1 or later (dask.array and dask.distributed): "
        "pip install 'numbaconv[dask]'") from exc

__all__ = ["avg_pool2d", "conv2d", "max_pool2d", "predict", "predict_tiled"]


# --------------------------------------------------------------------------------------------
# The model as shipped to workers
# --------------------------------------------------------------------------------------------

class _ModelPickler(cloudpickle.Pickler):
    """Pickles a module tree with each Parameter replaced by a reference into a list of plain
    host arrays (cloudpickle, so that models defined in a notebook travel too)."""

    def __init__(self, file, arrays):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.arrays = arrays

    def persistent_id(self, obj):
        if isinstance(obj, nn.Parameter):
            self.arrays.append(np.ascontiguousarray(_device.to_numpy(obj.data)))
            return ("numbaconv.Parameter", len(self.arrays) - 1)
        return None


class _ModelUnpickler(pickle.Unpickler):
    def __init__(self, file, arrays):
        super().__init__(file)
        self.arrays = arrays

    def persistent_load(self, pid):
        kind, index = pid
        if kind != "numbaconv.Parameter":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return nn.Parameter(self.arrays[index])  # tracked and read-only, as the layers expect


_LOADS = collections.Counter()  # token -> models unpickled in this process (tests read it)


class _Model:
    """A model in the task graph: one graph node, fetched once per worker and kept there.

    Pickles as the module tree plus each parameter's array once (a Parameter's own pickle
    would carry its array twice and come back untracked by the weight cache). ``on(device)``
    gives the model on that device, moved once per process and device.
    """

    def __init__(self, model, token=None):
        self.model = model
        self.token = token
        self._lock = threading.Lock()
        self._on = {}
        self._dump = None

    def dump(self):
        if self._dump is None:
            arrays = []
            buf = io.BytesIO()
            _ModelPickler(buf, arrays).dump(self.model)
            self._dump = (buf.getvalue(), arrays)
        return self._dump

    def __reduce__(self):
        blob, arrays = self.dump()
        return _load_model, (blob, arrays, self.token)

    def on(self, device):
        """The model with its parameters on ``device`` ('cpu' or 'cuda')."""
        with self._lock:
            m = self._on.get(device)
            if m is None:
                devices = {p.device for p in self.model.parameters()}
                m = self.model if devices <= {device} else copy.deepcopy(self.model).to(device)
                self._on[device] = m
            return m

    def layer(self, device, path):
        """The submodule at dotted ``path`` of :meth:`on` (``device``)."""
        m = self.on(device)
        for part in path.split(".") if path else ():
            m = m._modules[part]
        return m


# The models this process unpickled, newest last, kept after their graph is released: a later
# graph with the same model (same token) reuses the unpickled model and its weight caches
# (transformed and packed filters) instead of rebuilding them. Bounded, as workers are long-lived.
_KEEP = 4
_KEPT = collections.OrderedDict()
_KEPT_LOCK = threading.Lock()


def _load_model(blob, arrays, token):
    """The model from its shipped form; ``token`` (its content's hash, or None: not kept) keys
    :data:`_KEPT`."""
    with _KEPT_LOCK:
        out = None if token is None else _KEPT.get(token)
        if out is not None:
            _KEPT.move_to_end(token)
            return out
    model = _ModelUnpickler(io.BytesIO(blob), arrays).load()
    out = _Model(model, token)
    out._dump = (blob, arrays)
    with _KEPT_LOCK:
        _LOADS[token] += 1
        if token is not None:
            _KEPT[token] = out
        while len(_KEPT) > _KEEP:
            _KEPT.popitem(last=False)
    return out


def _model_node(model, x_dtype, op):
    """(key, graph node) holding ``model``, after checking it can run inference on ``x_dtype``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{op}(): model must be a numbaconv.nn.Module, got "
                        f"{type(model).__name__}")
    # Layers whose output depends on the mode (and modules from outside numbaconv, which may).
    training = [name or type(model).__name__ for name, m in model.named_modules()
                if m.training and (isinstance(m, (nn.BatchNorm2d, nn.Dropout))
                                   or not type(m).__module__.startswith("numbaconv."))]
    if training:
        raise ValueError(f"{op}(): the model is in training mode ({', '.join(training[:3])}"
                         f"{', ...' if len(training) > 3 else ''}); call model.eval() first: "
                         "batch statistics and dropout would differ from chunk to chunk")
    dtypes = {np.dtype(p.dtype) for p in model.parameters()}
    if dtypes and dtypes != {np.dtype(x_dtype)}:
        raise TypeError(f"{op}(): the model's parameters are {', '.join(sorted(map(str, dtypes)))} "
                        f"but the input is {np.dtype(x_dtype)}; use model.to({np.dtype(x_dtype)}) "
                        f"or x.astype({'/'.join(sorted(map(str, dtypes)))})")
    blob, arrays = _Model(model).dump()
    token = tokenize(blob, *arrays)
    key = f"numbaconv-model-{token}"
    # A task that builds the model where it runs: the graph carries bytes and arrays only.
    return key, Task(key, _load_model, blob, tuple(arrays), token)


# --------------------------------------------------------------------------------------------
# Input checks shared by every entry point
# --------------------------------------------------------------------------------------------

def _check_array(op, x, names=("N", "C", "H", "W")):
    if not isinstance(x, da.Array):
        raise TypeError(f"{op}(): expected a dask.array.Array, got {type(x).__name__}; wrap a "
                        "NumPy array with dask.array.from_array(x, chunks=...)")
    if x.ndim != 4:
        raise ValueError(f"{op}(): expected a 4-D (N, C, H, W) array, got {x.ndim}-D with "
                         f"shape {x.shape}")
    unknown = [names[i] for i, c in enumerate(x.chunks) if any(math.isnan(s) for s in c)]
    if unknown:
        raise ValueError(f"{op}(): x has unknown chunk sizes along {', '.join(unknown)}; call "
                         "x.compute_chunk_sizes() first")
    if np.dtype(x.dtype) not in (np.float32, np.float64):
        raise TypeError(f"{op}(): x must be float32 or float64, got {x.dtype}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{op}(): x is empty (shape {x.shape})")


def _whole(op, x, dims, rechunk, why):
    """``x`` with one chunk along each of ``dims`` (rechunked if allowed, else a ValueError)."""
    names = "NCHW"
    split = [d for d in dims if len(x.chunks[d]) > 1]
    if not split:
        return x
    if not rechunk:
        raise ValueError(
            f"{op}(): x is chunked along {', '.join(names[d] for d in split)} (chunks "
            f"{x.chunks}); {why}. Pass rechunk=True, or call "
            f"x.rechunk({{{', '.join(f'{d}: -1' for d in split)}}}) yourself")
    return x.rechunk({d: -1 for d in split})


def _int_tuple(value, op, name, minimum):
    return F._int_tuple(value, 2, op, name, minimum)


# --------------------------------------------------------------------------------------------
# Geometry of a windowed op along one axis, and running it on one block exactly
# --------------------------------------------------------------------------------------------

class _Axis(collections.namedtuple("_Axis", "k s d pb pa ceil align")):
    """A sliding window along one axis: kernel k, stride s, dilation d, padding pb before and
    pa after, ceil_mode (pools), and the output alignment blocks keep (4 for float32 3x3
    stride-1 convs, which may run as Winograd F(4x4, 3x3): on the whole's 4x4 output tile grid
    a block that runs it rounds as the whole does; float64 never runs it)."""

    @property
    def extent(self):
        return self.d * (self.k - 1) + 1

    def out_size(self, n):
        if self.ceil:
            return F._pool_out("", n, self.k, self.s, self.pb, self.d, True)
        return (n + self.pb + self.pa - self.extent) // self.s + 1

    def needed(self, o0, o1, n):
        """The input range [u0, u1) that outputs [o0, o1) read (clipped to the n inputs)."""
        return (max(0, o0 * self.s - self.pb),
                min(n, (o1 - 1) * self.s - self.pb + self.extent))

    def tile(self, o0):
        """(r0, j0): a block for outputs starting at o0 runs the op on a tile whose first row
        is input r0 (a multiple of the stride, so the op's own padding puts the tile's outputs
        on the global output grid) and keeps the tile's outputs from j0 on. The rows between
        r0 and :meth:`needed`'s u0 only feed discarded outputs (filled with zeros); the op's
        padding before r0 is real only where r0 is 0."""
        j = -(-self.pb // self.s)
        j = -(-j // self.align) * self.align
        if o0 <= j:
            return 0, o0
        return (o0 - j) * self.s, j

    def expand(self, o0, o1, n_out):
        """[o0, o1) widened to the alignment (clipped to the n_out outputs)."""
        a = self.align
        return o0 // a * a, min(n_out, -(-o1 // a) * a)


def _conv_align(k, s, d, groups, dtype):
    """Output alignment of a conv's blocks: 4 where numbaconv may run it as Winograd
    F(4x4, 3x3) (float32, 3x3, stride 1, undilated, ungrouped), else 1."""
    wino = (tuple(k) == (3, 3) and tuple(s) == (1, 1) and tuple(d) == (1, 1) and groups == 1
            and np.dtype(dtype) == np.float32)
    return 4 if wino else 1


def _run_window(fn, x, origin, out_ranges, axes, sizes):
    """Outputs ``out_ranges`` (((o0, o1), (p0, p1)) along H and W) of the windowed op ``fn``
    (input NCHW -> output NCHW, with its own padding) over a whole input of spatial ``sizes``,
    from ``x``: the rows and columns starting at ``origin`` of that input, covering at least
    what those outputs read. Equals ``fn(whole input)[..., o0:o1, p0:p1]`` where ``fn``'s
    arithmetic per output does not depend on its input's size (see the module docstring)."""
    cut, fill, keep = [slice(None), slice(None)], [(0, 0), (0, 0)], [slice(None), slice(None)]
    for ax, a, (o0, o1), n, have in zip(axes, origin, out_ranges, sizes, x.shape[2:]):
        u0, u1 = ax.needed(o0, o1, n)
        r0, j0 = ax.tile(o0)
        if not (a <= u0 and u1 <= a + have):
            raise AssertionError(f"block needs input [{u0}, {u1}) but has [{a}, {a + have})")
        cut.append(slice(u0 - a, u1 - a))
        fill.append((u0 - r0, 0))
        keep.append(slice(j0, j0 + o1 - o0))
    t = x[tuple(cut)]
    t = np.pad(t, fill) if fill[2][0] or fill[3][0] else np.ascontiguousarray(t)
    y = _device.to_numpy(fn(t))
    out = y[tuple(keep)]
    if out.shape[2:] != tuple(o1 - o0 for o0, o1 in out_ranges):
        raise AssertionError(f"block gave {out.shape[2:]} outputs, expected {out_ranges}")
    return np.ascontiguousarray(out)


def _out_bounds(ax, in_chunks, n_out):
    """Output chunk sizes along an axis: an input chunk owns the outputs whose windows are
    centred in it (so a stride-1 'same' convolution keeps the input's chunks and reads equal
    halos on both sides), with edges moved to ``ax.align``; chunks that would be empty (input
    chunks smaller than the stride) are merged into their neighbour."""
    cuts = set()
    start = 0
    for c in in_chunks[:-1]:
        start += c
        o = -(-(start + ax.pb - (ax.extent - 1) // 2) // ax.s)
        o = (o + ax.align // 2) // ax.align * ax.align
        if 0 < o < n_out:
            cuts.add(o)
    edges = [0] + sorted(cuts) + [n_out]
    return tuple(b - a for a, b in zip(edges, edges[1:]))


def _pieces(in_chunks, lo, hi):
    """[(chunk index, slice in that chunk)] covering input range [lo, hi)."""
    out, start = [], 0
    for i, c in enumerate(in_chunks):
        a, b = max(lo, start), min(hi, start + c)
        if a < b:
            out.append((i, slice(a - start, b - start), a - start == 0 and b - start == c))
        start += c
    return out


def _assemble(pieces, nw):
    """The pieces (row-major, ``nw`` per row) joined into one array."""
    rows = [np.concatenate(pieces[i:i + nw], axis=3) if nw > 1 else pieces[i]
            for i in range(0, len(pieces), nw)]
    return np.concatenate(rows, axis=2) if len(rows) > 1 else rows[0]


class _Gather:
    """Builds the tasks that cut halo pieces out of ``x``'s blocks: one ``getitem`` per (input
    block, region) that is not a whole block, run where the block lives, so that only the
    piece travels to the task that needs it. ``stats`` counts the bytes of input each block
    task reads from outside its largest piece (the halo) and in all."""

    def __init__(self, x, name):
        self.x, self.name, self.dsk = x, name, {}
        self.itemsize = np.dtype(x.dtype).itemsize
        self.halo_bytes = 0
        self.read_bytes = 0

    def refs(self, ni, ci, csl, hrange, wrange):
        """TaskRefs to the pieces covering rows ``hrange`` and columns ``wrange`` of input
        block row (ni, ci) (channel slice ``csl`` of that block, None for all), row-major, and
        the number of pieces per row."""
        x = self.x
        hp = _pieces(x.chunks[2], *hrange)
        wp = _pieces(x.chunks[3], *wrange)
        refs, sizes = [], []
        n = x.chunks[0][ni]
        c = x.chunks[1][ci] if csl is None else csl.stop - csl.start
        for hi, hs, hwhole in hp:
            for wi, ws, wwhole in wp:
                src = (x.name, ni, ci, hi, wi)
                sizes.append(n * c * (hs.stop - hs.start) * (ws.stop - ws.start) * self.itemsize)
                if hwhole and wwhole and csl is None:
                    refs.append(TaskRef(src))
                    continue
                key = (self.name, ni, ci, hi, wi, hs.start, hs.stop, ws.start, ws.stop,
                       None if csl is None else (csl.start, csl.stop))
                if key not in self.dsk:
                    index = (slice(None), slice(None) if csl is None else csl, hs, ws)
                    self.dsk[key] = Task(key, operator.getitem, TaskRef(src), index)
                refs.append(TaskRef(key))
        self.read_bytes += sum(sizes)
        self.halo_bytes += sum(sizes) - max(sizes)
        return List(*refs), len(wp)


def _array(name, dsk, x, chunks, dtype, extra_deps=()):
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x, *extra_deps])
    return da.Array(graph, name, chunks, dtype=dtype, meta=np.empty((0,) * 4, dtype))


# --------------------------------------------------------------------------------------------
# Spatial ops
# --------------------------------------------------------------------------------------------

def _conv_block(weight, bias, groups, conv_args, pieces, nw, origin, out_ranges, axes, sizes):
    """One output block of :func:`conv2d` (its part of the output channels: ``weight``,
    ``bias`` and ``groups`` are the part's), on this worker's device."""
    stride, padding, dilation, activation = conv_args
    return _run_window(
        lambda t: F.conv2d(t, weight, bias, stride, padding, dilation, groups,
                           activation=activation),
        _assemble(pieces, nw), origin, out_ranges, axes, sizes)


def _pool_block(op, args, pieces, nw, origin, out_ranges, axes, sizes):
    fn = getattr(F, op)
    return _run_window(lambda t: fn(t, *args), _assemble(pieces, nw), origin, out_ranges, axes,
                       sizes)


def _windowed(op, x, axes, out_hw, block, block_args, channel_parts, dtype, token, extra=(),
              stats=None):
    """The graph of a windowed op over ``x``, with output blocks along N (as x), channels
    (``channel_parts``: [(input block ci, input channel slice or None, output size, leading
    block arguments)]) and H, W (from x's chunks through :func:`_out_bounds`). ``extra``:
    more graph nodes (weights); ``token`` identifies the op's arguments."""
    token = tokenize(x.name, op, axes, out_hw, block_args, token,
                     [(p[0], None if p[1] is None else (p[1].start, p[1].stop), p[2])
                      for p in channel_parts])
    name = f"{op}-{token}"
    gather = _Gather(x, f"{op}-halo-{token}")
    sizes = x.shape[2:]
    hb = _out_bounds(axes[0], x.chunks[2], out_hw[0])
    wb = _out_bounds(axes[1], x.chunks[3], out_hw[1])
    hstarts = np.cumsum((0,) + hb).tolist()
    wstarts = np.cumsum((0,) + wb).tolist()
    dsk = {}
    for ni in range(len(x.chunks[0])):
        for bh in range(len(hb)):
            for bw in range(len(wb)):
                ranges = ((hstarts[bh], hstarts[bh + 1]), (wstarts[bw], wstarts[bw + 1]))
                need = [ax.needed(o0, o1, n) for ax, (o0, o1), n in zip(axes, ranges, sizes)]
                for oci, (ci, csl, _, part_args) in enumerate(channel_parts):
                    refs, nw = gather.refs(ni, ci, csl, need[0], need[1])
                    key = (name, ni, oci, bh, bw)
                    dsk[key] = Task(key, block, *part_args, *block_args, refs, nw,
                                    (need[0][0], need[1][0]), ranges, axes, sizes)
    if stats is not None:
        stats.update(halo_bytes=gather.halo_bytes, read_bytes=gather.read_bytes,
                     input_bytes=int(x.nbytes), tasks=len(dsk), halo_tasks=len(gather.dsk))
    dsk.update(gather.dsk)
    dsk.update(extra)
    chunks = (x.chunks[0], tuple(p[2] for p in channel_parts), hb, wb)
    return _array(name, dsk, x, chunks, dtype)


def _parts_default(parts, units, op):
    if parts is None:
        try:
            from distributed import get_client
            parts = len(get_client().scheduler_info(n_workers=-1)["workers"])
        except (ImportError, ValueError):
            parts = os.cpu_count() or 1
    if not isinstance(parts, numbers.Integral) or isinstance(parts, bool) or parts < 1:
        raise ValueError(f"{op}(): parts must be a positive int, got {parts!r}")
    return max(1, min(int(parts), units))


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
           split="spatial", parts=None, rechunk=False, _stats=None):
    """2-D convolution of a Dask array, as :func:`numbaconv.functional.conv2d`, block by block.

    Parameters
    ----------
    x : dask.array.Array (N, C, H, W), float32 or float64
        Chunked along N, H and W as you like (channels in one chunk, see ``rechunk``).
    weight : array (OC, C // groups, KH, KW), same dtype
        NumPy (or a device array, copied to the host). One graph node: each worker fetches it
        once, not once per task.
    bias : array (OC,) or None
    stride, padding, dilation, groups, activation
        As in :func:`numbaconv.functional.conv2d` (``padding`` also 'same' or 'valid').
    split : 'spatial' or 'out_channels'
        'spatial' (default): one task per block of x, reading the halo of exactly the
        receptive field from the neighbouring blocks. 'out_channels': also cut the output
        channels into ``parts`` (whole groups when ``groups > 1``), each task holding its slice
        of the weights: model parallelism, which pays when the weights are large and the
        images small (see the module docstring).
    parts : int or None
        Output-channel parts for ``split='out_channels'``; None: the number of workers of the
        current ``dask.distributed`` client, else the number of CPUs.
    rechunk : bool
        With False (default) an x chunked along C raises a ValueError; with True it is
        rechunked to one channel chunk first.

    Returns
    -------
    dask.array.Array (N, OC, OH, OW)
        Chunked as x along N, along OC by ``split``, and along OH, OW with one block per
        block of x (block edges on the 4x4 output grid for float32 3x3 stride-1
        convolutions). Equal to ``F.conv2d`` on the whole array: bit for bit in float64; in
        float32 within float32 tolerance (bit for bit where block and whole run the same
        algorithm, see the module docstring).

    Raises
    ------
    TypeError
        x is not a Dask array, or a dtype is wrong.
    ValueError
        Impossible shapes (as ``F.conv2d``), chunks along C without ``rechunk``, unknown chunk
        sizes, a bad ``split`` or ``parts``.
    """
    op = "conv2d"
    _check_array(op, x)
    if split not in ("spatial", "out_channels"):
        raise ValueError(f"{op}(): split={split!r} is not valid; use 'spatial' or 'out_channels'")
    weight = np.ascontiguousarray(_device.to_numpy(weight))
    bias = None if bias is None else np.ascontiguousarray(_device.to_numpy(bias))
    dtype = np.dtype(x.dtype)
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None and a.dtype != dtype:
            raise TypeError(f"{op}(): {name} is {a.dtype} but x is {dtype}; use one dtype")
    if weight.ndim != 4:
        raise ValueError(f"{op}(): expected a 4-D weight, got {weight.ndim}-D with shape "
                         f"{weight.shape}")
    groups = _convshape.check_groups(op, groups)
    stride = _int_tuple(stride, op, "stride", 1)
    dilation = _int_tuple(dilation, op, "dilation", 1)
    pad = padding if isinstance(padding, str) else _int_tuple(padding, op, "padding", 0)
    geo = _convshape.conv_geometry(op, 2, x.shape, weight.shape,
                                   None if bias is None else bias.shape, stride, pad, dilation,
                                   groups)
    F._activation(op, activation)
    x = _whole(op, x, (1,), rechunk, "a convolution needs all input channels of a pixel in one "
               "task")
    oc, cpg, kh, kw = weight.shape
    # Padding after: 'same' may be asymmetric; else it is the padding before.
    pads_after = []
    for size, k, s, d, pb, o in zip(x.shape[2:], (kh, kw), stride, dilation, geo.padding,
                                    geo.out4[2:]):
        pads_after.append((o - 1) * s + d * (k - 1) + 1 - size - pb
                          if padding == "same" else pb)
    align = _conv_align((kh, kw), stride, dilation, groups, dtype)
    axes = tuple(_Axis(k, s, d, pb, pa, False, align) for k, s, d, pb, pa in
                 zip((kh, kw), stride, dilation, geo.padding, pads_after))

    # Output-channel parts: whole groups when grouped (each with its input channels).
    units = groups if groups > 1 else oc
    nparts = 1 if split == "spatial" else _parts_default(parts, units, op)
    bounds = np.cumsum([0] + [len(u) for u in np.array_split(np.arange(units), nparts)])
    per_unit = oc // groups if groups > 1 else 1
    token = tokenize(weight, bias)
    wname = f"conv2d-weight-{token}"
    channel_parts, wdsk = [], {}
    for u0, u1 in zip(bounds[:-1], bounds[1:]):
        o0, o1 = u0 * per_unit, u1 * per_unit
        # Keys name the slice: a key must never stand for two values (a cluster may still hold
        # one from an earlier graph with the same weights cut into other parts).
        wkey, bkey = (wname, o0, o1, "w"), (wname, o0, o1, "b")
        wdsk[wkey] = DataNode(wkey, np.ascontiguousarray(weight[o0:o1]))
        wdsk[bkey] = DataNode(bkey, None if bias is None else np.ascontiguousarray(bias[o0:o1]))
        csl = slice(u0 * cpg, u1 * cpg) if groups > 1 and nparts > 1 else None
        part_groups = u1 - u0 if groups > 1 else 1
        channel_parts.append((0, csl, o1 - o0, (TaskRef(wkey), TaskRef(bkey), part_groups)))
    conv_args = (stride, padding if isinstance(padding, str) else pad, dilation, activation)
    return _windowed(op, x, axes, geo.out4[2:], _conv_block, (conv_args,), channel_parts, dtype,
                     token, extra=wdsk, stats=_stats)


def _pool_checks(op, x, kernel_size, stride, padding, dilation, ceil_mode):
    _check_array(op, x)
    k = _int_tuple(kernel_size, op, "kernel_size", 1)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else \
        _int_tuple(stride, op, "stride", 1)
    p = _int_tuple(padding, op, "padding", 0)
    d = _int_tuple(dilation, op, "dilation", 1)
    for kk, pp in zip(k, p):
        if pp > kk // 2:
            raise ValueError(f"{op}(): padding should be at most half of the kernel size, got "
                             f"padding={p} for kernel_size={k}")
    axes = tuple(_Axis(kk, ss, dd, pp, pp, bool(ceil_mode), 1)
                 for kk, ss, dd, pp in zip(k, s, d, p))
    out_hw = tuple(ax.out_size(n) for ax, n in zip(axes, x.shape[2:]))
    if min(out_hw) < 1:
        raise ValueError(f"{op}(): input of spatial size {x.shape[2:]} gives output size "
                         f"{out_hw}, which is too small (kernel_size={k}, stride={s}, "
                         f"padding={p}, dilation={d})")
    return k, s, p, d, axes, out_hw


def _pool(op, x, axes, out_hw, args, stats):
    parts = [(ci, None, c, ()) for ci, c in enumerate(x.chunks[1])]
    return _windowed(op, x, axes, out_hw, _pool_block, (op, args), parts, np.dtype(x.dtype), "",
                     stats=stats)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
               _stats=None):
    """2-D max pooling of a Dask array, as :func:`numbaconv.functional.max_pool2d`, block by
    block with halos of exactly the window's reach.

    Parameters
    ----------
    x : dask.array.Array (N, C, H, W), float32 or float64, chunked along any dims
    kernel_size, stride, padding, dilation, ceil_mode
        As in :func:`numbaconv.functional.max_pool2d`.

    Returns
    -------
    dask.array.Array (N, C, OH, OW), chunked as x along N and C, one block per block of x
    along OH and OW. Equal to ``F.max_pool2d`` on the whole array.
    """
    op = "max_pool2d"
    k, s, p, d, axes, out_hw = _pool_checks(op, x, kernel_size, stride, padding, dilation,
                                            ceil_mode)
    return _pool(op, x, axes, out_hw, (k, s, p, d, bool(ceil_mode)), _stats)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               *, _stats=None):
    """2-D average pooling of a Dask array, as :func:`numbaconv.functional.avg_pool2d`, block
    by block with halos of exactly the window's reach.

    Parameters
    ----------
    x : dask.array.Array (N, C, H, W), float32 or float64, chunked along any dims
    kernel_size, stride, padding, ceil_mode, count_include_pad
        As in :func:`numbaconv.functional.avg_pool2d`.

    Returns
    -------
    dask.array.Array (N, C, OH, OW), chunked as x along N and C, one block per block of x
    along OH and OW. Equal to ``F.avg_pool2d`` on the whole array.
    """
    op = "avg_pool2d"
    k, s, p, _, axes, out_hw = _pool_checks(op, x, kernel_size, stride, padding, 1, ceil_mode)
    return _pool(op, x, axes, out_hw, (k, s, p, bool(ceil_mode), bool(count_include_pad)),
                 _stats)


# --------------------------------------------------------------------------------------------
# Batch partitioning
# --------------------------------------------------------------------------------------------

def _predict_block(payload, x):
    """One chunk of images through the model, on this worker's current device."""
    y = payload.on(_device.get_device())(x)
    return np.ascontiguousarray(_device.to_numpy(y))


def predict(model, x, *, rechunk=False):
    """Run ``model`` over a Dask array of images, one task per chunk of the batch.

    Parameters
    ----------
    model : numbaconv.nn.Module, in eval mode
        Shipped once: the task graph holds it in one node (its parameters' arrays pickled once
        each), which each worker fetches once and keeps for all its chunks. A task runs it on
        its worker's current device (``NUMBACONV_DEVICE`` there), moving a copy of the model
        there once per worker.
    x : dask.array.Array (N, C, H, W), float32 or float64 (the model's dtype)
        Chunked along N only.
    rechunk : bool
        With False (default), chunks along C, H or W raise a ValueError saying how to merge
        them; with True they are merged (``x.rechunk({1: -1, 2: -1, 3: -1})``).

    Returns
    -------
    dask.array.Array (N, *out)
        Chunked as x along N. The output shape per image comes from one zero image run on
        the calling machine when the graph is built. Equal to ``model(x)`` on one machine:
        bit for bit in float64; in float32 within float32 tolerance (see the module
        docstring).

    Raises
    ------
    TypeError
        ``model`` is not a Module, x is not a Dask array, or dtypes differ.
    ValueError
        The model is in training mode, x is chunked along C/H/W without ``rechunk``, x's chunk
        sizes are unknown.
    """
    op = "predict"
    _check_array(op, x)
    key, node = _model_node(model, x.dtype, op)
    x = _whole(op, x, (1, 2, 3), rechunk, "predict() cuts the batch only; each task needs whole "
               "images (use predict_tiled() to cut images into tiles)")
    probe = _device.to_numpy(model(np.zeros((1,) + x.shape[1:], x.dtype)))
    name = f"predict-{tokenize(key, x.name)}"
    dsk = {key: node}
    for ni in range(len(x.chunks[0])):
        k = (name, ni) + (0,) * (probe.ndim - 1)
        dsk[k] = Task(k, _predict_block, TaskRef(key), TaskRef((x.name, ni, 0, 0, 0)))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x])
    chunks = (x.chunks[0],) + tuple((s,) for s in probe.shape[1:])
    return da.Array(graph, name, chunks, dtype=probe.dtype,
                    meta=np.empty((0,) * probe.ndim, probe.dtype))


# --------------------------------------------------------------------------------------------
# Whole networks, tile by tile
# --------------------------------------------------------------------------------------------

_POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.GELU,
              nn.Hardswish, nn.Identity, nn.Dropout, nn.BatchNorm2d)


def _own_forward(m, cls):
    return isinstance(m, cls) and type(m).forward is cls.forward


def _walk(module, dtype, path=""):
    """[(path, layer, axes or None)] of the spatially local layers that ``module`` runs in
    order on ``dtype`` input; axes are (_Axis H, _Axis W) for windowed layers, None for
    pointwise ones."""
    if _own_forward(module, nn.Sequential):
        out = []
        for name, child in module._modules.items():
            if child is not None:
                out += _walk(child, dtype, f"{path}.{name}" if path else name)
        return out
    where = f"layer '{path}' ({type(module).__name__})" if path else type(module).__name__
    if _own_forward(module, nn.Conv2d):
        k, s, d = module.kernel_size, module.stride, module.dilation
        if module.padding == "same":
            pads = [(dd * (kk - 1) // 2, dd * (kk - 1) - dd * (kk - 1) // 2)
                    for kk, dd in zip(k, d)]
        elif module.padding == "valid":
            pads = [(0, 0), (0, 0)]
        else:
            pads = [(p, p) for p in module.padding]
        align = _conv_align(k, s, d, module.groups, dtype)
        return [(path, module, tuple(_Axis(kk, ss, dd, pb, pa, False, align)
                                     for kk, ss, dd, (pb, pa) in zip(k, s, d, pads)))]
    if _own_forward(module, nn.MaxPool2d) or _own_forward(module, nn.AvgPool2d):
        k = _int_tuple(module.kernel_size, "predict_tiled", "kernel_size", 1)
        s = _int_tuple(module.stride, "predict_tiled", "stride", 1)
        p = _int_tuple(module.padding, "predict_tiled", "padding", 0)
        d = _int_tuple(getattr(module, "dilation", 1), "predict_tiled", "dilation", 1)
        return [(path, module, tuple(_Axis(kk, ss, dd, pp, pp, bool(module.ceil_mode), 1)
                                     for kk, ss, dd, pp in zip(k, s, d, p)))]
    if any(_own_forward(module, cls) for cls in _POINTWISE):
        if isinstance(module, nn.BatchNorm2d) and (module.running_mean is None
                                                   or module.running_var is None):
            raise ValueError(f"predict_tiled(): {where} keeps no running statistics, so it "
                             "normalises each tile with the tile's own: not spatially local")
        return [(path, module, None)]
    raise ValueError(
        f"predict_tiled(): cannot tile through {where}: only Sequential chains of Conv2d, "
        "MaxPool2d, AvgPool2d, BatchNorm2d (eval), activations, Dropout (eval) and Identity "
        "are known to be spatially local. Run the layers after it on the tiled features "
        "(e.g. predict_tiled(model.features, x), then the head)")


def _tiled_plan(walk, sizes, block):
    """Per windowed layer, the output ranges a block computes, and the input region it needs:
    the block's final output ranges pulled back through each layer's receptive field, widened
    to each layer's alignment. ``sizes`` [(H, W) entering each layer] (len(walk) + 1)."""
    ranges = list(block)
    plan = [None] * len(walk)
    for i in range(len(walk) - 1, -1, -1):
        axes = walk[i][2]
        if axes is None:
            continue
        outs = tuple(ax.expand(o0, o1, n) for ax, (o0, o1), n in zip(axes, ranges, sizes[i + 1]))
        plan[i] = outs
        ranges = [ax.needed(o0, o1, n) for ax, (o0, o1), n in zip(axes, outs, sizes[i])]
    return plan, tuple(ranges)


def _tiled_block(payload, paths, axes, plan, sizes, pieces, nw, origin, block):
    """One output tile of :func:`predict_tiled`: the layers run in turn on the tile's input
    region, each windowed one through :func:`_run_window`, on this worker's device.
    ``sizes``: per layer, its whole input's (H, W)."""
    device = _device.get_device()
    x = _assemble(pieces, nw)
    for path, ax, outs, size in zip(paths, axes, plan, sizes):
        layer = payload.layer(device, path)
        if ax is None:
            x = np.ascontiguousarray(_device.to_numpy(layer(x)))
        else:
            x = _run_window(layer, x, origin, outs, ax, size)
            origin = (outs[0][0], outs[1][0])
    keep = tuple(slice(b0 - o, b1 - o) for (b0, b1), o in zip(block, origin))
    return np.ascontiguousarray(x[(slice(None), slice(None)) + keep])


def predict_tiled(model, image, tile=None, *, rechunk=False, _stats=None):
    """Run a fully convolutional ``model`` over large images tile by tile.

    Each task computes one tile of the model's output from the input region that tile's
    receptive field covers (the halo, derived from the layers' kernels, strides, paddings and
    dilations), gathered from the input's chunks. Equal to ``model(image)`` on one machine:
    bit for bit in float64; in float32 within float32 tolerance (see the module docstring).

    Parameters
    ----------
    model : numbaconv.nn.Module, in eval mode
        A ``Sequential`` chain (nested ones too) of ``Conv2d``, ``MaxPool2d``, ``AvgPool2d``,
        ``BatchNorm2d``, activation layers, ``Dropout`` and ``Identity``; any other layer
        raises a ValueError naming it. Shipped once, as in :func:`predict`.
    image : dask.array.Array or numpy.ndarray (N, C, H, W), the model's dtype
        Chunked along N, H and W as stored; a NumPy array is wrapped with tiles as chunks.
    tile : (th, tw) or None
        Tile size in input pixels; each output tile holds ``th // S`` rows and ``tw // S``
        columns of the output, S being the network's total stride along that axis. None: the
        size of image's first chunk.
    rechunk : bool
        With False (default), an image chunked along C raises a ValueError; with True its
        channels are merged into one chunk.

    Returns
    -------
    dask.array.Array (N, C_out, OH, OW), chunked as image along N and by ``tile`` along OH, OW.
    """
    op = "predict_tiled"
    if isinstance(image, np.ndarray):
        if image.ndim != 4:
            raise ValueError(f"{op}(): expected a 4-D (N, C, H, W) image, got {image.ndim}-D")
        th, tw = image.shape[2:] if tile is None else _int_tuple(tile, op, "tile", 1)
        image = da.from_array(image, chunks=(image.shape[0], image.shape[1], th, tw))
    _check_array(op, image)
    image = _whole(op, image, (1,), rechunk, "each tile needs all input channels")
    walk = _walk(model, image.dtype)
    key, node = _model_node(model, image.dtype, op)
    sizes = [tuple(image.shape[2:])]
    channels = image.shape[1]
    layers = []  # per layer: its whole input's (H, W), None for pointwise ones
    for path, layer, axes in walk:
        if axes is None:
            sizes.append(sizes[-1])
            layers.append(None)
            continue
        if isinstance(layer, nn.Conv2d):
            if layer.in_channels != channels:
                raise ValueError(f"{op}(): layer '{path}' expects {layer.in_channels} input "
                                 f"channels, but gets {channels}")
            channels = layer.out_channels
        out = tuple(ax.out_size(n) for ax, n in zip(axes, sizes[-1]))
        if min(out) < 1 or any(n + ax.pb + ax.pa < ax.extent for ax, n in zip(axes, sizes[-1])):
            raise ValueError(f"{op}(): layer '{path}' gets a {sizes[-1]} input, too small for "
                             "its window")
        layers.append(tuple(sizes[-1]))
        sizes.append(out)
    stride = [math.prod(a[i].s for _, _, a in walk if a is not None) for i in (0, 1)]
    if tile is None:
        tile = (image.chunks[2][0], image.chunks[3][0])
    tile = _int_tuple(tile, op, "tile", 1)
    out_tile = [t // s for t, s in zip(tile, stride)]
    if min(out_tile) < 1:
        raise ValueError(f"{op}(): tile={tuple(tile)} is smaller than the network's total "
                         f"stride {tuple(stride)}; each tile must give at least one output")
    token = tokenize(key, image.name, tile)
    name = f"{op}-{token}"
    gather = _Gather(image, f"{op}-halo-{token}")
    out_h, out_w = sizes[-1]
    hb = tuple(min(out_tile[0], out_h - a) for a in range(0, out_h, out_tile[0]))
    wb = tuple(min(out_tile[1], out_w - a) for a in range(0, out_w, out_tile[1]))
    hs, ws = np.cumsum((0,) + hb).tolist(), np.cumsum((0,) + wb).tolist()
    paths = [p for p, _, _ in walk]
    axes = [a for _, _, a in walk]
    dsk = {key: node}
    for bh in range(len(hb)):
        for bw in range(len(wb)):
            block = ((hs[bh], hs[bh + 1]), (ws[bw], ws[bw + 1]))
            plan, region = _tiled_plan(walk, sizes, block)
            for ni in range(len(image.chunks[0])):
                refs, nw = gather.refs(ni, 0, None, region[0], region[1])
                k = (name, ni, 0, bh, bw)
                dsk[k] = Task(k, _tiled_block, TaskRef(key), paths, axes, plan, layers, refs,
                              nw, (region[0][0], region[1][0]), block)
    if _stats is not None:
        _stats.update(halo_bytes=gather.halo_bytes, read_bytes=gather.read_bytes,
                      input_bytes=int(image.nbytes), tasks=len(dsk) - 1,
                      halo_tasks=len(gather.dsk))
    dsk.update(gather.dsk)
    return _array(name, dsk, image, (image.chunks[0], (channels,), hb, wb), image.dtype)
