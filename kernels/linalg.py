"""Small dense linear algebra without BLAS, so results never depend on threads.

Plain loops over indices, no array views or NumPy calls: each kind of
view or NumPy function a kernel uses compiles its own machine code on a
first call."""
import math

from .jit import kernel


@kernel
def cholesky_inplace(a, n):
    """Lower Cholesky factor of ``a[:n, :n]`` in place; False if not SPD."""
    for j in range(n):
        s = a[j, j]
        for k in range(j):
            s -= a[j, k] * a[j, k]
        if not s > 0.0:
            return False
        s = math.sqrt(s)
        a[j, j] = s
        for i in range(j + 1, n):
            t = a[i, j]
            for k in range(j):
                t -= a[i, k] * a[j, k]
            a[i, j] = t / s
    return True


@kernel
def cholesky_solve(factor, n, b):
    """Solve ``L L^T x = b`` in place in ``b[:n]``.

    Each row multiplies by the reciprocal of its diagonal element: the
    division does not depend on the rows before, so it leaves the chain of
    dependent steps (a division takes several times a multiplication's
    latency)."""
    for i in range(n):
        t = b[i]
        for k in range(i):
            t -= factor[i, k] * b[k]
        b[i] = t * (1.0 / factor[i, i])
    for i in range(n - 1, -1, -1):
        t = b[i]
        for k in range(i + 1, n):
            t -= factor[k, i] * b[k]
        b[i] = t * (1.0 / factor[i, i])


@kernel
def block_cholesky(a, k, n):
    """:func:`cholesky_inplace` of ``a[k, :n, :n]``."""
    for j in range(n):
        s = a[k, j, j]
        for m in range(j):
            s -= a[k, j, m] * a[k, j, m]
        if not s > 0.0:
            return False
        s = math.sqrt(s)
        a[k, j, j] = s
        for i in range(j + 1, n):
            t = a[k, i, j]
            for m in range(j):
                t -= a[k, i, m] * a[k, j, m]
            a[k, i, j] = t / s
    return True


@kernel
def block_cholesky_solve(factors, k, n, b, at):
    """Solve ``L L^T x = b[at:at + n]`` in place, ``L = factors[k, :n, :n]``."""
    for i in range(n):
        t = b[at + i]
        for m in range(i):
            t -= factors[k, i, m] * b[at + m]
        b[at + i] = t / factors[k, i, i]
    for i in range(n - 1, -1, -1):
        t = b[at + i]
        for m in range(i + 1, n):
            t -= factors[k, m, i] * b[at + m]
        b[at + i] = t / factors[k, i, i]


@kernel
def dot(a, b):
    """Sum of ``a[i] * b[i]`` in index order."""
    total = 0.0
    for i in range(a.shape[0]):
        total += a[i] * b[i]
    return total


@kernel
def inverse_diagonal(factor, n, out, z):
    """``diag((L L^T)^-1)`` into ``out[:n]`` from the Cholesky factor ``L``:
    entry i is |L^-1 e_i|^2, and L^-1 e_i vanishes above row i. ``z``
    (``n`` values) is scratch."""
    for i in range(n):
        total = 0.0
        for r in range(i, n):
            t = 1.0 if r == i else 0.0
            for k in range(i, r):
                t -= factor[r, k] * z[k]
            z[r] = t / factor[r, r]
            total += z[r] * z[r]
        out[i] = total
