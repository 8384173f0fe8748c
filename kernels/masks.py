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
from numba import prange

from .jit import kernel, parallel_kernel


@kernel
def _center3(coords, feat, ndim, d):
    if ndim == 3:
        return coords[feat, d]
    return 0.0 if d == 0 else coords[feat, d - 1]


@kernel
def _walk_cluster(image, shape3, ndim, coords, f0, f1, radius3, fill,
                  pix_base, feat_entry_off, pix_val, pix_coord, entry_pix,
                  feat_n_entries):
    """Visit the mask pixels of features f0..f1; return the pixel count.

    With ``fill`` False only counts (``feat_n_entries``); with ``fill`` True
    writes pixel values, coordinates and entries at the given offsets.
    """
    n_feat = f1 - f0
    lo = np.empty((n_feat, 3), dtype=np.int64)
    hi = np.empty((n_feat, 3), dtype=np.int64)
    box_lo = np.full(3, np.iinfo(np.int64).max, dtype=np.int64)
    box_hi = np.full(3, -1, dtype=np.int64)
    for k in range(n_feat):
        for d in range(3):
            c = _center3(coords, f0 + k, ndim, d)
            lo[k, d] = max(int(math.ceil(c - radius3[d])), 0)
            hi[k, d] = min(int(math.floor(c + radius3[d])), shape3[d] - 1)
            box_lo[d] = min(box_lo[d], lo[k, d])
            box_hi[d] = max(box_hi[d], hi[k, d])
    extent = np.maximum(box_hi - box_lo + 1, 0)
    labels = np.full(extent[0] * extent[1] * extent[2], -1, dtype=np.int64)
    n_pix = 0
    for k in range(n_feat):
        feat = f0 + k
        cz = _center3(coords, feat, ndim, 0)
        cy = _center3(coords, feat, ndim, 1)
        cx = _center3(coords, feat, ndim, 2)
        n_entries = 0
        for z in range(lo[k, 0], hi[k, 0] + 1):
            tz = (z - cz) / radius3[0]
            for y in range(lo[k, 1], hi[k, 1] + 1):
                ty = (y - cy) / radius3[1]
                row = (z * shape3[1] + y) * shape3[2]
                for x in range(lo[k, 2], hi[k, 2] + 1):
                    tx = (x - cx) / radius3[2]
                    if tz * tz + ty * ty + tx * tx > 1.0:
                        continue
                    value = image[row + x]
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


@parallel_kernel
def count_mask_pixels(pixels, image_off, shapes3, cluster_image, ndim, coords,
                      cluster_feat_off, cluster_ids, radius3, cluster_n_pix,
                      feat_n_entries):
    """Count pixels per cluster and entries per feature for ``cluster_ids``.

    The images are concatenated in ``pixels`` (each C-ordered, image ``i``
    from ``image_off[i]`` with shape ``shapes3[i]``); cluster ``c`` lies in
    image ``cluster_image[c]``. One parallel loop serves a whole chunk.
    """
    dummy_val = np.empty(0)
    dummy_coord = np.empty((0, ndim))
    dummy_int = np.empty(0, dtype=np.int64)
    for i in prange(cluster_ids.shape[0]):
        c = cluster_ids[i]
        im = cluster_image[c]
        image = pixels[image_off[im]:image_off[im + 1]]
        cluster_n_pix[c] = _walk_cluster(
            image, shapes3[im], ndim, coords, cluster_feat_off[c],
            cluster_feat_off[c + 1], radius3, False, 0, dummy_int, dummy_val,
            dummy_coord, dummy_int, feat_n_entries)


@parallel_kernel
def fill_mask_pixels(pixels, image_off, shapes3, cluster_image, ndim, coords,
                     cluster_feat_off, cluster_ids, radius3, cluster_pix_off,
                     feat_entry_off, pix_val, pix_coord, entry_pix):
    """Write pixel values, coordinates and entries for ``cluster_ids``
    (images as in :func:`count_mask_pixels`)."""
    dummy_int = np.empty(0, dtype=np.int64)
    for i in prange(cluster_ids.shape[0]):
        c = cluster_ids[i]
        im = cluster_image[c]
        image = pixels[image_off[im]:image_off[im + 1]]
        _walk_cluster(image, shapes3[im], ndim, coords, cluster_feat_off[c],
                      cluster_feat_off[c + 1], radius3, True,
                      cluster_pix_off[c], feat_entry_off, pix_val, pix_coord,
                      entry_pix, dummy_int)
