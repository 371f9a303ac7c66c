"""l_p Batch Normalization: BN that divides by an l_p norm of the centred values (chapter 6).

Santurkar et al. argue that BN's smoothing of the loss landscape is not specific to dividing by
the standard deviation: they train "l_p-BN", which centres each unit over the batch as BN does
and then divides by ``s_p = (mean_i |x_i - mean|^p)^(1/p)``, for p = 1, 2 and infinity
(``s_inf = max_i |x_i - mean|``). p = 2 is BN up to where eps goes. The MLP runs these as
``norm="batch_l1"`` and ``norm="batch_linf"``; statistics are always the batch's (there are no
running estimates, so evaluation normalises the evaluation batch with its own statistics).
"""
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import get_array_module

__all__ = ["lp_batchnorm_forward", "lp_batchnorm_backward", "LpBatchNormCache"]


@dataclass(frozen=True, eq=False)
class LpBatchNormCache:
    """What :func:`lp_batchnorm_forward` saves for the backward pass."""

    x_centered: Any     # (N, C)
    scale: Any          # (C,): s_p + eps, the divisor
    x_hat: Any          # (N, C)
    gamma: Any          # (C,)
    p: float


def lp_batchnorm_forward(x, gamma, beta, p, eps=1e-5):
    """``y = gamma * (x - mean) / (s_p + eps) + beta`` per unit (column) of ``x`` (N, C).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0], [5.0]])                 # mean 2, |x - mean| = 2, 1, 3
    >>> y, _ = lp_batchnorm_forward(x, np.ones(1), np.zeros(1), p=1, eps=0.0)
    >>> y.ravel().round(3)                                  # divided by the mean |x - mean|, 2
    array([-1. , -0.5,  1.5])
    >>> y, _ = lp_batchnorm_forward(x, np.ones(1), np.zeros(1), p=np.inf, eps=0.0)
    >>> y.ravel().round(3)                                  # divided by the largest, 3
    array([-0.667, -0.333,  1.   ])
    """
    xp = get_array_module(x)
    if not (p == np.inf or p >= 1):
        raise ValueError(f"p must be >= 1 or numpy.inf (an l_p norm), got {p!r}")
    mean = x.mean(axis=0)                                       # (C,)
    x_centered = x - mean                                       # (N, C)
    if p == np.inf:
        s = xp.abs(x_centered).max(axis=0)                      # (C,)
    else:
        s = (xp.abs(x_centered) ** p).mean(axis=0) ** (1 / p)   # (C,)
    scale = s + eps
    x_hat = x_centered / scale                                  # (N, C)
    return gamma * x_hat + beta, LpBatchNormCache(x_centered, scale, x_hat, gamma, p)


def lp_batchnorm_backward(dy, cache):
    """``(dx, dgamma, dbeta)`` of :func:`lp_batchnorm_forward`.

    With ``c = x - mean``, ``d = s_p + eps`` and ``g = dL/dx_hat = gamma * dy``:
    ``dL/dc_i = g_i / d - (sum_j g_j c_j) / d^2 * ds/dc_i``, where ``ds/dc_i`` is
    ``s^(1-p) |c_i|^(p-1) sign(c_i) / m`` (for p = 1: ``sign(c_i) / m``; for p = infinity:
    ``sign(c_k)`` at the largest ``|c_k|`` and 0 elsewhere); then ``dx = dc - mean(dc)``,
    because ``c = x - mean(x)``.
    """
    xp = get_array_module(dy)
    c, d, x_hat, p = cache.x_centered, cache.scale, cache.x_hat, cache.p
    m = c.shape[0]
    dgamma = (dy * x_hat).sum(axis=0)                           # (C,)
    dbeta = dy.sum(axis=0)                                      # (C,)
    g = dy * cache.gamma                                        # (N, C): dL/dx_hat
    if p == np.inf:
        ds_dc = xp.zeros_like(c)
        k = xp.abs(c).argmax(axis=0)                            # (C,): the largest |c| per unit
        cols = xp.arange(c.shape[1])
        ds_dc[k, cols] = xp.sign(c[k, cols])
    else:
        s = (xp.abs(c) ** p).mean(axis=0) ** (1 / p)            # (C,): s_p, without eps
        ds_dc = s ** (1 - p) * xp.abs(c) ** (p - 1) * xp.sign(c) / m   # (N, C)
    dc = g / d - (g * c).sum(axis=0) / d ** 2 * ds_dc           # (N, C)
    dx = dc - dc.mean(axis=0)                                   # through c = x - mean(x)
    return dx, dgamma, dbeta
