"""A stateful Batch Normalization layer with train/eval modes, like ``torch.nn.BatchNorm1d/2d``."""
from typing import Any, Optional

import numpy as np

from . import _validate as v
from ._typing import Array
from .functional import _ema, batchnorm_backward, batchnorm_forward, batchnorm_inference

__all__ = ["BatchNorm"]


class BatchNorm:
    """Batch Normalization layer: batch statistics in training, running statistics in eval.

    Behaves like PyTorch's ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` (which differ only in the
    input rank they accept); ``axis=-1`` gives channels-last.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
    momentum : float in [0, 1] or None, default 0.1
        Weight of the new batch in the running averages; ``None`` = cumulative average.
    affine : bool, default True
        Learn gamma (init 1) and beta (init 0).
    track_running_stats : bool, default True
        Keep running_mean (init 0) and running_var (init 1). If False, eval mode also uses
        batch statistics.
    axis : int, default 1
    dtype : numpy dtype, default float64
    xp : module, default numpy
        ``numpy`` or ``cupy``: where the parameters and statistics live.

    Attributes
    ----------
    gamma, beta : ndarray (C,) or None
    running_mean, running_var : ndarray (C,) or None
    num_batches_tracked : int
    training : bool
    dgamma, dbeta : ndarray (C,) or None
        Set by :meth:`backward`.

    Examples
    --------
    >>> import numpy as np
    >>> bn = BatchNorm(3)
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, size=(32, 3))
    >>> y = bn(x)                        # training mode: batch statistics
    >>> bn.running_mean.round(2)         # moved 10% of the way from 0 towards the batch mean
    array([0.48, 0.52, 0.57])
    >>> y_eval = bn.eval()(x)            # eval mode: running statistics
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, axis: int = 1,
                 dtype: Any = np.float64, xp: Any = np):
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        v.check_eps(eps)
        v.check_momentum(momentum)
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats, self.axis = affine, track_running_stats, axis
        C = self.num_features
        self.gamma = xp.ones(C, dtype) if affine else None
        self.beta = xp.zeros(C, dtype) if affine else None
        self.running_mean = xp.zeros(C, dtype) if track_running_stats else None
        self.running_var = xp.ones(C, dtype) if track_running_stats else None
        self.num_batches_tracked = 0
        self.training = True
        self.dgamma = self.dbeta = None
        self._cache = None

    def train(self, mode: bool = True) -> "BatchNorm":
        """Set training mode (``mode=True``) or eval mode; returns ``self``."""
        self.training = bool(mode)
        return self

    def eval(self) -> "BatchNorm":
        """Set eval mode; returns ``self``."""
        return self.train(False)

    def __call__(self, x: Array) -> Array:
        return self.forward(x)

    def forward(self, x: Array) -> Array:
        """Normalise ``x``; in training mode also update the running statistics."""
        ndim = getattr(x, "ndim", 0)
        C = x.shape[self.axis] if ndim >= 2 and -ndim <= self.axis < ndim else None
        if C is not None and C != self.num_features:
            raise ValueError(f"x has {C} channels on axis {self.axis} (shape {tuple(x.shape)}), "
                             f"expected num_features={self.num_features}")
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            y = batchnorm_inference(x, self.gamma, self.beta, self.running_mean, self.running_var,
                                    self.eps, self.axis)
            self._cache = ("eval", x)
            return y
        y, cache = batchnorm_forward(x, self.gamma, self.beta, self.eps, self.axis)
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            self.running_mean, self.running_var = _ema(
                self.running_mean, self.running_var, cache.mean, cache.var, cache.m,
                self.momentum, self.num_batches_tracked)
        self._cache = ("train", cache)
        return y

    def backward(self, dy: Array) -> Array:
        """Gradient with respect to the last forward's input; sets ``dgamma`` and ``dbeta``."""
        if self._cache is None:
            raise RuntimeError("backward() called before forward()")
        mode, saved = self._cache
        if mode == "train":
            dx, dgamma, dbeta = batchnorm_backward(dy, saved)
        else:
            dx, dgamma, dbeta = self._eval_backward(dy, saved)
        self.dgamma, self.dbeta = (dgamma, dbeta) if self.affine else (None, None)
        return dx

    def _eval_backward(self, dy, x):
        # Fixed statistics: y is affine in x, so dx = dy * gamma * inv_std (no batch coupling).
        if tuple(dy.shape) != tuple(x.shape):
            raise ValueError(f"dy must have the shape of the forward's x {tuple(x.shape)}, got {tuple(dy.shape)}")
        axis = self.axis % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1
        red = tuple(i for i in range(x.ndim) if i != axis)
        inv_std = 1.0 / (self.running_var + self.eps) ** 0.5                           # (C,)
        x_hat = (x - self.running_mean.reshape(shape)) * inv_std.reshape(shape)
        gamma = self.gamma if self.affine else 1.0
        dx = dy * (gamma * inv_std).reshape(shape)
        return dx.astype(x.dtype, copy=False), (dy * x_hat).sum(axis=red), dy.sum(axis=red)   # (C,)
