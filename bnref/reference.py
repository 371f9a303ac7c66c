"""The textbook normalisations: the book's formulas, line by line, on any array module.

This is the code chapters 3 and 4 show. It is a complete kernel set (the interface written
down in :mod:`bnref.kernels`), so ``bnref.set_cpu_kernels("reference")`` runs every public
function on it, and it is what the tuned NumPy, Numba and CuPy kernels are tested against.
It is plain array arithmetic (``.mean``, ``.sum``, ``*``, ``xp.sqrt``), so the same lines run
on NumPy and on CuPy arrays. Nothing here is tuned: every node of the computation graph is a
new array.

Batch Normalization takes ``x3``, the input viewed as ``(A, C, B)``: the channel axis ``C`` in
the middle, ``A`` the product of the axes before it, ``B`` of those after it. So ``(N, C)`` is
``(N, C, 1)``, ``(N, C, H, W)`` is ``(N, C, H*W)``, channels-last ``(N, H, W, C)`` is
``(N*H*W, C, 1)``, and the statistics of a channel are always over axes 0 and 2, ``m = A * B``
values. A per-channel vector of shape ``(C,)`` becomes ``(C, 1)`` with ``[:, None]``, which
broadcasts against ``(A, C, B)``.

Statistics are computed in the dtype of ``gamma`` (float32 for half-precision inputs, see
:func:`bnref.kernels.stat_dtype`); outputs have the dtype of ``x``.

Examples
--------
>>> import numpy as np
>>> from bnref import reference
>>> x = np.array([[1.0, 10.0], [3.0, 30.0]])           # (N, C) = (2, 2)
>>> x3 = x.reshape(2, 2, 1)                            # (A, C, B): B = 1
>>> y3, mean, var, inv_std = reference.bn_forward_train(x3, np.ones(2), np.zeros(2), 1e-5)
>>> mean, var
(array([ 2., 20.]), array([  1., 100.]))
>>> y3[:, :, 0].round(4)                               # each channel: mean 0, variance 1
array([[-1., -1.],
       [ 1.,  1.]])
"""
from .backend import get_array_module

__all__ = ["bn_stats", "bn_forward_train", "bn_backward", "bn_inference",
           "ln_forward", "ln_backward", "gn_forward", "gn_backward"]


# ---------------------------------------------------------------- Batch Normalization

def bn_stats(x3):
    """Per-channel mean and biased variance of ``x3`` (A, C, B): two passes over the data."""
    mean = x3.mean(axis=(0, 2))                                 # (C,)
    var = ((x3 - mean[:, None]) ** 2).mean(axis=(0, 2))         # (C,): divided by m, not m - 1
    return mean, var


def bn_forward_train(x3, gamma, beta, eps):
    """Training-mode forward: normalise with the batch's statistics, then scale and shift.

    Returns ``(y3, mean, var, inv_std)``.
    """
    xp = get_array_module(x3)
    x = x3.astype(gamma.dtype, copy=False)                      # (A, C, B) in the statistics' dtype
    mean = x.mean(axis=(0, 2))                                  # (C,)  mu = 1/m sum_i x_i
    x_centered = x - mean[:, None]                              # (A, C, B)
    var = (x_centered ** 2).mean(axis=(0, 2))                   # (C,)  sigma^2 = 1/m sum_i (x_i - mu)^2
    inv_std = 1 / xp.sqrt(var + eps)                            # (C,)  1 / sqrt(sigma^2 + eps)
    x_hat = x_centered * inv_std[:, None]                       # (A, C, B)
    y = gamma[:, None] * x_hat + beta[:, None]                  # (A, C, B)
    return y.astype(x3.dtype, copy=False), mean, var, inv_std


def bn_backward(dy3, x3, mean, inv_std, gamma):
    """Backward of :func:`bn_forward_train`: the compact formula of chapter 4.

    With ``m`` values per channel::

        dbeta  = sum_i dy_i
        dgamma = sum_i dy_i * x_hat_i
        dx_i   = gamma * inv_std / m * (m * dy_i - dbeta - x_hat_i * dgamma)

    Returns ``(dx3, dgamma, dbeta)``.
    """
    A, C, B = x3.shape
    m = A * B
    x = x3.astype(gamma.dtype, copy=False)                      # (A, C, B)
    dy = dy3.astype(gamma.dtype, copy=False)                    # (A, C, B)
    x_hat = (x - mean[:, None]) * inv_std[:, None]              # (A, C, B): recomputed, not saved
    dbeta = dy.sum(axis=(0, 2))                                 # (C,)
    dgamma = (dy * x_hat).sum(axis=(0, 2))                      # (C,)
    dx = (gamma * inv_std / m)[:, None] * (m * dy - dbeta[:, None] - x_hat * dgamma[:, None])
    return dx.astype(x3.dtype, copy=False), dgamma, dbeta


def bn_inference(x3, gamma, beta, running_mean, running_var, eps):
    """Inference-mode forward: the same formula with fixed (running) statistics."""
    xp = get_array_module(x3)
    x = x3.astype(gamma.dtype, copy=False)                      # (A, C, B)
    x_hat = (x - running_mean[:, None]) / xp.sqrt(running_var + eps)[:, None]
    y = gamma[:, None] * x_hat + beta[:, None]                  # (A, C, B)
    return y.astype(x3.dtype, copy=False)


# ---------------------------------------------------------------- LayerNorm and GroupNorm
# The same normalisation over other axes: every row of ``rows`` (M, K) by its own statistics.

def _normalise_rows(rows, eps):
    """``(x_hat, mean, inv_std)`` of each row of ``rows`` (M, K), over its K values."""
    xp = get_array_module(rows)
    mean = rows.mean(axis=1)                                    # (M,)
    x_centered = rows - mean[:, None]                           # (M, K)
    var = (x_centered ** 2).mean(axis=1)                        # (M,): biased
    inv_std = 1 / xp.sqrt(var + eps)                            # (M,)
    return x_centered * inv_std[:, None], mean, inv_std


def _rows_backward(dx_hat, x_hat, inv_std):
    """dx of rows normalised by their own statistics, from ``dx_hat = dL/dx_hat`` (M, K).

    The BN formula with the row in place of the channel:
    ``dx = inv_std / K * (K * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))``.
    """
    K = x_hat.shape[1]
    sum_g = dx_hat.sum(axis=1)                                  # (M,)
    sum_gx = (dx_hat * x_hat).sum(axis=1)                       # (M,)
    return (inv_std / K)[:, None] * (K * dx_hat - sum_g[:, None] - x_hat * sum_gx[:, None])


def ln_forward(x2, gamma, beta, eps):
    """LayerNorm forward: each row of ``x2`` (M, K) over its K features.

    ``gamma`` and ``beta`` have shape (K,): one per feature. Returns ``(y2, mean, inv_std)``
    with statistics of shape (M,).
    """
    x_hat, mean, inv_std = _normalise_rows(x2.astype(gamma.dtype, copy=False), eps)   # (M, K)
    y = gamma * x_hat + beta                                    # (M, K): (K,) broadcasts over rows
    return y.astype(x2.dtype, copy=False), mean, inv_std


def ln_backward(dy2, x2, mean, inv_std, gamma):
    """LayerNorm backward. Returns ``(dx2, dgamma, dbeta)``; dgamma and dbeta have shape (K,)."""
    x = x2.astype(gamma.dtype, copy=False)                      # (M, K)
    dy = dy2.astype(gamma.dtype, copy=False)                    # (M, K)
    x_hat = (x - mean[:, None]) * inv_std[:, None]              # (M, K)
    dgamma = (dy * x_hat).sum(axis=0)                           # (K,): over the rows
    dbeta = dy.sum(axis=0)                                      # (K,)
    dx = _rows_backward(dy * gamma, x_hat, inv_std)             # (M, K)
    return dx.astype(x2.dtype, copy=False), dgamma, dbeta


def gn_forward(x3, gamma, beta, num_groups, eps):
    """GroupNorm forward on ``x3`` (N, C, L): each example's groups of ``C // num_groups`` channels.

    Returns ``(y3, mean, inv_std)`` with statistics of shape (N, G).
    """
    N, C, L = x3.shape
    # explicit row length, not -1: an empty batch (N = 0) has no size to infer it from
    rows = x3.astype(gamma.dtype, copy=False).reshape(N * num_groups, C // num_groups * L)  # (N*G, C/G*L): a row per group
    x_hat, mean, inv_std = _normalise_rows(rows, eps)
    x_hat = x_hat.reshape(N, C, L)                              # back to channels, for gamma and beta
    y = gamma[:, None] * x_hat + beta[:, None]                  # (N, C, L)
    return y.astype(x3.dtype, copy=False), mean.reshape(N, num_groups), inv_std.reshape(N, num_groups)


def gn_backward(dy3, x3, mean, inv_std, gamma, num_groups):
    """GroupNorm backward. Returns ``(dx3, dgamma, dbeta)``; dgamma and dbeta have shape (C,)."""
    N, C, L = x3.shape
    row = C // num_groups * L                                   # explicit: N may be 0
    rows = x3.astype(gamma.dtype, copy=False).reshape(N * num_groups, row)  # (N*G, C/G*L)
    x_hat = (rows - mean.reshape(-1, 1)) * inv_std.reshape(-1, 1)           # (N*G, C/G*L)
    dy = dy3.astype(gamma.dtype, copy=False)                    # (N, C, L)
    dgamma = (dy * x_hat.reshape(N, C, L)).sum(axis=(0, 2))     # (C,): over N and L
    dbeta = dy.sum(axis=(0, 2))                                 # (C,)
    dx_hat = (dy * gamma[:, None]).reshape(N * num_groups, row)  # (N*G, C/G*L)
    dx = _rows_backward(dx_hat, x_hat, inv_std.reshape(-1))     # (N*G, C/G*L)
    return dx.reshape(N, C, L).astype(x3.dtype, copy=False), dgamma, dbeta
