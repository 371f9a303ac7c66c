"""The public LayerNorm and GroupNorm functions: BatchNorm's normalisation over other axes.

LayerNorm normalises each example over its last ``normalized_ndim`` axes, GroupNorm each
example's groups of channels; neither depends on the rest of the batch, which is what
chapter 7 compares with BatchNorm. The formulas are in :mod:`bnref.reference`.
"""
from dataclasses import dataclass
from math import prod
from typing import Any, Optional

import numpy as np

from . import _args
from . import _validate as v
from ._typing import Array
from .backend import get_array_module, get_kernels

__all__ = ["LayerNormCache", "GroupNormCache", "layernorm_forward", "layernorm_backward",
           "groupnorm_forward", "groupnorm_backward"]


@dataclass(frozen=True, eq=False)
class LayerNormCache:
    """What :func:`layernorm_forward` saves: x, per-row statistics, gamma."""

    x: Any
    mean: Any        # (M,) one per normalised row
    inv_std: Any     # (M,)
    gamma: Optional[Any]
    normalized_ndim: int


def layernorm_forward(x: Array, gamma: Optional[Array], beta: Optional[Array], eps: float = 1e-5,
                      normalized_ndim: int = 1) -> tuple[Array, LayerNormCache]:
    """Layer Normalization: normalise each example over its last ``normalized_ndim`` axes.

    Matches ``torch.nn.functional.layer_norm(x, x.shape[-normalized_ndim:], gamma, beta, eps)``.
    Statistics are per example, so the output does not depend on the rest of the batch.

    Parameters
    ----------
    x : ndarray with at least ``normalized_ndim`` axes
    gamma, beta : ndarray of shape ``x.shape[-normalized_ndim:]`` or None
    eps : float, default 1e-5
    normalized_ndim : int, default 1

    Returns
    -------
    y : ndarray, shape of ``x``
    cache : LayerNormCache

    Notes
    -----
    On the GPU (CuPy arrays) the work runs on x's device, whichever is current, and ``gamma``
    or ``beta`` on another GPU is a ValueError naming it, as in :func:`bnref.batchnorm_forward`
    (the backward likewise refuses ``dy`` or a cache whose arrays are on another GPU than x).

    Examples
    --------
    >>> import numpy as np
    >>> y, _ = layernorm_forward(np.array([[1.0, 2.0, 3.0]]), None, None)
    >>> np.round(y, 4)
    array([[-1.2247,  0.    ,  1.2247]])
    """
    xp = get_array_module(x, gamma, beta, names=("x", "gamma", "beta"))
    _args.check_devices(("x", "gamma", "beta"), (x, gamma, beta))
    v.check_float_array("x", x, xp, min_ndim=1)
    if not isinstance(normalized_ndim, int) or not 1 <= normalized_ndim <= x.ndim:
        raise ValueError(f"normalized_ndim must be an int in [1, x.ndim={x.ndim}], got {normalized_ndim!r}")
    v.check_eps(eps)
    nshape = tuple(x.shape[x.ndim - normalized_ndim:])
    for name, p in (("gamma", gamma), ("beta", beta)):
        if p is not None:
            v.check_float_array(name, p, xp)
            if tuple(p.shape) != nshape:
                raise ValueError(f"{name} must have shape {nshape} (the normalised trailing axes of x "
                                 f"{tuple(x.shape)}), got shape {tuple(p.shape)}")
    K = prod(nshape)
    if K < 1:
        raise ValueError(f"x of shape {tuple(x.shape)} has no values to normalise over")
    with _args.on_device(x):
        y2, mean, inv_std = get_kernels(xp).ln_forward(
            _args.as_rows(x, K), _args.param(gamma, K, 1, x, xp), _args.param(beta, K, 0, x, xp), float(eps))
    return y2.reshape(x.shape), LayerNormCache(x, mean, inv_std, gamma, normalized_ndim)   # (M, K) -> x's shape


def layernorm_backward(dy: Array, cache: LayerNormCache) -> tuple[Array, Array, Array]:
    """Backward of :func:`layernorm_forward`: ``(dx, dgamma, dbeta)``, dgamma/dbeta shaped like gamma.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(4, 5))
    >>> y, cache = layernorm_forward(x, np.ones(5), np.zeros(5))
    >>> dx, dgamma, dbeta = layernorm_backward(np.ones_like(y), cache)
    >>> np.allclose(dx, 0)   # a constant upstream gradient is absorbed by the mean
    True
    """
    with _args.on_cache_device(cache):      # dy's conversion to x's dtype included
        xp, x, dy = _args.backward_inputs(dy, cache, LayerNormCache, "layernorm_forward")
        nshape = tuple(x.shape[x.ndim - cache.normalized_ndim:])
        K = prod(nshape)
        dx2, dgamma, dbeta = get_kernels(xp).ln_backward(
            _args.as_rows(dy, K), _args.as_rows(x, K), cache.mean, cache.inv_std, _args.param(cache.gamma, K, 1, x, xp))
    return dx2.reshape(x.shape), dgamma.reshape(nshape), dbeta.reshape(nshape)   # (M, K), (K,) -> x's, gamma's


@dataclass(frozen=True, eq=False)
class GroupNormCache:
    """What :func:`groupnorm_forward` saves: x, per-(example, group) statistics, gamma."""

    x: Any
    mean: Any        # (N, G)
    inv_std: Any     # (N, G)
    gamma: Optional[Any]
    num_groups: int


def groupnorm_forward(x: Array, gamma: Optional[Array], beta: Optional[Array], num_groups: int,
                      eps: float = 1e-5) -> tuple[Array, GroupNormCache]:
    """Group Normalization: normalise each example over groups of ``C // num_groups`` channels.

    Matches ``torch.nn.functional.group_norm(x, num_groups, gamma, beta, eps)``. With
    ``num_groups=1`` it is LayerNorm over (C, H, W); with ``num_groups=C`` InstanceNorm.

    Parameters
    ----------
    x : ndarray of shape (N, C, *)
    gamma, beta : ndarray of shape (C,) or None
    num_groups : int
        Must divide C.
    eps : float, default 1e-5

    Returns
    -------
    y : ndarray, shape of ``x``
    cache : GroupNormCache

    Notes
    -----
    On the GPU (CuPy arrays) the work runs on x's device, whichever is current, and ``gamma``
    or ``beta`` on another GPU is a ValueError naming it, as in :func:`bnref.batchnorm_forward`
    (the backward likewise refuses ``dy`` or a cache whose arrays are on another GPU than x).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(2, 4, 3, 3))
    >>> y, _ = groupnorm_forward(x, np.ones(4), np.zeros(4), num_groups=2)
    >>> np.allclose(y.reshape(2, 2, -1).mean(axis=-1), 0)
    True
    """
    xp, _, C = _args.prepare(x, gamma, beta, eps, 1)
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 1 or C % num_groups:
        raise ValueError(f"num_groups must be a positive int that divides the {C} channels of x "
                         f"{tuple(x.shape)}, got {num_groups!r}")
    num_groups = int(num_groups)
    L = prod(x.shape[2:])                                       # values per channel of one example
    if (C // num_groups) * L <= 1:
        raise ValueError(f"expected more than 1 value per group, got x of shape {tuple(x.shape)} "
                         f"with num_groups={num_groups}")
    with _args.on_device(x):
        y3, mean, inv_std = get_kernels(xp).gn_forward(
            _args.as_acb(x, 1), _args.param(gamma, C, 1, x, xp), _args.param(beta, C, 0, x, xp), num_groups, float(eps))
    return y3.reshape(x.shape), GroupNormCache(x, mean, inv_std, gamma, num_groups)   # (N, C, L) -> x's shape


def groupnorm_backward(dy: Array, cache: GroupNormCache) -> tuple[Array, Array, Array]:
    """Backward of :func:`groupnorm_forward`: ``(dx, dgamma, dbeta)``, dgamma/dbeta of shape (C,).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(2, 4, 5))
    >>> y, cache = groupnorm_forward(x, np.ones(4), np.zeros(4), num_groups=2)
    >>> dx, dgamma, dbeta = groupnorm_backward(np.ones_like(y), cache)
    >>> dbeta.tolist()
    [10.0, 10.0, 10.0, 10.0]
    """
    with _args.on_cache_device(cache):      # dy's conversion to x's dtype included
        xp, x, dy = _args.backward_inputs(dy, cache, GroupNormCache, "groupnorm_forward")
        C = x.shape[1]
        dx3, dgamma, dbeta = get_kernels(xp).gn_backward(
            _args.as_acb(dy, 1), _args.as_acb(x, 1), cache.mean, cache.inv_std,
            _args.param(cache.gamma, C, 1, x, xp), cache.num_groups)
    return dx3.reshape(x.shape), dgamma, dbeta                  # (N, C, L) -> x's shape
