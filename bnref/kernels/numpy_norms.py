"""LayerNorm and GroupNorm kernels in NumPy (the tuned and the Numba sets share them): other axes.

LayerNorm normalises each row of ``x2`` (M, K) over its K features; GroupNorm normalises
each of the G groups of ``C // G`` channels of every example of ``x3`` (N, C, L).
Neither depends on the other examples in the batch.
"""
import numpy as np


def _row_stats(x2):
    """Biased mean and variance of each row of ``x2`` (M, K), two-pass."""
    mean = x2.mean(axis=1)                                      # (M,): pairwise sum, contiguous
    d = x2 - mean[:, None]                                      # (M, K)
    var = np.einsum("mk,mk->m", d, d) / x2.shape[1]             # (M,)
    return mean, var, d


def ln_forward(x2, gamma, beta, eps):
    """LayerNorm forward over the last axis of ``x2`` (M, K). Returns ``(y2, mean, inv_std)``."""
    mean, var, d = _row_stats(x2)
    inv_std = 1.0 / np.sqrt(var + eps)                          # (M,)
    d *= inv_std[:, None]                                       # d = x_hat
    return d * gamma + beta, mean, inv_std


def _normalised_backward(dx_hat2, x_hat2, inv_std):
    """dx for rows normalised by their own statistics: ``inv_std * (g - mean(g) - x_hat * mean(g * x_hat))``."""
    K = x_hat2.shape[1]
    mean_g = dx_hat2.sum(axis=1) / K                             # (M,)
    mean_gx = np.einsum("mk,mk->m", dx_hat2, x_hat2) / K         # (M,)
    return inv_std[:, None] * (dx_hat2 - mean_g[:, None] - x_hat2 * mean_gx[:, None])


def ln_backward(dy2, x2, mean, inv_std, gamma):
    """LayerNorm backward. Returns ``(dx2, dgamma, dbeta)``; dgamma/dbeta shape (K,)."""
    x_hat = (x2 - mean[:, None]) * inv_std[:, None]             # (M, K)
    dgamma = np.einsum("mk,mk->k", dy2, x_hat)                  # (K,): sum over rows
    dbeta = dy2.sum(axis=0)                                     # (K,)
    return _normalised_backward(dy2 * gamma, x_hat, inv_std), dgamma, dbeta


def gn_forward(x3, gamma, beta, num_groups, eps):
    """GroupNorm forward on ``x3`` (N, C, L). Returns ``(y3, mean, inv_std)``, stats (N, G)."""
    N, C, L = x3.shape
    rows = x3.reshape(N * num_groups, (C // num_groups) * L)    # (N*G, C/G*L): one row per group
    mean, var, d = _row_stats(rows)
    inv_std = 1.0 / np.sqrt(var + eps)                          # (N*G,)
    x_hat = (d * inv_std[:, None]).reshape(N, C, L)
    y3 = x_hat * gamma[:, None] + beta[:, None]
    return y3, mean.reshape(N, num_groups), inv_std.reshape(N, num_groups)


def gn_backward(dy3, x3, mean, inv_std, gamma, num_groups):
    """GroupNorm backward. Returns ``(dx3, dgamma, dbeta)``; dgamma/dbeta shape (C,)."""
    N, C, L = x3.shape
    G = num_groups
    row = C // G * L                                            # explicit, not -1: N may be 0
    rows = x3.reshape(N * G, row)                               # (N*G, C/G*L)
    x_hat = ((rows - mean.reshape(-1, 1)) * inv_std.reshape(-1, 1)).reshape(N, C, L)
    dgamma = np.einsum("ncl,ncl->c", dy3, x_hat)                # (C,): over N and L
    dbeta = dy3.sum(axis=(0, 2))                                # (C,)
    dx_hat = (dy3 * gamma[:, None]).reshape(N * G, row)          # (N*G, C/G*L)
    dx = _normalised_backward(dx_hat, x_hat.reshape(N * G, row), inv_std.reshape(-1))
    return dx.reshape(N, C, L), dgamma, dbeta
