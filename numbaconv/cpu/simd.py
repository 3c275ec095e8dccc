"""A small explicit-SIMD layer: LLVM vector values inside ``@njit`` code.

Numba's auto-vectoriser handles simple row loops, but a register-blocked microkernel needs its
accumulators to stay in vector registers across a long reduction, which only explicit vector
values guarantee. This module gives Numba a vector type (``Vec``) whose data model is an LLVM
``<lanes x float>`` (or double) value, and a handful of intrinsics that emit LLVM vector
instructions through llvmlite: load, store (both optionally masked to the first ``n`` lanes),
broadcast, fused multiply-add, add, max and a horizontal sum.

The width is fixed once per process in :data:`LANES` (float32 lanes; float64 vectors have half as
many): 16 with AVX-512, 8 with AVX2 and 1 (scalar code) otherwise. ``NUMBACONV_SIMD_WIDTH=16|8|1``
forces one, which is how the tests run every width on one machine. Kernels see the width as a
compile-time constant; ``numbaconv.cpu`` keys its on-disk kernel cache on it.

Arrays passed to the intrinsics must be 1-D and C-contiguous; indices are element offsets. Loads
and stores are unaligned and unchecked, like NumPy's unsafe indexing in ``boundscheck=False``
Numba code: callers keep every lane they touch inside the array (or use the masked forms).
"""

import os

import llvmlite.binding as _llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, models, register_model

_ENV = "NUMBACONV_SIMD_WIDTH"
_WIDTHS = (16, 8, 1)


def host_lanes():
    """float32 lanes of the host's widest vector unit: 16 (AVX-512), 8 (AVX2) or 1."""
    features = _llvm.get_host_cpu_features()
    if features.get("avx512f", False):
        return 16
    if features.get("avx2", False):
        return 8
    return 1


def _lanes_from_env():
    raw = os.environ.get(_ENV, "").strip()
    if not raw:
        return host_lanes()
    try:
        lanes = int(raw)
    except ValueError:
        lanes = None
    if lanes not in _WIDTHS:
        raise ValueError(f"{_ENV}={raw!r} is not a supported width; use one of "
                         f"{', '.join(map(str, _WIDTHS))} (float32 lanes) or leave it unset")
    if lanes > host_lanes():
        raise ValueError(f"{_ENV}={lanes} needs a wider vector unit than this CPU has "
                         f"({host_lanes()} float32 lanes)")
    return lanes


LANES = _lanes_from_env()
"""float32 lanes of every vector in this process."""


def lanes_of(dtype):
    """Lanes of a vector of ``dtype`` (a NumPy dtype or Numba type): LANES * 4 / itemsize."""
    size = dtype.bitwidth // 8 if isinstance(dtype, types.Float) else dtype.itemsize
    return max(1, LANES * 4 // size)


class Vec(types.Type):
    """Numba type of a SIMD vector of ``lanes`` values of the float type ``dtype``."""

    def __init__(self, dtype, lanes):
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"Vec({dtype} x {lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elem = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elem, fe_type.lanes))


# Codegen helpers, also for the kernel modules' own intrinsics (interleaved and bit-masked loads).

def vec_type(arr, who):
    """The Vec type loaded from a 1-D C-contiguous float array type, or a TypingError naming
    the intrinsic ``who``."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
            and isinstance(arr.dtype, types.Float)):
        raise TypingError(f"{who} needs a 1-D C-contiguous float array, got {arr}")
    return Vec(arr.dtype, max(1, LANES * 32 // arr.dtype.bitwidth))


def _vec_of(arr, who):
    return vec_type(arr, f"simd.{who}")


def _check_index(idx, who, what="index"):
    if not isinstance(idx, types.Integer):
        raise TypingError(f"simd.{who}: the {what} must be an integer, got {idx}")


def address(context, builder, arrty, arr, idx, lty):
    """Pointer to element ``idx`` of ``arr``, typed as a pointer to the LLVM vector ``lty``.
    Not inbounds: the address of a vector whose first lanes are masked off may precede ``arr``."""
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [idx]), lty.as_pointer())


def _address(context, builder, arrty, arr, idx, vecty):
    return address(context, builder, arrty, arr, idx, context.get_value_type(vecty))


def masked_load(builder, ptr, mask, lty, passthru=None):
    """llvm.masked.load of the float vector type ``lty`` at ``ptr``: lanes off in ``mask`` are
    not read and come from ``passthru`` (zeros when None)."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(lty, [ptr.type, ir.IntType(32), mask.type, lty]),
        f"llvm.masked.load.{_suffix(lty)}.p0")
    passthru = ir.Constant(lty, None) if passthru is None else passthru
    return builder.call(fn, [ptr, _align(lty), mask, passthru])


def masked_store(builder, value, ptr, mask):
    """llvm.masked.store of ``value`` at ``ptr``: lanes off in ``mask`` are not written."""
    lty = value.type
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [lty, ptr.type, ir.IntType(32), mask.type]),
        f"llvm.masked.store.{_suffix(lty)}.p0")
    builder.call(fn, [value, ptr, _align(lty), mask])


def _align(lty):
    return ir.Constant(ir.IntType(32), 4 if isinstance(lty.element, ir.FloatType) else 8)


def lane_mask(builder, n, lanes):
    """<lanes x i1>: lane i is on when i < n."""
    i32 = ir.IntType(32)
    n32 = builder.trunc(n, i32) if n.type.width > 32 else builder.sext(n, i32) \
        if n.type.width < 32 else n
    splat = builder.insert_element(ir.Constant(ir.VectorType(i32, lanes), ir.Undefined), n32,
                                   ir.Constant(i32, 0))
    splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
    iota = ir.Constant(ir.VectorType(i32, lanes), list(range(lanes)))
    return builder.icmp_signed("<", iota, splat)


def _suffix(ty):
    """LLVM intrinsic type suffix, e.g. v16f32."""
    bits = 32 if isinstance(ty.element, ir.FloatType) else 64
    return f"v{ty.count}f{bits}"


@intrinsic
def load(typingctx, arr, idx):
    """``Vec`` of ``arr[idx : idx + lanes]``."""
    vt = _vec_of(arr, "load")
    _check_index(idx, "load")

    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], vt)
        return builder.load(ptr, align=sig.args[0].dtype.bitwidth // 8)

    return vt(arr, idx), codegen


@intrinsic
def load_n(typingctx, arr, idx, n):
    """``Vec`` of ``arr[idx : idx + n]`` followed by zeros; reads nothing past lane ``n``."""
    vt = _vec_of(arr, "load_n")
    _check_index(idx, "load_n")
    _check_index(n, "load_n", "lane count")

    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], vt)
        return masked_load(builder, ptr, lane_mask(builder, args[2], vt.lanes),
                           context.get_value_type(vt))

    return vt(arr, idx, n), codegen


@intrinsic
def store(typingctx, arr, idx, v):
    """``arr[idx : idx + lanes] = v``."""
    vt = _vec_of(arr, "store")
    _check_index(idx, "store")
    if v != vt:
        raise TypingError(f"simd.store: cannot store {v} into {arr}")

    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], vt)
        builder.store(args[2], ptr, align=sig.args[0].dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(arr, idx, v), codegen


@intrinsic
def store_n(typingctx, arr, idx, v, n):
    """``arr[idx : idx + n] = v[:n]``; writes nothing past lane ``n``."""
    vt = _vec_of(arr, "store_n")
    _check_index(idx, "store_n")
    _check_index(n, "store_n", "lane count")
    if v != vt:
        raise TypingError(f"simd.store_n: cannot store {v} into {arr}")

    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], vt)
        masked_store(builder, args[2], ptr, lane_mask(builder, args[3], vt.lanes))
        return context.get_dummy_value()

    return types.none(arr, idx, v, n), codegen


def splat_value(builder, value, lty):
    """An ``lty`` vector with every lane ``value`` (an LLVM scalar)."""
    i32 = ir.IntType(32)
    v = builder.insert_element(ir.Constant(lty, ir.Undefined), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(v, ir.Constant(lty, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, lty.count), [0] * lty.count))


@intrinsic
def load1(typingctx, arr, idx):
    """``Vec`` with every lane ``arr[idx]`` (a broadcast load)."""
    vt = _vec_of(arr, "load1")
    _check_index(idx, "load1")

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        value = builder.load(builder.gep(data, [args[1]]))
        return splat_value(builder, value, context.get_value_type(vt))

    return vt(arr, idx), codegen


@intrinsic
def splat(typingctx, like, value):
    """``Vec`` (of the type ``like`` array would load) with every lane ``value``."""
    vt = _vec_of(like, "splat")
    if not isinstance(value, (types.Float, types.Integer)):
        raise TypingError(f"simd.splat needs a number, got {value}")

    def codegen(context, builder, sig, args):
        value = context.cast(builder, args[1], sig.args[1], vt.dtype)
        return splat_value(builder, value, context.get_value_type(vt))

    return vt(like, value), codegen


def _binary(name, build):
    """An intrinsic combining two (or three) vectors of one type elementwise."""

    def typer(typingctx, *vs):
        if not all(isinstance(v, Vec) for v in vs) or len(set(vs)) != 1:
            raise TypingError(f"simd.{name} needs vectors of one type, got {vs}")

        def codegen(context, builder, sig, args):
            return build(builder, *args)

        return vs[0](*vs), codegen

    return typer


def _llvm_call(builder, base, *args):
    ty = args[0].type
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * len(args)),
                                        f"llvm.{base}.{_suffix(ty)}")
    return builder.call(fn, args)


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` lane by lane, rounded once."""
    return _binary("fma", lambda bld, a, b, c: _llvm_call(bld, "fma", a, b, c))(typingctx, a, b, c)


@intrinsic
def add(typingctx, a, b):
    """``a + b`` lane by lane."""
    return _binary("add", lambda bld, a, b: bld.fadd(a, b))(typingctx, a, b)


@intrinsic
def mul(typingctx, a, b):
    """``a * b`` lane by lane."""
    return _binary("mul", lambda bld, a, b: bld.fmul(a, b))(typingctx, a, b)


@intrinsic
def maximum(typingctx, a, b):
    """Lane-wise maximum that propagates NaN (as ``np.maximum``)."""
    return _binary("maximum", lambda bld, a, b: _llvm_call(bld, "maximum", a, b))(typingctx, a, b)


@intrinsic
def hsum(typingctx, v):
    """Sum of the lanes of ``v`` (as a scalar of its dtype)."""
    if not isinstance(v, Vec):
        raise TypingError(f"simd.hsum needs a vector, got {v}")

    def codegen(context, builder, sig, args):
        ty = args[0].type
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ty.element, [ty.element, ty]),
            f"llvm.vector.reduce.fadd.{_suffix(ty)}")
        # reassoc: a tree sum, not lane 0 + lane 1 + ... in order.
        return builder.call(fn, [ir.Constant(ty.element, 0.0), args[0]], fastmath=("reassoc",))

    return v.dtype(v), codegen


@intrinsic
def width(typingctx, arr):
    """Lanes of the vectors that :func:`load` makes from ``arr``, as a compile-time constant."""
    lanes = _vec_of(arr, "width").lanes

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, lanes)

    return types.intp(arr), codegen
