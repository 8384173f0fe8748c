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

from .jit import inline_kernel, kernel
from .threads import OverChunks


@kernel
def _center3(coords, feat, ndim, d):
    if ndim == 3:
        return coords[feat, d]
    return 0.0 if d == 0 else coords[feat, d - 1]


@inline_kernel
def _walk_cluster(pixels, image_base, shapes3, im, ndim, coords, f0, f1, radius3, fill,
                  pix_base, feat_entry_off, pix_val, pix_coord, entry_pix,
                  feat_n_entries):
    """Visit the mask pixels of features f0..f1; return the pixel count.

    With ``fill`` False only counts (``feat_n_entries``); with ``fill`` True
    writes pixel values, coordinates and entries at the given offsets.
    """
    n_feat = f1 - f0
    lo = np.empty((n_feat, 3), dtype=np.int64)
    hi = np.empty((n_feat, 3), dtype=np.int64)
    centre = np.empty((n_feat, 3))
    # (loops and indices rather than NumPy calls and views: see linalg)
    box_lo = np.empty(3, dtype=np.int64)
    box_hi = np.empty(3, dtype=np.int64)
    for d in range(3):
        box_lo[d] = np.iinfo(np.int64).max
        box_hi[d] = -1
    for k in range(n_feat):
        for d in range(3):
            c = centre[k, d] = _center3(coords, f0 + k, ndim, d)
            lo[k, d] = max(int(math.ceil(c - radius3[d])), 0)
            hi[k, d] = min(int(math.floor(c + radius3[d])), shapes3[im, d] - 1)
            box_lo[d] = min(box_lo[d], lo[k, d])
            box_hi[d] = max(box_hi[d], hi[k, d])
    extent = np.empty(3, dtype=np.int64)
    for d in range(3):
        extent[d] = max(box_hi[d] - box_lo[d] + 1, 0)
    labels = np.empty(extent[0] * extent[1] * extent[2], dtype=np.int64)
    for i in range(labels.shape[0]):
        labels[i] = -1
    n_pix = 0
    for k in range(n_feat):
        feat = f0 + k
        # (from the array: a constant axis would compile _center3 again)
        cz = centre[k, 0]
        cy = centre[k, 1]
        cx = centre[k, 2]
        n_entries = 0
        for z in range(lo[k, 0], hi[k, 0] + 1):
            tz = (z - cz) / radius3[0]
            for y in range(lo[k, 1], hi[k, 1] + 1):
                ty = (y - cy) / radius3[1]
                row = image_base + (z * shapes3[im, 1] + y) * shapes3[im, 2]
                for x in range(lo[k, 2], hi[k, 2] + 1):
                    tx = (x - cx) / radius3[2]
                    if tz * tz + ty * ty + tx * tx > 1.0:
                        continue
                    value = pixels[row + x]
                    if value != value:  # NaN pixels are ignored
                        continue
                    at = ((z - box_lo[0]) * extent[1]
                          + (y - box_lo[1])) * extent[2] + (x - box_lo[2])
                    label = labels[at]
                    if label < 0:
                        label = n_pix
                        labels[at] = label
                        n_pix += 1
                        if fill:
                            q = pix_base + label
                            pix_val[q] = value
                            if ndim == 3:
                                pix_coord[q, 0] = z
                            pix_coord[q, ndim - 2] = y
                            pix_coord[q, ndim - 1] = x
                    if fill:
                        entry_pix[feat_entry_off[feat] + n_entries] = pix_base + label
                    n_entries += 1
        if not fill:
            feat_n_entries[feat] = n_entries
    return n_pix


@kernel
def _walk_masks(cluster_ids, pixels, image_off, shapes3, cluster_image, ndim,
                coords, cluster_feat_off, radius3, fill, cluster_n_pix,
                feat_n_entries, cluster_pix_off, feat_entry_off, pix_val,
                pix_coord, entry_pix):
    """:func:`_walk_cluster` for each cluster of ``cluster_ids``: counting
    (``fill`` False) or filling. One kernel for both: one compilation."""
    for i in range(cluster_ids.shape[0]):
        c = cluster_ids[i]
        im = cluster_image[c]
        n_pix = _walk_cluster(
            pixels, image_off[im], shapes3, im, ndim, coords,
            cluster_feat_off[c], cluster_feat_off[c + 1], radius3, fill,
            cluster_pix_off[c] if fill else 0, feat_entry_off, pix_val,
            pix_coord, entry_pix, feat_n_entries)
        if not fill:
            cluster_n_pix[c] = n_pix


# a cluster's mask takes about a microsecond: chunks of a few hundred
_walk_in_parallel = OverChunks(_walk_masks, min_chunk=256)
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
