"""Synthetic images with ground truth for the refinefit tests.

Plain NumPy, written independently of refinefit's model code (only the radial
profiles of gauss / disc / ring come from ``trackpy.artificial``), so that a
mistake shared by the fitter and the test images cannot cancel out.

An image is ``background + sum_k signal_k * f(r2_k)`` with
``r2_k = sum_d ((x_d - c_kd) / size_kd) ** 2``, every profile evaluated at the
integer pixel coordinates (no pixel integration), exactly the model that
``refine_leastsq`` fits. Each feature is drawn over the whole image, or, with
``mask_radius``, only on the pixels within that (per-axis) radius of a chosen
centre: drawn with the fit's own masks (the initial guesses, see
:func:`make_scene`) the noise-free image is exactly representable by the model,
which matters for profiles with slow tails (``inv_series``).

Noise conventions (``snr`` is the signal-to-noise ratio):

- ``'gauss'``: white Gaussian noise of standard deviation ``signal / snr``;
- ``'poisson'``: Poisson noise of mean ``signal / snr`` added to the image,
  the convention of trackpy's ``test_leastsq.py`` (SIGNAL = 160 with
  NOISE_IMPERFECT = 16 "S/N of 10", NOISE_NOISY = 48 "S/N of 3"), from which
  the 0.05 px / 0.1 px precision targets come.
"""
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from trackpy.artificial import feat_gauss, feat_hat, feat_ring

POS_COLUMNS = {2: ("y", "x"), 3: ("z", "y", "x")}

# extra shape parameters of each fit function and their trackpy defaults
_EXTRA = {"gauss": {}, "disc": {"disc_size": 0.5}, "hat": {"disc_size": 0.5},
          "ring": {"thickness": 0.2}}


def extra_defaults(fit_function):
    """Extra shape parameters of ``fit_function`` with their default values."""
    if fit_function in _EXTRA:
        return dict(_EXTRA[fit_function])
    order = _inv_series_order(fit_function)
    names = ["signal_mult"] + ["param_" + chr(97 + i) for i in range(order)]
    return {name: 1.0 for name in names}


def _inv_series_order(fit_function):
    prefix, _, order = fit_function.rpartition("_")
    if prefix != "inv_series" or not order.isdigit():
        raise ValueError(f"unknown fit function {fit_function!r}")
    return int(order)


def profile(fit_function, r2, ndim, extra=None):
    """Radial profile f(r2) of ``fit_function`` (maximum 1 for the defaults).

    ``inv_series_<n>``: ``signal_mult / (r2**n + param_a * r2**(n-1) + ...
    + param_<n>)``, trackpy's ``signal_mult / polyval([1, a, b, ...], r2)``.
    """
    params = extra_defaults(fit_function)
    params.update(extra or {})
    r2 = np.asarray(r2, dtype=np.float64)
    if fit_function == "gauss":
        return feat_gauss(np.sqrt(r2), ndim)
    if fit_function in ("disc", "hat"):
        return feat_hat(np.sqrt(r2), ndim, params["disc_size"])
    if fit_function == "ring":
        return feat_ring(np.sqrt(r2), ndim, params["thickness"])
    order = _inv_series_order(fit_function)
    coefficients = [params["param_" + chr(97 + i)] for i in range(order)]
    denominator = np.ones_like(r2)  # leading coefficient 1 (highest power)
    for c in coefficients:
        denominator = denominator * r2 + c
    return params["signal_mult"] / denominator


def _per_feature(value, n, width=None):
    """Broadcast a scalar, per-axis or per-feature value to (n,) or (n, width).

    A 1D value of length n is per feature, except when n == width: then it
    is read per axis.
    """
    value = np.asarray(value, dtype=np.float64)
    if width is None:
        return np.broadcast_to(value, (n,)).copy()
    if value.ndim == 1 and value.shape[0] == n and n != width:
        value = value[:, np.newaxis]
    return np.broadcast_to(value, (n, width)).copy()


def draw(shape, positions, size, signal, background=0.0, fit_function="gauss",
         extra=None, noise=None, noise_model="gauss", rng=None,
         mask_radius=None, mask_centres=None):
    """Draw features on a float64 image.

    Parameters
    ----------
    shape : tuple of int
        Image shape (2D or 3D).
    positions : array (n, ndim)
        True feature centres, in pixel coordinates (axis order of ``shape``).
    size : number, (ndim,), (n,) or (n, ndim)
        Feature sizes, isotropic or per axis.
    signal : number or (n,)
        Feature amplitudes.
    background : number
        Constant background.
    fit_function : str
        'gauss', 'disc' / 'hat', 'ring' or 'inv_series_<n>'.
    extra : dict, optional
        Extra shape parameters (scalar or per feature), defaults as trackpy.
    noise : float, optional
        Signal-to-noise ratio; None or 0 for a noise-free image.
    noise_model : {'gauss', 'poisson'}
        See the module docstring. The noise level uses the mean signal.
    rng : numpy Generator, optional
        Needed when ``noise`` is given.
    mask_radius : number or (ndim,), optional
        Draw each feature only within this radius (edge included) of its
        mask centre, as trackpy's masks; default: everywhere.
    mask_centres : array (n, ndim), optional
        Mask centres; default ``positions``.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    positions = np.atleast_2d(np.asarray(positions, dtype=np.float64))
    n = len(positions)
    sizes = _per_feature(size, n, ndim)
    signals = _per_feature(signal, n)
    names = extra_defaults(fit_function)
    extras = {name: _per_feature((extra or {}).get(name, default), n)
              for name, default in names.items()}
    if mask_centres is None:
        mask_centres = positions
    mask_centres = np.atleast_2d(np.asarray(mask_centres, dtype=np.float64))
    grid = np.indices(shape, dtype=np.float64).reshape(ndim, -1)
    image = np.full(grid.shape[1], float(background))
    radius = None if mask_radius is None else np.broadcast_to(
        np.asarray(mask_radius, dtype=np.float64), (ndim,))
    for k in range(n):
        r2 = np.sum(((grid - positions[k][:, np.newaxis])
                     / sizes[k][:, np.newaxis]) ** 2, axis=0)
        inside = np.ones(grid.shape[1], dtype=bool)
        if radius is not None:
            inside = np.sum(((grid - mask_centres[k][:, np.newaxis])
                             / radius[:, np.newaxis]) ** 2, axis=0) <= 1.0
        values = profile(fit_function, r2[inside], ndim,
                         {name: v[k] for name, v in extras.items()})
        image[inside] += signals[k] * values
    image = image.reshape(shape)
    if noise:
        if rng is None:
            raise ValueError("draw: pass rng with noise")
        level = float(np.mean(signals)) / noise
        if noise_model == "gauss":
            image = image + rng.normal(0.0, level, shape)
        elif noise_model == "poisson":
            image = image + rng.poisson(level, shape)
        else:
            raise ValueError(f"unknown noise_model {noise_model!r}")
    return image


def _random_unit(rng, ndim):
    v = rng.normal(size=ndim)
    return v / np.linalg.norm(v)


def group_offsets(group_size, distance, rng, ndim):
    """Offsets (in units of size) of a single, a dimer or a trimer.

    Dimer: two points ``distance`` apart along a random direction. Trimer: an
    equilateral triangle of side ``distance`` in a random plane. Offsets are
    centred on the group centre.
    """
    if group_size == 1:
        return np.zeros((1, ndim))
    if group_size == 2:
        u = _random_unit(rng, ndim)
        return np.array([-0.5 * distance * u, 0.5 * distance * u])
    if group_size == 3:
        u = _random_unit(rng, ndim)
        v = _random_unit(rng, ndim)
        v -= np.dot(u, v) * u
        v /= np.linalg.norm(v)
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3
        circumradius = distance / np.sqrt(3)
        return circumradius * (np.cos(angles)[:, np.newaxis] * u
                               + np.sin(angles)[:, np.newaxis] * v)
    raise ValueError(f"group_size must be 1, 2 or 3, got {group_size}")


def place_groups(shape, group_sizes, size, exclusion, margin, rng,
                 spacing=(1.5, 2.0), max_tries=20000):
    """Place groups (singles, dimers, trimers) at random, without overlap.

    Features within a group are ``spacing`` (a range, in units of ``size``
    per axis) apart, so that their masks overlap; features of different groups
    are farther apart than ``exclusion`` (per axis, an ellipsoidal distance
    as trackpy's clustering), and all features stay ``margin`` (per axis)
    away from the image edges.

    Parameters
    ----------
    group_sizes : sequence of int
        The size (1, 2 or 3) of every group, e.g. ``[1] * 6 + [2] * 4``.

    Returns
    -------
    positions : array (sum(group_sizes), ndim)
    group : array of int, the group of each feature (0, 1, ... in order)
    """
    shape = np.asarray(shape, dtype=np.float64)
    ndim = len(shape)
    size = np.broadcast_to(np.asarray(size, dtype=np.float64), (ndim,))
    exclusion = np.broadcast_to(np.asarray(exclusion, dtype=np.float64),
                                (ndim,))
    margin = np.broadcast_to(np.asarray(margin, dtype=np.float64), (ndim,))
    low, high = margin, shape - 1 - margin
    placed = np.zeros((0, ndim))
    tries = 0
    for group_size in group_sizes:
        while True:
            tries += 1
            if tries > max_tries:
                raise RuntimeError(f"could not place groups "
                                   f"{list(group_sizes)} in "
                                   f"{tuple(shape.astype(int))}")
            centre = rng.uniform(low, high)
            distance = rng.uniform(*spacing)
            candidate = centre + size * group_offsets(group_size, distance,
                                                      rng, ndim)
            if np.any(candidate < low) or np.any(candidate > high):
                continue
            if len(placed):
                reduced = (candidate[:, np.newaxis]
                           - placed[np.newaxis]) / exclusion
                if np.any(np.sum(reduced ** 2, axis=-1) <= 1.0):
                    continue
            placed = np.concatenate([placed, candidate])
            break
    group = np.repeat(np.arange(len(group_sizes)), group_sizes)
    return placed, group


def size_columns(ndim, isotropic):
    return ["size"] if isotropic else ["size_" + c for c in POS_COLUMNS[ndim]]


def initial_guess(positions, rng, signal, size, background=0.0, extra=None,
                  pos_jitter=0.5, signal_jitter=0.0, size_jitter=0.0,
                  background_offset=0.0, isotropic=True, frame=None):
    """Initial-guess DataFrame: true values perturbed at random.

    Positions move uniformly by up to ``pos_jitter`` px per axis; signal and
    size are multiplied by a factor uniform in ``1 +- *_jitter``; the
    background is shifted by ``background_offset``. Extra shape parameters are
    copied exactly. Anisotropic sizes give ``size_<axis>`` columns.
    """
    positions = np.atleast_2d(np.asarray(positions, dtype=np.float64))
    n, ndim = positions.shape
    guess = positions + rng.uniform(-pos_jitter, pos_jitter, positions.shape)
    df = pd.DataFrame(guess, columns=list(POS_COLUMNS[ndim]))
    df["signal"] = _per_feature(signal, n) * rng.uniform(
        1 - signal_jitter, 1 + signal_jitter, n)
    sizes = _per_feature(size, n, ndim) * rng.uniform(
        1 - size_jitter, 1 + size_jitter, (n, 1))
    if isotropic:
        df["size"] = sizes[:, 0]
    else:
        for d, col in enumerate(size_columns(ndim, False)):
            df[col] = sizes[:, d]
    df["background"] = float(background) + background_offset
    for name, value in (extra or {}).items():
        df[name] = _per_feature(value, n)
    if frame is not None:
        df["frame"] = frame
    return df


@dataclass
class Scene:
    """A synthetic image with its ground truth and an initial guess."""

    image: np.ndarray
    positions: np.ndarray      # (n, ndim) true centres
    group: np.ndarray          # (n,) group id per feature
    size: np.ndarray           # (n, ndim) true sizes
    signal: np.ndarray         # (n,) true signals
    background: float
    fit_function: str
    extra: dict
    guess: pd.DataFrame
    diameter: tuple
    pos_columns: list = field(default_factory=list)


def make_scene(shape, group_sizes, size, diameter, signal=100.0,
               background=10.0, fit_function="gauss", extra=None, snr=None,
               noise_model="gauss", seed=0, spacing=(1.5, 2.0),
               truncate_at_guess=False, signal_jitter=0.2, size_jitter=0.0,
               signal_spread=0.0, pos_jitter=0.5, background_offset=0.0):
    """Place groups, draw the image, build the initial guess.

    ``group_sizes`` lists the size of every group (see :func:`place_groups`).

    ``diameter`` (number or per axis) sets the exclusion between groups (mask
    diameter + 2 px, so masks of different groups never overlap and
    clustering keeps groups apart) and the margin to the edges (mask radius +
    1 px). ``signal_spread`` draws true signals uniformly in ``signal * (1 +-
    spread)``. With ``truncate_at_guess`` every feature is drawn only inside
    the fit's mask around its initial guess, so that the model is exact.
    """
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    diameter = tuple(np.broadcast_to(np.asarray(diameter), (ndim,)).tolist())
    radius = np.array([d // 2 for d in diameter], dtype=np.float64)
    size_axes = np.broadcast_to(np.asarray(size, dtype=np.float64), (ndim,))
    isotropic = len(set(diameter)) == 1
    positions, group = place_groups(shape, group_sizes, size_axes,
                                    exclusion=np.asarray(diameter) + 2.0,
                                    margin=radius + 1, rng=rng,
                                    spacing=spacing)
    n = len(positions)
    signals = signal * rng.uniform(1 - signal_spread, 1 + signal_spread, n)
    sizes = np.repeat(size_axes[np.newaxis], n, axis=0)
    extra = dict(extra_defaults(fit_function), **(extra or {}))
    guess = initial_guess(positions, rng, signals, sizes, background, extra,
                          pos_jitter=pos_jitter, signal_jitter=signal_jitter,
                          size_jitter=size_jitter,
                          background_offset=background_offset,
                          isotropic=isotropic)
    pos_columns = list(POS_COLUMNS[ndim])
    mask_centres = guess[pos_columns].to_numpy() if truncate_at_guess else None
    image = draw(shape, positions, sizes, signals, background, fit_function,
                 extra, noise=snr, noise_model=noise_model, rng=rng,
                 mask_radius=radius if truncate_at_guess else None,
                 mask_centres=mask_centres)
    return Scene(image, positions, group, sizes, signals, float(background),
                 fit_function, extra, guess, diameter, pos_columns)


def position_crb(scene, noise_std, step=1e-4):
    """Cramer-Rao bound on the position error of every feature, (n, ndim).

    For white Gaussian noise of standard deviation ``noise_std``, the
    smallest standard deviation any unbiased estimator can reach, given the
    pixels of each group's masks (around the true centres) and the parameters
    the default fit varies: the group's background, each signal and each
    position (sizes and shape parameters known). Derivatives by central
    finite differences of :func:`draw`.
    """
    ndim = len(scene.pos_columns)
    shape = scene.image.shape
    radius = np.array([d // 2 for d in scene.diameter], dtype=np.float64)
    grid = np.indices(shape, dtype=np.float64).reshape(ndim, -1)
    std = np.full(scene.positions.shape, np.nan)
    for g in np.unique(scene.group):
        members = np.nonzero(scene.group == g)[0]
        in_mask = np.zeros(grid.shape[1], dtype=bool)
        for k in members:
            in_mask |= np.sum(((grid - scene.positions[k][:, np.newaxis])
                               / radius[:, np.newaxis]) ** 2, axis=0) <= 1.0
        columns = [np.ones(in_mask.sum())]  # background
        for k in members:
            def one(position, signal=scene.signal[k]):
                return draw(shape, position[np.newaxis], scene.size[k],
                            signal, 0.0, scene.fit_function,
                            scene.extra).ravel()[in_mask]
            columns.append(one(scene.positions[k], 1.0))  # d/d signal
            for d in range(ndim):
                shift = np.zeros(ndim)
                shift[d] = step
                columns.append((one(scene.positions[k] + shift)
                                - one(scene.positions[k] - shift))
                               / (2 * step))
        jacobian = np.array(columns).T
        covariance = noise_std ** 2 * np.linalg.inv(jacobian.T @ jacobian)
        variances = np.diag(covariance)[1:].reshape(len(members), ndim + 1)
        std[members] = np.sqrt(variances[:, 1:])
    return std


def position_errors(result, scene):
    """Fitted minus true positions, (n, ndim), rows aligned with the scene."""
    return result[scene.pos_columns].to_numpy() - scene.positions


def rms(values):
    """Root mean square over all entries (per coordinate, as trackpy)."""
    return float(np.sqrt(np.mean(np.square(values))))


def grid_centres(rng, per_side, spacing, dimer_distance=None):
    """One frame's centres: a feature in each cell of a ``per_side`` square
    grid of ``spacing`` px cells, within 1 px of the cell's middle; with
    ``dimer_distance``, a dimer of that length at a random angle instead
    (first all first members, then all second members)."""
    cells = np.indices((per_side, per_side)).reshape(2, -1).T
    centres = (cells + 0.5) * spacing + rng.uniform(-1, 1, cells.shape)
    if dimer_distance is None:
        return centres
    angle = rng.uniform(0, np.pi, len(centres))
    half = 0.5 * dimer_distance * np.column_stack([np.sin(angle),
                                                   np.cos(angle)])
    return np.concatenate([centres - half, centres + half])
