"""The public functional API: validate, view as (A, C, B), dispatch to NumPy or CuPy kernels.

State goes in and comes out (the d2l style): nothing here keeps running statistics; the
stateful layer is :class:`bnref.BatchNorm`.
"""
from dataclasses import dataclass
from math import prod
from typing import Any, Optional

import numpy as np

from . import _validate as v
from ._typing import Array
from .backend import get_array_module, get_kernels

__all__ = [
    "BatchNormCache", "LayerNormCache", "GroupNormCache",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_inference",
    "batch_statistics", "running_stats_update",
    "layernorm_forward", "layernorm_backward", "groupnorm_forward", "groupnorm_backward",
]


def _as_acb(x, axis):
    """View ``x`` as the kernels' contiguous (A, C, B) array (a copy only if ``x`` is strided)."""
    A = prod(x.shape[:axis])
    B = prod(x.shape[axis + 1:])
    if not x.flags.c_contiguous:
        x = get_array_module(x).ascontiguousarray(x)
    return x.reshape(A, x.shape[axis], B)                         # (A, C, B)


def _stat_dtype(x):
    """Statistics in float32 for half-precision inputs, else in the input's dtype."""
    return x.dtype if x.dtype.itemsize >= 4 else np.dtype(np.float32)


def _vector(v_, C, fill, dtype, xp):
    """gamma/beta as (C,) arrays in the statistics dtype; ``None`` becomes ``fill``."""
    if v_ is None:
        return xp.full(C, fill, dtype=dtype)
    return v_.astype(dtype, copy=False)


def _prepare(x, gamma, beta, eps, axis, extra=(), extra_names=()):
    names = ("x", "gamma", "beta") + tuple(extra_names)
    xp = get_array_module(x, gamma, beta, *extra, names=names)
    v.check_float_array("x", x, xp, min_ndim=2)
    axis = v.channel_axis(x, axis)
    C = x.shape[axis]
    v.check_vector("gamma", gamma, C, x, xp, allow_none=True)
    v.check_vector("beta", beta, C, x, xp, allow_none=True)
    v.check_eps(eps)
    return xp, axis, C


@dataclass(frozen=True, eq=False)
class BatchNormCache:
    """What the training-mode forward saves for the backward pass.

    ``x`` is kept (not ``x_hat``): the backward recomputes ``x_hat`` from it, as cuDNN does,
    which saves one activation-sized array per layer.
    """

    x: Any                  # input, original shape
    mean: Any               # (C,) batch mean
    var: Any                # (C,) biased batch variance
    inv_std: Any            # (C,) 1 / sqrt(var + eps)
    gamma: Optional[Any]    # (C,) or None when there is no affine transform
    eps: float
    axis: int               # channel axis, non-negative

    @property
    def m(self) -> int:
        """Number of values per channel that the statistics were computed over."""
        return self.x.size // self.x.shape[self.axis]

    @property
    def x_hat(self):
        """The normalised input ``(x - mean) * inv_std``, shape of ``x``."""
        shape = [1] * self.x.ndim
        shape[self.axis] = -1
        return (self.x - self.mean.reshape(shape)) * self.inv_std.reshape(shape)


def batchnorm_forward(x: Array, gamma: Optional[Array], beta: Optional[Array], eps: float = 1e-5,
                      axis: int = 1) -> tuple[Array, BatchNormCache]:
    """Batch Normalization forward pass in training mode (batch statistics).

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with ``mean`` and the *biased*
    ``var`` computed per channel over every axis except ``axis``.

    Parameters
    ----------
    x : ndarray, shape (N, C), (N, C, L), (N, C, H, W) or channels-last with ``axis=-1``
        Floating input (float32/float64; float16/bfloat16 too on the GPU).
    gamma, beta : ndarray of shape (C,) or None
        Scale and shift; ``None`` means no affine transform (gamma = 1, beta = 0).
    eps : float, default 1e-5
        Added to the variance for numerical stability; must be > 0.
    axis : int, default 1
        The channel axis.

    Returns
    -------
    y : ndarray, same shape and dtype as ``x``
    cache : BatchNormCache
        Pass it to :func:`batchnorm_backward`.

    Raises
    ------
    ValueError, TypeError
        On a bad shape, dtype, ``eps``, or one value per channel (nothing to normalise).

    Notes
    -----
    NaN or infinity in ``x`` propagates, as in PyTorch: every output of an affected channel
    becomes NaN; nothing is silently dropped.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 4))
    >>> y, cache = batchnorm_forward(x, np.ones(4), np.zeros(4))
    >>> np.allclose(y.mean(axis=0), 0), np.allclose(y.var(axis=0), 1, atol=1e-4)
    (True, True)
    """
    xp, axis, C = _prepare(x, gamma, beta, eps, axis)
    v.check_training_batch(x, axis)
    k = get_kernels(xp)
    sd = _stat_dtype(x)
    y3, mean, var, inv_std = k.bn_forward_train(
        _as_acb(x, axis), _vector(gamma, C, 1, sd, xp), _vector(beta, C, 0, sd, xp), float(eps))
    y = y3.reshape(x.shape)                                     # always C-contiguous
    return y, BatchNormCache(x, mean, var, inv_std, gamma, float(eps), axis)


def batchnorm_backward(dy: Array, cache: BatchNormCache) -> tuple[Array, Array, Array]:
    """Backward pass of :func:`batchnorm_forward`.

    Parameters
    ----------
    dy : ndarray, same shape as the forward's ``x``
        Upstream gradient dL/dy.
    cache : BatchNormCache
        From the matching :func:`batchnorm_forward` call.

    Returns
    -------
    dx : ndarray, shape of ``x``
    dgamma, dbeta : ndarray of shape (C,)
        Gradients for gamma and beta (computed even when the forward had ``gamma=None``:
        they are then the gradients at gamma = 1, beta = 0).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, dy = rng.normal(size=(2, 8, 3)), rng.normal(size=(8, 3))
    >>> y, cache = batchnorm_forward(x[0], np.ones(3), np.zeros(3))
    >>> dx, dgamma, dbeta = batchnorm_backward(dy, cache)
    >>> np.allclose(dx.sum(axis=0), 0)   # dx has zero mean per channel
    True
    """
    if not isinstance(cache, BatchNormCache):
        raise TypeError(
            f"cache must be the BatchNormCache returned by batchnorm_forward, got {type(cache).__name__}"
        )
    x = cache.x
    xp = get_array_module(dy, x, names=("dy", "cache.x"))
    v.check_float_array("dy", dy, xp)
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"dy must have the shape of the forward's x {tuple(x.shape)}, got {tuple(dy.shape)}")
    C = x.shape[cache.axis]
    gamma = _vector(cache.gamma, C, 1, cache.mean.dtype, xp)
    dx3, dgamma, dbeta = get_kernels(xp).bn_backward(
        _as_acb(dy.astype(x.dtype, copy=False), cache.axis), _as_acb(x, cache.axis),
        cache.mean, cache.inv_std, gamma)
    return dx3.reshape(x.shape), dgamma, dbeta


def batchnorm_inference(x: Array, gamma: Optional[Array], beta: Optional[Array], running_mean: Array,
                        running_var: Array, eps: float = 1e-5, axis: int = 1) -> Array:
    """Batch Normalization in inference mode: normalise with fixed (running) statistics.

    ``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``: an affine map per
    channel, independent of the other examples in the batch.

    Parameters
    ----------
    x : ndarray
        Input, channel axis ``axis``; any batch size (one example is fine).
    gamma, beta : ndarray of shape (C,) or None
    running_mean, running_var : ndarray of shape (C,)
        Population estimates, e.g. from :func:`running_stats_update`.
    eps : float, default 1e-5
    axis : int, default 1

    Returns
    -------
    y : ndarray, same shape and dtype as ``x``

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 10.0]])           # (N=1, C=2): one example is fine in inference
    >>> batchnorm_inference(x, None, None, np.array([1.0, 8.0]), np.array([1.0, 4.0]), eps=0.1)
    array([[0.       , 0.9877296]])
    """
    xp, axis, C = _prepare(x, gamma, beta, eps, axis, (running_mean, running_var),
                           ("running_mean", "running_var"))
    v.check_vector("running_mean", running_mean, C, x, xp)
    v.check_vector("running_var", running_var, C, x, xp)
    sd = _stat_dtype(x)
    y3 = get_kernels(xp).bn_inference(
        _as_acb(x, axis), _vector(gamma, C, 1, sd, xp), _vector(beta, C, 0, sd, xp),
        running_mean.astype(sd, copy=False), running_var.astype(sd, copy=False), float(eps))
    return y3.reshape(x.shape)


def batch_statistics(x: Array, axis: int = 1) -> tuple[Array, Array]:
    """Per-channel mean and *biased* variance of ``x`` over every axis except ``axis``.

    Computed stably (shifted sums), never as ``E[x^2] - E[x]^2``.

    Examples
    --------
    >>> import numpy as np
    >>> mean, var = batch_statistics(np.array([[1e4, 0.0], [1e4 + 2, 2.0]]))
    >>> mean.tolist(), var.tolist()
    ([10001.0, 1.0], [1.0, 1.0])
    """
    xp = get_array_module(x, names=("x",))
    v.check_float_array("x", x, xp, min_ndim=2)
    axis = v.channel_axis(x, axis)
    mean, var = get_kernels(xp).bn_stats(_as_acb(x, axis))[:2]
    return mean, var


def running_stats_update(running_mean: Array, running_var: Array, x: Array, momentum: Optional[float] = 0.1,
                         axis: int = 1, num_batches_tracked: Optional[int] = None) -> tuple[Array, Array]:
    """Update running statistics with one training batch, in PyTorch's convention.

    ``new = (1 - momentum) * old + momentum * batch``, where the batch variance is the
    *unbiased* one (``var * m / (m - 1)``). ``momentum=None`` gives the cumulative average:
    the weight of the new batch is ``1 / num_batches_tracked`` (count *including* this batch).

    Conversions: CS231n's ``momentum=0.9`` (weight of the *old* value) is PyTorch's 0.1;
    Keras' ``momentum=0.99`` is PyTorch's 0.01.

    Parameters
    ----------
    running_mean, running_var : ndarray of shape (C,)
        Current estimates (PyTorch starts at 0 and 1). Not modified.
    x : ndarray
        The training batch, channel axis ``axis``.
    momentum : float in [0, 1] or None, default 0.1
    axis : int, default 1
    num_batches_tracked : int, optional
        Required when ``momentum`` is None: batches seen so far, this one included.

    Returns
    -------
    running_mean, running_var : ndarray of shape (C,)
        New arrays.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0], [2.0]])          # mean 1, unbiased variance 2
    >>> running_stats_update(np.zeros(1), np.ones(1), x, momentum=0.5)
    (array([0.5]), array([1.5]))
    """
    xp = get_array_module(running_mean, running_var, x, names=("running_mean", "running_var", "x"))
    v.check_float_array("x", x, xp, min_ndim=2)
    axis = v.channel_axis(x, axis)
    C = x.shape[axis]
    v.check_vector("running_mean", running_mean, C, x, xp)
    v.check_vector("running_var", running_var, C, x, xp)
    v.check_momentum(momentum)
    m = v.check_training_batch(x, axis)
    mean, var = batch_statistics(x, axis)
    return _ema(running_mean, running_var, mean, var, m, momentum, num_batches_tracked)


def _ema(running_mean, running_var, mean, var, m, momentum, num_batches_tracked):
    """The update itself, from batch statistics (``var`` biased, over ``m`` values)."""
    if momentum is None:
        if num_batches_tracked is None or num_batches_tracked < 1:
            raise ValueError(
                "num_batches_tracked must be an int >= 1 (batches seen, this one included) when "
                f"momentum is None (cumulative average), got {num_batches_tracked!r}")
        momentum = 1.0 / num_batches_tracked
    dtype = running_mean.dtype
    unbiased = var * (m / (m - 1))
    new_mean = (1 - momentum) * running_mean + momentum * mean.astype(dtype, copy=False)
    new_var = (1 - momentum) * running_var + momentum * unbiased.astype(dtype, copy=False)
    return new_mean.astype(dtype, copy=False), new_var.astype(running_var.dtype, copy=False)


# ---------------------------------------------------------------- LayerNorm and GroupNorm

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

    Examples
    --------
    >>> import numpy as np
    >>> y, _ = layernorm_forward(np.array([[1.0, 2.0, 3.0]]), None, None)
    >>> np.round(y, 4)
    array([[-1.2247,  0.    ,  1.2247]])
    """
    xp = get_array_module(x, gamma, beta, names=("x", "gamma", "beta"))
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
    sd = _stat_dtype(x)
    x2 = xp.ascontiguousarray(x).reshape(-1, K)                                   # (M, K)
    g = xp.ones(K, sd) if gamma is None else gamma.reshape(K).astype(sd, copy=False)
    b = xp.zeros(K, sd) if beta is None else beta.reshape(K).astype(sd, copy=False)
    y2, mean, inv_std = get_kernels(xp).ln_forward(x2, g, b, float(eps))
    return y2.reshape(x.shape).astype(x.dtype, copy=False), LayerNormCache(x, mean, inv_std, gamma, normalized_ndim)


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
    if not isinstance(cache, LayerNormCache):
        raise TypeError(f"cache must be the LayerNormCache returned by layernorm_forward, got {type(cache).__name__}")
    x = cache.x
    xp = get_array_module(dy, x, names=("dy", "cache.x"))
    v.check_float_array("dy", dy, xp)
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"dy must have the shape of the forward's x {tuple(x.shape)}, got {tuple(dy.shape)}")
    nshape = tuple(x.shape[x.ndim - cache.normalized_ndim:])
    K = prod(nshape)
    sd = cache.mean.dtype
    g = xp.ones(K, sd) if cache.gamma is None else cache.gamma.reshape(K).astype(sd, copy=False)
    dx2, dgamma, dbeta = get_kernels(xp).ln_backward(
        xp.ascontiguousarray(dy).reshape(-1, K), xp.ascontiguousarray(x).reshape(-1, K), cache.mean, cache.inv_std, g)
    return dx2.reshape(x.shape).astype(x.dtype, copy=False), dgamma.reshape(nshape), dbeta.reshape(nshape)


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

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(2, 4, 3, 3))
    >>> y, _ = groupnorm_forward(x, np.ones(4), np.zeros(4), num_groups=2)
    >>> np.allclose(y.reshape(2, 2, -1).mean(axis=-1), 0)
    True
    """
    xp, _, C = _prepare(x, gamma, beta, eps, 1)
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 1 or C % num_groups:
        raise ValueError(f"num_groups must be a positive int that divides the {C} channels of x "
                         f"{tuple(x.shape)}, got {num_groups!r}")
    num_groups = int(num_groups)
    N, L = x.shape[0], prod(x.shape[2:])
    if (C // num_groups) * L <= 1:
        raise ValueError(f"expected more than 1 value per group, got x of shape {tuple(x.shape)} "
                         f"with num_groups={num_groups}")
    sd = _stat_dtype(x)
    y3, mean, inv_std = get_kernels(xp).gn_forward(
        xp.ascontiguousarray(x).reshape(N, C, L), _vector(gamma, C, 1, sd, xp), _vector(beta, C, 0, sd, xp),
        num_groups, float(eps))
    return y3.reshape(x.shape).astype(x.dtype, copy=False), GroupNormCache(x, mean, inv_std, gamma, num_groups)


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
    if not isinstance(cache, GroupNormCache):
        raise TypeError(f"cache must be the GroupNormCache returned by groupnorm_forward, got {type(cache).__name__}")
    x = cache.x
    xp = get_array_module(dy, x, names=("dy", "cache.x"))
    v.check_float_array("dy", dy, xp)
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"dy must have the shape of the forward's x {tuple(x.shape)}, got {tuple(dy.shape)}")
    N, C, L = x.shape[0], x.shape[1], prod(x.shape[2:])
    g = _vector(cache.gamma, C, 1, cache.mean.dtype, xp)
    dx3, dgamma, dbeta = get_kernels(xp).gn_backward(
        xp.ascontiguousarray(dy).reshape(N, C, L), xp.ascontiguousarray(x).reshape(N, C, L),
        cache.mean, cache.inv_std, g, cache.num_groups)
    return dx3.reshape(x.shape).astype(x.dtype, copy=False), dgamma, dbeta
