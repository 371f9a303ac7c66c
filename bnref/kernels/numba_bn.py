"""Optional compiled CPU kernels (Numba): the same maths as ``numpy_bn``, fused into few passes.

The NumPy kernels are the readable reference and the default. These do the same work in the
minimum number of passes over memory (forward: one pass for the statistics, one to
normalise; backward: one to reduce, one to write dx), multithreaded over rows or channels.
Select them with ``bnref.set_cpu_kernels("numba")`` or ``BNREF_CPU_KERNELS=numba``.

Accumulation is in float64 for both float32 and float64 inputs, after subtracting one sample
per channel (the shift), so the variance is stable when ``|mean| >> std``. The fastmath flags
allow reassociation (vectorised sums) but not ``nnan``/``ninf``: NaN and inf still propagate.
"""
import numba as nb
import numpy as np

from . import numpy_bn
from .numpy_norms import gn_backward, gn_forward, ln_backward, ln_forward  # noqa: F401  (same kernel API)

__all__ = ["bn_stats", "bn_forward_train", "bn_backward", "bn_inference",
           "ln_forward", "ln_backward", "gn_forward", "gn_backward"]

_FM = {"reassoc", "contract", "nsz", "arcp"}           # vectorise reductions; keep NaN/inf semantics
_JIT = dict(parallel=True, cache=True, fastmath=_FM, nogil=True)


# Below this many elements, starting threads costs more than the work: use the NumPy kernels.
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


@nb.njit(**_JIT)
def _sums_cols(x2, shift, nchunk):
    """Same for x2 (M, C) (channels-last): threads take chunks of rows, C is the inner loop."""
    M, C = x2.shape
    p1 = np.zeros((nchunk, C))
    p2 = np.zeros((nchunk, C))
    for k in nb.prange(nchunk):
        t1 = np.zeros(C)                                 # thread-local: no aliasing, vectorises
        t2 = np.zeros(C)
        for i in range(k * M // nchunk, (k + 1) * M // nchunk):
            for c in range(C):
                d = np.float64(x2[i, c] - shift[c])
                t1[c] += d
                t2[c] += d * d
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
        for i in range(k * M // nchunk, (k + 1) * M // nchunk):
            for c in range(C):
                g = np.float64(dy2[i, c])
                t1[c] += g
                t2[c] += g * np.float64(x2[i, c] - mean[c])
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
def _dx_rows(dy3, x3, mean, k1, k2, k3, out):
    """dx = k1 * dy + k2 * (x - mean) + k3 per channel."""
    A, C, B = x3.shape
    for r in nb.prange(A * C):
        a, c = r // C, r % C
        mu, a1, a2, a3 = mean[c], k1[c], k2[c], k3[c]
        for b in range(B):
            out[a, c, b] = a1 * dy3[a, c, b] + a2 * (x3[a, c, b] - mu) + a3


@nb.njit(**_JIT)
def _dx_cols(dy2, x2, mean, k1, k2, k3, out, nchunk):
    M, C = x2.shape
    for k in nb.prange(nchunk):
        for i in range(k * M // nchunk, (k + 1) * M // nchunk):
            for c in range(C):
                out[i, c] = k1[c] * dy2[i, c] + k2[c] * (x2[i, c] - mean[c]) + k3[c]


# ---------------------------------------------------------------- the kernel API

def _sums(x3, shift):
    A, C, B = x3.shape
    if B == 1:
        return _sums_cols(x3.reshape(A, C), shift, _chunks(A))
    return _sums_rows(x3, shift)


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
        _affine_cols(x3.reshape(A, C), *args, out.reshape(A, C), _chunks(A))
    else:
        _affine_rows(x3, *args, out)
    return out


def bn_forward_train(x3, gamma, beta, eps):
    """Training-mode forward; returns ``(y3, mean, var, inv_std)`` like ``numpy_bn``."""
    if x3.size < SMALL:
        return numpy_bn.bn_forward_train(x3, gamma, beta, eps)
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
        return numpy_bn.bn_backward(dy3, x3, mean, inv_std, gamma)
    A, C, B = x3.shape
    m = A * B
    dt = x3.dtype
    if B == 1:
        dbeta, s = _bwd_sums_cols(dy3.reshape(A, C), x3.reshape(A, C), mean, _chunks(A))
    else:
        dbeta, s = _bwd_sums_rows(dy3, x3, mean)
    inv = inv_std.astype(np.float64)
    g = gamma.astype(np.float64)
    dgamma = s * inv                                             # sum(dy * x_hat)
    k1 = g * inv                                                 # dx = k1*dy + k2*(x - mean) + k3
    k2 = -g * inv * inv * dgamma / m
    k3 = -g * inv * dbeta / m
    dx3 = np.empty_like(x3)
    args = (mean, k1.astype(dt), k2.astype(dt), k3.astype(dt))
    if B == 1:
        _dx_cols(dy3.reshape(A, C), x3.reshape(A, C), *args, dx3.reshape(A, C), _chunks(A))
    else:
        _dx_rows(dy3, x3, *args, dx3)
    return dx3, dgamma.astype(dt), dbeta.astype(dt)


def bn_inference(x3, gamma, beta, running_mean, running_var, eps):
    """Inference-mode forward: ``(x - running_mean) * gamma / sqrt(running_var + eps) + beta``."""
    if x3.size < SMALL:
        return numpy_bn.bn_inference(x3, gamma, beta, running_mean, running_var, eps)
    scale = gamma / np.sqrt(running_var.astype(np.float64) + eps)
    return _affine(x3, running_mean, scale, beta.astype(np.float64))
