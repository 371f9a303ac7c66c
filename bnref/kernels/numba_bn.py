"""Optional compiled CPU kernels (Numba): the same maths as ``numpy_bn``, fused into few passes.

The NumPy kernels are the readable reference and the default. These do the same work in the
minimum number of passes over memory (forward: one pass for the statistics, one to
normalise; backward: one to reduce, one to write dx), multithreaded over rows or channels.
Select them with ``bnref.set_cpu_kernels("numba")`` or ``BNREF_CPU_KERNELS=numba``.

Accumulation is in float64 (channels-last: blocks of 64 rows in the input dtype, then float64),
after subtracting one sample per channel (the shift), so the variance is stable when
``|mean| >> std``. The fastmath flags
allow reassociation (vectorised sums) but not ``nnan``/``ninf``: NaN and inf still propagate.
"""
import numba as nb
import numpy as np

from .numpy_norms import gn_backward, gn_forward, ln_backward, ln_forward  # noqa: F401  (same kernel API)

__all__ = ["bn_stats", "bn_forward_train", "bn_backward", "bn_inference",
           "ln_forward", "ln_backward", "gn_forward", "gn_backward"]

_FM = {"reassoc", "contract", "nsz", "arcp"}           # vectorise reductions; keep NaN/inf semantics
_JIT = dict(parallel=True, cache=True, fastmath=_FM, nogil=True)


# Below this many elements, starting threads costs more than the work: use serial kernels.
SMALL = 1 << 15


def _chunks(M):
    """Row chunks for channels-last reductions: enough to balance threads, each cache-friendly."""
    return max(1, min(M, 4 * nb.get_num_threads()))


# ---------------------------------------------------------------- reductions per channel

@nb.njit(**_JIT)
def _sums_rows(x3, shift):
    """(sum d, sum d*d) per channel of d = x3 - shift, x3 (A, C, B) with B > 1: one thread per (a, c) row."""
    A, C, B = x3.shape
    s1 = np.zeros((A, C))
    s2 = np.zeros((A, C))
    for r in nb.prange(A * C):
        a, c = r // C, r % C
        sh = shift[c]
        t1 = 0.0
        t2 = 0.0
        for b in range(B):
            d = np.float64(x3[a, c, b] - sh)
            t1 += d
            t2 += d * d
        s1[a, c] = t1
        s2[a, c] = t2
    return s1.sum(axis=0), s2.sum(axis=0)               # (C,), (C,)


# Channels-last: sum 64 rows at a time in the input's dtype (vectorised, no conversions),
# then add each block into float64 totals: the rounding error of a block stays tiny.
_BLOCK = 64


@nb.njit(**_JIT)
def _sums_cols(x2, shift, nchunk):
    """Same for x2 (M, C) (channels-last): threads take chunks of rows, C is the inner loop."""
    M, C = x2.shape
    p1 = np.zeros((nchunk, C))
    p2 = np.zeros((nchunk, C))
    for k in nb.prange(nchunk):
        t1 = np.zeros(C)                                 # thread-local: no aliasing, vectorises
        t2 = np.zeros(C)
        b1 = np.empty(C, x2.dtype)
        b2 = np.empty(C, x2.dtype)
        lo, hi = k * M // nchunk, (k + 1) * M // nchunk
        for i0 in range(lo, hi, _BLOCK):
            b1[:] = 0
            b2[:] = 0
            for i in range(i0, min(i0 + _BLOCK, hi)):
                for c in range(C):
                    d = x2[i, c] - shift[c]
                    b1[c] += d
                    b2[c] += d * d
            for c in range(C):
                t1[c] += b1[c]
                t2[c] += b2[c]
        p1[k] = t1
        p2[k] = t2
    return p1.sum(axis=0), p2.sum(axis=0)               # (C,), (C,)


@nb.njit(**_JIT)
def _bwd_sums_rows(dy3, x3, mean):
    """(sum dy, sum dy*(x - mean)) per channel, x3 (A, C, B) with B > 1."""
    A, C, B = x3.shape
    s1 = np.zeros((A, C))
    s2 = np.zeros((A, C))
    for r in nb.prange(A * C):
        a, c = r // C, r % C
        mu = mean[c]
        t1 = 0.0
        t2 = 0.0
        for b in range(B):
            g = np.float64(dy3[a, c, b])
            t1 += g
            t2 += g * np.float64(x3[a, c, b] - mu)
        s1[a, c] = t1
        s2[a, c] = t2
    return s1.sum(axis=0), s2.sum(axis=0)


@nb.njit(**_JIT)
def _bwd_sums_cols(dy2, x2, mean, nchunk):
    M, C = x2.shape
    p1 = np.zeros((nchunk, C))
    p2 = np.zeros((nchunk, C))
    for k in nb.prange(nchunk):
        t1 = np.zeros(C)
        t2 = np.zeros(C)
        b1 = np.empty(C, x2.dtype)
        b2 = np.empty(C, x2.dtype)
        lo, hi = k * M // nchunk, (k + 1) * M // nchunk
        for i0 in range(lo, hi, _BLOCK):
            b1[:] = 0
            b2[:] = 0
            for i in range(i0, min(i0 + _BLOCK, hi)):
                for c in range(C):
                    g = dy2[i, c]
                    b1[c] += g
                    b2[c] += g * (x2[i, c] - mean[c])
            for c in range(C):
                t1[c] += b1[c]
                t2[c] += b2[c]
        p1[k] = t1
        p2[k] = t2
    return p1.sum(axis=0), p2.sum(axis=0)


# ---------------------------------------------------------------- elementwise passes

@nb.njit(**_JIT)
def _affine_rows(x3, center, scale, offset, out):
    """out = (x - center) * scale + offset per channel, x3 (A, C, B)."""
    A, C, B = x3.shape
    for r in nb.prange(A * C):
        a, c = r // C, r % C
        ce, s, o = center[c], scale[c], offset[c]
        for b in range(B):
            out[a, c, b] = (x3[a, c, b] - ce) * s + o


@nb.njit(**_JIT)
def _affine_cols(x2, center, scale, offset, out, nchunk):
    M, C = x2.shape
    for k in nb.prange(nchunk):
        for i in range(k * M // nchunk, (k + 1) * M // nchunk):
            for c in range(C):
                out[i, c] = (x2[i, c] - center[c]) * scale[c] + offset[c]


@nb.njit(**_JIT)
def _dx_rows(dy3, x3, mean, inv_std, k, dg, db, out):
    """dx = k * (dy - db - x_hat * dg) per channel, x_hat = (x - mean) * inv_std.

    x_hat is formed first so that the terms that cancel are all of the size of dy, as in
    the NumPy kernel (when var ~ eps, (x - mean) alone is tiny and inv_std huge)."""
    A, C, B = x3.shape
    for r in nb.prange(A * C):
        a, c = r // C, r % C
        mu, iv, kc, g, d = mean[c], inv_std[c], k[c], dg[c], db[c]
        for b in range(B):
            out[a, c, b] = kc * (dy3[a, c, b] - d - (x3[a, c, b] - mu) * iv * g)


@nb.njit(**_JIT)
def _dx_cols(dy2, x2, mean, inv_std, k, dg, db, out, nchunk):
    M, C = x2.shape
    for j in nb.prange(nchunk):
        for i in range(j * M // nchunk, (j + 1) * M // nchunk):
            for c in range(C):
                out[i, c] = k[c] * (dy2[i, c] - db[c] - (x2[i, c] - mean[c]) * inv_std[c] * dg[c])


# ---------------------------------------------------------------- serial twins for small inputs
# The same functions compiled without threads: below SMALL elements, waking a thread pool
# costs more than the work itself (prange runs as a plain range here).
_SERIAL = dict(_JIT, parallel=False)
_serial = {f.__name__: nb.njit(**_SERIAL)(f.py_func)
           for f in (_sums_rows, _sums_cols, _bwd_sums_rows, _bwd_sums_cols,
                     _affine_rows, _affine_cols, _dx_rows, _dx_cols)}


@nb.njit(**_SERIAL)
def _forward_small(x3, gamma, beta, eps):
    """The whole training forward in one call, for small inputs (no per-step Python overhead).

    The channel loop is innermost: contiguous for channels-last and (N, C) inputs (B == 1),
    and small inputs fit in cache whatever the stride.
    """
    A, C, B = x3.shape
    m = A * B
    shift = x3[0, :, 0].copy()
    s1 = np.zeros(C)
    s2 = np.zeros(C)
    for a in range(A):
        for b in range(B):
            for c in range(C):
                d = np.float64(x3[a, c, b] - shift[c])
                s1[c] += d
                s2[c] += d * d
    d_mean = s1 / m
    var = np.maximum(s2 / m - d_mean * d_mean, 0.0)
    inv_std = 1.0 / np.sqrt(var + eps)
    scale = (gamma * inv_std).astype(x3.dtype)
    offset = (beta - d_mean * gamma * inv_std).astype(x3.dtype)
    y3 = np.empty_like(x3)
    for a in range(A):
        for b in range(B):
            for c in range(C):
                y3[a, c, b] = (x3[a, c, b] - shift[c]) * scale[c] + offset[c]
    return y3, (shift + d_mean).astype(x3.dtype), var.astype(x3.dtype), inv_std.astype(x3.dtype)


@nb.njit(**_SERIAL)
def _backward_small(dy3, x3, mean, inv_std, gamma):
    """The whole backward in one call, for small inputs."""
    A, C, B = x3.shape
    m = A * B
    dbeta = np.zeros(C)
    s = np.zeros(C)
    for a in range(A):
        for b in range(B):
            for c in range(C):
                g = np.float64(dy3[a, c, b])
                dbeta[c] += g
                s[c] += g * np.float64(x3[a, c, b] - mean[c])
    dgamma = s * inv_std
    k = (gamma * inv_std).astype(x3.dtype)
    dg = (dgamma / m).astype(x3.dtype)
    db = (dbeta / m).astype(x3.dtype)
    dx3 = np.empty_like(x3)
    for a in range(A):
        for b in range(B):
            for c in range(C):
                dx3[a, c, b] = k[c] * (dy3[a, c, b] - db[c] - (x3[a, c, b] - mean[c]) * inv_std[c] * dg[c])
    return dx3, dgamma.astype(x3.dtype), dbeta.astype(x3.dtype)


def _k(f, n):
    """The threaded kernel ``f``, or its serial twin when ``n`` elements are too few for threads."""
    return _serial[f.__name__] if n < SMALL else f


# ---------------------------------------------------------------- the kernel API

def _sums(x3, shift):
    A, C, B = x3.shape
    if B == 1:
        return _k(_sums_cols, x3.size)(x3.reshape(A, C), shift, _chunks(A))
    return _k(_sums_rows, x3.size)(x3, shift)


def bn_stats(x3):
    """Biased per-channel mean and variance of ``x3`` (A, C, B); returns ``(mean, var, shift, d_mean)``."""
    A, C, B = x3.shape
    m = A * B
    shift = x3[0, :, 0].copy()                                   # (C,): one sample per channel
    s1, s2 = _sums(x3, shift)                                    # float64 (C,)
    d_mean = s1 / m                                              # mean - shift
    var = np.maximum(s2 / m - d_mean * d_mean, 0.0)
    return (shift + d_mean).astype(x3.dtype), var.astype(x3.dtype), shift, d_mean


def _affine(x3, center, scale, offset):
    A, C, B = x3.shape
    out = np.empty_like(x3)
    dt = x3.dtype
    args = (center.astype(dt), scale.astype(dt), offset.astype(dt))
    if B == 1:
        _k(_affine_cols, x3.size)(x3.reshape(A, C), *args, out.reshape(A, C), _chunks(A))
    else:
        _k(_affine_rows, x3.size)(x3, *args, out)
    return out


def bn_forward_train(x3, gamma, beta, eps):
    """Training-mode forward; returns ``(y3, mean, var, inv_std)`` like ``numpy_bn``."""
    if x3.size < SMALL:
        return _forward_small(x3, gamma, beta, eps)
    mean, var, shift, d_mean = bn_stats(x3)
    var64 = var.astype(np.float64)
    inv_std = 1.0 / np.sqrt(var64 + eps)
    scale = gamma * inv_std
    # (x - shift) is exact for x near the data, so the mean never cancels against large x.
    y3 = _affine(x3, shift, scale, beta - d_mean * scale)
    return y3, mean, var, inv_std.astype(x3.dtype)


def bn_backward(dy3, x3, mean, inv_std, gamma):
    """Backward; returns ``(dx3, dgamma, dbeta)`` like ``numpy_bn``."""
    if x3.size < SMALL:
        return _backward_small(dy3, x3, mean, inv_std, gamma)
    A, C, B = x3.shape
    m = A * B
    dt = x3.dtype
    if B == 1:
        dbeta, s = _k(_bwd_sums_cols, x3.size)(dy3.reshape(A, C), x3.reshape(A, C), mean, _chunks(A))
    else:
        dbeta, s = _k(_bwd_sums_rows, x3.size)(dy3, x3, mean)
    inv = inv_std.astype(np.float64)
    dgamma = s * inv                                             # sum(dy * x_hat)
    k = gamma.astype(np.float64) * inv                           # dx = k * (dy - dbeta/m - x_hat * dgamma/m)
    dx3 = np.empty_like(x3)
    args = (mean, inv_std.astype(dt), k.astype(dt), (dgamma / m).astype(dt), (dbeta / m).astype(dt))
    if B == 1:
        _k(_dx_cols, x3.size)(dy3.reshape(A, C), x3.reshape(A, C), *args, dx3.reshape(A, C), _chunks(A))
    else:
        _k(_dx_rows, x3.size)(dy3, x3, *args, dx3)
    return dx3, dgamma.astype(dt), dbeta.astype(dt)


def bn_inference(x3, gamma, beta, running_mean, running_var, eps):
    """Inference-mode forward: ``(x - running_mean) * gamma / sqrt(running_var + eps) + beta``."""
    scale = gamma / np.sqrt(running_var.astype(np.float64) + eps)
    return _affine(x3, running_mean, scale, beta.astype(np.float64))
