"""Numba kernels against the plain-NumPy reference and finite differences."""
import itertools

import naive
import numba
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import approx_fprime

import refinefit
from refinefit import kernels
from refinefit.config import Model, Settings, Solver
from refinefit.kernels import arena, covariance, linalg, lm, residuals, vlog
from refinefit.problem.models import resolve_model
from refinefit.solvers.engine import flatten_masks, refine_chunk

# evaluate_model vs the NumPy reference: same formulas, different rounding
MODEL_RTOL = 1e-11
DERIV_RTOL = 1e-10
# analytic vs central finite differences (relative to the largest derivative)
FD_REL_STEP = 1e-6
FD_TOL = 1e-6
# the same fit by the dense (Cholesky) and the sparse (CG) solver
SOLVER_ATOL = 1e-6

MODELS = ["gauss", "disc", "ring", "inv_series_2"]
GEOMETRIES = [(2, True), (2, False), (3, True), (3, False)]
CASES = [pytest.param(name, ndim, iso, id=f"{name}-{ndim}d-{'iso' if iso else 'aniso'}")
         for name in MODELS for ndim, iso in GEOMETRIES]


def _seed(name, ndim, iso):
    return 100 * MODELS.index(name) + 10 * ndim + int(iso)


def _extra(name, rng):
    if name in ("disc", "hat"):
        return [rng.uniform(0.3, 0.7)]
    if name == "ring":
        return [rng.uniform(0.2, 0.4)]
    if name.startswith("inv_series_"):
        n = int(name.rsplit("_", 1)[1])
        return [rng.uniform(0.8, 1.2)] + list(rng.uniform(0.5, 1.5, n))
    return []


def _radius(ndim, iso):
    if ndim == 2:
        return (4.0, 4.0) if iso else (3.0, 5.0)
    return (3.0, 3.0, 3.0) if iso else (2.0, 3.0, 4.0)


def _params(name, rng, centres, ndim, iso, jitter=0.3):
    """Parameters per feature: positions near the mask centres."""
    rows = []
    n_size = 1 if iso else ndim
    for centre in centres:
        pos = centre + rng.uniform(-jitter, jitter, ndim)
        sizes = rng.uniform(1.5, 3.0, n_size)
        rows.append([rng.uniform(5, 20), rng.uniform(50, 150), *pos, *sizes,
                     *_extra(name, rng)])
    return np.array(rows, dtype=float)


def _random_batch(ndim, iso, rng, groups):
    """Flattened batch over two random images; ``groups`` = features per cluster."""
    shape = (40, 50) if ndim == 2 else (14, 22, 24)
    images = [rng.uniform(0, 100, shape), rng.uniform(0, 100, shape)]
    radius = _radius(ndim, iso)
    centres = []
    for size in groups:
        first = rng.uniform(4, np.array(shape) - 4)
        centres.append(first)
        for _ in range(size - 1):  # overlapping neighbours
            centres.append(first + rng.uniform(-2.5, 2.5, ndim))
    centres = np.clip(np.array(centres), 0, np.array(shape) - 1)
    cluster_feat_off = np.r_[0, np.cumsum(groups)].astype(np.int64)
    # first half of the clusters on image 0, the rest on image 1
    cluster_image = (np.arange(len(groups)) >= len(groups) // 2).astype(np.int64)
    batch = flatten_masks(images, cluster_image, cluster_feat_off, centres,
                          radius)
    return images, batch, centres


def _evaluate(batch, params, name, ndim, n_size):
    model = resolve_model(name)
    n_pix = len(batch.pix_val)
    out = np.full(n_pix, np.nan)
    excluded = np.zeros(n_pix, dtype=bool)
    entry_deriv = np.full((len(batch.entry_pix), params.shape[1]), np.nan)
    kernels.evaluate_model(batch.pix_coord, batch.cluster_pix_off,
                           batch.entry_pix, batch.feat_entry_off,
                           batch.cluster_feat_off, params, ndim, n_size,
                           model.kernel_id, model.continuous, out, excluded,
                           entry_deriv)
    return out, excluded, entry_deriv


def _central_jacobian(fun, x):
    step = FD_REL_STEP * np.maximum(np.abs(x), 1.0)
    return 0.5 * (approx_fprime(x, fun, step) + approx_fprime(x, fun, -step))


# ---------------------------------------------------------------- evaluate

@pytest.mark.parametrize("name,ndim,iso", CASES)
def test_evaluate_model_matches_naive(name, ndim, iso):
    rng = np.random.default_rng(_seed(name, ndim, iso))
    n_size = 1 if iso else ndim
    groups = [2, 1, 3, 1]
    _, batch, centres = _random_batch(ndim, iso, rng, groups)
    params = _params(name, rng, centres, ndim, iso)
    model, excluded, entry_deriv = _evaluate(batch, params, name, ndim, n_size)
    ref_model, ref_excluded, ref_deriv = naive.evaluate(
        name, batch.pix_coord, batch.cluster_pix_off, batch.entry_pix,
        batch.feat_entry_off, batch.cluster_feat_off, params, ndim, n_size)

    np.testing.assert_array_equal(excluded, ref_excluded)
    if name == "ring":
        assert excluded.any()
    else:
        assert not excluded.any()
    keep = ~excluded
    scale = np.abs(ref_model).max()
    np.testing.assert_allclose(model[keep], ref_model[keep], rtol=MODEL_RTOL,
                               atol=MODEL_RTOL * scale)
    live = keep[batch.entry_pix]
    dscale = np.abs(ref_deriv).max(axis=0)
    np.testing.assert_allclose(entry_deriv[live], ref_deriv[live],
                               rtol=DERIV_RTOL, atol=DERIV_RTOL * dscale.max())


def test_vectorised_exp_matches_numpy():
    """The models' exp against NumPy's over the range models use (and
    beyond), with its documented ends and NaN."""
    from refinefit.kernels.vexp import exp

    @numba.njit
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = exp(x[i])

    rng = np.random.default_rng(7)
    x = np.concatenate([-rng.exponential(5.0, 100_000), rng.uniform(-708, 709, 10_000),
                        [0.0, -0.0, 1e-300, -708.0, 709.0]])
    out = np.empty_like(x)
    apply(x, out)
    np.testing.assert_allclose(out, np.exp(x), rtol=1e-13, atol=0)
    edges = np.array([-1000.0, -np.inf, np.nan, 710.0])
    out = np.empty_like(edges)
    apply(edges, out)
    # beyond the range 0 and infinity, as the C library (which gives
    # denormals down to -745): a term far out must vanish
    assert out[0] == 0.0 and out[1] == 0.0
    assert np.isnan(out[2])
    assert out[3] == np.inf


NORMAL_MODES = {
    "var": {},
    "size per cluster": {"size": "cluster"},
    "signal held": {"signal": "const"},
}


def _modes(name, ndim, n_size, n_params, which):
    """Mode codes per parameter column: background per cluster, the rest
    per feature unless ``NORMAL_MODES[which]`` says otherwise."""
    modes = np.full(n_params, kernels.MODE_VAR, dtype=np.int64)
    modes[0] = kernels.MODE_CLUSTER
    for what, mode in NORMAL_MODES[which].items():
        code = kernels.MODE_CLUSTER if mode == "cluster" else kernels.MODE_CONST
        if what == "signal":
            modes[1] = code
        else:
            modes[2 + ndim:2 + ndim + n_size] = code
    return modes


def _sum_in_lanes(values, n_vectors=2):
    """The order kernels.sums documents, one Python float operation at a
    time: element 4 n_vectors m + 4 v + l into lane l of vector v, the
    vectors added in turn, their lanes as (l0 + l2) + (l1 + l3), then the
    rest in turn (dot and total: two vectors; products: one)."""
    step = 4 * n_vectors
    lanes = [0.0] * step
    full = len(values) // step * step
    for i in range(full):
        lanes[i % step] += values[i]
    v = lanes[:4]
    for vector in range(1, n_vectors):
        v = [v[k] + lanes[4 * vector + k] for k in range(4)]
    acc = (v[0] + v[2]) + (v[1] + v[3])
    for value in values[full:]:
        acc += value
    return acc


def test_sums_follow_their_order_exactly():
    """kernels.sums against the order it documents, bit for bit, over
    random lengths and offsets (a sum the compiler may reorder would differ
    in the last bits)."""
    from refinefit.kernels import sums

    @numba.njit(fastmath={"contract", "reassoc", "nsz", "arcp"})
    def both(a, b, first, stop):
        # the caller's fastmath must not reach the sums
        return sums.dot(a, b, first, stop), sums.total(a, first, stop)

    rng = np.random.default_rng(11)
    for _ in range(500):
        n = int(rng.integers(0, 70))
        a = rng.normal(size=n) * 10.0 ** rng.integers(-3, 4, n)
        b = rng.normal(size=n)
        first = int(rng.integers(0, n + 1))
        stop = int(rng.integers(first, n + 1))
        dot, total = both(a, b, first, stop)
        products = [float(x) * float(y) for x, y in zip(a[first:stop], b[first:stop])]
        assert dot == _sum_in_lanes(products)
        assert total == _sum_in_lanes([float(x) for x in a[first:stop]])
    with pytest.raises(numba.TypingError, match="1-d contiguous float64"):
        both(np.ones((2, 2)), np.ones(2), 0, 2)


@pytest.mark.parametrize("n_rows", [1, 4, 8])
def test_products_follow_their_order_exactly(n_rows):
    """kernels.sums.products (every sum of a feature's J^T J and J^T r in
    one pass) against its documented sums, bit for bit, over random
    lengths, offsets and magnitudes; the rows before and after those it
    reads left alone."""
    from refinefit.kernels import sums

    @numba.njit(fastmath={"contract", "reassoc", "nsz", "arcp"})
    def run(rows, r, first, stop, out):
        # the caller's fastmath must not reach the sums
        sums.products(rows, r, first, stop, n_rows, out)

    rng = np.random.default_rng(12 + n_rows)
    n_out = 2 * n_rows + n_rows * (n_rows + 1) // 2
    for _ in range(200):
        n = int(rng.integers(0, 40))
        rows = rng.normal(size=(n_rows + 2, n)) * 10.0 ** rng.integers(
            -3, 4, (n_rows + 2, n))
        r = rng.normal(size=n)
        first = int(rng.integers(0, n + 1))
        stop = int(rng.integers(first, n + 1))
        out = np.full(n_out + 1, np.nan)
        run(rows, r, first, stop, out)
        t = [[float(x) for x in rows[j, first:stop]]
             for j in range(1, n_rows + 1)]
        res = [float(x) for x in r[first:stop]]
        expect = [_sum_in_lanes([a * b for a, b in zip(t[j], res)], 1)
                  for j in range(n_rows)]
        expect += [_sum_in_lanes(t[j], 1) for j in range(n_rows)]
        expect += [_sum_in_lanes([a * b for a, b in zip(t[j], t[k])], 1)
                   for j in range(n_rows) for k in range(j, n_rows)]
        assert list(out[:n_out]) == expect
        assert np.isnan(out[n_out])


@pytest.mark.parametrize("n_rows", [1, 3, 4])
def test_cross_products_follow_their_order_exactly(n_rows):
    """kernels.sums.cross_products (the products between two features'
    derivatives, in one pass) against their documented sums, bit for bit;
    the rows before and after those it reads left alone."""
    from refinefit.kernels import sums

    @numba.njit(fastmath={"contract", "reassoc", "nsz", "arcp"})
    def run(pair_rows, first, stop, out):
        sums.cross_products(pair_rows, first, stop, n_rows, out)

    rng = np.random.default_rng(31 + n_rows)
    for _ in range(200):
        n = int(rng.integers(0, 40))
        pair_rows = rng.normal(size=(2, n_rows + 2, n)) * 10.0 ** \
            rng.integers(-3, 4, (2, n_rows + 2, n))
        first = int(rng.integers(0, n + 1))
        stop = int(rng.integers(first, n + 1))
        out = np.full(n_rows * n_rows + 1, np.nan)
        run(pair_rows, first, stop, out)
        a, b = ([[float(x) for x in pair_rows[f, j, first:stop]]
                 for j in range(1, n_rows + 1)] for f in (0, 1))
        expect = [_sum_in_lanes([x * y for x, y in zip(a[j], b[k])], 1)
                  for j in range(n_rows) for k in range(n_rows)]
        assert list(out[:-1]) == expect
        assert np.isnan(out[-1])


@numba.njit
def _pairs_both_ways(entry_pix, feat_entry_off, f0, pix_base, n_pix):
    """A two-feature cluster's pairs by the shortcut and by linked lists."""
    e0 = feat_entry_off[f0]
    short = residuals._two_feature_pairs(
        entry_pix, e0, feat_entry_off[f0 + 1] - e0,
        feat_entry_off[f0 + 2] - e0, pix_base)
    linked = residuals._linked_pairs(entry_pix, feat_entry_off, f0, 2,
                                     pix_base, n_pix)
    return short, linked


@pytest.mark.parametrize("ndim,iso", GEOMETRIES)
def test_two_feature_pairs_match_linked_lists(ndim, iso):
    """The pairs of two-feature clusters (shared pixels, with NaN pixels
    among them) as the general path finds them; and the shortcut declines
    when the first mask's pixels are not the cluster's first, in order."""
    rng = np.random.default_rng(40 + ndim + iso)
    images, batch, centres = _random_batch(ndim, iso, rng, [2] * 12)
    for image in images:  # NaN pixels: neither mask has an entry there
        image[rng.random(image.shape) < 0.1] = np.nan
    batch = flatten_masks(images, (np.arange(12) >= 6).astype(np.int64),
                          np.arange(0, 26, 2, dtype=np.int64), centres,
                          _radius(ndim, iso))
    n_shared = 0
    for c in range(12):
        p0, p1 = batch.cluster_pix_off[c], batch.cluster_pix_off[c + 1]
        short, linked = _pairs_both_ways(batch.entry_pix, batch.feat_entry_off,
                                         2 * c, p0, p1 - p0)
        for got, expected in zip(short, linked):
            np.testing.assert_array_equal(got, expected)
        n_shared += short[1][-1]
    assert n_shared > 0
    # the second mask's entries first: no shortcut
    f0 = 0
    e0, e1, e2 = batch.feat_entry_off[f0:f0 + 3]
    entry_pix = batch.entry_pix.copy()
    entry_pix[e0:e2] = np.r_[batch.entry_pix[e1:e2], batch.entry_pix[e0:e1]]
    short, _ = _pairs_both_ways(entry_pix, np.array([e0, e0 + e2 - e1, e2]),
                                0, batch.cluster_pix_off[0],
                                batch.cluster_pix_off[1])
    assert short[1][0] == -1


@numba.njit
def _arena_round(sizes):
    """Arrays of ``sizes`` from an arena, each filled with its index; the
    store, the counters, and after a reset the first array again."""
    store = arena.new_arena(int(sizes.sum()), 4, 4)
    out = []
    for i in range(sizes.shape[0]):
        a = arena.floats(store, sizes[i])
        a[:] = i
        out.append(a)
    square = arena.floats(store, (0, 3))
    used = store.used.copy()
    arena.reset(store)
    again = arena.floats(store, (2, 3))
    return out, square.shape, used, again, store.f64.copy()


def test_arena_hands_out_consecutive_slices():
    sizes = np.array([3, 0, 5, 4])
    out, square, used, again, store = _arena_round(sizes)
    for i, a in enumerate(out):
        assert a.shape == (sizes[i],) and (a == i).all()
    np.testing.assert_array_equal(store, [0, 0, 0, 2, 2, 2, 2, 2, 3, 3, 3, 3])
    assert square == (0, 3)
    np.testing.assert_array_equal(used, [12, 0, 0])
    # after a reset the same memory again, in the shape asked for
    np.testing.assert_array_equal(again, [[0, 0, 0], [2, 2, 2]])


# the solver's internal kernels have no Python wrappers: reach them from here
@numba.njit
def _layout(modes):
    return residuals.layout(modes, arena.new_arena(0, 64, 0))


@numba.njit
def _column_table(modes, slot, n_cl, n_var, n_feat):
    return residuals.column_table(modes, slot, n_cl, n_var, n_feat,
                                  arena.new_arena(0, n_feat * len(modes), 0))


@numba.njit
def _evaluate_cluster(x, work, cols, modes, slot, n_cl, n_var, pix_val,
                      pix_coord, entry_pix, feat_entry_off, f0, n_feat, p0,
                      n_pix, n_entries, n_params, n_unk, ndim, n_size,
                      model_id, continuous):
    """One dense evaluation of a cluster, as the solver runs it: the cost,
    J^T r and J^T J."""
    pairs = residuals.cluster_pairs(entry_pix, feat_entry_off, f0, n_feat, p0,
                                    n_pix, True)
    n_cl_, n_var_ = residuals.mode_counts(modes)
    store = arena.new_arena(*lm.cluster_needs(
        n_pix, n_entries, n_feat, n_params, n_cl_, n_var_, ndim, n_size, True,
        False, False, residuals.longest_pair(pairs)))
    ws = residuals.cluster_workspace(pix_coord, entry_pix, feat_entry_off, f0,
                                     n_feat, p0, n_pix, n_params, n_unk, True,
                                     pairs, False, pix_val[:0], store)
    buf = residuals.evaluation_buffers(n_pix, n_entries, n_params, n_cl, n_var,
                                       n_feat, n_unk, True, store)
    cost = residuals.evaluate(
        x, work, cols, modes, slot, n_cl, n_var, pix_val, pix_coord,
        entry_pix, feat_entry_off, f0, p0, ndim, n_size, model_id, continuous,
        True, True, np.empty(n_params),
        np.empty(max(n_params - 2 - ndim - n_size, 1)), ws, buf)
    return cost, buf.grad.copy(), buf.normal.copy()


@pytest.mark.parametrize("which", list(NORMAL_MODES))
@pytest.mark.parametrize("name,ndim,iso", CASES)
def test_normal_equations_match_numpy(name, ndim, iso, which):
    """The dense path's cost, J^T r and J^T J against J built by NumPy from
    the reference derivatives, on clusters of 1 to 3 overlapping features
    (pixels in two and three masks)."""
    rng = np.random.default_rng(2000 + _seed(name, ndim, iso))
    n_size = 1 if iso else ndim
    images, batch, centres = _random_batch(ndim, iso, rng, [3, 1, 2, 3])
    params = _params(name, rng, centres, ndim, iso)
    n_params = params.shape[1]
    model_spec = resolve_model(name)
    modes = _modes(name, ndim, n_size, n_params, which)
    ref_model, ref_excluded, ref_deriv = naive.evaluate(
        name, batch.pix_coord, batch.cluster_pix_off, batch.entry_pix,
        batch.feat_entry_off, batch.cluster_feat_off, params, ndim, n_size)
    slot, n_cl, n_var = _layout(modes)
    shared_pixels = 0
    for c in range(len(batch.cluster_feat_off) - 1):
        f0, f1 = batch.cluster_feat_off[c], batch.cluster_feat_off[c + 1]
        p0, p1 = batch.cluster_pix_off[c], batch.cluster_pix_off[c + 1]
        n_feat = f1 - f0
        n_unk = n_cl + n_feat * n_var
        cols = _column_table(modes, slot, n_cl, n_var, n_feat)
        # the cluster's unknowns from its features' parameters (a cluster
        # unknown takes the first feature's value, as all features share it)
        sub = params[f0:f1].copy()
        for j in range(n_params):
            if modes[j] == kernels.MODE_CLUSTER:
                sub[:, j] = sub[0, j]
        x = np.zeros(n_unk)
        for k in range(n_feat):
            for j in range(n_params):
                if cols[k, j] >= 0:
                    x[cols[k, j]] = sub[k, j]
        # NumPy: J over the cluster's pixels
        model, _, deriv = naive.evaluate(
            name, batch.pix_coord, batch.cluster_pix_off, batch.entry_pix,
            batch.feat_entry_off, batch.cluster_feat_off,
            np.concatenate([params[:f0], sub, params[f1:]]), ndim, n_size)
        jac = np.zeros((p1 - p0, n_unk))
        keep = ~ref_excluded[p0:p1]
        if cols[0, 0] >= 0:
            jac[:, cols[0, 0]] = 1.0
        for k in range(n_feat):
            e0, e1 = batch.feat_entry_off[f0 + k], batch.feat_entry_off[f0 + k + 1]
            rows = batch.entry_pix[e0:e1] - p0
            for j in range(1, n_params):
                if cols[k, j] >= 0:
                    np.add.at(jac[:, cols[k, j]], rows, deriv[e0:e1, j])
        jac[~keep] = 0.0
        resid = np.where(keep, model[p0:p1] - batch.pix_val[p0:p1], 0.0)
        counts = np.bincount(batch.entry_pix[batch.feat_entry_off[f0]:
                                             batch.feat_entry_off[f1]] - p0)
        shared_pixels += int(np.sum(counts > 1))

        n_entries = batch.feat_entry_off[f1] - batch.feat_entry_off[f0]
        cost, grad, normal_k = _evaluate_cluster(
            x, sub.copy(), cols, modes, slot, n_cl, n_var, batch.pix_val,
            batch.pix_coord, batch.entry_pix, batch.feat_entry_off, f0, n_feat,
            p0, p1 - p0, n_entries, n_params, n_unk, ndim, n_size,
            model_spec.kernel_id, model_spec.continuous)
        normal = jac.T @ jac
        scale = np.sqrt(np.outer(np.diag(normal), np.diag(normal))) + 1e-300
        assert cost == pytest.approx(resid @ resid, rel=1e-10)
        grad_scale = np.sqrt(np.diag(normal) * (resid @ resid)).max()
        np.testing.assert_allclose(grad, jac.T @ resid, atol=1e-9 * grad_scale)
        np.testing.assert_allclose(normal_k / scale, normal / scale, atol=1e-10)
    assert shared_pixels > 0


@pytest.mark.parametrize("name,ndim,iso", CASES)
def test_entry_derivatives_match_finite_differences(name, ndim, iso):
    """d(model)/d(params) of single-feature clusters, away from kinks."""
    rng = np.random.default_rng(1000 + _seed(name, ndim, iso))
    n_size = 1 if iso else ndim
    _, batch, centres = _random_batch(ndim, iso, rng, [1, 1, 1])
    params = _params(name, rng, centres, ndim, iso)
    _, excluded, entry_deriv = _evaluate(batch, params, name, ndim, n_size)

    for k in range(len(params)):
        p0 = params[k].copy()
        e0, e1 = batch.feat_entry_off[k], batch.feat_entry_off[k + 1]
        pix = batch.entry_pix[e0:e1]

        def fun(p, k=k, pix=pix):
            trial = params.copy()
            trial[k] = p
            return _evaluate(batch, trial, name, ndim, n_size)[0][pix]

        fd = _central_jacobian(fun, p0)
        # smooth points only: away from the disc edge and the ring's hole
        _, _, dist2 = naive.feature_terms(name, batch.pix_coord[pix], p0,
                                          ndim, n_size)
        sizes = np.broadcast_to(p0[2 + ndim:2 + ndim + n_size], (ndim,))
        offset = (batch.pix_coord[pix] - p0[2:2 + ndim]) / sizes
        r = np.sqrt(np.sum(offset ** 2, axis=1))
        smooth = ~excluded[pix]
        if name == "disc":
            smooth &= np.abs(r - p0[-1]) > 1e-3
        if name == "ring":
            smooth &= np.abs(dist2 - 1.0) > 1e-3
        assert smooth.sum() > 10
        analytic = entry_deriv[e0:e1][smooth]
        scale = np.abs(analytic).max()
        np.testing.assert_allclose(analytic, fd[smooth], rtol=0,
                                   atol=FD_TOL * scale)


def _shape_points(name, rng, ndim):
    """(r2, extra) points where f is smooth."""
    points = []
    while len(points) < 12:
        extra = np.array(_extra(name, rng), dtype=float)
        r2 = rng.uniform(0.01, 4.0)
        if name == "disc" and abs(np.sqrt(r2) - extra[0]) < 1e-2:
            continue
        points.append((r2, extra))
    return points


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("ndim", [2, 3])
def test_shape_value_derivatives(name, ndim):
    rng = np.random.default_rng(7 + ndim + 10 * MODELS.index(name))
    model_id = resolve_model(name).kernel_id
    for r2, extra in _shape_points(name, rng, ndim):
        dextra = np.zeros(max(len(extra), 1))
        f, dfdr2 = kernels.shape_value(model_id, r2, extra, ndim, dextra)
        ref_f, ref_dfdr2, ref_dextra = naive.shape(name, r2, extra, ndim)
        np.testing.assert_allclose(f, ref_f, rtol=MODEL_RTOL)
        analytic = np.r_[dfdr2, dextra[:len(extra)]]
        np.testing.assert_allclose(analytic, np.r_[ref_dfdr2, ref_dextra],
                                   rtol=DERIV_RTOL, atol=1e-14)

        def fun(v):
            scratch = np.zeros(max(len(extra), 1))
            return kernels.shape_value(model_id, v[0], v[1:], ndim, scratch)[0]

        fd = _central_jacobian(fun, np.r_[r2, extra])
        np.testing.assert_allclose(analytic, fd, rtol=0,
                                   atol=FD_TOL * max(np.abs(analytic).max(), 1e-3))


def test_disc_inside_is_flat_and_ring_hole_excluded():
    """Non-smooth spots behave as trackpy: f == 1 inside the disc."""
    dextra = np.zeros(1)
    f, dfdr2 = kernels.shape_value(resolve_model("disc").kernel_id, 0.2 ** 2,
                                   np.array([0.5]), 2, dextra)
    assert (f, dfdr2, dextra[0]) == (1.0, 0.0, 0.0)
    # disc_size >= 1 is clipped to 0.999 and no longer free
    f, _ = kernels.shape_value(resolve_model("disc").kernel_id, 1.0,
                               np.array([1.5]), 2, dextra)
    assert f == pytest.approx(naive.shape("disc", 1.0, [1.5], 2)[0])
    assert dextra[0] == 0.0


# ---------------------------------------------------------------- masks

def _check_batch_masks(images, cluster_image, cluster_feat_off, centres,
                       radius, batch):
    ndim = centres.shape[1]
    assert batch.cluster_pix_off[0] == 0 and batch.feat_entry_off[0] == 0
    assert np.all(np.diff(batch.cluster_pix_off) >= 0)
    for c in range(len(cluster_feat_off) - 1):
        image = images[cluster_image[c]]
        p0, p1 = batch.cluster_pix_off[c], batch.cluster_pix_off[c + 1]
        coords = batch.pix_coord[p0:p1]
        assert np.all(coords == np.round(coords))
        icoords = coords.astype(np.int64)
        # each pixel once
        assert len({tuple(row) for row in icoords}) == len(icoords)
        np.testing.assert_array_equal(batch.pix_val[p0:p1],
                                      image[tuple(icoords.T)])
        union = set()
        for feat in range(cluster_feat_off[c], cluster_feat_off[c + 1]):
            expected = {tuple(row) for row in naive.mask_pixels(
                image.shape, centres[feat], radius, image)}
            union |= expected
            e0, e1 = batch.feat_entry_off[feat], batch.feat_entry_off[feat + 1]
            pix = batch.entry_pix[e0:e1]
            assert np.all((pix >= p0) & (pix < p1))
            assert len(np.unique(pix)) == len(pix)
            got = {tuple(row) for row in batch.pix_coord[pix].astype(np.int64)}
            assert got == expected, f"feature {feat}"
        assert {tuple(row) for row in icoords} == union
        assert ndim == image.ndim


@pytest.mark.parametrize("ndim,iso", GEOMETRIES)
def test_flatten_masks_matches_brute_force(ndim, iso):
    rng = np.random.default_rng(100 + ndim + iso)
    shape = (30, 40) if ndim == 2 else (12, 18, 20)
    radius = _radius(ndim, iso)
    images = []
    for _ in range(2):
        image = rng.uniform(0, 100, shape)
        image[rng.random(shape) < 0.05] = np.nan
        images.append(image)
    hi = np.array(shape) - 1.0
    centres = [
        rng.uniform(0, hi),                          # anywhere
        rng.uniform(0, hi),
        np.array([0.3] * (ndim - 2) + [0.4, 0.2]),   # at a corner: clipped
        hi - 0.4,                                    # the other corner
        np.round(hi / 2),                            # integer: edge pixels
        np.array([-100.0] * ndim),                   # entirely outside
        rng.uniform(0, hi),
    ]
    centres.append(centres[-1] + 1.7)                # overlaps the previous
    centres = np.array(centres)
    cluster_feat_off = np.array([0, 2, 3, 5, 6, 8], dtype=np.int64)
    cluster_image = np.array([0, 0, 0, 1, 1], dtype=np.int64)
    batch = flatten_masks(images, cluster_image, cluster_feat_off, centres,
                          radius)
    _check_batch_masks(images, cluster_image, cluster_feat_off, centres,
                       radius, batch)
    # the feature outside the image has no pixels
    assert batch.feat_entry_off[6] == batch.feat_entry_off[5]


@pytest.mark.parametrize("ndim", [2, 3])
def test_mask_edge_is_included(ndim):
    shape = (21,) * ndim
    image = np.ones(shape)
    centre = np.full(ndim, 10.0)
    radius = (4.0,) * ndim
    batch = flatten_masks([image], np.zeros(1, np.int64),
                          np.array([0, 1], np.int64), centre[None], radius)
    coords = {tuple(row) for row in batch.pix_coord.astype(int)}
    for d in range(ndim):
        for sign in (-1, 1):
            edge = [10] * ndim
            edge[d] += sign * 4
            assert tuple(edge) in coords
    # (3, 4) lies at exactly 5 = radius from the centre
    batch = flatten_masks([image], np.zeros(1, np.int64),
                          np.array([0, 1], np.int64), centre[None],
                          (5.0,) * ndim)
    coords = {tuple(row) for row in batch.pix_coord.astype(int)}
    assert tuple([10] * (ndim - 2) + [13, 14]) in coords
    assert tuple([10] * (ndim - 2) + [14, 14]) not in coords
    assert len(coords) == len(naive.mask_pixels(shape, centre, (5.0,) * ndim))


@pytest.mark.parametrize("radius", [(5.0, 5.0), (4.5, 5.5), (3.3, 6.0),
                                    (2.0, 4.0, 4.0)])
def test_mask_rows_match_brute_force_at_many_centres(radius):
    """Each row's run is estimated, and settled by the membership test only
    where an end lies near a pixel: centres on and near pixels and half
    pixels, and random ones, over hundreds of single-feature clusters."""
    rng = np.random.default_rng(len(radius) * 10 + int(radius[0] * 10))
    ndim = len(radius)
    shape = (30, 30) if ndim == 2 else (14, 24, 24)
    fractions = np.array([0.0, 0.5, 0.25, 1e-9, -1e-9, 0.5 + 1e-9, 1e-7,
                          0.3333333333333333])
    on_grid = np.array(list(itertools.product(fractions, repeat=ndim)))
    centre = np.array(shape) / 2 + np.concatenate(
        [on_grid, rng.uniform(-2, 2, (200, ndim))])
    n = len(centre)
    image = np.ones(shape)
    batch = flatten_masks([image], np.zeros(n, np.int64),
                          np.arange(n + 1, dtype=np.int64), centre, radius)
    for feat in range(n):
        e0, e1 = batch.feat_entry_off[feat], batch.feat_entry_off[feat + 1]
        got = batch.pix_coord[batch.entry_pix[e0:e1]].astype(np.int64)
        expected = naive.mask_pixels(shape, centre[feat], radius)
        assert {tuple(p) for p in got} == {tuple(p) for p in expected}, \
            centre[feat]


def test_flatten_masks_integer_image():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 60000, (25, 30)).astype(np.uint16)
    centres = np.array([[3.2, 4.1], [5.0, 6.5], [20.7, 28.9]])
    cluster_feat_off = np.array([0, 2, 3], np.int64)
    batch = flatten_masks([image], np.zeros(2, np.int64), cluster_feat_off,
                          centres, (3.0, 3.0))
    _check_batch_masks([image], np.zeros(2, np.int64), cluster_feat_off,
                       centres, (3.0, 3.0), batch)


# ---------------------------------------------------------------- threads

def _draw(shape, features, background=10.0):
    """Noise-free image of Gaussian spots exp(-d^2 / size^2), drawn directly."""
    grid = np.indices(shape, dtype=float)
    image = np.full(shape, background)
    for pos, signal, size in features:
        d2 = sum((g - p) ** 2 for g, p in zip(grid, pos))
        image += signal * np.exp(-d2 / size ** 2)
    return image


def _many_features(rng, n_side=10, shape=(200, 200)):
    truth = []
    for i in range(n_side):
        for j in range(n_side):
            pos = np.array([10 + 18 * i, 10 + 18 * j]) + rng.uniform(-1, 1, 2)
            truth.append(pos)
            if (i + j) % 3 == 0:  # a close neighbour: a cluster of two
                truth.append(pos + np.array([rng.uniform(2, 3), rng.uniform(2, 3)]))
    truth = np.array(truth)
    image = _draw(shape, [(p, 100.0, 2.0) for p in truth])
    image += rng.normal(0, 2.0, shape)
    guess = truth + rng.uniform(-0.5, 0.5, truth.shape)
    f = pd.DataFrame({"y": guess[:, 0], "x": guess[:, 1], "signal": 80.0,
                      "size": 2.0})
    return f, image, truth


def test_results_do_not_depend_on_thread_count():
    n_threads = numba.config.NUMBA_NUM_THREADS
    if n_threads < 2:
        pytest.skip("needs at least 2 Numba threads")
    rng = np.random.default_rng(11)
    f, image, _ = _many_features(rng)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = refinefit.refine_leastsq(f, image, 9, param_mode={"size": "var"})
        numba.set_num_threads(n_threads)
        many = refinefit.refine_leastsq(f, image, 9, param_mode={"size": "var"})
    finally:
        numba.set_num_threads(before)
    assert one["cluster_size"].max() >= 2
    assert np.isfinite(one["cost"]).all()
    pd.testing.assert_frame_equal(one, many, check_exact=True)


# ---------------------------------------------------------------- solver

_SOLVER_EXTRA = {"gauss": [], "disc": [0.5], "ring": [0.3]}


def _draw_model(shape, name, features, background=8.0):
    """Noise-free image of ``name`` spots drawn with the NumPy reference."""
    grid = np.indices(shape, dtype=float).reshape(len(shape), -1).T
    image = np.full(len(grid), background)
    for pos, signal, size in features:
        r2 = np.sum(((grid - pos) / size) ** 2, axis=1)
        image += signal * naive.shape(name, r2, _SOLVER_EXTRA[name], len(shape))[0]
    return image.reshape(shape)


def _solver_problem(rng, modes, name="gauss"):
    """Clusters of 1-3 overlapping spots in one noisy image."""
    shape = (90, 90)
    size = 2.2 if name == "gauss" else 3.0
    truth, groups = [], []
    for k, n in enumerate([2, 3, 2, 1, 3]):
        origin = np.array([15.0 + 15 * k, 20.0 + 10 * (k % 3)])
        for j in range(n):
            truth.append(origin + np.array([3.0 * j, 2.0 * j])
                         + rng.uniform(-0.3, 0.3, 2))
        groups.append(n)
    truth = np.array(truth)
    image = _draw_model(shape, name, [(p, 120.0, size) for p in truth])
    image += rng.normal(0, 1.0, shape)
    guess = truth + rng.uniform(-0.4, 0.4, truth.shape)
    n = len(truth)
    extra = np.tile(_SOLVER_EXTRA[name], (n, 1))
    params = np.column_stack([np.full(n, 8.0), np.full(n, 100.0), guess,
                              np.full(n, size * 0.95), extra])
    lower = np.column_stack([np.full(n, 1e-7), np.full(n, 1e-7), guess - 4,
                             np.full(n, 1e-7), extra * 0.5])
    upper = np.column_stack([np.full(n, np.inf), np.full(n, np.inf), guess + 4,
                             np.full(n, np.inf), extra * 1.5])
    modes = list(modes) + [0] * extra.shape[1]
    cluster_feat_off = np.r_[0, np.cumsum(groups)].astype(np.int64)
    model = resolve_model(name)
    settings = Settings(
        model=Model(model_id=model.kernel_id, continuous=model.continuous,
                    ndim=2, n_size=1, modes=np.array(modes, dtype=np.int64),
                    radius=(5.0, 5.0) if name == "gauss" else (6.0, 6.0)),
        solver=Solver(tol=1e-10))
    return image, params, lower, upper, cluster_feat_off, settings, truth


@pytest.mark.parametrize("name,modes", [
    ("gauss", [3, 1, 1, 1, 0]),
    ("gauss", [3, 1, 1, 1, 1]),
    ("gauss", [3, 3, 1, 1, 3]),
    ("ring", [3, 1, 1, 1, 1]),
    ("disc", [3, 1, 1, 1, 0]),
], ids=["gauss-pos-signal", "gauss-size-var", "gauss-cluster-modes",
        "ring-size-var", "disc"])
def test_sparse_and_dense_solver_agree(name, modes):
    rng = np.random.default_rng(21)
    image, params, lower, upper, cluster_feat_off, settings, truth = \
        _solver_problem(rng, modes, name)
    n_clusters = len(cluster_feat_off) - 1
    results = {}
    for limit in (0, 1000):
        run = settings.replace(solver=dict(dense_limit=limit))
        results[limit] = refine_chunk(
            [image], np.array([image.max()]), np.zeros(n_clusters, np.int64),
            cluster_feat_off, params, lower, upper, run)
    (p_sparse, cost_sparse, st_sparse) = results[0][:3]
    (p_dense, cost_dense, st_dense) = results[1000][:3]
    assert np.all(st_sparse == kernels.CONVERGED)
    assert np.all(st_dense == kernels.CONVERGED)
    np.testing.assert_allclose(p_sparse, p_dense, rtol=0, atol=SOLVER_ATOL)
    np.testing.assert_allclose(cost_sparse, cost_dense, rtol=1e-9)
    np.testing.assert_allclose(p_dense[:, 2:4], truth, atol=0.1)


def test_solve_clusters_sparse_and_dense_agree_directly():
    rng = np.random.default_rng(22)
    image, params, lower, upper, cluster_feat_off, settings, _ = \
        _solver_problem(rng, [3, 1, 1, 1, 1])
    n_clusters = len(cluster_feat_off) - 1
    batch = flatten_masks([image], np.zeros(n_clusters, np.int64),
                          cluster_feat_off, np.ascontiguousarray(params[:, 2:4]),
                          settings.model.radius)
    outs = []
    for limit in (0, 1000):
        out = np.empty_like(params)
        sumsq = np.empty(n_clusters)
        status = np.empty(n_clusters, np.int64)
        n_eval = np.empty(n_clusters, np.int64)
        kernels.solve_clusters(np.arange(n_clusters, dtype=np.int64),
                               batch.pix_val, batch.pix_coord,
                               batch.cluster_pix_off, batch.entry_pix,
                               batch.feat_entry_off, batch.cluster_feat_off,
                               params, lower, upper, settings.model.modes, 2, 1,
                               settings.model.model_id, True, 1e-10, 200, limit,
                               out, sumsq, status, n_eval, False,
                               np.empty((0, 0)))
        assert np.all(status == kernels.CONVERGED)
        outs.append((out, sumsq))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=0, atol=SOLVER_ATOL)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-9)


@pytest.mark.parametrize("model_id", [-1, 4])
def test_solve_clusters_refuses_an_unknown_model(model_id):
    """The dense solver switches over the built-in models by id: any other
    id below the custom ones is refused, not solved as another model."""
    rng = np.random.default_rng(22)
    image, params, lower, upper, cluster_feat_off, settings, _ = \
        _solver_problem(rng, [3, 1, 1, 1, 1])
    n_clusters = len(cluster_feat_off) - 1
    batch = flatten_masks([image], np.zeros(n_clusters, np.int64),
                          cluster_feat_off,
                          np.ascontiguousarray(params[:, 2:4]),
                          settings.model.radius)
    with pytest.raises(ValueError, match="model_id"):
        kernels.solve_clusters(
            np.arange(n_clusters, dtype=np.int64), batch.pix_val,
            batch.pix_coord, batch.cluster_pix_off, batch.entry_pix,
            batch.feat_entry_off, batch.cluster_feat_off, params, lower,
            upper, settings.model.modes, 2, 1, model_id, True, 1e-10, 200,
            1000, np.empty_like(params), np.empty(n_clusters),
            np.empty(n_clusters, np.int64), np.empty(n_clusters, np.int64),
            False, np.empty((0, 0)))


def test_large_cluster_converges():
    """A chain of 20 overlapping features: 61 unknowns, above dense_limit."""
    rng = np.random.default_rng(23)
    truth = np.array([[20.0 + 0.3 * k, 10.0 + 3.0 * k] for k in range(20)])
    truth += rng.uniform(-0.2, 0.2, truth.shape)
    # masks wide enough (radius 6 = 4 sizes) that no tail is cut off
    image = _draw((40, 80), [(p, 100.0, 1.5) for p in truth])
    guess = truth + rng.uniform(-0.4, 0.4, truth.shape)
    f = pd.DataFrame({"y": guess[:, 0], "x": guess[:, 1], "signal": 90.0,
                      "size": 1.5})
    out = refinefit.refine_leastsq(f, image, 13)
    assert (out["cluster_size"] == 20).all()
    assert np.isfinite(out["cost"]).all()
    np.testing.assert_allclose(out[["y", "x"]].to_numpy(), truth, atol=0.01)


def test_internal_kernels_refuse_python_calls():
    """An internal kernel has no Python wrapper: a call from Python is a
    TypeError that says so, not a jump to missing code."""
    with pytest.raises(TypeError, match="internal to the compiled kernels"):
        residuals.mode_counts(np.zeros(3, dtype=np.int64))


@numba.njit
def _sandwich_both_ways(jac_by_unknown, resid, excluded, row_off, row_col,
                        row_val):
    """kernels.covariance's sandwich from J held whole and from J's
    compressed rows."""
    n_unk, n_pix = jac_by_unknown.shape
    whole = np.full(n_unk, np.nan)
    covariance.dense_sandwich_std(
        jac_by_unknown, resid, excluded, np.empty((n_unk, n_unk)),
        np.empty((n_unk, n_unk)), np.empty((n_unk, n_pix)),
        np.empty(n_pix), np.empty(n_pix), whole)
    normal = np.empty((n_unk, n_unk))
    covariance.normal_from_rows(n_unk, excluded, row_off, row_col, row_val,
                                normal)
    linalg.cholesky_inplace(normal, n_unk)
    inverse = np.empty((n_unk, n_unk))
    covariance.inverse_from_factor(normal, n_unk, inverse)
    by_rows = np.full(n_unk, np.nan)
    covariance.sandwich_std(inverse, n_unk, resid, excluded, row_off,
                            row_col, row_val, np.empty(n_unk), by_rows)
    return whole, by_rows


def test_sandwich_errors_match_numpy():
    """The sandwich covariance (kernels.covariance, from J whole and from
    its compressed rows, and the scipy paths' NumPy version) against its
    formula written out in NumPy: P = (J^T J)^-1, h = diag(J P J^T),
    Cov = P J^T diag(r^2 / (1 - h)^2) J P; excluded pixels add nothing."""
    from refinefit.solvers.scipy_errors import sandwich_std

    rng = np.random.default_rng(41)
    for _ in range(50):
        n_unk = int(rng.integers(1, 9))
        n_pix = int(rng.integers(n_unk + 2, 60))
        jac = rng.normal(size=(n_pix, n_unk))
        jac[rng.random(jac.shape) < 0.3] = 0.0  # a sparse pattern
        resid = rng.normal(size=n_pix) * rng.uniform(0.1, 5.0, n_pix)
        excluded = rng.random(n_pix) < 0.1
        valid = ~excluded
        j, r = jac[valid], resid[valid]
        if np.linalg.matrix_rank(j) < n_unk:
            continue
        p = np.linalg.inv(j.T @ j)
        h = np.einsum("qi,ij,qj->q", j, p, j)
        cov = p @ j.T @ np.diag(r ** 2 / (1 - h) ** 2) @ j @ p
        expect = np.sqrt(np.diag(cov))

        rows = [np.nonzero(jac[q])[0] for q in range(n_pix)]
        row_off = np.r_[0, np.cumsum([len(c) for c in rows])].astype(np.int64)
        row_col = np.concatenate(rows).astype(np.int64)
        row_val = np.concatenate([jac[q, c] for q, c in enumerate(rows)])
        by_unknown = np.ascontiguousarray(jac.T)
        by_unknown[:, excluded] = 0.0  # as covariance.jacobian_by_unknown
        whole, by_rows = _sandwich_both_ways(by_unknown, resid, excluded,
                                             row_off, row_col, row_val)
        np.testing.assert_allclose(whole, expect, rtol=1e-9)
        np.testing.assert_allclose(by_rows, expect, rtol=1e-9)
        np.testing.assert_allclose(sandwich_std(p, j, r), expect, rtol=1e-9)


@numba.njit
def _vlog_all(x, out):
    for i in range(x.shape[0]):
        out[i] = vlog.log(x[i])


def test_vectorisable_log_matches_the_c_library():
    """kernels.vlog.log within 4 units in the last place of NumPy's log over
    the whole range of doubles (subnormal numbers included), next to 1, and
    at the special values."""
    rng = np.random.default_rng(51)
    x = np.concatenate([np.exp(rng.uniform(-744, 709, 200_000)),
                        1.0 + rng.normal(0.0, 1e-6, 10_000),
                        rng.uniform(0.5, 2.0, 100_000), [5e-324, 1e-310]])
    out = np.empty_like(x)
    _vlog_all(x, out)
    expected = np.log(x)
    nonzero = expected != 0
    ulps = np.abs(out - expected)[nonzero] / np.spacing(
        np.abs(expected[nonzero]))
    assert ulps.max() <= 4
    special = np.array([0.0, np.inf, -1.0, np.nan, 1.0])
    got = np.empty_like(special)
    _vlog_all(special, got)
    np.testing.assert_array_equal(got, [-np.inf, np.inf, np.nan, np.nan, 0.0])
