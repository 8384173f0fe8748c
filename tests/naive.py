"""Plain-NumPy reference of the refinefit model over a flattened batch.

Independent of the Numba kernels: written from trackpy's model definitions
(``trackpy/refine/least_squares.py``), vectorised per feature, no Numba.

Per-feature parameter layout: ``[background, signal, pos (ndim), size (1 or
ndim), extra shape parameters]``. The model at pixel ``q`` of cluster ``c`` is

    background of c's first feature + sum over the features covering q of
    signal * f(r2),   r2 = sum_d ((coord_d - pos_d) / size_d) ** 2

For a non-continuous model (ring), a pixel closer than 1 px (unscaled
distance) to the centre of any feature covering it is excluded.
"""
import numpy as np

CONTINUOUS = {"gauss": True, "disc": True, "hat": True, "ring": False}


def is_continuous(name):
    """Whether the named model is continuous at r = 0 (trackpy's flag)."""
    return CONTINUOUS.get(name, True)


def shape(name, r2, extra, ndim):
    """Radial shape ``f(r2)``, ``df/dr2`` and ``df/dextra`` (list of arrays).

    ``name`` is 'gauss', 'disc' (alias 'hat'), 'ring' or 'inv_series_<n>'.
    """
    r2 = np.asarray(r2, dtype=float)
    extra = np.asarray(extra, dtype=float)
    half = ndim / 2.0
    if name == "gauss":
        f = np.exp(-half * r2)
        return f, -half * f, []
    if name in ("disc", "hat"):
        s = float(extra[0])
        if s <= 0:
            f = np.exp(-half * r2)
            return f, -half * f, [np.zeros_like(r2)]
        clipped = s >= 1.0
        if clipped:
            s = 0.999
        r = np.sqrt(r2)
        outside = r2 > s ** 2
        u = np.where(outside, (r - s) / (1.0 - s), 0.0)
        f = np.where(outside, np.exp(-half * u ** 2), 1.0)
        # f = exp(-ndim/2 u^2), u = (r - s) / (1 - s)
        dfdu = -ndim * u * f
        with np.errstate(divide="ignore", invalid="ignore"):
            dfdr2 = np.where(outside, dfdu / ((1.0 - s) * 2.0 * r), 0.0)
        duds = (r - 1.0) / (1.0 - s) ** 2
        dfds = np.where(outside, dfdu * duds, 0.0)
        if clipped:
            dfds = np.zeros_like(r2)
        return f, dfdr2, [dfds]
    if name == "ring":
        t = float(extra[0])
        r = np.sqrt(r2)
        num = r - 1.0 + t
        f = np.exp(-half * (num / t) ** 2)
        # trackpy's ring_dfun, written out
        with np.errstate(divide="ignore", invalid="ignore"):
            dfdr2 = np.where(r > 0, f * (-half / (r * t ** 2)) * num, 0.0)
        dfdt = f * ndim * (num ** 2 / t ** 3 - num / t ** 2)
        return f, dfdr2, [dfdt]
    prefix, _, order = name.rpartition("_")
    if prefix == "inv_series" and order.isdigit():
        n = int(order)
        assert len(extra) == n + 1
        coeffs = np.array(extra, dtype=float)
        mult = coeffs[0]
        coeffs[0] = 1.0  # trackpy: polyval([1, a_1, ..., a_n], r2)
        poly = np.polyval(coeffs, r2)
        dpoly = np.polyval(np.polyder(coeffs), r2) if n > 0 else 0 * r2
        f = mult / poly
        dfdr2 = -mult * dpoly / poly ** 2
        d_extra = [1.0 / poly]
        for k in range(1, n + 1):
            # a_k multiplies r2 ** (n - k)
            d_extra.append(-mult * r2 ** (n - k) / poly ** 2)
        return f, dfdr2, d_extra
    raise ValueError(f"unknown model {name!r}")


def feature_terms(name, coords, p, ndim, n_size):
    """``signal * f`` at ``coords`` (pixels x ndim) and its derivatives.

    Returns ``(value, deriv, dist2)``; ``deriv`` is (pixels x n_params) with
    column 0 (background) set to 1, as d(model)/d(background) at a pixel.
    """
    coords = np.asarray(coords, dtype=float)
    p = np.asarray(p, dtype=float)
    signal = p[1]
    centre = p[2:2 + ndim]
    sizes = np.broadcast_to(p[2 + ndim:2 + ndim + n_size], (ndim,))
    extra = p[2 + ndim + n_size:]
    delta = coords - centre
    dist2 = np.sum(delta ** 2, axis=1)
    r2 = np.sum((delta / sizes) ** 2, axis=1)
    f, dfdr2, dfdextra = shape(name, r2, extra, ndim)
    deriv = np.zeros((len(coords), len(p)))
    deriv[:, 0] = 1.0
    deriv[:, 1] = f
    # dr2/dpos_d = -2 delta_d / size_d^2
    deriv[:, 2:2 + ndim] = signal * dfdr2[:, None] * (-2.0 * delta / sizes ** 2)
    if n_size == 1:
        deriv[:, 2 + ndim] = signal * dfdr2 * (-2.0 * r2 / sizes[0])
    else:
        deriv[:, 2 + ndim:2 + 2 * ndim] = (
            signal * dfdr2[:, None] * (-2.0 * delta ** 2 / sizes ** 3))
    for j, d in enumerate(dfdextra):
        deriv[:, 2 + ndim + n_size + j] = signal * d
    return signal * f, deriv, dist2


def evaluate(name, pix_coord, cluster_pix_off, entry_pix, feat_entry_off,
             cluster_feat_off, params, ndim, n_size):
    """Reference of ``refinefit.kernels.evaluate_model``.

    Returns
    -------
    model : ndarray (pixels)
        Background of each cluster's first feature plus the covering
        features' terms (excluded terms left out).
    excluded : ndarray of bool (pixels)
        Pixels within 1 px of a covering centre, for a non-continuous model.
    entry_deriv : ndarray (entries x parameters)
        Derivatives of each entry's term (column 0: 1 for the background);
        zero rows for entries whose own term is excluded.
    """
    continuous = is_continuous(name)
    n_pix = len(pix_coord)
    model = np.zeros(n_pix)
    excluded = np.zeros(n_pix, dtype=bool)
    entry_deriv = np.zeros((feat_entry_off[-1], params.shape[1]))
    for c in range(len(cluster_feat_off) - 1):
        f0, f1 = cluster_feat_off[c], cluster_feat_off[c + 1]
        model[cluster_pix_off[c]:cluster_pix_off[c + 1]] = params[f0, 0]
        for feat in range(f0, f1):
            e0, e1 = feat_entry_off[feat], feat_entry_off[feat + 1]
            pix = entry_pix[e0:e1]
            value, deriv, dist2 = feature_terms(
                name, pix_coord[pix], params[feat], ndim, n_size)
            drop = np.zeros(len(pix), dtype=bool) if continuous else dist2 < 1.0
            excluded[pix[drop]] = True
            np.add.at(model, pix[~drop], value[~drop])
            deriv[drop] = 0.0
            entry_deriv[e0:e1] = deriv
    return model, excluded, entry_deriv


def mask_pixels(shape, centre, radius, image=None):
    """Integer coordinates of a feature's mask, by brute force.

    All pixels of the image with ``sum(((p - centre) / radius) ** 2) <= 1``
    (edge included), without NaN pixels of ``image`` when given.
    """
    grid = np.indices(shape).reshape(len(shape), -1).T
    t = (grid - np.asarray(centre, float)) / np.asarray(radius, float)
    inside = np.sum(t ** 2, axis=1) <= 1.0
    if image is not None:
        inside &= ~np.isnan(np.asarray(image, dtype=float).ravel())
    return grid[inside]
