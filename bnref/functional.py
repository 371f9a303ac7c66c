"""The public Batch Normalization functions: validate, view as (A, C, B), call the kernels.

State goes in and comes out (the d2l style): nothing here keeps running statistics; the
stateful layer is :class:`bnref.BatchNorm`. Each function checks its arguments
(:mod:`bnref._validate`), views the data in the kernels' canonical layout (:mod:`bnref._args`)
and calls the kernel set that :mod:`bnref.backend` chooses; the formulas themselves are in
:mod:`bnref.reference`. LayerNorm and GroupNorm are in :mod:`bnref.norms`.
"""
from dataclasses import dataclass
from math import prod
from typing import Any, Optional

from . import _args
from . import _validate as v
from ._typing import Array
from .backend import get_array_module, get_kernels
from .kernels import cupy_bn, stat_dtype

__all__ = [
    "BatchNormCache", "batchnorm_forward", "batchnorm_backward", "batchnorm_inference",
    "batch_statistics", "running_stats_update",
]

#: ``with _on_device(x, others, x_name):`` runs the block on x's GPU, refusing arrays in
#: ``others`` that live on another one; a no-op for NumPy arrays (:func:`bnref._args.on_device`).
_on_device = _args.on_device


def _channels_last(x, axis):
    """The permutation that moves ``axis`` last, if that makes x a C-contiguous view while x
    itself is not (a channels-last tensor: NCHW shape, NHWC strides); else None."""
    if axis == x.ndim - 1 or x.flags.c_contiguous:
        return None
    perm = (*range(axis), *range(axis + 1, x.ndim), axis)
    return perm if x.transpose(perm).flags.c_contiguous else None


def _as_acb(x, axis, perm):
    """The kernels' (A, C, B) view of x; with ``perm`` (see _channels_last) the channels-last
    memory is taken as it is, as (A * B, C, 1) rows of C values: no copy."""
    if perm is None:
        return _args.as_acb(x, axis)
    return _args.as_acb(x.transpose(perm), x.ndim - 1)


def _in_layout_of(y3, x, perm):
    """A kernel result (A, C, B) in x's shape and memory layout (a view, never a copy)."""
    if perm is None:
        return y3.reshape(x.shape)                              # C-contiguous, like x's copy
    inverse = sorted(range(x.ndim), key=perm.__getitem__)
    return y3.reshape([x.shape[i] for i in perm]).transpose(inverse)   # x's strides


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
        return prod(n for i, n in enumerate(self.x.shape) if i != self.axis)   # C may be 0

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
        In x's memory layout when x is channels-last (e.g. NCHW shape with NHWC strides, from
        ``x_nhwc.transpose(0, 3, 1, 2)``), as in PyTorch; C-contiguous otherwise.
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

    On the GPU (CuPy arrays) the work runs on x's device, whichever is current, and ``gamma``
    or ``beta`` on another GPU is a ValueError naming it. Subnormal values (magnitude below
    ``2**-126``, about 1.2e-38) of bfloat16 and float32 inputs and outputs are flushed to zero
    there, because CuPy compiles every kernel with ``-ftz=true``; PyTorch and the CPU kernels
    keep them. float16 and float64 are not affected.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 4))
    >>> y, cache = batchnorm_forward(x, np.ones(4), np.zeros(4))
    >>> np.allclose(y.mean(axis=0), 0), np.allclose(y.var(axis=0), 1, atol=1e-4)
    (True, True)
    """
    return _forward_train(x, gamma, beta, eps, axis)[:2]


def _forward_train(x, gamma, beta, eps, axis, running=None):
    """batchnorm_forward, and with ``running = (running_mean, running_var, momentum)`` also
    the running statistics' update where a kernel can do it in the same launches (CuPy arrays
    in the statistics' dtype): returns ``(y, cache, new)``, ``new`` the ``(new_mean, new_var)``
    arrays or None, in which case the caller updates them (:func:`_ema`)."""
    xp, axis, C = _args.prepare(x, gamma, beta, eps, axis)
    v.check_training_batch(x, axis)
    perm = _channels_last(x, axis)
    new = None
    with _on_device(x):
        args = (_as_acb(x, axis, perm), _args.param(gamma, C, 1, x, xp), _args.param(beta, C, 0, x, xp), float(eps))
        kernels = get_kernels(xp)
        if running is not None and kernels is cupy_bn and running[0].dtype == running[1].dtype == stat_dtype(x.dtype):
            y3, mean, var, inv_std, *new = cupy_bn.bn_forward_train_update(*args, *running)
        else:
            y3, mean, var, inv_std = kernels.bn_forward_train(*args)
    y = _in_layout_of(y3, x, perm)                              # (A, C, B) -> x's shape and layout
    return y, BatchNormCache(x, mean, var, inv_std, gamma, float(eps), axis), new


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
        In x's memory layout when x is channels-last (see :func:`batchnorm_forward`).
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
    with _args.on_cache_device(cache):      # dy's conversion to x's dtype included
        xp, x, dy = _args.backward_inputs(dy, cache, BatchNormCache, "batchnorm_forward")
        C = x.shape[cache.axis]
        perm = _channels_last(x, cache.axis)            # dy is taken in x's layout (a copy if not)
        dx3, dgamma, dbeta = get_kernels(xp).bn_backward(
            _as_acb(dy, cache.axis, perm), _as_acb(x, cache.axis, perm),
            cache.mean, cache.inv_std, _args.param(cache.gamma, C, 1, x, xp))
    return _in_layout_of(dx3, x, perm), dgamma, dbeta           # (A, C, B) -> x's shape and layout


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
    xp, axis, C = _args.prepare(x, gamma, beta, eps, axis, (running_mean, running_var),
                                ("running_mean", "running_var"))
    v.check_vector("running_mean", running_mean, C, x, xp)
    v.check_vector("running_var", running_var, C, x, xp)
    perm = _channels_last(x, axis)
    with _on_device(x):
        y3 = get_kernels(xp).bn_inference(
            _as_acb(x, axis, perm), _args.param(gamma, C, 1, x, xp), _args.param(beta, C, 0, x, xp),
            _args.param(running_mean, C, 0, x, xp), _args.param(running_var, C, 1, x, xp), float(eps))
    return _in_layout_of(y3, x, perm)                           # (A, C, B) -> x's shape and layout


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
    with _on_device(x):
        return get_kernels(xp).bn_stats(_as_acb(x, axis, _channels_last(x, axis)))     # (C,), (C,)


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
    _args.check_devices(("x", "running_mean", "running_var"), (x, running_mean, running_var))
    v.check_float_array("x", x, xp, min_ndim=2)
    axis = v.channel_axis(x, axis)
    C = x.shape[axis]
    v.check_vector("running_mean", running_mean, C, x, xp)
    v.check_vector("running_var", running_var, C, x, xp)
    v.check_momentum(momentum)
    m = v.check_training_batch(x, axis)
    mean, var = batch_statistics(x, axis)
    with _on_device(x):
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
