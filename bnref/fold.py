"""Fold inference-mode Batch Normalization into the preceding linear or convolution layer.

In eval mode BN is ``y = scale * z + shift`` per channel with ``scale = gamma / sqrt(var + eps)``
and ``shift = beta - scale * mean``. If ``z = W x + b`` then ``y = (scale * W) x + (scale * b + shift)``:
one layer instead of two, with identical outputs (up to rounding).
"""
from typing import Optional

from . import _validate as v
from ._typing import Array
from .backend import get_array_module

__all__ = ["bn_affine", "fold_linear", "fold_conv2d"]


def bn_affine(gamma: Optional[Array], beta: Optional[Array], running_mean: Array, running_var: Array,
              eps: float = 1e-5) -> tuple[Array, Array]:
    """Per-channel ``(scale, shift)`` of inference BN: ``y = scale * x + shift``.

    Examples
    --------
    >>> import numpy as np
    >>> scale, shift = bn_affine(np.array([2.0]), np.array([1.0]), np.array([3.0]), np.array([4.0]))
    >>> scale.round(4), shift.round(4)       # 2 / sqrt(4 + eps), 1 - 3 * scale
    (array([1.]), array([-2.]))
    """
    xp = get_array_module(gamma, beta, running_mean, running_var,
                          names=("gamma", "beta", "running_mean", "running_var"))
    v.check_eps(eps)
    v.check_float_array("running_mean", running_mean, xp)
    v.check_float_array("running_var", running_var, xp)
    C = running_mean.shape[0]
    if running_mean.ndim != 1 or tuple(running_var.shape) != (C,):
        raise ValueError(f"running_mean and running_var must both have shape (C,), got "
                         f"{tuple(running_mean.shape)} and {tuple(running_var.shape)}")
    for name, p in (("gamma", gamma), ("beta", beta)):
        if p is not None:
            v.check_float_array(name, p, xp)
            if tuple(p.shape) != (C,):
                raise ValueError(f"{name} must have shape ({C},) like running_mean, got {tuple(p.shape)}")
    scale = 1.0 / xp.sqrt(running_var + eps)                         # (C,)
    if gamma is not None:
        scale = gamma * scale
    shift = -running_mean * scale
    if beta is not None:
        shift = shift + beta
    return scale, shift


def _fold(W, b, gamma, beta, running_mean, running_var, eps, ndim, what):
    xp = get_array_module(W, b, gamma, beta, running_mean, running_var,
                          names=("W", "b", "gamma", "beta", "running_mean", "running_var"))
    v.check_float_array("W", W, xp)
    if W.ndim != ndim:
        raise ValueError(f"W must be a {what} weight with {ndim} dimensions, got shape {tuple(W.shape)}")
    C = W.shape[0]
    if tuple(running_mean.shape) != (C,):
        raise ValueError(f"running_mean must have shape ({C},) (W's output channels, axis 0 of W "
                         f"{tuple(W.shape)}), got {tuple(running_mean.shape)}")
    if b is not None:
        v.check_float_array("b", b, xp)
        if tuple(b.shape) != (C,):
            raise ValueError(f"b must have shape ({C},), got {tuple(b.shape)}")
    scale, shift = bn_affine(gamma, beta, running_mean, running_var, eps)
    W_f = W * scale.reshape((C,) + (1,) * (ndim - 1))                # scale each output row/filter
    b_f = shift if b is None else b * scale + shift
    return W_f.astype(W.dtype, copy=False), b_f.astype(W.dtype, copy=False)


def fold_linear(W: Array, b: Optional[Array], gamma: Optional[Array], beta: Optional[Array], running_mean: Array,
                running_var: Array, eps: float = 1e-5) -> tuple[Array, Array]:
    """Fold eval-mode BN into the linear layer before it (PyTorch layout).

    Parameters
    ----------
    W : ndarray of shape (out_features, in_features)
        The layer computes ``z = x @ W.T + b`` (``torch.nn.Linear``). For the ``x @ W``
        layout pass ``W.T`` and transpose the result back.
    b : ndarray of shape (out_features,) or None
    gamma, beta, running_mean, running_var : ndarray of shape (out_features,)
    eps : float, default 1e-5

    Returns
    -------
    W_folded, b_folded : ndarray
        ``x @ W_folded.T + b_folded == batchnorm_inference(x @ W.T + b, ...)``.

    Examples
    --------
    >>> import numpy as np
    >>> from bnref import batchnorm_inference
    >>> rng = np.random.default_rng(0)
    >>> W, b, x = rng.normal(size=(3, 4)), rng.normal(size=3), rng.normal(size=(5, 4))
    >>> g, bt, mu, var = rng.normal(size=3), rng.normal(size=3), rng.normal(size=3), rng.uniform(1, 2, 3)
    >>> Wf, bf = fold_linear(W, b, g, bt, mu, var)
    >>> np.allclose(x @ Wf.T + bf, batchnorm_inference(x @ W.T + b, g, bt, mu, var))
    True
    """
    return _fold(W, b, gamma, beta, running_mean, running_var, eps, 2, "linear (out, in)")


def fold_conv2d(W: Array, b: Optional[Array], gamma: Optional[Array], beta: Optional[Array], running_mean: Array,
                running_var: Array, eps: float = 1e-5) -> tuple[Array, Array]:
    """Fold eval-mode BN into the 2-D convolution before it.

    Parameters
    ----------
    W : ndarray of shape (C_out, C_in, kH, kW)
    b : ndarray of shape (C_out,) or None
    gamma, beta, running_mean, running_var : ndarray of shape (C_out,)
    eps : float, default 1e-5

    Returns
    -------
    W_folded, b_folded : ndarray
        ``conv2d(x, W_folded) + b_folded == batchnorm_inference(conv2d(x, W) + b, ...)``.

    Examples
    --------
    >>> import numpy as np
    >>> Wf, bf = fold_conv2d(np.ones((2, 1, 3, 3)), None, None, None, np.zeros(2), np.full(2, 4.0))
    >>> Wf.shape, Wf[0, 0, 0, 0].round(4)    # every filter divided by sqrt(4 + eps)
    ((2, 1, 3, 3), np.float64(0.5))
    """
    return _fold(W, b, gamma, beta, running_mean, running_var, eps, 4, "conv2d (C_out, C_in, kH, kW)")
