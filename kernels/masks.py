"""Flatten the masks of clusters of features into contiguous arrays.

A feature's mask holds the pixels within ``radius`` (an ellipsoid with one
semi-axis per dimension, edge included) of its centre, clipped to the image,
without NaN pixels. A cluster's pixels are the union of its features' masks,
stored once each; every (feature, pixel) pair is an *entry*.

2D images are handled as 3D images of depth 1 (``shape3 = (1, H, W)``), so a
single set of loops serves both.
"""
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .jit import Specialized, exact_kernel, inline_kernel, kernel
from .threads import OverChunks


@intrinsic
def _prefetch(typingctx, array, index):
    """Ask for ``array[index]``'s cache line ahead of its use (a hint: no
    fault, no effect on results; ``index`` may be any position)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder,
                                                     args[0]).data
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        # a read (0), to be kept in all cache levels (3), of data (1)
        builder.call(hint, [builder.bitcast(builder.gep(data, [args[1]]),
                                            byte_ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(array, index), codegen


def _may_be_nan(pixels):
    """Whether the pixels of ``pixels`` (an array) can be NaN: a constant
    of its type, in compiled code."""
    return np.issubdtype(pixels.dtype, np.floating)


@overload(_may_be_nan)
def _may_be_nan_overload(pixels):
    floating = isinstance(pixels.dtype, types.Float)
    return lambda pixels: floating


@kernel
def _center3(coords, feat, ndim, d):
    if ndim == 3:
        return coords[feat, d]
    return 0.0 if d == 0 else coords[feat, d - 1]


@inline_kernel
def _walk_cluster(pixels, image_base, shapes3, im, ndim, coords, f0, f1,
                  radius3, fill, pix_base, feat_entry_off, pix_val, pix_coord,
                  entry_pix, feat_n_entries, lo, hi, centre, labels, row_f):
    """Visit the mask pixels of features f0..f1; return the pixel count.

    With ``fill`` False only counts (``feat_n_entries``); with ``fill`` True
    writes pixel values, coordinates and entries at the given offsets.
    ``lo``, ``hi`` and ``centre`` (a row per feature), ``labels`` (one
    per pixel of the cluster's bounding box, at least) and ``row_f`` (a
    column per image row of a feature's box, and a vector step more) are
    scratch.

    A row of a mask is a run of pixels: its ends are found with the
    membership test, and the pixels between are taken without it. A pixel
    of several masks is stored once (``labels`` numbers the cluster's
    pixels in its box); a single feature's pixels need no numbering.
    """
    n_feat = f1 - f0
    # (loops and indices rather than NumPy calls and views: see linalg)
    box_lo0 = box_lo1 = box_lo2 = np.iinfo(np.int64).max
    box_hi0 = box_hi1 = box_hi2 = -1
    for k in range(n_feat):
        for d in range(3):
            c = centre[k, d] = _center3(coords, f0 + k, ndim, d)
            lo[k, d] = max(int(math.ceil(c - radius3[d])), 0)
            hi[k, d] = min(int(math.floor(c + radius3[d])),
                           shapes3[im, d] - 1)
        box_lo0 = min(box_lo0, lo[k, 0])
        box_lo1 = min(box_lo1, lo[k, 1])
        box_lo2 = min(box_lo2, lo[k, 2])
        box_hi0 = max(box_hi0, hi[k, 0])
        box_hi1 = max(box_hi1, hi[k, 1])
        box_hi2 = max(box_hi2, hi[k, 2])
    extent1 = max(box_hi1 - box_lo1 + 1, 0)
    extent2 = max(box_hi2 - box_lo2 + 1, 0)
    shared = n_feat > 1
    if shared:
        for i in range(max(box_hi0 - box_lo0 + 1, 0) * extent1 * extent2):
            labels[i] = -1
    height = shapes3[im, 1]
    width = shapes3[im, 2]
    n_pix = 0
    for k in range(n_feat):
        feat = f0 + k
        # (from the array: a constant axis would compile _center3 again)
        cz = centre[k, 0]
        cy = centre[k, 1]
        cx = centre[k, 2]
        x_lo = lo[k, 2]
        x_hi = hi[k, 2]
        rz = radius3[0]
        ry = radius3[1]
        radius_x = radius3[2]
        # (in a scalar: stores into the outputs might change it as far as
        # the compiler knows, and it would be read again for every pixel)
        entry_at = feat_entry_off[feat] if fill else 0
        n_entries = 0
        # the image rows, from wherever in memory they are, while the ends
        # are computed: a row's first pixels would otherwise wait for them
        # (counting reads no pixel of an integer image)
        if fill or _may_be_nan(pixels):
            for z in range(lo[k, 0], hi[k, 0] + 1):
                for y in range(lo[k, 1], hi[k, 1] + 1):
                    row = image_base + (z * height + y) * width
                    _prefetch(pixels, row + x_lo)
                    _prefetch(pixels, row + x_hi)
        # the ends of every row first, then the pixels: the rows' chains of
        # divisions and square roots do not wait for each other's pixels.
        # A row's ends are estimated from the ellipse, in a loop over the
        # rows of each plane that LLVM vectorises, given a whole number of
        # vector steps (_ROW_STEP: with fewer rows it would take the scalar
        # loop; the rows past the box are computed and overwritten). The
        # estimate is the membership test's answer unless an end lies
        # within rounding of a pixel (or the row is the cap's, where the
        # square root magnifies rounding): only in those rows, flagged, the
        # test settles the ends. Ends are whole numbers held as floats
        # (vector code has no conversions to integers on most CPUs).
        n_y = max(hi[k, 1] - lo[k, 1] + 1, 0)
        n_y_padded = (n_y + _ROW_STEP - 1) // _ROW_STEP * _ROW_STEP
        x_lo_f = float(x_lo)
        x_hi_f = float(x_hi)
        n_rows = 0
        for z in range(lo[k, 0], hi[k, 0] + 1):
            tz = (z - cz) / rz
            for i in range(np.uint64(n_y_padded)):
                ty = (lo[k, 1] + np.int64(i) - cy) / ry
                rest = 1.0 - tz * tz - ty * ty
                half = math.sqrt(max(rest, 0.0)) * radius_x
                low_end = cx - half
                high_end = cx + half
                full = rest >= -1e-9
                doubt = (rest < _SETTLE) | _near_pixel(low_end) \
                    | _near_pixel(high_end)
                at = n_rows + i
                row_f[0, at] = tz * tz + ty * ty
                row_f[1, at] = 1.0 if full & doubt else 0.0
                row_f[2, at] = max(np.ceil(low_end), x_lo_f) if full \
                    else x_hi_f + 1.0
                row_f[3, at] = min(np.floor(high_end), x_hi_f) if full \
                    else x_hi_f
            n_rows += n_y
        for r in range(n_rows):
            if row_f[1, r] != 0.0:
                first, last = _settle(row_f[0, r], np.int64(row_f[2, r]),
                                      np.int64(row_f[3, r]), x_lo, x_hi, cx,
                                      radius_x)
                row_f[2, r] = first
                row_f[3, r] = last
        n_rows = 0
        for z in range(lo[k, 0], hi[k, 0] + 1):
            for y in range(lo[k, 1], hi[k, 1] + 1):
                first = np.int64(row_f[2, n_rows])
                last = np.int64(row_f[3, n_rows])
                n_rows += 1
                if last < first:
                    continue
                row = image_base + (z * height + y) * width
                n_run = last - first + 1
                source = np.uint64(row + first)
                # each kind of run has a loop of its own, with no test that
                # the run does not need: runs are short, and a loop that
                # tests for every case costs several times a plain one.
                # The test for NaN is a loop over the run (which an integer
                # image folds away). (Written out here: as inlined
                # functions, these loops took references to the arrays on
                # every row.)
                n_nan = 0
                for i in range(np.uint64(n_run)):
                    value = pixels[source + i]
                    n_nan += value != value
                if n_nan:
                    n_pix, n_entries = _run_with_nan(
                        pixels, row, first, last, labels, shared,
                        _box_index(z, y, box_lo0, box_lo1, box_lo2, extent1,
                                   extent2), fill, pix_base, n_pix,
                        entry_at, n_entries, pix_val, pix_coord, entry_pix,
                        ndim, z, y)
                elif shared:
                    # pixels an earlier mask of the cluster took keep
                    # their number; the others take the next ones
                    box_at = np.uint64(_box_index(z, y, box_lo0, box_lo1,
                                                  box_lo2, extent1, extent2)
                                       + first)
                    e = np.uint64(entry_at + n_entries)
                    for i in range(np.uint64(n_run)):
                        label = labels[box_at + i]
                        if label < 0:
                            label = n_pix
                            labels[box_at + i] = label
                            n_pix += 1
                            if fill:
                                q = np.uint64(pix_base + label)
                                pix_val[q] = pixels[source + i]
                                if ndim == 3:
                                    pix_coord[q, 0] = z
                                pix_coord[q, ndim - 2] = y
                                pix_coord[q, ndim - 1] = first + np.int64(i)
                        if fill:
                            entry_pix[e + i] = pix_base + label
                    n_entries += n_run
                else:
                    # a mask alone: its pixels in order
                    if fill:
                        q = np.uint64(pix_base + n_pix)
                        e = np.uint64(entry_at + n_entries)
                        if ndim == 3:
                            for i in range(np.uint64(n_run)):
                                pix_val[q + i] = pixels[source + i]
                                entry_pix[e + i] = np.int64(q + i)
                                pix_coord[q + i, 0] = z
                                pix_coord[q + i, 1] = y
                                pix_coord[q + i, 2] = first + np.int64(i)
                        else:
                            for i in range(np.uint64(n_run)):
                                pix_val[q + i] = pixels[source + i]
                                entry_pix[e + i] = np.int64(q + i)
                                pix_coord[q + i, 0] = y
                                pix_coord[q + i, 1] = first + np.int64(i)
                    n_pix += n_run
                    n_entries += n_run
        if not fill:
            feat_n_entries[feat] = n_entries
    return n_pix


@inline_kernel
def _box_index(z, y, box_lo0, box_lo1, box_lo2, extent1, extent2):
    """Index in the cluster's box (``labels``) of pixel (z, y, 0)."""
    return ((z - box_lo0) * extent1 + (y - box_lo1)) * extent2 - box_lo2


@kernel
def _run_with_nan(pixels, row, first, last, labels, shared, at, fill,
                  pix_base, n_pix, entry_at, n_entries, pix_val, pix_coord,
                  entry_pix, ndim, z, y):
    """A run of a row with NaN pixels, pixel by pixel (as the walk's runs):
    returns the pixel and entry counts after it."""
    for x in range(first, last + 1):
        value = pixels[row + x]
        if value != value:  # NaN pixels are ignored
            continue
        if shared:
            label = labels[at + x]
            new = label < 0
            if new:
                label = n_pix
                labels[at + x] = label
                n_pix += 1
        else:
            label = n_pix
            n_pix += 1
            new = True
        if fill:
            q = pix_base + label
            if new:
                pix_val[q] = value
                if ndim == 3:
                    pix_coord[q, 0] = z
                pix_coord[q, ndim - 2] = y
                pix_coord[q, ndim - 1] = x
            entry_pix[entry_at + n_entries] = q
        n_entries += 1
    return n_pix, n_entries


# how close to a pixel a row's estimated end must lie for the membership
# test to settle it: far above the estimate's rounding (about 1e-13 of the
# radius where rest >= _SETTLE)
_NEAR = 1e-7
_SETTLE = 1e-6
# rows per step of the rows' arithmetic: two vectors of 8 (AVX-512), four
# of 4 (AVX2)
_ROW_STEP = 16


@inline_kernel
def _near_pixel(end):
    return abs(end - np.floor(end + 0.5)) < _NEAR


@inline_kernel
def _settle(row_sum, first, last, x_lo, x_hi, cx, radius_x):
    """The ends of a row's run by the membership test, from estimates."""
    while first > x_lo and _inside(row_sum, first - 1, cx, radius_x):
        first -= 1
    while first <= last and not _inside(row_sum, first, cx, radius_x):
        first += 1
    while last < x_hi and _inside(row_sum, last + 1, cx, radius_x):
        last += 1
    while last >= first and not _inside(row_sum, last, cx, radius_x):
        last -= 1
    return first, last


@inline_kernel
def _inside(row_sum, x, cx, rx):
    """Whether the pixel at ``x`` of a row lies in the mask centred at
    ``cx``: ((z - cz) / rz)^2 + ((y - cy) / ry)^2 + ((x - cx) / rx)^2 <= 1,
    summed in that order, where ``row_sum`` holds the row's first two terms
    (inlined into the walk, whose arithmetic is exact)."""
    tx = (x - cx) / rx
    return not row_sum + tx * tx > 1.0


@exact_kernel(entry=True)
def _walk_masks(cluster_ids, pixels, image_off, shapes3, cluster_image, ndim,
                coords, cluster_feat_off, radius3, fill, cluster_n_pix,
                feat_n_entries, cluster_pix_off, feat_entry_off, pix_val,
                pix_coord, entry_pix):
    """:func:`_walk_cluster` for each cluster of ``cluster_ids``: counting
    (``fill`` False) or filling. One kernel for both: one compilation."""
    # scratch for the largest cluster of the chunk, allocated once: an
    # array reassigned in the loop would take and drop a reference on every
    # cluster
    n_most = 1
    box = 1
    for i in range(cluster_ids.shape[0]):
        c = cluster_ids[i]
        f0 = cluster_feat_off[c]
        f1 = cluster_feat_off[c + 1]
        n_most = max(n_most, f1 - f0)
        if f1 - f0 > 1:  # the box of the cluster, for its labels
            box = max(box, _box_volume(coords, f0, f1, ndim, radius3, shapes3,
                                       cluster_image[c]))
    lo = np.empty((n_most, 3), dtype=np.int64)
    hi = np.empty((n_most, 3), dtype=np.int64)
    centre = np.empty((n_most, 3))
    labels = np.empty(box, dtype=np.int64)
    # image rows a feature's box can span: at most floor(2 r) + 1 per axis
    n_box_rows = (2 * int(radius3[0]) + 2) * (2 * int(radius3[1]) + 2)
    row_f = np.empty((4, n_box_rows + _ROW_STEP))
    for i in range(cluster_ids.shape[0]):
        c = cluster_ids[i]
        im = cluster_image[c]
        f0 = cluster_feat_off[c]
        f1 = cluster_feat_off[c + 1]
        n_pix = _walk_cluster(
            pixels, image_off[im], shapes3, im, ndim, coords, f0, f1,
            radius3, fill, cluster_pix_off[c] if fill else 0, feat_entry_off,
            pix_val, pix_coord, entry_pix, feat_n_entries, lo, hi, centre,
            labels, row_f)
        if not fill:
            cluster_n_pix[c] = n_pix


@exact_kernel
def _box_volume(coords, f0, f1, ndim, radius3, shapes3, im):
    """Pixels in the bounding box of the masks of features f0..f1."""
    volume = 1
    for d in range(3):
        first = np.iinfo(np.int64).max
        last = -1
        for feat in range(f0, f1):
            c = _center3(coords, feat, ndim, d)
            first = min(first, max(int(math.ceil(c - radius3[d])), 0))
            last = max(last, min(int(math.floor(c + radius3[d])),
                                 shapes3[im, d] - 1))
        volume *= max(last - first + 1, 0)
    return volume


# a cluster's mask takes about a microsecond: chunks of a few hundred
_walk_in_parallel = OverChunks(Specialized(_walk_masks, ()), min_chunk=256)
_NONE = np.empty(0, dtype=np.int64)


def count_mask_pixels(pixels, image_off, shapes3, cluster_image, ndim, coords,
                      cluster_feat_off, cluster_ids, radius3, cluster_n_pix,
                      feat_n_entries):
    """Count pixels per cluster and entries per feature for ``cluster_ids``.

    The images are concatenated in ``pixels`` (each C-ordered, image ``i``
    from ``image_off[i]`` with shape ``shapes3[i]``); cluster ``c`` lies in
    image ``cluster_image[c]``.
    """
    _walk_in_parallel(cluster_ids, pixels, image_off, shapes3, cluster_image,
                      ndim, coords, cluster_feat_off, radius3, False,
                      cluster_n_pix, feat_n_entries, _NONE, _NONE,
                      np.empty(0), np.empty((0, ndim)), _NONE)


def fill_mask_pixels(pixels, image_off, shapes3, cluster_image, ndim, coords,
                     cluster_feat_off, cluster_ids, radius3, cluster_pix_off,
                     feat_entry_off, pix_val, pix_coord, entry_pix):
    """Write pixel values, coordinates and entries for ``cluster_ids``
    (images as in :func:`count_mask_pixels`)."""
    _walk_in_parallel(cluster_ids, pixels, image_off, shapes3, cluster_image,
                      ndim, coords, cluster_feat_off, radius3, True, _NONE,
                      _NONE, cluster_pix_off, feat_entry_off, pix_val,
                      pix_coord, entry_pix)
