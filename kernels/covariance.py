"""Standard errors of a cluster's least-squares fit that hold when the noise
differs between pixels (shot noise), from its per-pixel Jacobian rows.

With ``P`` the inverse of J^T J (or, under constraints or shared
parameters, the matching block of the problem's linearised inverse), the
fit moves by ``P J_q^T r_q`` when pixel q's residual changes by r_q. Its
covariance is the sandwich

    Cov = P (sum_q w_q J_q^T J_q) P,    w_q = r_q^2 / (1 - h_q)^2,

with ``h_q = J_q P J_q^T`` the leverage of pixel q (the HC3 form of MacKinnon
and White, J. Econometrics 29:305, 1985). It estimates each pixel's variance
by its own squared residual, so it assumes no noise model; the factor
1 / (1 - h_q)^2 makes up for the residuals' being smaller than the noise
where a pixel pulls the fit towards itself. Under equal noise in every pixel
it agrees with s^2 (J^T J)^-1 to within a few percent; under Poisson noise,
where s^2 (J^T J)^-1 is too small near a bright feature's centre, it is not.

:func:`jacobian_rows` writes J by pixel (a row per pixel, compressed), the
form the errors of large clusters, constrained and shared fits start from.
A small cluster's J is held whole instead, a row per unknown
(:func:`jacobian_by_unknown`), so that every sum over pixels is a
vectorised loop (:func:`dense_sandwich_std`).
"""
import math

from .jit import inline_kernel, kernel, leaf_kernel
from .linalg import cholesky_inplace, cholesky_solve
from .sums import dot
from .terms import feature_term

# 1 - h_q is held above this: a pixel that alone determines an unknown
# (h_q = 1) has no residual to estimate its variance from
MIN_ONE_MINUS_H = 1e-6


@kernel
def valid_pixels(excluded, n_pix):
    """Pixels of the first ``n_pix`` not excluded."""
    n_valid = 0
    for q in range(n_pix):
        n_valid += 0 if excluded[q] else 1
    return n_valid


@kernel
def row_count(n_pix, n_entries, n_cl, n_var):
    """Elements of J's rows (:func:`jacobian_rows`): the cluster unknowns
    at every pixel, a feature's own unknowns at each of its entries."""
    return n_pix * n_cl + n_entries * n_var


@inline_kernel
def jacobian_rows(work, cols, n_cl, pix_val, pix_coord, entry_pix,
                  feat_entry_off, f0, n_feat, pix_base, n_pix, ndim, n_size,
                  model_id, continuous, deriv, dextra, rows):
    """J of a cluster at the parameters in ``work``, by pixel.

    ``rows`` is ``(model, resid, excluded, row_off, fill, row_col, row_val)``
    (filled here; ``row_col``/``row_val`` hold :func:`row_count` elements,
    ``fill`` is scratch): the model and residual at each pixel, the pixels
    where a term is NaN, and pixel q's row of J in
    ``row_col/row_val[row_off[q]:row_off[q + 1]]``: the cluster unknowns
    first (columns 0..n_cl-1, in order), then each feature's unknowns at
    that pixel. Returns the sum of squared residuals.
    """
    model, resid, excluded, row_off, fill, row_col, row_val = rows
    n_params = work.shape[1]
    e_base = feat_entry_off[f0]
    e_end = feat_entry_off[f0 + n_feat]
    n_var = 0
    for j in range(1, n_params):
        n_var += 1 if cols[0, j] >= n_cl else 0
    for q in range(n_pix):
        fill[q] = 0
    for e in range(e_base, e_end):
        fill[entry_pix[e] - pix_base] += 1
    row_off[0] = 0
    for q in range(n_pix):
        row_off[q + 1] = row_off[q] + n_cl + fill[q] * n_var
        fill[q] = row_off[q] + n_cl
        for i in range(n_cl):
            row_col[row_off[q] + i] = i
            row_val[row_off[q] + i] = 0.0
        model[q] = work[0, 0]
        excluded[q] = False
    bg_col = cols[0, 0]
    for k in range(n_feat):
        for e in range(feat_entry_off[f0 + k], feat_entry_off[f0 + k + 1]):
            q = entry_pix[e] - pix_base
            value = feature_term(pix_coord, entry_pix[e], work, k, ndim,
                                 n_size, model_id, continuous, deriv, dextra)
            at = fill[q]
            fill[q] += n_var
            for j in range(1, n_params):
                col = cols[k, j]
                if col >= n_cl:
                    row_col[at] = col
                    row_val[at] = 0.0 if math.isnan(value) else deriv[j]
                    at += 1
            if math.isnan(value):
                excluded[q] = True
                continue
            model[q] += value
            for j in range(1, n_params):
                col = cols[k, j]
                if 0 <= col < n_cl:
                    row_val[row_off[q] + col] += deriv[j]
    cost = 0.0
    for q in range(n_pix):
        if bg_col >= 0:
            row_val[row_off[q] + bg_col] = 1.0
        resid[q] = 0.0 if excluded[q] else model[q] - pix_val[pix_base + q]
        cost += resid[q] * resid[q]
    return cost


@kernel
def fisher_rows(rows, extra):
    """J's rows (:func:`jacobian_rows`) divided by the square root of the
    expected photons (the model plus ``extra``, the read noise's share, or
    empty): then J^T J is the Fisher information of a Poisson fit."""
    model, excluded, row_off, row_val = rows[0], rows[2], rows[3], rows[6]
    for q in range(model.shape[0]):
        mu = model[q] + (extra[q] if extra.shape[0] else 0.0)
        scale = 1.0 / math.sqrt(mu) if mu > 0.0 and not excluded[q] else 0.0
        for a in range(row_off[q], row_off[q + 1]):
            row_val[a] *= scale


@kernel
def normal_from_rows(n_unk, excluded, row_off, row_col, row_val, normal):
    """J^T J from J's rows (:func:`jacobian_rows`) into ``normal``."""
    for i in range(n_unk):
        for j in range(n_unk):
            normal[i, j] = 0.0
    for q in range(excluded.shape[0]):
        if excluded[q]:
            continue
        for a in range(row_off[q], row_off[q + 1]):
            for b in range(row_off[q], row_off[q + 1]):
                normal[row_col[a], row_col[b]] += row_val[a] * row_val[b]


@kernel
def inverse_from_factor(factor, n, inverse):
    """``(L L^T)^-1`` whole from the Cholesky factor ``L`` (n x n)."""
    for i in range(n):
        for j in range(n):
            inverse[i, j] = 1.0 if i == j else 0.0
        cholesky_solve(factor, n, inverse[i])


@kernel
def sandwich_std(inverse, n_unk, resid, excluded, row_off, row_col, row_val,
                 phi, std):
    """Standard errors of the unknowns, ``sqrt(diag(Cov))`` with Cov the
    sandwich of the module docstring, into ``std[:n_unk]``. ``inverse`` is
    ``P`` (symmetric), ``phi`` (``n_unk``) scratch. NaN where ``P`` has a
    negative or non-finite diagonal."""
    for i in range(n_unk):
        std[i] = 0.0
    for q in range(resid.shape[0]):
        if excluded[q]:
            continue
        start = row_off[q]
        end = row_off[q + 1]
        # phi = P J_q^T
        for i in range(n_unk):
            total = 0.0
            for a in range(start, end):
                total += inverse[i, row_col[a]] * row_val[a]
            phi[i] = total
        leverage = 0.0
        for a in range(start, end):
            leverage += row_val[a] * phi[row_col[a]]
        weight = resid[q] / max(1.0 - leverage, MIN_ONE_MINUS_H)
        weight *= weight
        for i in range(n_unk):
            std[i] += weight * phi[i] * phi[i]
    for i in range(n_unk):
        ok = inverse[i, i] >= 0.0 and math.isfinite(std[i])
        std[i] = math.sqrt(std[i]) if ok else math.nan


@leaf_kernel
def jacobian_by_unknown(terms, cols, entry_pix, feat_entry_off, f0, n_feat,
                        pix_base, in_order, excluded, jac, row0):
    """J of a dense cluster as rows ``row0..`` of ``jac`` (one per unknown,
    a column per pixel; the rows above are left alone) from the
    per-entry derivatives of its features (``terms``, rows 1.., as
    ``residuals.Workspace.terms`` holds them; ``in_order`` as there: one
    feature whose entry i is pixel i); the background's row is 1.
    Excluded pixels get a zero column."""
    n_unk = jac.shape[0] - row0
    n_pix = jac.shape[1]
    e0 = feat_entry_off[f0]
    bg = cols[0, 0]
    if in_order:  # rows copied: no scatter
        for j in range(1, terms.shape[0]):
            col = cols[0, j]
            if col >= 0:
                for q in range(n_pix):
                    jac[row0 + col, q] = terms[j, q]
    else:
        for i in range(n_unk):
            for q in range(n_pix):
                jac[row0 + i, q] = 0.0
        for k in range(n_feat):
            start = feat_entry_off[f0 + k] - e0
            end = feat_entry_off[f0 + k + 1] - e0
            for j in range(1, terms.shape[0]):
                col = cols[k, j]
                if col < 0:
                    continue
                for e in range(start, end):
                    jac[row0 + col, entry_pix[e0 + e] - pix_base] += terms[j, e]
    if bg >= 0:
        for q in range(n_pix):
            jac[row0 + bg, q] = 1.0
    for q in range(n_pix):
        if excluded[q]:
            for i in range(n_unk):
                jac[row0 + i, q] = 0.0


@leaf_kernel
def dense_sandwich_std(jac, resid, excluded, normal, inverse, phi, weight,
                       tmp, std):
    """The sandwich standard errors (module docstring) from J held by
    unknown (:func:`jacobian_by_unknown`), into ``std``; False (``std``
    untouched) where J^T J is singular. ``normal``, ``inverse`` (n x n),
    ``phi`` (as ``jac``), ``weight`` and ``tmp`` (pixels) are scratch."""
    n_unk = jac.shape[0]
    n_pix = jac.shape[1]
    for i in range(n_unk):
        for j in range(i, n_unk):
            normal[i, j] = dot(jac[i], jac[j], 0, n_pix)
            normal[j, i] = normal[i, j]
    if not cholesky_inplace(normal, n_unk):
        return False
    inverse_from_factor(normal, n_unk, inverse)
    # phi = P J, row by row: one vectorised update per element of P
    for i in range(n_unk):
        for q in range(n_pix):
            phi[i, q] = 0.0
        for j in range(n_unk):
            p = inverse[i, j]
            for q in range(n_pix):
                phi[i, q] += p * jac[j, q]
    for q in range(n_pix):
        weight[q] = 0.0
    for i in range(n_unk):
        for q in range(n_pix):
            weight[q] += jac[i, q] * phi[i, q]  # the leverage h_q
    for q in range(n_pix):
        w = 0.0 if excluded[q] else resid[q] / max(1.0 - weight[q],
                                                   MIN_ONE_MINUS_H)
        weight[q] = w * w
    for i in range(n_unk):
        for q in range(n_pix):
            tmp[q] = weight[q] * phi[i, q]
        total = dot(tmp, phi[i], 0, n_pix)
        ok = inverse[i, i] >= 0.0 and math.isfinite(total)
        std[i] = math.sqrt(total) if ok else math.nan
    return True
