"""The Levenberg-Marquardt solver of :mod:`.lm` on an NVIDIA GPU (numba-cuda).

One thread per cluster: each thread runs the CPU solver's iterations for
its cluster (the same damping, step limits, bounds and stop tests, so that
both reach the same optimum), with the cluster's arrays in a slice of one
scratch array in device memory. Dense clusters only (up to the solver's
dense limit of unknowns), the built-in models, least squares and the
Poisson likelihood. Imported only when a GPU is asked for: numba-cuda is
an optional dependency. Under ``NUMBA_ENABLE_CUDASIM=1`` the kernel runs in
Numba's CUDA simulator (slowly, in Python), as the tests run it.

The shapes, the term and the iterations mirror the CPU kernels rather than
call them: those compile for the CPU only (their exp is vectorised LLVM IR,
their arrays come from an arena), and a CUDA device function can call
neither. tests/test_gpu.py holds the two to the same fits, errors and
statuses, model by model.

Per cluster, the scratch slice holds (:func:`scratch_size`): the unknowns,
their bounds, the trial point, the step, the scale and two gradients
(``8 n``), two normal matrices and the damped matrix (``3 n^2``), the
right-hand side (``n``), J by pixel (``n_pix n``), the model and the
excluded flags (``2 n_pix``) and the derivatives of one term
(``2 n_params``). The integer scratch holds the free, relative-step and
index flags of the unknowns (``3 n``, :func:`int_scratch_size`).
"""
import math

from numba import cuda

from .codes import (
    BLANK,
    CONVERGED,
    MAX_ITER,
    MODE_CLUSTER,
    MODE_VAR,
    NO_PIXELS,
    NOT_FINITE,
    SINGULAR,
)
from .covariance import MIN_ONE_MINUS_H
from .models import DISC, GAUSS, INV_SERIES, RING

# the CPU solver's constants (kernels/lm.py)
_LAMBDA_START = 1e-3
_LAMBDA_MAX = 1e16
_MAX_RELATIVE_STEP = 0.5
_MAX_RATE = 0.9

THREADS_PER_BLOCK = 64


def scratch_size(n_unk, n_pix, n_params):
    """Float64 elements of one cluster's scratch slice (see the module
    docstring); ``n_unk`` and ``n_pix`` are arrays or scalars."""
    return 9 * n_unk + 3 * n_unk * n_unk + n_pix * (n_unk + 2) \
        + 2 * n_params


def int_scratch_size(n_unk):
    """Int64 elements of one cluster's integer scratch slice."""
    return 3 * n_unk


# --- model shapes (kernels/models.py, with math.exp) ------------------------

@cuda.jit(device=True)
def _gauss(r2, ndim):
    f = math.exp(-0.5 * ndim * r2)
    return f, -0.5 * ndim * f


@cuda.jit(device=True)
def _disc(r2, disc_size, ndim, dextra):
    dextra[0] = 0.0
    if disc_size <= 0.0:
        return _gauss(r2, ndim)
    size_is_free = disc_size < 1.0
    if not size_is_free:
        disc_size = 0.999
    if r2 <= disc_size * disc_size:
        return 1.0, 0.0
    r = math.sqrt(r2)
    width = 1.0 - disc_size
    u = (r - disc_size) / width
    f = math.exp(-0.5 * ndim * u * u)
    df_du = -ndim * u * f
    if size_is_free:
        dextra[0] = df_du * (r - 1.0) / (width * width)
    return f, df_du / (2.0 * r * width)


@cuda.jit(device=True)
def _ring(r2, thickness, ndim, dextra):
    r = math.sqrt(r2)
    u = (r - 1.0 + thickness) / thickness
    f = math.exp(-0.5 * ndim * u * u)
    df_du = -ndim * u * f
    dextra[0] = df_du * (1.0 - r) / (thickness * thickness)
    if r == 0.0:
        return f, 0.0
    return f, df_du / (2.0 * r * thickness)


@cuda.jit(device=True)
def _inv_series(r2, work, row, at, dextra):
    n = work.shape[1] - at - 1
    poly = 1.0
    dpoly = 0.0
    for k in range(1, n + 1):
        dpoly = dpoly * r2 + poly
        poly = poly * r2 + work[row, at + k]
    mult = work[row, at]
    inv = 1.0 / poly
    dextra[0] = inv
    power = 1.0
    for k in range(n, 0, -1):
        dextra[k] = -mult * power * inv * inv
        power *= r2
    return mult * inv, -mult * dpoly * inv * inv


@cuda.jit(device=True)
def _shape(model_id, r2, work, row, at, ndim, dextra):
    if model_id == GAUSS:
        return _gauss(r2, ndim)
    if model_id == DISC:
        return _disc(r2, work[row, at], ndim, dextra)
    if model_id == RING:
        return _ring(r2, work[row, at], ndim, dextra)
    if model_id == INV_SERIES:
        return _inv_series(r2, work, row, at, dextra)
    return math.nan, math.nan


@cuda.jit(device=True)
def _term(pix_coord, q, work, row, ndim, n_size, model_id, continuous,
          deriv, dextra):
    """``signal * f`` of feature ``work[row]`` at pixel ``q`` and its
    derivatives (kernels/terms.feature_term); NaN where a model that is
    not continuous ignores the pixel."""
    size_at = 2 + ndim
    extra_at = size_at + n_size
    dist2 = 0.0
    r2 = 0.0
    for d in range(ndim):
        delta = pix_coord[q, d] - work[row, 2 + d]
        size = work[row, size_at + d] if n_size > 1 else work[row, size_at]
        dist2 += delta * delta
        r2 += delta * delta / (size * size)
    if not continuous and dist2 < 1.0:
        return math.nan
    signal = work[row, 1]
    f, df_dr2 = _shape(model_id, r2, work, row, extra_at, ndim, dextra)
    slope = signal * df_dr2
    deriv[0] = 0.0
    deriv[1] = f
    for d in range(ndim):
        delta = pix_coord[q, d] - work[row, 2 + d]
        size = work[row, size_at + d] if n_size > 1 else work[row, size_at]
        deriv[2 + d] = -2.0 * slope * delta / (size * size)
        if n_size > 1:
            deriv[size_at + d] = (-2.0 * slope * delta * delta
                                  / (size * size * size))
    if n_size == 1:
        deriv[size_at] = -2.0 * slope * r2 / work[row, size_at]
    for j in range(work.shape[1] - extra_at):
        deriv[extra_at + j] = signal * dextra[j]
    return signal * f


# --- a cluster's unknowns ---------------------------------------------------

@cuda.jit(device=True)
def _column(modes, slot, n_cl, n_var, k, j):
    """The unknown of parameter ``j`` of feature ``k`` (kernels/residuals
    .column), or -1."""
    if modes[j] == MODE_CLUSTER:
        return slot[j]
    if modes[j] == MODE_VAR:
        return n_cl + k * n_var + slot[j]
    return -1


@cuda.jit(device=True)
def _unpack(point, params, work, f0, n_feat, modes, slot, n_cl, n_var):
    """The parameters of the cluster's features at ``point``, into
    ``work`` (the constants from ``params``)."""
    for k in range(n_feat):
        for j in range(modes.shape[0]):
            col = _column(modes, slot, n_cl, n_var, k, j)
            work[f0 + k, j] = point[col] if col >= 0 else params[f0 + k, j]


@cuda.jit(device=True)
def _evaluate(work, f0, n_feat, pix_val, pix_extra, pix_coord, pix_base,
              n_pix, entry_pix, feat_entry_off, modes, slot, n_cl, n_var,
              n_unk, ndim, n_size, model_id, continuous, poisson, has_extra,
              jac, model, excluded, deriv, dextra, normal, grad):
    """Cost (sum of squares, or the Poisson deviance), J^T W J into
    ``normal`` (n x n, flattened) and J^T W r into ``grad`` at the
    parameters in ``work``: W = 1 (least squares) or 1 / mu (Poisson, with
    r = mu - n), as kernels/residuals evaluates them. Returns the cost, the
    sum of squared residuals and the valid pixels. ``has_extra``: whether
    ``pix_extra`` holds expected photons added at each pixel."""
    for q in range(n_pix):
        model[q] = work[f0, 0]
        excluded[q] = 0.0
        for a in range(n_unk):
            jac[q * n_unk + a] = 0.0
    for k in range(n_feat):
        for e in range(feat_entry_off[f0 + k], feat_entry_off[f0 + k + 1]):
            q = entry_pix[e] - pix_base
            value = _term(pix_coord, entry_pix[e], work, f0 + k, ndim,
                          n_size, model_id, continuous, deriv, dextra)
            if math.isnan(value):
                excluded[q] = 1.0
                continue
            model[q] += value
            for j in range(1, modes.shape[0]):
                col = _column(modes, slot, n_cl, n_var, k, j)
                if col >= 0:
                    jac[q * n_unk + col] += deriv[j]
    bg_col = _column(modes, slot, n_cl, n_var, 0, 0)
    for a in range(n_unk):
        grad[a] = 0.0
        for b in range(n_unk):
            normal[a * n_unk + b] = 0.0
    cost = 0.0
    sumsq = 0.0
    n_valid = 0
    bad = False
    for q in range(n_pix):
        if excluded[q] != 0.0:
            continue
        n_valid += 1
        n = pix_val[pix_base + q]
        if poisson:
            mu = model[q] + (pix_extra[pix_base + q] if has_extra else 0.0)
            if not mu > 0.0:
                bad = True
                continue
            cost += 2.0 * (mu - n - (n * math.log(mu / n) if n > 0.0
                                     else 0.0))
            r = mu - n
            w = 1.0 / mu
        else:
            r = model[q] - n
            cost += r * r
            w = 1.0
        sumsq += r * r
        if bg_col >= 0:
            jac[q * n_unk + bg_col] = 1.0
        for a in range(n_unk):
            ja = jac[q * n_unk + a]
            if ja == 0.0:
                continue
            wa = w * ja
            grad[a] += wa * r
            for b in range(a, n_unk):
                normal[a * n_unk + b] += wa * jac[q * n_unk + b]
    for a in range(n_unk):
        for b in range(a + 1, n_unk):
            normal[b * n_unk + a] = normal[a * n_unk + b]
    if bad:
        cost = math.inf
    return cost, sumsq, n_valid


@cuda.jit(device=True)
def _cholesky(mat, n, stride):
    """Cholesky factor of ``mat[:n, :n]`` (row stride ``stride``) in its
    lower triangle; False when not positive definite."""
    for j in range(n):
        s = mat[j * stride + j]
        for k in range(j):
            s -= mat[j * stride + k] * mat[j * stride + k]
        if not s > 0.0:
            return False
        d = math.sqrt(s)
        mat[j * stride + j] = d
        for i in range(j + 1, n):
            s = mat[i * stride + j]
            for k in range(j):
                s -= mat[i * stride + k] * mat[j * stride + k]
            mat[i * stride + j] = s / d
    return True


@cuda.jit(device=True)
def _cholesky_solve(factor, n, stride, b):
    """``b`` becomes the solution of L L^T x = b (``factor``: L)."""
    for i in range(n):  # L y = b, then L^T x = y
        s = b[i]
        for k in range(i):
            s -= factor[i * stride + k] * b[k]
        b[i] = s / factor[i * stride + i]
    for i in range(n - 1, -1, -1):
        s = b[i]
        for k in range(i + 1, n):
            s -= factor[k * stride + i] * b[k]
        b[i] = s / factor[i * stride + i]


@cuda.jit(device=True)
def _standard_errors(normal, jac, model, excluded, pix_val, pix_base, n_pix,
                     n, poisson, factor, inverse, phi, var):
    """The variances of a converged cluster's unknowns into ``var`` (NaN
    where not determined), as kernels/lm._standard_errors gives them: with
    ``poisson`` the Cramer-Rao bound, the diagonal of the inverse Fisher
    information ``normal``; else the sandwich covariance of
    kernels/covariance (HC3 weights) with J's rows ``jac`` and the
    residuals ``model - data``. ``factor``, ``inverse`` (n x n) and ``phi``
    (n) are scratch. False where the normal matrix is singular."""
    for a in range(n):
        var[a] = math.nan
    n_valid = 0
    for q in range(n_pix):
        n_valid += 1 if excluded[q] == 0.0 else 0
    if n_valid <= n:
        return False
    for a in range(n * n):
        factor[a] = normal[a]
    if not _cholesky(factor, n, n):
        return False
    for i in range(n):  # (L L^T)^-1, row by row
        for j in range(n):
            inverse[i * n + j] = 1.0 if i == j else 0.0
        _cholesky_solve(factor, n, n, inverse[i * n:(i + 1) * n])
    if poisson:
        for a in range(n):
            var[a] = inverse[a * n + a]
        return True
    for a in range(n):
        var[a] = 0.0
    for q in range(n_pix):
        if excluded[q] != 0.0:
            continue
        leverage = 0.0
        for a in range(n):
            total = 0.0
            for b in range(n):
                total += inverse[a * n + b] * jac[q * n + b]
            phi[a] = total
            leverage += jac[q * n + a] * total
        w = (model[q] - pix_val[pix_base + q]) / max(1.0 - leverage,
                                                     MIN_ONE_MINUS_H)
        for a in range(n):
            var[a] += w * w * phi[a] * phi[a]
    for a in range(n):
        if not (inverse[a * n + a] >= 0.0 and math.isfinite(var[a])):
            var[a] = math.nan
    return True


@cuda.jit(device=True)
def _damped_step(normal, grad, lam, scale, free, n_unk, mat, rhs, index,
                 step):
    """The damped step on the free unknowns (kernels/lm._solve_dense);
    False when the system is not positive definite."""
    n_free = 0
    for i in range(n_unk):
        if free[i] != 0:
            index[n_free] = i
            n_free += 1
    for a in range(n_free):
        for b in range(n_free):
            mat[a * n_unk + b] = normal[index[a] * n_unk + index[b]]
        mat[a * n_unk + a] += lam * scale[index[a]]
        rhs[a] = -grad[index[a]]
    if not _cholesky(mat, n_free, n_unk):
        return False
    _cholesky_solve(mat, n_free, n_unk, rhs)
    for i in range(n_unk):
        step[i] = 0.0
    for a in range(n_free):
        step[index[a]] = rhs[a]
    return True


@cuda.jit
def solve_kernel(cluster_ids, pix_val, pix_extra, pix_coord, cluster_pix_off,
                 entry_pix, feat_entry_off, cluster_feat_off, params, lower,
                 upper, modes, slot, n_cl, n_var, ndim, n_size, model_id,
                 continuous, poisson, has_extra, tol, max_eval, scratch,
                 scratch_off,
                 iscratch, iscratch_off, params_out, sumsq_out, deviance_out,
                 status_out, n_eval_out, with_error, std_out):
    """Refine cluster ``cluster_ids[i]`` in thread ``i`` (see the module
    docstring): writes its parameters, its cost (the sum of squared
    residuals), the deviance per degree of freedom (Poisson), the status
    and the evaluations spent, and with ``with_error`` the standard errors,
    as kernels/lm.solve_cluster does."""
    i = cuda.grid(1)
    if i >= cluster_ids.shape[0]:
        return
    c = cluster_ids[i]
    f0 = cluster_feat_off[c]
    n_feat = cluster_feat_off[c + 1] - f0
    pix_base = cluster_pix_off[c]
    n_pix = cluster_pix_off[c + 1] - pix_base
    n_params = modes.shape[0]
    for k in range(n_feat):
        for j in range(n_params):
            params_out[f0 + k, j] = params[f0 + k, j]
            if with_error:
                std_out[f0 + k, j] = math.nan
    sumsq_out[c] = math.nan
    deviance_out[c] = math.nan
    n_eval_out[c] = 0
    for k in range(n_feat):
        if feat_entry_off[f0 + k + 1] == feat_entry_off[f0 + k]:
            status_out[c] = NO_PIXELS
            return
    vmin = math.inf
    vmax = -math.inf
    for q in range(n_pix):
        vmin = min(vmin, pix_val[pix_base + q])
        vmax = max(vmax, pix_val[pix_base + q])
    if not vmax > vmin:
        status_out[c] = BLANK
        return

    n = n_cl + n_feat * n_var
    at = scratch_off[i]
    x = scratch[at:at + n]
    lo = scratch[at + n:at + 2 * n]
    hi = scratch[at + 2 * n:at + 3 * n]
    trial = scratch[at + 3 * n:at + 4 * n]
    step = scratch[at + 4 * n:at + 5 * n]
    scale = scratch[at + 5 * n:at + 6 * n]
    grads = scratch[at + 6 * n:at + 8 * n]
    rhs = scratch[at + 8 * n:at + 9 * n]
    at += 9 * n
    normals = scratch[at:at + 2 * n * n]
    mat = scratch[at + 2 * n * n:at + 3 * n * n]
    at += 3 * n * n
    jac = scratch[at:at + n_pix * n]
    at += n_pix * n
    model = scratch[at:at + n_pix]
    excluded = scratch[at + n_pix:at + 2 * n_pix]
    at += 2 * n_pix
    deriv = scratch[at:at + n_params]
    dextra = scratch[at + n_params:at + 2 * n_params]
    iat = iscratch_off[i]
    free = iscratch[iat:iat + n]
    relative = iscratch[iat + n:iat + 2 * n]
    index = iscratch[iat + 2 * n:iat + 3 * n]

    # start values clipped into the bounds (kernels/residuals.start_values:
    # a 'cluster' unknown starts at its features' mean, within the widest of
    # their bounds); signals and sizes step relative to their value
    # (kernels/lm._relative_steps)
    for j in range(n_params):
        if modes[j] == MODE_CLUSTER:
            col = slot[j]
            total = 0.0
            lo[col] = lower[f0, j]
            hi[col] = upper[f0, j]
            for k in range(n_feat):
                total += params[f0 + k, j]
                lo[col] = min(lo[col], lower[f0 + k, j])
                hi[col] = max(hi[col], upper[f0 + k, j])
            x[col] = total / n_feat
        elif modes[j] == MODE_VAR:
            for k in range(n_feat):
                col = n_cl + k * n_var + slot[j]
                x[col] = params[f0 + k, j]
                lo[col] = lower[f0 + k, j]
                hi[col] = upper[f0 + k, j]
    for u in range(n):
        x[u] = min(max(x[u], lo[u]), hi[u])
        relative[u] = 0
    for j in range(1, 2 + ndim + n_size):
        if 2 <= j < 2 + ndim:
            continue
        for k in range(n_feat if modes[j] == MODE_VAR else 1):
            col = _column(modes, slot, n_cl, n_var, k, j)
            if col >= 0:
                relative[col] = 1
    tiny = 1e-26 * n_pix * max(vmin * vmin, vmax * vmax)

    n_eval = 0
    cur = 0
    cost = math.nan
    cur_sumsq = math.nan
    cur_valid = 0
    lam = _LAMBDA_START
    nu = 2.0
    rate = 0.0
    shrink = 1.0
    predicted = 0.0
    status = MAX_ITER
    n_iter = 0
    while True:
        into = 0 if n_eval == 0 or cur == 1 else 1
        _unpack(x if n_eval == 0 else trial, params, params_out, f0, n_feat,
                modes, slot, n_cl, n_var)
        value, sumsq, n_valid = _evaluate(
            params_out, f0, n_feat, pix_val, pix_extra, pix_coord, pix_base,
            n_pix, entry_pix, feat_entry_off, modes, slot, n_cl, n_var, n,
            ndim, n_size, model_id, continuous, poisson, has_extra, jac,
            model, excluded, deriv, dextra,
            normals[into * n * n:(into + 1) * n * n],
            grads[into * n:(into + 1) * n])
        n_eval += 1
        if n_eval == 1:
            cost = value
            cur_sumsq = sumsq
            cur_valid = n_valid
        elif value < cost:
            actual = cost - value
            rho = actual / predicted if predicted > 0.0 else 0.0
            old_cost = cost
            cost = value
            cur_sumsq = sumsq
            cur_valid = n_valid
            for u in range(n):
                x[u] = trial[u]
            cur = 1 - cur
            lam *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
            rate = 0.0
            if shrink == 1.0 and predicted > 0.0:
                rate = min(max(actual / predicted - 1.0, 0.0), _MAX_RATE)
            if (actual <= tol * (1.0 - rate) * old_cost
                    and predicted <= tol * (1.0 - rate) * old_cost):
                status = CONVERGED
                break
        else:
            lam *= nu
            nu *= 2.0
            if lam > _LAMBDA_MAX:
                status = CONVERGED
                break
        found = False
        while n_eval < max_eval and n_iter < 4 * max_eval:
            n_iter += 1
            if not math.isfinite(cost):
                status = NOT_FINITE
                break
            if cost <= tiny:
                status = CONVERGED
                break
            normal = normals[cur * n * n:(cur + 1) * n * n]
            grad = grads[cur * n:(cur + 1) * n]
            top = 0.0
            for u in range(n):
                free[u] = 0 if ((x[u] <= lo[u] and grad[u] > 0.0)
                                or (x[u] >= hi[u] and grad[u] < 0.0)) else 1
                scale[u] = normal[u * n + u]
                top = max(top, scale[u])
            floor = 1e-12 * top if top > 0.0 else 1.0
            for u in range(n):
                scale[u] = max(scale[u], floor)
            if not _damped_step(normal, grad, lam, scale, free, n, mat, rhs,
                                index, step):
                lam *= nu
                nu *= 2.0
                if lam > _LAMBDA_MAX:
                    status = SINGULAR
                    break
                continue
            shrink = 1.0
            for u in range(n):
                if relative[u] != 0 and x[u] > 0.0:
                    limit = _MAX_RELATIVE_STEP * x[u]
                    if abs(step[u]) > limit:
                        shrink = min(shrink, limit / abs(step[u]))
            if shrink < 1.0:
                for u in range(n):
                    step[u] *= shrink
            predicted = 0.0
            for u in range(n):
                predicted += (-(2.0 - shrink) * grad[u] * step[u]
                              + lam * scale[u] * step[u] * step[u])
            if predicted <= tol * (1.0 - rate) * cost and lam < 1.0:
                status = CONVERGED
                break
            step_norm = 0.0
            x_norm = 0.0
            for u in range(n):
                trial[u] = min(max(x[u] + step[u], lo[u]), hi[u])
                step_norm += (trial[u] - x[u]) ** 2
                x_norm += x[u] * x[u]
            if math.sqrt(step_norm) <= 1e-12 * (math.sqrt(x_norm) + 1e-12):
                status = CONVERGED
                break
            found = True
            break
        if not found:
            break

    _unpack(x, params, params_out, f0, n_feat, modes, slot, n_cl, n_var)
    sumsq_out[c] = cost
    if poisson:
        sumsq_out[c] = cur_sumsq
        dof = cur_valid - n
        deviance_out[c] = cost / dof if dof > 0 else math.nan
    status_out[c] = status if math.isfinite(cost) else NOT_FINITE
    n_eval_out[c] = n_eval
    if not (with_error and status_out[c] == CONVERGED):
        return
    # J, the model and the normal matrix at the fit (the last evaluation
    # may have been a trial point's)
    _evaluate(params_out, f0, n_feat, pix_val, pix_extra, pix_coord, pix_base,
              n_pix, entry_pix, feat_entry_off, modes, slot, n_cl, n_var, n,
              ndim, n_size, model_id, continuous, poisson, has_extra, jac,
              model, excluded, deriv, dextra, normals[:n * n], grads[:n])
    if _standard_errors(normals[:n * n], jac, model, excluded, pix_val,
                        pix_base, n_pix, n, poisson, mat,
                        normals[n * n:2 * n * n], trial, step):
        for k in range(n_feat):
            for j in range(n_params):
                col = _column(modes, slot, n_cl, n_var, k, j)
                if col >= 0:
                    std_out[f0 + k, j] = math.sqrt(step[col])
