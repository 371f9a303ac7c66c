"""Compiled CPU kernels (Numba): the maths of :mod:`bnref.reference`, fused into few passes.

The CPU default where numba is installed (:mod:`bnref.backend`). They do the work in the
minimum number of passes over memory (forward: one pass for the statistics, one to
normalise; backward: one to reduce, one to write dx), multithreaded over rows or channels.
The first call in a new environment compiles them (about 20 s); ``cache=True`` keeps the
machine code on disk (next to this file, or in numba's user cache directory where that is
read-only), so later processes only load it.

Numba's disk cache is not safe when two processes compile the same function at once (each
writes its own index, and one process's machine code can end up filed under the other's
signature: a crash at the next load). So :func:`ensure_compiled`, which ``bnref.backend`` calls
before the first use, compiles (or loads) every specialisation the public functions use in one
go, under an exclusive file lock next to the cache; other processes wait, then only load.

Accumulation is in float64 (channels-last: blocks of 64 rows in the input dtype, then float64),
after subtracting one sample per channel (the shift), so the variance is stable when
``|mean| >> std``. The fastmath flags allow reassociation (vectorised sums) but not
``nnan``/``ninf``: NaN and inf still propagate.

Each pass has a threaded kernel and a serial twin (the same Python function compiled without
threads) for inputs below ``SMALL`` elements.
"""
import contextlib
import os
import tempfile

import numba as nb
import numpy as np

from .numpy_norms import gn_backward, gn_forward, ln_backward, ln_forward  # noqa: F401  (same kernel API)

__all__ = ["bn_stats", "bn_forward_train", "bn_backward", "bn_inference",
           "ln_forward", "ln_backward", "gn_forward", "gn_backward"]

_FM = {"reassoc", "contract", "nsz", "arcp"}           # vectorise reductions; keep NaN/inf semantics
_JIT = dict(parallel=True, cache=True, fastmath=_FM, nogil=True)


_SERIAL = dict(_JIT, parallel=False)

# Below this many elements, starting threads costs more than the work: use serial kernels.
SMALL = 1 << 15


def _chunks(M):
    """Row chunks for channels-last reductions: enough to balance threads, each cache-friendly."""
    return max(1, min(M, 4 * nb.get_num_threads()))


# ---------------------------------------------------------------- reductions per channel
# One reduction serves forward and backward: per channel, sum(u - cu) and
# sum((u - cu) * (v - cv)). Forward: u = v = x, cu = cv = shift -> sums of d and d^2.
# Backward: u = dy, cu = 0, v = x, cv = mean -> dbeta and sum(dy * (x - mean)).

@nb.njit(**_JIT)
def _dot_sums_rows(u3, cu, v3, cv):
    """The two sums for (A, C, B) arrays with B > 1: one thread per (a, c) row."""
    A, C, B = u3.shape
    s1 = np.zeros((A, C))
    s2 = np.zeros((A, C))
    for r in nb.prange(A * C):
        a, c = r // C, r % C
        t1 = 0.0
        t2 = 0.0
        for b in range(B):
            d = np.float64(u3[a, c, b] - cu[c])
            t1 += d
            t2 += d * np.float64(v3[a, c, b] - cv[c])
        s1[a, c] = t1
        s2[a, c] = t2
    return s1.sum(axis=0), s2.sum(axis=0)               # (C,), (C,)


# Channels-last: sum 64 rows at a time in the input's dtype (vectorised, no conversions),
# then add each block into float64 totals: the rounding error of a block stays tiny.
_BLOCK = 64


@nb.njit(**_JIT)
def _dot_sums_cols(u2, cu, v2, cv, nchunk):
    """The two sums for (M, C) arrays (channels-last): threads take chunks of rows, C is the inner loop."""
    M, C = u2.shape
    p1 = np.zeros((nchunk, C))
    p2 = np.zeros((nchunk, C))
    for k in nb.prange(nchunk):
        t1 = np.zeros(C)                                 # thread-local: no aliasing, vectorises
        t2 = np.zeros(C)
        b1 = np.empty(C, u2.dtype)
        b2 = np.empty(C, u2.dtype)
        lo, hi = k * M // nchunk, (k + 1) * M // nchunk
        for i0 in range(lo, hi, _BLOCK):
            b1[:] = 0
            b2[:] = 0
            for i in range(i0, min(i0 + _BLOCK, hi)):
                for c in range(C):
                    d = u2[i, c] - cu[c]
                    b1[c] += d
                    b2[c] += d * (v2[i, c] - cv[c])
            for c in range(C):
                t1[c] += b1[c]
                t2[c] += b2[c]
        p1[k] = t1
        p2[k] = t2
    return p1.sum(axis=0), p2.sum(axis=0)               # (C,), (C,)


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


# The same kernels without threads (prange runs as a plain range), for inputs below SMALL.
(_dot_sums_rows_1, _dot_sums_cols_1, _affine_rows_1, _affine_cols_1, _dx_rows_1, _dx_cols_1) = (
    nb.njit(**_SERIAL)(f.py_func)
    for f in (_dot_sums_rows, _dot_sums_cols, _affine_rows, _affine_cols, _dx_rows, _dx_cols))


# ---------------------------------------------------------------- per-channel coefficients

@nb.njit(**_SERIAL)
def _forward_coefficients(x3, s1, s2, shift, gamma, beta, eps):
    """From the sums of d = x - shift: mean, var, inv_std (x's dtype), and the normalise pass's
    scale and offset, y = (x - shift) * scale + offset (exact for x near the data)."""
    m = x3.size // x3.shape[1]
    d_mean = s1 / m                                              # mean - shift
    var = np.maximum(s2 / m - d_mean * d_mean, 0.0)              # biased
    inv_std = 1.0 / np.sqrt(var + eps)
    scale = gamma * inv_std
    dt = x3.dtype
    return ((shift + d_mean).astype(dt), var.astype(dt), inv_std.astype(dt),
            scale.astype(dt), (beta - d_mean * scale).astype(dt))


@nb.njit(**_SERIAL)
def _backward_coefficients(x3, dbeta, s, inv_std, gamma):
    """dgamma and the dx pass's coefficients: dx = k * (dy - dbeta/m - x_hat * dgamma/m)."""
    m = x3.size // x3.shape[1]
    dgamma = s * inv_std                                         # sum(dy * x_hat)
    dt = x3.dtype
    return (dgamma.astype(dt), dbeta.astype(dt), (gamma * inv_std).astype(dt),
            (dgamma / m).astype(dt), (dbeta / m).astype(dt))


# ---------------------------------------------------------------- small inputs: one call each
# The whole pass in one compiled call: below SMALL elements, Python overhead would dominate.

@nb.njit(**_SERIAL)
def _forward_small(x3, gamma, beta, eps):
    A, C, B = x3.shape
    shift = x3[0, :, 0].copy()
    if B > 1:
        s1, s2 = _dot_sums_rows_1(x3, shift, x3, shift)
    else:
        s1, s2 = _dot_sums_cols_1(x3.reshape(A, C), shift, x3.reshape(A, C), shift, 1)
    mean, var, inv_std, scale, offset = _forward_coefficients(x3, s1, s2, shift, gamma, beta, eps)
    y3 = np.empty_like(x3)
    if B > 1:
        _affine_rows_1(x3, shift, scale, offset, y3)
    else:
        _affine_cols_1(x3.reshape(A, C), shift, scale, offset, y3.reshape(A, C), 1)
    return y3, mean, var, inv_std


@nb.njit(**_SERIAL)
def _backward_small(dy3, x3, mean, inv_std, gamma):
    A, C, B = x3.shape
    zero = np.zeros(C, x3.dtype)
    if B > 1:
        dbeta, s = _dot_sums_rows_1(dy3, zero, x3, mean)
    else:
        dbeta, s = _dot_sums_cols_1(dy3.reshape(A, C), zero, x3.reshape(A, C), mean, 1)
    dgamma, dbeta, k, dg, db = _backward_coefficients(x3, dbeta, s, inv_std, gamma)
    dx3 = np.empty_like(x3)
    if B > 1:
        _dx_rows_1(dy3, x3, mean, inv_std, k, dg, db, dx3)
    else:
        _dx_cols_1(dy3.reshape(A, C), x3.reshape(A, C), mean, inv_std, k, dg, db, dx3.reshape(A, C), 1)
    return dx3, dgamma, dbeta


# ---------------------------------------------------------------- the kernel API

def _dot_sums(u3, cu, v3, cv):
    A, C, B = u3.shape
    if u3.size < SMALL:
        kernels = (_dot_sums_rows_1, _dot_sums_cols_1)
    else:
        kernels = (_dot_sums_rows, _dot_sums_cols)
    if B > 1:
        return kernels[0](u3, cu, v3, cv)
    return kernels[1](u3.reshape(A, C), cu, v3.reshape(A, C), cv, _chunks(A))


def _no_channels(x3, n_stats):
    """For C = 0: an empty x-shaped result and empty statistics (the compiled code divides by C)."""
    return (np.empty_like(x3), *(np.empty(0, x3.dtype) for _ in range(n_stats)))


def bn_stats(x3):
    """Per-channel mean and biased variance of ``x3`` (A, C, B), in x's dtype."""
    C = x3.shape[1]
    if C == 0:
        return _no_channels(x3, 2)[1:]
    shift = x3[0, :, 0].copy()                                   # (C,): one sample per channel
    s1, s2 = _dot_sums(x3, shift, x3, shift)
    one = np.ones(C, x3.dtype)
    return _forward_coefficients(x3, s1, s2, shift, one, one, 1.0)[:2]


def bn_forward_train(x3, gamma, beta, eps):
    """Training-mode forward; returns ``(y3, mean, var, inv_std)`` like ``numpy_bn``."""
    if x3.shape[1] == 0:
        return _no_channels(x3, 3)
    if x3.size < SMALL:
        return _forward_small(x3, gamma, beta, eps)
    A, C, B = x3.shape
    shift = x3[0, :, 0].copy()
    s1, s2 = _dot_sums(x3, shift, x3, shift)
    mean, var, inv_std, scale, offset = _forward_coefficients(x3, s1, s2, shift, gamma, beta, eps)
    y3 = np.empty_like(x3)
    if B > 1:
        _affine_rows(x3, shift, scale, offset, y3)
    else:
        _affine_cols(x3.reshape(A, C), shift, scale, offset, y3.reshape(A, C), _chunks(A))
    return y3, mean, var, inv_std


def bn_backward(dy3, x3, mean, inv_std, gamma):
    """Backward; returns ``(dx3, dgamma, dbeta)`` like ``numpy_bn``."""
    if x3.shape[1] == 0:
        return _no_channels(x3, 2)
    if x3.size < SMALL:
        return _backward_small(dy3, x3, mean, inv_std, gamma)
    A, C, B = x3.shape
    dbeta, s = _dot_sums(dy3, np.zeros(C, x3.dtype), x3, mean)  # sum(dy), sum(dy * (x - mean))
    dgamma, dbeta, k, dg, db = _backward_coefficients(x3, dbeta, s, inv_std, gamma)
    dx3 = np.empty_like(x3)
    if B > 1:
        _dx_rows(dy3, x3, mean, inv_std, k, dg, db, dx3)
    else:
        _dx_cols(dy3.reshape(A, C), x3.reshape(A, C), mean, inv_std, k, dg, db, dx3.reshape(A, C), _chunks(A))
    return dx3, dgamma, dbeta


def bn_inference(x3, gamma, beta, running_mean, running_var, eps):
    """Inference-mode forward: ``(x - running_mean) * gamma / sqrt(running_var + eps) + beta``."""
    A, C, B = x3.shape
    dt = x3.dtype
    scale = (gamma / np.sqrt(running_var.astype(np.float64) + eps)).astype(dt)
    center, offset = running_mean.astype(dt), beta.astype(dt)
    y3 = np.empty_like(x3)
    if B > 1:
        (_affine_rows_1 if x3.size < SMALL else _affine_rows)(x3, center, scale, offset, y3)
    else:
        (_affine_cols_1 if x3.size < SMALL else _affine_cols)(
            x3.reshape(A, C), center, scale, offset, y3.reshape(A, C), _chunks(A))
    return y3


# ---------------------------------------------------------------- compile once, under a lock

_READY = False


def _cache_dir():
    """Where numba caches this module (its locator's choice), else the temporary directory."""
    cache = getattr(_forward_small, "_cache", None)
    return getattr(cache, "_cache_path", None) or tempfile.gettempdir()


@contextlib.contextmanager
def _compile_lock():
    """An exclusive lock, across processes, for compiling and caching this module's kernels."""
    try:
        import fcntl
    except ImportError:                      # not POSIX: no lock (bnref's platforms are POSIX)
        yield
        return
    try:
        f = open(os.path.join(_cache_dir(), "bnref-compile.lock"), "a")
    except OSError:                          # nowhere to put it: numba cannot cache there either
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:                      # a file system without locks: compile unlocked
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_compiled():
    """Compile or load every specialisation the public functions use, once per process.

    float32 and float64; rows (B > 1) and columns (B = 1) layouts; the serial kernels for small
    inputs and the threaded ones. About 20 s the first time in an environment, about a second
    from the cache. Returns the number of kernel calls made.
    """
    global _READY, SMALL
    if _READY:
        return 0
    calls = 0
    with _compile_lock():
        small = SMALL
        try:
            for dtype in (np.float32, np.float64):
                for B in (1, 5):                                   # columns, rows
                    x3 = np.linspace(-1.0, 1.0, 4 * 3 * B).astype(dtype).reshape(4, 3, B)
                    vec = np.ones(3, dtype)
                    for threshold in (2**62, 0):                    # serial, then threaded
                        SMALL = threshold
                        y3, mean, var, inv_std = bn_forward_train(x3, vec, vec, 1e-5)
                        bn_backward(y3, x3, mean, inv_std, vec)
                        bn_inference(x3, vec, vec, mean, var, 1e-5)
                        bn_stats(x3)
                        calls += 4
        finally:
            SMALL = small
    _READY = True
    return calls

