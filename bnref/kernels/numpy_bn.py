"""Batch Normalization kernels in tuned NumPy: the CPU kernels where numba is not installed.

The kernel interface of :mod:`bnref.kernels` (``x3`` is the canonical ``(A, C, B)`` view);
the same maths as :mod:`bnref.reference`, which the book shows, made faster three ways:

- per-channel sums are matrix-vector products with a vector of ones (BLAS), with no transposes;
- the variance is one pass over the data, shifted by one sample per channel so that it stays
  stable when ``|mean| >> std`` (chapter 3, "a stable variance");
- large temporaries are reused in place (``buf *= ...``) instead of one new array per node.
"""
import numpy as np

from .numpy_norms import gn_backward, gn_forward, ln_backward, ln_forward  # noqa: F401  (same kernel API)

__all__ = ["bn_stats", "bn_forward_train", "bn_backward", "bn_inference",
           "ln_forward", "ln_backward", "gn_forward", "gn_backward"]


def _channel_sum(a3):
    """Sum of ``a3`` (A, C, B) over A and B -> (C,), as BLAS matrix-vector products."""
    A, C, B = a3.shape
    ones_a = np.ones(A, dtype=a3.dtype)
    s = ones_a @ a3.reshape(A, C * B)          # (C*B,): sum over A
    if B == 1:
        return s
    return s.reshape(C, B) @ np.ones(B, dtype=a3.dtype)   # (C,): sum over B


def _channel_dot(a3, b3):
    """Per-channel inner product of two (A, C, B) arrays -> (C,)."""
    A, C, B = a3.shape
    s = np.einsum("ak,ak->k", a3.reshape(A, C * B), b3.reshape(A, C * B))   # (C*B,): over A
    if B == 1:
        return s
    return s.reshape(C, B) @ np.ones(B, dtype=a3.dtype)                  # (C,): over B


def _shifted_stats(x3, out=None):
    """Biased per-channel mean and variance of ``x3`` (A, C, B), computed stably.

    Shifted one-pass: subtract one sample of each channel first (exact in floating point when
    it is near the data), so the sums never cancel catastrophically the way
    ``E[x^2] - E[x]^2`` does when ``|mean| >> std``. Returns ``(mean, var, d, d_mean)`` where
    ``d = x3 - shift`` (written into ``out`` if given) and ``d_mean = mean - shift``: the
    forward pass reuses both.
    """
    A, C, B = x3.shape
    m = A * B
    shift = x3[0, :, 0].copy()                                  # (C,): one sample per channel
    d = np.subtract(x3, shift[:, None], out=out)                # (A, C, B)
    s1 = _channel_sum(d) / m                                    # (C,): mean of d
    var = np.maximum(_channel_dot(d, d) / m - s1 * s1, 0)      # (C,): biased variance
    return shift + s1, var, d, s1


def bn_stats(x3):
    """Biased per-channel mean and variance of ``x3`` (A, C, B): ``(mean, var)``, shifted one-pass."""
    mean, var, _, _ = _shifted_stats(x3)
    return mean, var


def bn_forward_train(x3, gamma, beta, eps):
    """Training-mode forward: normalise with batch statistics, then scale and shift.

    Returns ``(y3, mean, var, inv_std)``; ``var`` is the biased batch variance.
    """
    mean, var, y3, s1 = _shifted_stats(x3, out=np.empty_like(x3))   # y3 holds x - shift for now
    inv_std = 1.0 / np.sqrt(var + eps)                          # (C,)
    scale = gamma * inv_std                                     # (C,)
    y3 *= scale[:, None]                                        # y = (x - shift) * scale ...
    y3 += (beta - s1 * scale)[:, None]                          # ... + beta - (mean - shift) * scale
    return y3, mean, var, inv_std


def bn_backward(dy3, x3, mean, inv_std, gamma):
    """Backward of the training-mode forward; x_hat is recomputed from ``x3``.

    With m values per channel and ``x_hat = (x - mean) * inv_std``::

        dbeta  = sum(dy)
        dgamma = sum(dy * x_hat)
        dx     = gamma * inv_std / m * (m * dy - dbeta - x_hat * dgamma)
    """
    A, C, B = x3.shape
    m = A * B
    buf = np.subtract(x3, mean[:, None])                        # (A, C, B)
    buf *= inv_std[:, None]                                     # buf = x_hat
    dbeta = _channel_sum(dy3)                                   # (C,)
    dgamma = _channel_dot(dy3, buf)                             # (C,)
    buf *= (-dgamma / m)[:, None]                               # -x_hat * dgamma / m
    buf += dy3                                                  # + dy
    buf *= (gamma * inv_std)[:, None]                           # * gamma * inv_std
    buf -= (gamma * inv_std * dbeta / m)[:, None]               # - gamma * inv_std * dbeta / m
    return buf, dgamma, dbeta


def bn_inference(x3, gamma, beta, running_mean, running_var, eps):
    """Inference-mode forward: an affine map per channel with fixed statistics."""
    scale = gamma / np.sqrt(running_var + eps)                  # (C,)
    shift = beta - running_mean * scale                         # (C,)
    y3 = np.multiply(x3, scale[:, None])
    y3 += shift[:, None]
    return y3
