"""A tiny multilayer perceptron on bnref's kernels, for the chapters' experiments.

``Linear -> [norm] -> activation`` for every hidden layer, then a linear softmax classifier.
Backpropagation is written out by hand with bnref's backward functions, so the same code runs
on NumPy or CuPy (``xp``). Hooks for the experiments: ``preacts`` (what enters the norm /
activation), ``normed`` (after the norm and any injected noise), ``grad_preacts``, and a
``noise`` function for Santurkar et al.'s "noisy BN".
"""
import contextlib

import numpy as np

from .norms import groupnorm_backward, groupnorm_forward, layernorm_backward, layernorm_forward
from .layer import BatchNorm

#: the normalisations an MLP can put on its hidden pre-activations
NORMS = (None, "batch", "layer", "group", "batch_l1", "batch_linf")
_LP = {"batch_l1": 1, "batch_linf": np.inf}     # l_p-BN (bnref.experiments.lp_batchnorm)

__all__ = ["MLP", "train"]


def __getattr__(name):
    # nonstationary_noise lives with the other noise helpers in bnref.experiments.noise; it
    # stays importable from here (the API page documents it as bnref.mlp.nonstationary_noise).
    # Looked up lazily because bnref.experiments imports this module.
    if name == "nonstationary_noise":
        from .experiments.noise import nonstationary_noise
        return nonstationary_noise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_ACTIVATIONS = {
    # name: (f(z), f'(z) expressed with a = f(z) and z)
    "sigmoid": (lambda xp, z: 1.0 / (1.0 + xp.exp(-z)), lambda xp, a, z: a * (1.0 - a)),
    "tanh": (lambda xp, z: xp.tanh(z), lambda xp, a, z: 1.0 - a * a),
    "relu": (lambda xp, z: xp.maximum(z, 0), lambda xp, a, z: (z > 0).astype(z.dtype)),
    "linear": (lambda xp, z: z, lambda xp, a, z: xp.ones_like(z)),
}


class MLP:
    """A small MLP classifier with optional normalisation of every hidden layer.

    Parameters
    ----------
    sizes : list of int
        ``[n_in, hidden_1, ..., n_classes]``.
    activation : {"sigmoid", "tanh", "relu", "linear"}
    norm : {None, "batch", "layer", "group", "batch_l1", "batch_linf"}
        ``"batch_l1"``/``"batch_linf"``: l_p-BN (``bnref.experiments.lp_batchnorm``), with
        batch statistics in eval mode too. Normalisation of each hidden pre-activation ``z = x @ W.T + b``, before the activation
        (the placement of Ioffe & Szegedy). With a norm the bias ``b`` is dropped: beta
        takes its role.
    init_scale : float, optional
        Standard deviation of the initial weights; default ``sqrt(1 / fan_in)``
        (``sqrt(2 / fan_in)`` for ReLU).
    seed : int
    xp : module, default numpy
    num_groups : int, default 4
        Groups for ``norm="group"`` (the hidden width must be divisible by it).
    momentum, eps : BatchNorm settings.
    noise : callable, optional
        ``noise(l, H, rng, xp) -> (scale, shift)``: injected after the norm of every hidden
        layer in training, ``z <- z * scale + shift`` (see :func:`bnref.experiments.nonstationary_noise`).
    dtype : default float64

    Notes
    -----
    Weights are in PyTorch's layout, like ``torch.nn.Linear.weight`` and
    :func:`bnref.fold_linear`: ``params["W{l}"]`` has shape ``(fan_out, fan_in)`` and a layer
    computes ``x @ W.T + b``. They are stored column-major (``W.T`` is C-contiguous), so that
    ``x @ W.T`` is one BLAS call on contiguous memory.

    Examples
    --------
    >>> import numpy as np
    >>> net = MLP([4, 8, 3], norm="batch", seed=0)
    >>> X, y = np.random.default_rng(0).normal(size=(16, 4)), np.arange(16) % 3
    >>> loss, grads = net.loss_and_grads(X, y)
    >>> sorted(grads)
    ['W0', 'W1', 'b1', 'beta0', 'gamma0']
    """

    def __init__(self, sizes, activation="sigmoid", norm=None, init_scale=None, seed=0, xp=np,
                 num_groups=4, momentum=0.1, eps=1e-5, noise=None, dtype=np.float64):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.sizes, self.activation, self.norm, self.xp = list(sizes), activation, norm, xp
        self.num_groups, self.eps, self.noise = num_groups, eps, noise
        self.rng = np.random.default_rng(seed)
        self.params = {}
        self.bn = []                               # BatchNorm layers (norm == "batch")
        n_layers = len(sizes) - 1
        for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            std = init_scale if init_scale is not None else np.sqrt((2.0 if activation == "relu" else 1.0) / fan_in)
            W_t = self.rng.normal(0.0, std, size=(fan_in, fan_out)).astype(dtype)   # (in, out), C order
            self.params[f"W{l}"] = xp.asarray(W_t).T                  # (out, in): PyTorch's layout
            hidden = l < n_layers - 1
            if hidden and norm is not None:
                self.params[f"gamma{l}"] = xp.ones(fan_out, dtype)
                self.params[f"beta{l}"] = xp.zeros(fan_out, dtype)
                if norm == "batch":
                    self.bn.append(BatchNorm(fan_out, eps=eps, momentum=momentum, dtype=dtype, xp=xp))
                if norm == "group" and fan_out % num_groups:
                    raise ValueError(f"hidden width {fan_out} is not divisible by num_groups={num_groups}")
            else:
                self.params[f"b{l}"] = xp.zeros(fan_out, dtype)
        self.training = True
        self.bn_frozen = False                     # see freeze_bn
        self.preacts, self.normed, self.acts, self.grad_preacts = [], [], [], []

    def copy(self):
        """An independent deep copy (parameters, BN running statistics, RNG state).

        Examples
        --------
        >>> net = MLP([4, 8, 3], norm="batch")
        >>> twin = net.copy()
        >>> twin.params["W0"] += 1
        >>> bool((twin.params["W0"] != net.params["W0"]).all())
        True
        """
        import copy

        return copy.deepcopy(self, {id(self.xp): self.xp})   # the array module is shared, not copied

    def __repr__(self):
        mode = "" if self.training else ", eval mode"
        return (f"MLP({self.sizes}, activation={self.activation!r}, norm={self.norm!r}{mode}"
                f"{', BN frozen' if self.bn_frozen else ''})")

    @property
    def n_hidden(self):
        return len(self.sizes) - 2

    def train(self, mode=True):
        """Training mode (batch statistics for BN, unless frozen); returns ``self``."""
        self.training = bool(mode)
        for bn in self.bn:
            bn.train(mode and not self.bn_frozen)
        return self

    def freeze_bn(self, frozen=True):
        """Keep the BN layers in eval mode while the rest trains (or stop doing so); returns ``self``.

        PyTorch's usual recipe for fine-tuning with small batches (``model.train()``, then
        ``.eval()`` on every BN layer): the forward pass uses the running statistics, which stay
        fixed, and gamma and beta still learn. Training and test time then see the same
        statistics.

        Examples
        --------
        >>> import numpy as np
        >>> net = MLP([4, 8, 3], norm="batch", seed=0).freeze_bn()
        >>> X, y = np.random.default_rng(0).normal(size=(16, 4)), np.arange(16) % 3
        >>> _ = net.loss_and_grads(X, y)
        >>> net.bn[0].running_mean.tolist() == [0.0] * 8     # not updated
        True
        """
        self.bn_frozen = bool(frozen)
        return self.train(self.training)

    def eval(self):
        """Eval mode (running statistics for BN); returns ``self``."""
        return self.train(False)

    def _norm_forward(self, l, z):
        p = self.params
        if self.norm in _LP:
            from .experiments.lp_batchnorm import lp_batchnorm_forward   # (experiments imports mlp)
            return lp_batchnorm_forward(z, p[f"gamma{l}"], p[f"beta{l}"], _LP[self.norm], self.eps)
        if self.norm == "batch":
            bn = self.bn[l]
            bn.gamma, bn.beta = p[f"gamma{l}"], p[f"beta{l}"]   # the layer shares our arrays
            return bn(z), bn
        if self.norm == "layer":
            return layernorm_forward(z, p[f"gamma{l}"], p[f"beta{l}"], self.eps)
        return groupnorm_forward(z, p[f"gamma{l}"], p[f"beta{l}"], self.num_groups, self.eps)

    def _norm_backward(self, l, dz, cache):
        if self.norm in _LP:
            from .experiments.lp_batchnorm import lp_batchnorm_backward
            return lp_batchnorm_backward(dz, cache)
        if self.norm == "batch":
            dx = cache.backward(dz)
            return dx, cache.dgamma, cache.dbeta
        if self.norm == "layer":
            return layernorm_backward(dz, cache)
        return groupnorm_backward(dz, cache)

    def _pass_on(self, l, a):
        """What hidden layer ``l`` passes on given its activation ``a``, and what its backward needs.

        The identity here; a subclass adds a step between the activation and the next layer
        (:class:`bnref.experiments.dropout.DropoutMLP`: dropout) by overriding this and
        :meth:`_pass_on_backward`.
        """
        return a, None

    def _pass_on_backward(self, l, da, passed):
        """dL/da from dL/d(what layer ``l`` passed on); ``passed`` is what :meth:`_pass_on` returned."""
        return da

    def forward(self, X, training=None):
        """Logits for ``X`` (N, n_in); records ``preacts``, ``normed`` and ``acts`` per hidden layer."""
        xp, p = self.xp, self.params
        if training is not None and training != self.training:
            self.train(training)
        f, _ = _ACTIVATIONS[self.activation]
        self.preacts, self.normed, self.acts, self._caches = [], [], [], []
        a = X
        for l in range(self.n_hidden):
            z = a @ p[f"W{l}"].T                                 # (N, H_l)
            if self.norm is None:
                z = z + p[f"b{l}"]
                self.preacts.append(z)
                zn, cache, noise = z, None, None
            else:
                self.preacts.append(z)
                zn, cache = self._norm_forward(l, z)
                noise = None
                if self.noise is not None and self.training:
                    noise = self.noise(l, z.shape[1], self.rng, xp)
                    zn = zn * noise[0] + noise[1]
            self.normed.append(zn)
            act = f(xp, zn)
            a, passed = self._pass_on(l, act)                 # what the next layer gets
            self.acts.append(a)
            self._caches.append((cache, noise, act, passed))
        L = self.n_hidden
        return a @ p[f"W{L}"].T + p[f"b{L}"]                    # (N, n_classes)

    @contextlib.contextmanager
    def frozen_running_stats(self):
        """``with net.frozen_running_stats():`` training-mode passes in the block normalise with
        their batch statistics but leave every BN layer's running statistics as they were (for
        measurements that must not disturb the model).

        Examples
        --------
        >>> net = MLP([4, 8, 3], norm="batch", seed=0)
        >>> X = np.random.default_rng(0).normal(size=(16, 4))
        >>> with net.frozen_running_stats():
        ...     _ = net.forward(X, training=True)
        >>> float(net.bn[0].running_mean.max()), int(net.bn[0].num_batches_tracked)
        (0.0, 0)
        """
        saved = [(bn.running_mean, bn.running_var, bn.num_batches_tracked) for bn in self.bn]
        try:
            yield self
        finally:
            for bn, (rm, rv, nb) in zip(self.bn, saved):
                bn.running_mean, bn.running_var, bn.num_batches_tracked = rm, rv, nb

    def loss_and_grads(self, X, y, update_running_stats=True):
        """Mean softmax cross-entropy on ``(X, y)`` in training mode, and its gradients.

        Returns ``(loss, grads)`` with ``grads[name]`` shaped like ``params[name]``; records
        ``grad_preacts[l]`` = dL/dz for each hidden layer. With
        ``update_running_stats=False`` the BN running statistics are left as they were (for
        measurements that must not disturb the model).
        """
        xp, p = self.xp, self.params
        was_training = self.training
        self.train(True)
        with self.frozen_running_stats() if not update_running_stats else contextlib.nullcontext():
            logits = self.forward(X)
        N = X.shape[0]
        shifted = logits - logits.max(axis=1, keepdims=True)    # (N, K): avoids overflow in exp
        logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        loss = -logp[xp.arange(N), y].mean()
        dlogits = xp.exp(logp)
        dlogits[xp.arange(N), y] -= 1
        dlogits /= N                                            # (N, K)
        grads = {}
        L = self.n_hidden
        a_prev = self.acts[L - 1] if L > 0 else X
        grads[f"W{L}"] = (a_prev.T @ dlogits).T                  # (out, in), W's layout
        grads[f"b{L}"] = dlogits.sum(axis=0)
        da = dlogits @ p[f"W{L}"]
        _, fprime = _ACTIVATIONS[self.activation]
        self.grad_preacts = [None] * L
        for l in reversed(range(L)):
            cache, noise, act, passed = self._caches[l]
            da = self._pass_on_backward(l, da, passed)
            dzn = da * fprime(xp, act, self.normed[l])           # (N, H_l)
            if self.norm is None:
                dz = dzn
                grads[f"b{l}"] = dz.sum(axis=0)
            else:
                if noise is not None:
                    dzn = dzn * noise[0]
                dz, grads[f"gamma{l}"], grads[f"beta{l}"] = self._norm_backward(l, dzn, cache)
            self.grad_preacts[l] = dz
            a_prev = self.acts[l - 1] if l > 0 else X
            grads[f"W{l}"] = (a_prev.T @ dz).T                   # (out, in)
            da = dz @ p[f"W{l}"]
        self.train(was_training)
        return float(loss), grads

    def step(self, grads, lr):
        """Plain SGD: ``param -= lr * grad`` for every parameter."""
        for name, g in grads.items():
            self.params[name] -= lr * g

    def predict(self, X):
        """Class predictions in eval mode (BN uses running statistics)."""
        was_training = self.training
        logits = self.forward(X, training=False)
        self.train(was_training)
        return logits.argmax(axis=1)

    def accuracy(self, X, y):
        """Fraction of ``X`` classified correctly, in eval mode."""
        return float((self.predict(X) == y).mean())


def train(net, data, steps, batch_size=64, lr=0.1, seed=0, callback=None, eval_every=None):
    """Train ``net`` with mini-batch SGD on ``data = (X_train, y_train, X_test, y_test)``.

    Parameters
    ----------
    net : MLP
    data : tuple of arrays
    steps : int
        Number of SGD steps (mini-batches), reshuffling at every epoch.
    batch_size : int, default 64
    lr : float, default 0.1
    seed : int
        Seed of the batch order.
    callback : callable, optional
        ``callback(step, net)``, called after each step's forward/backward and before its
        update, so ``net.preacts`` holds that batch's pre-activations.
    eval_every : int, optional
        Evaluate train and test accuracy (eval mode) every this many steps and at the end.

    Returns
    -------
    history : dict
        ``loss`` (per step), ``eval_step``, ``train_acc``, ``test_acc``, and ``diverged``
        (True if the loss became non-finite; training stops there).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> data = load_digits()
    >>> net = MLP([64, 32, 10], norm="batch", seed=0)
    >>> h = train(net, data, steps=200, lr=0.5, eval_every=100)
    >>> h["test_acc"][-1] > 0.85
    True
    """
    X_train, y_train, X_test, y_test = data
    xp = net.xp
    rng = np.random.default_rng(seed)
    history = {"loss": [], "eval_step": [], "train_acc": [], "test_acc": [], "diverged": False}
    n = X_train.shape[0]
    order, pos = rng.permutation(n), 0
    for t in range(steps):
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        Xb, yb = xp.asarray(X_train[idx]), xp.asarray(y_train[idx])
        loss, grads = net.loss_and_grads(Xb, yb)
        history["loss"].append(loss)
        if not np.isfinite(loss):
            history["diverged"] = True
            break
        if callback is not None:
            callback(t, net)
        net.step(grads, lr)
        if eval_every and ((t + 1) % eval_every == 0 or t == steps - 1):
            history["eval_step"].append(t + 1)
            history["train_acc"].append(net.accuracy(xp.asarray(X_train), xp.asarray(y_train)))
            history["test_acc"].append(net.accuracy(xp.asarray(X_test), xp.asarray(y_test)))
    return history
