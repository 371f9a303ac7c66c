"""Stateful Batch Normalization layers with train/eval modes, in the form of ``torch.nn``'s.

:class:`BatchNorm` takes any input with a channel axis; :class:`BatchNorm1d`,
:class:`BatchNorm2d` and :class:`BatchNorm3d` check the input's rank as PyTorch's do. All
have PyTorch's constructor arguments, ``repr``, ``weight``/``bias`` (the book's ``gamma`` and
``beta``), ``running_mean``/``running_var``/``num_batches_tracked`` and
``state_dict()``/``load_state_dict()`` with PyTorch's keys, so the state of a trained
``torch.nn.BatchNorm2d``, converted to NumPy, loads into :class:`BatchNorm2d` and gives the
same outputs in eval mode.
"""
import numbers
from typing import Any, NamedTuple, Optional

import numpy as np

from . import _args
from . import _validate as v
from ._typing import Array
from .functional import (_ema, _forward_train, _on_device, batchnorm_backward, batchnorm_forward,
                         batchnorm_inference)

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "IncompatibleKeys"]


class IncompatibleKeys(NamedTuple):
    """What :meth:`BatchNorm.load_state_dict` returns, as PyTorch's does."""

    missing_keys: list
    unexpected_keys: list


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_xp(xp):
    if getattr(xp, "__name__", None) not in ("numpy", "cupy"):
        raise TypeError(f"xp must be the numpy or the cupy module, got {xp!r}")
    return xp


def _check_dtype(dtype, xp):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a floating dtype such as np.float32, got {dtype!r}") from None
    allowed = ("float32", "float64") if xp is np else ("float16", "float32", "float64")
    if dt.name not in allowed:
        raise TypeError(f"dtype must be one of {allowed} for {xp.__name__} parameters, got {dt.name}")
    return dt


class BatchNorm:
    """Batch Normalization layer: batch statistics in training, running statistics in eval.

    Behaves like PyTorch's ``nn.BatchNorm1d/2d/3d`` (which differ only in the input rank they
    accept; see :class:`BatchNorm2d`) for inputs of any rank >= 2; ``axis=-1`` gives
    channels-last.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
        Added to the variance; > 0.
    momentum : float in [0, 1] or None, default 0.1
        Weight of the new batch in the running averages (PyTorch's convention); ``None`` = the
        cumulative average.
    affine : bool, default True
        Learn ``weight`` (gamma, initialised to 1) and ``bias`` (beta, initialised to 0).
    track_running_stats : bool, default True
        Keep ``running_mean`` (init 0) and ``running_var`` (init 1). If False, eval mode also
        uses batch statistics.
    axis : {1, -1}, default 1
        The channel axis: 1 for PyTorch's ``(N, C, ...)``, -1 for channels-last
        ``(N, ..., C)``. (The functions of ``bnref.functional`` take any other axis.)
    dtype : numpy dtype, default float64
        Of the parameters and running statistics: float32 or float64 (also float16 on CuPy).
    xp : module, default numpy
        ``numpy`` or ``cupy``: where the parameters and statistics live.
    bias : bool, default True
        With ``affine``, also learn the shift (keyword only, as in PyTorch).

    Attributes
    ----------
    weight, bias : ndarray (C,) or None
        gamma and beta; ``gamma`` and ``beta`` are the same arrays under the book's names.
    running_mean, running_var : ndarray (C,) or None
    num_batches_tracked : int
    training : bool
    dgamma, dbeta : ndarray (C,) or None
        Set by :meth:`backward`.

    Raises
    ------
    TypeError, ValueError
        At construction, for any argument out of its range (not at the first call).

    Examples
    --------
    >>> import numpy as np
    >>> bn = BatchNorm(3)
    >>> bn
    BatchNorm(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, size=(32, 3))
    >>> y = bn(x)                        # training mode: batch statistics
    >>> bn.running_mean.round(2)         # moved 10% of the way from 0 towards the batch mean
    array([0.48, 0.52, 0.57])
    >>> y_eval = bn.eval()(x)            # eval mode: running statistics
    >>> sorted(bn.state_dict())
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """

    #: input ranks this class accepts (None: any rank >= 2), and how PyTorch words the error
    _ranks: Optional[tuple] = None

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, axis: int = 1,
                 dtype: Any = np.float64, xp: Any = np, *, bias: bool = True):
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral) or num_features < 1:
            raise ValueError(f"num_features must be a positive int (the number of channels), got {num_features!r}")
        v.check_eps(eps)
        v.check_momentum(momentum)
        affine = _check_bool("affine", affine)
        bias = _check_bool("bias", bias)
        track_running_stats = _check_bool("track_running_stats", track_running_stats)
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or axis not in (1, -1):
            raise ValueError(f"axis must be 1 (channels first, (N, C, ...)) or -1 (channels last, "
                             f"(N, ..., C)), got {axis!r}; bnref.batchnorm_forward takes any other axis")
        xp = _check_xp(xp)
        dtype = _check_dtype(dtype, xp)
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats, self.axis = affine, track_running_stats, int(axis)
        self.dtype, self.xp = dtype, xp
        C = self.num_features
        self.gamma = xp.ones(C, dtype) if affine else None
        self.beta = xp.zeros(C, dtype) if affine and bias else None
        self.running_mean = xp.zeros(C, dtype) if track_running_stats else None
        self.running_var = xp.ones(C, dtype) if track_running_stats else None
        self.num_batches_tracked = 0
        self.training = True
        self.dgamma = self.dbeta = None
        self._cache = None

    # ------------------------------------------------------------ PyTorch's names and form

    @property
    def weight(self) -> Optional[Array]:
        """gamma, under PyTorch's name."""
        return self.gamma

    @weight.setter
    def weight(self, value):
        self.gamma = value

    @property
    def bias(self) -> Optional[Array]:
        """beta, under PyTorch's name."""
        return self.beta

    @bias.setter
    def bias(self, value):
        self.beta = value

    def extra_repr(self) -> str:
        s = (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
             f"bias={self.beta is not None}, track_running_stats={self.track_running_stats}")
        return s + (f", axis={self.axis}" if self.axis != 1 else "")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def state_dict(self) -> dict:
        """The parameters and buffers under PyTorch's keys, as copies.

        ``weight`` and ``bias`` if present, then ``running_mean``, ``running_var`` and
        ``num_batches_tracked`` (a 0-d int64 array) if running statistics are tracked: the keys
        of the same ``torch.nn`` layer, in its order.
        """
        state = {}
        for key, value in (("weight", self.gamma), ("bias", self.beta),
                           ("running_mean", self.running_mean), ("running_var", self.running_var)):
            if value is not None:
                state[key] = value.copy()
        if self.track_running_stats:
            state["num_batches_tracked"] = np.array(self.num_batches_tracked, dtype=np.int64)
        return state

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> IncompatibleKeys:
        """Load parameters and buffers saved by :meth:`state_dict`, or by the ``torch.nn`` layer.

        Values must be NumPy (or CuPy) arrays: convert a PyTorch state with
        ``{k: t.numpy() for k, t in module.state_dict().items()}``. They are copied, in this
        layer's dtype and array module. Nothing is changed unless every value is valid.

        Parameters
        ----------
        state_dict : mapping of str to ndarray
        strict : bool, default True
            Missing or unexpected keys are an error; with False they are returned instead.

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``.

        Examples
        --------
        >>> import numpy as np
        >>> a, b = BatchNorm(2), BatchNorm(2)
        >>> _ = a(np.array([[0.0, 1.0], [2.0, 5.0]]))
        >>> b.load_state_dict(a.state_dict())
        IncompatibleKeys(missing_keys=[], unexpected_keys=[])
        >>> b.running_mean
        array([0.1, 0.3])
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
        expected = list(self.state_dict())
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if strict and (missing or unexpected):
            raise ValueError(f"error in loading state_dict for {type(self).__name__}: "
                             f"missing keys {missing}, unexpected keys {unexpected} "
                             f"(this layer's keys are {expected})")
        new = {}
        for key in expected:
            if key not in state_dict:
                continue
            value = state_dict[key]
            v.check_array(f"state_dict[{key!r}]", value)
            if key == "num_batches_tracked":
                if value.shape != () or value.dtype.kind not in "iu" or int(value) < 0:
                    raise ValueError(f"state_dict['num_batches_tracked'] must be a 0-d array holding an "
                                     f"int >= 0, got shape {tuple(value.shape)} dtype {value.dtype}")
                new[key] = int(value)
                continue
            if tuple(value.shape) != (self.num_features,):
                raise ValueError(f"state_dict[{key!r}] must have shape ({self.num_features},) "
                                 f"(num_features), got shape {tuple(value.shape)}")
            if np.dtype(value.dtype).kind != "f":
                raise TypeError(f"state_dict[{key!r}] must have a floating dtype, got {value.dtype}")
            if key == "running_var" and bool((value < 0).any()):
                raise ValueError("state_dict['running_var'] must be >= 0 (a variance), got negative values")
            new[key] = self.xp.asarray(value, dtype=self.dtype).copy()
        names = {"weight": "gamma", "bias": "beta"}
        for key, value in new.items():
            setattr(self, names.get(key, key), value)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ modes, forward, backward

    def train(self, mode: bool = True) -> "BatchNorm":
        """Set training mode (``mode=True``) or eval mode; returns ``self``."""
        self.training = _check_bool("mode", mode)
        return self

    def eval(self) -> "BatchNorm":
        """Set eval mode; returns ``self``."""
        return self.train(False)

    def __call__(self, x: Array) -> Array:
        return self.forward(x)

    def _check_input(self, x):
        v.check_array("x", x)
        if self._ranks is not None and x.ndim not in self._ranks:
            ranks = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(f"{type(self).__name__} expected {ranks} input (got {x.ndim}D input of "
                             f"shape {tuple(x.shape)})")
        if x.ndim < 2:
            raise ValueError(f"x must have a batch axis and a channel axis (at least 2 dimensions), "
                             f"got shape {tuple(x.shape)}")
        C = x.shape[self.axis]
        if C != self.num_features:
            raise ValueError(f"x has {C} channels on axis {self.axis} (shape {tuple(x.shape)}), "
                             f"expected num_features={self.num_features}")

    def forward(self, x: Array) -> Array:
        """Normalise ``x``; in training mode also update the running statistics."""
        self._check_input(x)
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            y = batchnorm_inference(x, self.gamma, self.beta, self.running_mean, self.running_var,
                                    self.eps, self.axis)
            self._cache = ("eval", x)
            return y
        update = self.training and self.track_running_stats
        # On x's GPU (the new running statistics are made there); running statistics on another
        # GPU are refused by name before anything runs, so an update never fails half-way.
        with _on_device(x, {"running_mean": self.running_mean, "running_var": self.running_var}
                        if update else None):
            if not update:
                y, cache = batchnorm_forward(x, self.gamma, self.beta, self.eps, self.axis)
            else:
                # on the GPU the statistics kernel updates them (no extra launches); else _ema
                momentum = self.momentum if self.momentum is not None else 1.0 / (self.num_batches_tracked + 1)
                y, cache, new = _forward_train(x, self.gamma, self.beta, self.eps, self.axis,
                                               (self.running_mean, self.running_var, momentum))
                self.num_batches_tracked += 1
                self.running_mean, self.running_var = new or _ema(
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
            _args.check_devices(("x", "dy", "running_mean", "running_var", "gamma"),
                                (saved, dy, self.running_mean, self.running_var, self.gamma))
            with _on_device(saved):
                dx, dgamma, dbeta = self._eval_backward(dy, saved)
        self.dgamma = dgamma if self.gamma is not None else None
        self.dbeta = dbeta if self.beta is not None else None
        return dx

    def _eval_backward(self, dy, x):
        # Fixed statistics: y is affine in x, so dx = dy * gamma * inv_std (no batch coupling).
        v.check_array("dy", dy)
        if tuple(dy.shape) != tuple(x.shape):
            raise ValueError(f"dy must have the shape of the forward's x {tuple(x.shape)}, got {tuple(dy.shape)}")
        axis = self.axis % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1                                        # (C,) -> broadcastable against x
        red = tuple(i for i in range(x.ndim) if i != axis)      # every axis but the channel's
        inv_std = 1.0 / (self.running_var + self.eps) ** 0.5                           # (C,)
        x_hat = (x - self.running_mean.reshape(shape)) * inv_std.reshape(shape)
        gamma = self.gamma if self.gamma is not None else 1.0
        dx = dy * (gamma * inv_std).reshape(shape)
        return dx.astype(x.dtype, copy=False), (dy * x_hat).sum(axis=red), dy.sum(axis=red)   # (C,)


class BatchNorm1d(BatchNorm):
    """:class:`BatchNorm` for ``(N, C)`` or ``(N, C, L)`` inputs, as ``torch.nn.BatchNorm1d``.

    Examples
    --------
    >>> import numpy as np
    >>> BatchNorm1d(4)(np.zeros((2, 4, 3, 3)))
    Traceback (most recent call last):
        ...
    ValueError: BatchNorm1d expected 2D or 3D input (got 4D input of shape (2, 4, 3, 3))
    """

    _ranks = (2, 3)


class BatchNorm2d(BatchNorm):
    """:class:`BatchNorm` for ``(N, C, H, W)`` inputs, as ``torch.nn.BatchNorm2d``.

    Examples
    --------
    >>> import numpy as np
    >>> bn = BatchNorm2d(8)
    >>> bn
    BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    >>> bn(np.random.default_rng(0).normal(size=(4, 8, 5, 5))).shape
    (4, 8, 5, 5)
    """

    _ranks = (4,)


class BatchNorm3d(BatchNorm):
    """:class:`BatchNorm` for ``(N, C, D, H, W)`` inputs, as ``torch.nn.BatchNorm3d``."""

    _ranks = (5,)
