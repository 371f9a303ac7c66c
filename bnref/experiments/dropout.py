"""Chapter 6: dropout and BN, the variance shift of Li et al. (2019).

Inverted dropout keeps a unit with probability ``1 - p`` and divides it by ``1 - p``, so its
mean is the same in training and at test time, but not its variance. A BN layer *after* the
dropout normalises in training with the variance it sees with dropout on, and its
``running_var`` keeps that variance; at test time dropout is off and the variance is
smaller, so the normalised output is too small. Dropout after the last BN layer has no BN
after it to mislead.

- :func:`dropout_forward`: inverted dropout;
- :func:`dropout_variance`: train and test variance of one unit after dropout (analytic);
- :func:`linear_variance_ratio`: the test / train variance ratio of ``z = d @ W.T`` where
  ``d`` is dropout of ``a`` (analytic, from the statistics of ``a``);
- :class:`DropoutMLP`: :class:`bnref.mlp.MLP` with dropout after chosen hidden layers;
- :func:`variance_shift`: test-time variance / ``running_var`` for every BN unit of a trained
  network, and :func:`predicted_variance_shift`, its analytic value; :func:`reestimate_bn`: recompute the running statistics with dropout off;
- :func:`dropout_runs`: train the networks the chapter compares and measure both.
"""
import numpy as np

from ..mlp import _ACTIVATIONS, MLP, train
from ._util import _np

__all__ = ["dropout_forward", "dropout_variance", "linear_variance_ratio", "DropoutMLP",
           "variance_shift", "predicted_variance_shift", "reestimate_bn", "dropout_runs"]


def dropout_forward(x, p, rng, xp=np):
    """Inverted dropout: zero each entry of ``x`` with probability ``p``, divide the rest by ``1 - p``.

    Returns
    -------
    y : ndarray, like ``x``
    mask : ndarray, like ``x``
        ``y = x * mask``; ``mask`` is 0 or ``1 / (1 - p)`` (and the backward pass is
        ``dx = dy * mask``).

    Examples
    --------
    >>> x = np.ones((100_000, 1))
    >>> y, mask = dropout_forward(x, 0.3, np.random.default_rng(0))
    >>> np.unique(mask).round(4).tolist()                  # dropped, or kept and divided by 0.7
    [0.0, 1.4286]
    >>> round(float(y.mean()), 2)                            # the mean is kept
    1.0
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
    keep = xp.asarray(rng.random(x.shape) >= p)
    mask = keep.astype(x.dtype) / (1.0 - p)
    return x * mask, mask


def dropout_variance(mean, var, p):
    """Variance of one unit after inverted dropout in training, and at test time (dropout off).

    For a unit ``a`` with mean ``mu`` and variance ``s2`` and an independent mask ``m`` that
    is ``1 / (1 - p)`` with probability ``1 - p`` and 0 otherwise: ``E[a m] = mu`` and
    ``E[(a m)^2] = (s2 + mu^2) / (1 - p)``, so the training variance is
    ``(s2 + mu^2) / (1 - p) - mu^2 = s2 + p / (1 - p) * (s2 + mu^2)``; at test time it is ``s2``.

    Returns
    -------
    train_var, test_var : float or ndarray

    Examples
    --------
    >>> dropout_variance(mean=1.0, var=1.0, p=0.5)             # (1 + 1) / 0.5 - 1
    (3.0, 1.0)
    """
    return (var + mean ** 2) / (1.0 - p) - mean ** 2, var


def linear_variance_ratio(a, W, p):
    """Test / train variance of each unit of ``z = d @ W.T`` where ``d`` is inverted dropout of ``a``.

    The masks are independent of ``a`` and of each other, so dropout leaves the covariances
    of ``a`` between different units as they are and adds ``p / (1 - p) * E[a_j^2]`` to
    each unit's variance (:func:`dropout_variance`): the training covariance of ``d`` is
    ``Sigma + diag(p / (1 - p) * E[a^2])``, with ``Sigma`` the covariance of ``a``, and
    ``var(z_i) = w_i^T C w_i`` for either covariance ``C``.

    Parameters
    ----------
    a : ndarray (N, H)
        Samples of the layer's input with dropout off (the test-time input).
    W : ndarray (C, H)
        The layer's weights (PyTorch's layout).
    p : float

    Returns
    -------
    ndarray (C,)
        ``var_test(z_i) / var_train(z_i)``: below 1 for ``p > 0``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(1.0, 1.0, size=(100_000, 1))          # mean 1, variance 1
    >>> np.round(linear_variance_ratio(a, np.ones((1, 1)), 0.5), 2)   # 1 / 3
    array([0.33])
    """
    a = np.asarray(a, dtype=float)
    W = np.asarray(W, dtype=float)
    cov = np.cov(a, rowvar=False, bias=True).reshape(a.shape[1], a.shape[1])   # (H, H)
    second = (a * a).mean(axis=0)                                              # E[a_j^2], (H,)
    var_test = np.einsum("ij,jk,ik->i", W, cov, W)
    var_train = var_test + p / (1.0 - p) * (W * W) @ second
    return var_test / var_train


class DropoutMLP(MLP):
    """:class:`bnref.mlp.MLP` with inverted dropout after the activation of chosen hidden layers.

    Hidden layer ``l`` (0-based) is ``Linear -> [BN] -> activation -> [dropout if l in
    drop_after]``. Dropout after hidden layer ``l < L - 1`` comes *before* the BN of layer
    ``l + 1``; after the last hidden layer (``l = L - 1``) it comes after every BN, just
    before the classifier. In eval mode there is no dropout. ``norm`` may be ``None`` or
    ``"batch"``.

    Parameters
    ----------
    sizes : list of int
    p : float in [0, 1)
        The dropout probability.
    drop_after : sequence of int
        Hidden layers whose activation is dropped.
    **kwargs
        For :class:`bnref.mlp.MLP` (``activation``, ``norm``, ``seed``, ...).

    Examples
    --------
    >>> net = DropoutMLP([4, 8, 8, 3], p=0.5, drop_after=(0,), norm="batch", activation="relu")
    >>> X, y = np.random.default_rng(0).normal(size=(16, 4)), np.arange(16) % 3
    >>> loss, grads = net.loss_and_grads(X, y)
    >>> float((net.acts[0] == 0).mean()) > 0.5             # ReLU zeros and dropped units
    True
    >>> sorted(grads)
    ['W0', 'W1', 'W2', 'b2', 'beta0', 'beta1', 'gamma0', 'gamma1']
    """

    def __init__(self, sizes, p=0.5, drop_after=(), **kwargs):
        super().__init__(sizes, **kwargs)
        if self.norm not in (None, "batch"):
            raise ValueError(f"DropoutMLP supports norm=None or 'batch', got {self.norm!r}")
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
        bad = [l for l in drop_after if not 0 <= l < self.n_hidden]
        if bad:
            raise ValueError(f"drop_after must name hidden layers 0..{self.n_hidden - 1}, got {bad}")
        self.p, self.drop_after = float(p), tuple(drop_after)
        self.masks = []

    def __repr__(self):
        return super().__repr__()[:-1] + f", p={self.p}, drop_after={self.drop_after})"

    def forward(self, X, training=None):
        """Logits; records ``preacts`` (what enters BN), ``normed``, ``acts`` (after dropout) and ``masks``."""
        self.masks = []
        return super().forward(X, training)

    def _pass_on(self, l, a):
        # dropout on the activation, in training mode only; the mask is what backward needs
        mask = None
        if self.training and self.p > 0 and l in self.drop_after:
            a, mask = dropout_forward(a, self.p, self.rng, self.xp)
        self.masks.append(mask)
        return a, mask

    def _pass_on_backward(self, l, da, mask):
        return da if mask is None else da * mask                # through the dropout



def _eval_pass(net, X):
    """One eval-mode pass of ``net`` over ``X`` (dropout off, BN on its running statistics).

    Returns the recorded ``(preacts, acts)`` per hidden layer as NumPy arrays; the net's mode
    is left as it was.
    """
    was_training = net.training
    net.forward(net.xp.asarray(X), training=False)
    recorded = [_np(z) for z in net.preacts], [_np(a) for a in net.acts]
    net.train(was_training)
    return recorded


def variance_shift(net, X):
    """Test-time variance / ``running_var`` of every BN unit of ``net``, on inputs ``X``.

    One eval-mode pass (dropout off, BN with its running statistics) records what enters
    each BN layer; its variance over ``X``, unit by unit, is divided by the layer's
    ``running_var``. A ratio of 1 means BN's test-time normalisation matches what it sees;
    below 1, the test-time outputs are too small (by the square root of the ratio).

    Returns
    -------
    list of ndarray
        One per hidden layer, shape (H_l,).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> X_train, y_train, X_test, y_test = data = load_digits()
    >>> net = DropoutMLP([64, 32, 32, 10], p=0.5, drop_after=(0,), norm="batch", activation="relu")
    >>> _ = train(net, data, steps=100)
    >>> ratio = variance_shift(net, X_test)
    >>> float(np.median(ratio[1])) < 0.8                   # after the dropout: too small
    True
    """
    preacts, _ = _eval_pass(net, X)
    return [z.var(axis=0) / _np(bn.running_var) for z, bn in zip(preacts, net.bn)]


def predicted_variance_shift(net, X):
    """The variance ratio :func:`variance_shift` should find, from :func:`linear_variance_ratio`.

    For each hidden layer ``l >= 1`` whose input is dropped (``l - 1`` in ``net.drop_after``),
    the analytic test / train variance ratio of its pre-activation, computed from the
    eval-mode activations of layer ``l - 1`` on ``X`` and the weights ``W_l``; ``None`` for
    the layers without dropout before them (their ratio should be 1).

    Returns
    -------
    list of (ndarray (H_l,) or None)

    Examples
    --------
    >>> net = DropoutMLP([4, 8, 8, 3], p=0.5, drop_after=(0,), norm="batch", activation="relu")
    >>> pred = predicted_variance_shift(net, np.random.default_rng(0).normal(size=(256, 4)))
    >>> pred[0] is None, bool((pred[1] < 1).all())
    (True, True)
    """
    _, acts = _eval_pass(net, X)
    return [linear_variance_ratio(acts[l - 1], _np(net.params[f"W{l}"]), net.p)
            if l > 0 and l - 1 in net.drop_after else None
            for l in range(net.n_hidden)]


def reestimate_bn(net, X, batch_size=64, seed=0):
    """Recompute every BN layer's running statistics with dropout off; returns ``net``.

    The running statistics are reset and re-averaged (cumulative average, PyTorch's
    ``momentum=None``) over one pass of ``X`` in batches, in training mode but with the
    dropout masks removed, and no weight update: the statistics then match what BN sees at
    test time. (A simple remedy; Li et al. propose others.)

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> X_train, y_train, X_test, y_test = data = load_digits()
    >>> net = DropoutMLP([64, 32, 32, 10], p=0.5, drop_after=(0,), norm="batch", activation="relu")
    >>> _ = train(net, data, steps=100)
    >>> ratio = variance_shift(reestimate_bn(net, X_train), X_test)
    >>> bool(0.8 < np.median(ratio[1]) < 1.25)
    True
    """
    xp = net.xp
    p, momenta = net.p, [bn.momentum for bn in net.bn]
    for bn in net.bn:
        bn.running_mean, bn.running_var = xp.zeros_like(bn.running_mean), xp.ones_like(bn.running_var)
        bn.num_batches_tracked, bn.momentum = 0, None
    net.p = 0.0
    was_training = net.training
    order = np.random.default_rng(seed).permutation(len(X))
    for start in range(0, len(X) - batch_size + 1, batch_size):
        net.forward(xp.asarray(X[order[start:start + batch_size]]), training=True)
    net.p = p
    for bn, m in zip(net.bn, momenta):
        bn.momentum = m
    net.train(was_training)
    return net


def dropout_runs(data, ps, placements, sizes=(64, 64, 64, 64, 10), activation="relu", lr=0.1,
                 steps=600, batch_size=64, seeds=(0, 1, 2), xp=np):
    """Train BN networks with dropout in different places and measure the variance shift.

    Parameters
    ----------
    data : tuple
        ``(X_train, y_train, X_test, y_test)``.
    ps : sequence of float
        Dropout probabilities.
    placements : dict
        ``{name: drop_after}``, e.g. ``{"before BN": (0, 1), "after the last BN": (2,)}``.
    sizes, activation, lr, steps, batch_size : the network and its training
    seeds : sequence of int
        Each seeds the weights, the dropout masks and the batch order of one run.

    Returns
    -------
    dict
        ``{(name, p): list of dict per seed}``; each dict holds ``ratio`` (per BN layer, the
        :func:`variance_shift` on the test set), ``predicted`` (its analytic value,
        :func:`predicted_variance_shift`), ``test_acc`` (running statistics as
        trained), ``test_acc_reest`` (after :func:`reestimate_bn` on the training set) and
        ``train_acc``.

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> r = dropout_runs(load_digits(), [0.5], {"before BN": (0,)}, sizes=(64, 16, 16, 10),
    ...                  steps=50, seeds=(0,))
    >>> list(r), len(r["before BN", 0.5][0]["ratio"])
    ([('before BN', 0.5)], 2)
    """
    X_train, y_train, X_test, y_test = data
    out = {}
    for name, drop_after in placements.items():
        for p in ps:
            runs = []
            for seed in seeds:
                net = DropoutMLP(list(sizes), p=p, drop_after=drop_after, activation=activation,
                                 norm="batch", seed=seed, xp=xp)
                train(net, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
                run = dict(ratio=variance_shift(net, X_test),
                           predicted=predicted_variance_shift(net, X_test),
                           test_acc=net.accuracy(xp.asarray(X_test), xp.asarray(y_test)),
                           train_acc=net.accuracy(xp.asarray(X_train), xp.asarray(y_train)))
                reestimate_bn(net, X_train, batch_size=batch_size, seed=seed)
                run["test_acc_reest"] = net.accuracy(xp.asarray(X_test), xp.asarray(y_test))
                runs.append(run)
            out[name, p] = runs
    return out
