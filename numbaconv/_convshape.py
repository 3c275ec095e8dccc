"""Shape arithmetic of the convolution ops, written once for conv2d / conv1d, their backward ops
and conv_transpose2d.

Callers (``numbaconv.functional``) have already checked ranks and dtypes and turned ``stride``,
``dilation`` and an int/tuple ``padding`` into int tuples; these helpers check the channel
counts and sizes, raise torch's errors for impossible shapes and return the geometry with 1-D
convolutions lifted to 2-D (height 1), which is what the backends run.
"""

import collections
import numbers

ConvGeometry = collections.namedtuple("ConvGeometry", [
    "batched",      # the input had a batch dim
    "x4",           # (N, C, H, W) the input as the kernels see it
    "w4",           # (OC, C // groups, KH, KW) the weight as the kernels see it
    "out4",         # (N, OC, OH, OW) the output as the kernels see it
    "out_shape",    # the output's shape as the caller sees it (1-D, unbatched)
    "stride",       # (h, w)
    "padding",      # (top, left); bottom/right padding is implied by out4
    "dilation",     # (h, w)
    "groups",
])


def check_groups(op, groups):
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}(): groups must be a positive int, got {groups!r}")
    return int(groups)


def conv_geometry(op, nd, xs, ws, bias_shape, stride, padding, dilation, groups):
    """The geometry of ``conv{nd}d(input, weight, bias, ...)``.

    Parameters
    ----------
    op : str, the name used in error messages.
    nd : 1 or 2.
    xs, ws : the input's and the weight's shapes (input batched or not).
    bias_shape : the bias's shape, or None.
    stride, dilation : tuples of ``nd`` positive ints.
    padding : 'same', 'valid', or a tuple of ``nd`` non-negative ints (other strings raise).
    groups : a positive int.

    Returns
    -------
    ConvGeometry
    """
    xs, ws = tuple(xs), tuple(ws)
    batched = len(xs) == nd + 2
    if not batched:
        xs = (1,) + xs
    n, c, spatial = xs[0], xs[1], xs[2:]
    oc, cpg, ksize = ws[0], ws[1], ws[2:]
    if oc % groups:
        raise ValueError(f"{op}(): out_channels ({oc}, weight.shape[0]) must be divisible by "
                         f"groups={groups}")
    if cpg * groups != c:
        raise ValueError(f"{op}(): input has {c} channels but weight of shape {ws} with "
                         f"groups={groups} expects {cpg * groups} (= weight.shape[1] * groups)")
    if bias_shape is not None and tuple(bias_shape) != (oc,):
        raise ValueError(f"{op}(): bias must have shape ({oc},) to match weight's out_channels, "
                         f"got {tuple(bias_shape)}")

    # Padding as (before, after) per spatial dim; 'same' may be asymmetric, like torch's.
    if isinstance(padding, str):
        if padding == "valid":
            pads = [(0, 0)] * nd
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{op}(): padding='same' is not supported for strided "
                                 "convolutions (stride must be 1)")
            pads = []
            for k, d in zip(ksize, dilation):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))
        else:
            raise ValueError(f"{op}(): padding={padding!r} is not valid; use 'same', 'valid', an "
                             f"int or a tuple of {nd} ints")
    else:
        pads = [(p, p) for p in padding]

    out_spatial = []
    for size, k, s, d, (pb, pa) in zip(spatial, ksize, stride, dilation, pads):
        extent = d * (k - 1) + 1
        if size + pb + pa < extent:
            raise ValueError(
                f"{op}(): padded input size per channel "
                f"{tuple(sp + a + b for sp, (a, b) in zip(spatial, pads))} is smaller than the "
                f"dilated kernel size {tuple(dd * (kk - 1) + 1 for kk, dd in zip(ksize, dilation))}")
        out_spatial.append((size + pb + pa - extent) // s + 1)

    out_shape = (n, oc) + tuple(out_spatial)
    if not batched:
        out_shape = out_shape[1:]
    if nd == 1:  # run a 1-D convolution as a 2-D one over a height-1 image
        stride, dilation = (1,) + tuple(stride), (1,) + tuple(dilation)
        pads = [(0, 0)] + pads
        ksize, spatial, out_spatial = (1,) + ksize, (1,) + spatial, [1] + out_spatial
    return ConvGeometry(batched, (n, c) + tuple(spatial), (oc, cpg) + tuple(ksize),
                        (n, oc) + tuple(out_spatial), out_shape, tuple(stride),
                        (pads[0][0], pads[1][0]), tuple(dilation), groups)


def conv_transpose_geometry(op, nd, xs, ws, bias_shape, stride, padding, output_padding,
                            dilation, groups):
    """The geometry of ``conv_transpose{nd}d(input, weight, bias, ...)``, as the convolution
    whose data gradient it is.

    ``weight`` is (C_in, C_out // groups, *k); the returned geometry describes the convolution
    from the transposed op's output (N, C_out, *out) to its input (N, C_in, *in) with that same
    weight: ``x4`` is the transposed op's output (the convolution's input), ``out4`` its input.
    stride, padding, output_padding and dilation are tuples of ``nd`` ints (already checked for
    sign); ``output_padding`` must be smaller than the stride or the dilation, as in torch.
    """
    xs, ws = tuple(xs), tuple(ws)
    batched = len(xs) == nd + 2
    if not batched:
        xs = (1,) + xs
    n, cin, spatial = xs[0], xs[1], xs[2:]
    wcin, coutg, ksize = ws[0], ws[1], ws[2:]
    if wcin % groups:
        raise ValueError(f"{op}(): in_channels ({wcin}, weight.shape[0]) must be divisible by "
                         f"groups={groups}")
    if wcin != cin:
        raise ValueError(f"{op}(): input has {cin} channels but weight of shape {ws} expects "
                         f"{wcin} (= weight.shape[0])")
    cout = coutg * groups
    if bias_shape is not None and tuple(bias_shape) != (cout,):
        raise ValueError(f"{op}(): bias must have shape ({cout},) (= weight.shape[1] * groups), "
                         f"got {tuple(bias_shape)}")
    for op_, s, d in zip(output_padding, stride, dilation):
        if op_ >= s and op_ >= d:
            raise ValueError(f"{op}(): output_padding must be smaller than either stride or "
                             f"dilation, got output_padding={output_padding}, stride={stride}, "
                             f"dilation={dilation}")
    out_spatial = tuple((size - 1) * s - 2 * p + d * (k - 1) + o + 1 for size, k, s, p, o, d in
                        zip(spatial, ksize, stride, padding, output_padding, dilation))
    if any(o < 1 for o in out_spatial):
        raise ValueError(f"{op}(): input size per channel {tuple(spatial)} gives an output size "
                         f"per channel {out_spatial}, which is too small")
    out_shape = (n, cout) + out_spatial
    if not batched:
        out_shape = out_shape[1:]
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    if nd == 1:
        stride, padding, dilation = (1,) + stride, (0,) + padding, (1,) + dilation
        ksize, spatial, out_spatial = (1,) + ksize, (1,) + spatial, (1,) + out_spatial
    return ConvGeometry(batched, (n, cout) + tuple(out_spatial), (cin, coutg) + tuple(ksize),
                        (n, cin) + tuple(spatial), out_shape, stride, padding, dilation, groups)
