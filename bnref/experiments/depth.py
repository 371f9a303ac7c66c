"""Chapter 6: deep plain BN networks at initialisation (gradients and activation scales).

- :func:`deep_mlp`: a plain ``Linear -> [BN] -> activation`` network of any depth, its
  weights a multiple (``gain``) of the standard initialisation;
- :func:`init_gradient_norms`: the gradient norm of every hidden layer's weights at
  initialisation, on one digits batch; :func:`growth_per_layer` turns it into a per-layer
  growth factor (Yang et al. 2019 predict ``sqrt(pi / (pi - 1))`` for ReLU with BN:
  :data:`YANG_RELU_BN_GROWTH`);
- :func:`activation_scales`: the standard deviation of each layer's pre-activation before
  and after BN, for a too-small or too-large initialisation;
- :func:`input_drift` (with :func:`drift_measures`): how far each layer's input distribution
  moves from its initial one during training, layer by layer (internal covariate shift against
  depth);
- :func:`trained_accuracy` and :func:`accuracy_grid`: the test accuracy after a fixed number of
  steps, with and without BN, against depth, training-set size and learning rate.
"""
import itertools

import numpy as np

from ..mlp import MLP, train
from ._util import _norm, _np

__all__ = ["YANG_RELU_BN_GROWTH", "deep_mlp", "init_gradient_norms", "growth_per_layer",
           "gradient_profiles", "activation_scales", "drift_measures", "input_drift",
           "trained_accuracy", "accuracy_grid"]

#: Yang et al. (2019): with BN before ReLU, the squared gradient norm of the weights grows by
#: pi / (pi - 1) per layer towards the input (wide network, large batch), the norm by its root.
YANG_RELU_BN_GROWTH = float(np.sqrt(np.pi / (np.pi - 1)))


def deep_mlp(depth, width=64, activation="relu", norm="batch", gain=1.0, seed=0, n_in=64,
             n_classes=10, xp=np):
    """A plain MLP with ``depth`` hidden layers of ``width`` units, weights ``gain`` times the standard init.

    The standard init is that of :class:`bnref.mlp.MLP`: weights of standard deviation
    ``sqrt(2 / fan_in)`` for ReLU (He) and ``sqrt(1 / fan_in)`` otherwise (for tanh, Xavier's
    ``sqrt(2 / (fan_in + fan_out))`` when fan_in = fan_out). ``gain`` multiplies every
    hidden layer's weights (not the classifier's).

    Parameters
    ----------
    depth : int
        Number of hidden layers (each ``Linear -> [BN] -> activation``).
    width : int, default 64
    activation : {"relu", "tanh", "sigmoid", "linear"}
    norm : {"batch", None}
    gain : float, default 1.0
    seed : int
    n_in, n_classes : int
        64 pixels and 10 classes for the digits.
    xp : module, default numpy

    Returns
    -------
    MLP

    Examples
    --------
    >>> net = deep_mlp(3, width=8, gain=0.5)
    >>> net.sizes
    [64, 8, 8, 8, 10]
    >>> round(float(net.params["W1"].std() / np.sqrt(2 / 8)), 1)     # half of He's std
    0.5
    """
    net = MLP([n_in] + [width] * depth + [n_classes], activation=activation, norm=norm,
              seed=seed, xp=xp)
    for l in range(depth):
        net.params[f"W{l}"] *= gain             # in place: W's column-major layout stays
    return net


def _batch(data, batch_size, seed):
    """A random training batch (X, y) of ``batch_size`` examples, drawn with ``seed``."""
    X_train, y_train = data[0], data[1]
    idx = np.random.default_rng(seed).choice(len(X_train), batch_size, replace=False)
    return X_train[idx], y_train[idx]


def init_gradient_norms(data, depth, width=64, activation="relu", norm="batch", batch_size=128,
                        gain=1.0, seed=0, xp=np):
    """The gradient norm ``||dL/dW_l||`` of every hidden layer at initialisation, on one batch.

    One forward and backward pass in training mode (BN with batch statistics) of
    :func:`deep_mlp` on ``batch_size`` training examples drawn with ``seed`` (which also
    seeds the weights); the network is not updated.

    Returns
    -------
    ndarray (depth,)
        Frobenius norm of the gradient of the mean cross-entropy with respect to the weight
        matrix of hidden layer 1, 2, ..., ``depth`` (the Linear before each BN).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> g = init_gradient_norms(load_digits(), depth=20, norm="batch")
    >>> g.shape, bool(g[1] > 10 * g[-1])                  # larger towards the input
    ((20,), True)
    """
    net = deep_mlp(depth, width, activation, norm, gain, seed, xp=xp)
    X, y = _batch(data, batch_size, seed)
    _, grads = net.loss_and_grads(xp.asarray(X), xp.asarray(y), update_running_stats=False)
    return np.array([_norm(grads[f"W{l}"], xp) for l in range(depth)])


def growth_per_layer(grad_norms, skip_first=True):
    """Growth factor of the gradient norm per layer, going from the output towards the input.

    ``exp(-slope)`` of the least-squares line through ``log ||dW_l||`` against ``l``: above 1
    the gradient explodes towards the input, below 1 it vanishes.

    Parameters
    ----------
    grad_norms : array (depth,)
        As :func:`init_gradient_norms` returns it, layer 1 first.
    skip_first : bool, default True
        Leave layer 1 out of the fit: its input is the raw pixels, not a hidden layer's
        output, so its gradient has a different scale.

    Returns
    -------
    float

    Examples
    --------
    >>> round(growth_per_layer(3.0 * 1.2 ** -np.arange(10.0)), 6)
    1.2
    """
    g = np.log(np.asarray(grad_norms, dtype=float))
    l = np.arange(len(g))
    if skip_first:
        g, l = g[1:], l[1:]
    slope = np.polyfit(l, g, 1)[0]
    return float(np.exp(-slope))


def gradient_profiles(data, depths, activations=("relu", "tanh"), norms=(None, "batch"),
                      seeds=(0, 1, 2), **kwargs):
    """:func:`init_gradient_norms` for every depth, activation and norm, averaged over seeds.

    The average over seeds is geometric (the mean of the logarithms), as the quantities are
    compared on a log scale.

    Parameters
    ----------
    data : tuple
    depths : sequence of int
    activations, norms, seeds : sequences
    **kwargs
        ``width``, ``batch_size``, ``gain``: see :func:`init_gradient_norms`.

    Returns
    -------
    dict
        ``{(activation, norm, depth): ndarray (depth,)}`` of gradient norms, layer 1 first.

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> r = gradient_profiles(load_digits(), [3], activations=("relu",), seeds=(0,), width=8)
    >>> sorted(r, key=str), r["relu", "batch", 3].shape
    ([('relu', 'batch', 3), ('relu', None, 3)], (3,))
    """
    out = {}
    for act in activations:
        for norm in norms:
            for depth in depths:
                logs = [np.log(init_gradient_norms(data, depth, activation=act, norm=norm,
                                                   seed=s, **kwargs)) for s in seeds]
                out[act, norm, depth] = np.exp(np.mean(logs, axis=0))
    return out


def activation_scales(data, depth, gain, activation="relu", norm=None, width=64, batch_size=128,
                      seed=0, xp=np):
    """Standard deviation of each hidden layer's pre-activation, before and after BN, at init.

    One training-mode forward pass of :func:`deep_mlp` (weights ``gain`` times the standard
    init) on a batch of digits. The scale of a layer is the root mean square over its units
    of each unit's standard deviation over the batch, ``sqrt(mean_j var_j)``: what BN divides
    by, unit by unit.

    Returns
    -------
    dict
        ``preact`` (depth,): the scale of ``z = W a`` (what enters BN, or the activation
        without BN); ``normed`` (depth,): the scale of what enters the activation (after BN,
        ``gamma`` = 1 at init; the same as ``preact`` without BN).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> s = activation_scales(load_digits(), depth=10, gain=0.5, norm=None)
    >>> bool(s["preact"][-1] < 0.01 * s["preact"][0])          # shrinks layer after layer
    True
    >>> s = activation_scales(load_digits(), depth=10, gain=0.5, norm="batch")
    >>> np.round(s["normed"], 2).tolist() == [1.0] * 10         # reset to gamma = 1
    True
    """
    net = deep_mlp(depth, width, activation, norm, gain, seed, xp=xp)
    X, _ = _batch(data, batch_size, seed)
    net.train(True)
    net.forward(xp.asarray(X))

    def scale(z):
        return float(np.sqrt(_np(z).var(axis=0).mean()))     # var over the batch, mean over units

    return dict(preact=np.array([scale(z) for z in net.preacts]),
                normed=np.array([scale(z) for z in net.normed]))


# ------------------------------------------------------------------ input drift during training

def _positive_int(name, value):
    """``value`` as an int, or a ValueError naming ``name`` when it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def drift_measures(mean, std):
    """How far each layer's unit distributions have moved from the first record, layer by layer.

    For unit ``j`` of a layer with mean ``m_j(t)`` and standard deviation ``s_j(t)`` at record
    ``t``, the two measures are averaged over the layer's units:

    - ``mean_shift``: ``|m_j(t) - m_j(0)| / s_j(0)``, the move of the mean in units of the
      initial spread;
    - ``log_std_change``: ``|log(s_j(t) / s_j(0))|``, the change of scale as a log ratio
      (0.69 is a factor of 2 either way).

    Both are 0 for a distribution that has not moved (its first two moments).

    Parameters
    ----------
    mean, std : array (T, depth, width)
        Per record, layer and unit: the mean and the standard deviation over a fixed set of
        examples, as :func:`input_drift` records them. ``std[0]`` must be positive.

    Returns
    -------
    mean_shift, log_std_change : ndarray (T, depth)
        Row 0 is 0 (the reference itself).

    Examples
    --------
    >>> mean = np.array([[[0.0, 1.0]], [[0.5, 1.0]]])      # 2 records, 1 layer, 2 units
    >>> std = np.array([[[1.0, 2.0]], [[2.0, 2.0]]])
    >>> shift, scale = drift_measures(mean, std)
    >>> shift.tolist(), np.round(scale, 4).tolist()        # unit 0 moved by half its std, doubled
    ([[0.0], [0.25]], [[0.0], [0.3466]])
    """
    mean, std = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
    if mean.ndim != 3 or mean.shape != std.shape:
        raise ValueError(f"mean and std must both have shape (records, depth, width), got "
                         f"{mean.shape} and {std.shape}")
    if not (std[0] > 0).all():
        raise ValueError("std[0] (the reference record) must be positive for every unit, "
                         f"got a minimum of {std[0].min()!r}")
    mean_shift = (np.abs(mean - mean[0]) / std[0]).mean(axis=2)       # (T, depth): mean over units
    log_std_change = np.abs(np.log(std / std[0])).mean(axis=2)        # (T, depth)
    return mean_shift, log_std_change


def _record_moments(net, X, record):
    """Append to ``record`` the per-unit mean and std over ``X`` at every site of every layer.

    A training-mode forward pass (BN normalises with the statistics of ``X``, as in chapter 2's
    probe) that leaves the BN running statistics as they were. Sites: ``preact`` (``z = W a``,
    what enters BN, or the activation without BN), ``x_hat`` (BN's normalised ``z``, before
    ``gamma`` and ``beta``; BN nets only) and ``normed`` (what enters the activation).
    """
    was_training = net.training
    with net.frozen_running_stats():
        net.forward(X, training=True)
    net.train(was_training)
    sites = {"preact": net.preacts, "normed": net.normed}
    if net.norm == "batch":
        # what BN computes from the probe's own batch statistics (biased variance, its eps)
        sites["x_hat"] = [(z - z.mean(axis=0)) / net.xp.sqrt(z.var(axis=0) + net.eps)
                          for z in net.preacts]
    for site, zs in sites.items():
        record.setdefault(site, ([], []))
        record[site][0].append(np.stack([_np(z).mean(axis=0) for z in zs]))   # (depth, width)
        record[site][1].append(np.stack([_np(z).std(axis=0) for z in zs]))    # (depth, width)


def input_drift(data, depth, norm=None, activation="relu", width=32, lr=0.1, steps=300,
                every=50, batch_size=64, seed=0, xp=np):
    """Train a :func:`deep_mlp` on the digits and record how each layer's input distribution moves.

    Every ``every`` steps (from step 0, before the first update, to the end of training) the
    450 test images pass through the network in training mode without updating its running
    statistics; the mean and standard deviation over these fixed images of every unit, at every
    layer, are recorded, and :func:`drift_measures` compares them with step 0. The measured
    distribution is that of the pre-activation ``z_l = W_l a_{l-1}``, the input of the
    nonlinearity (without BN) or of BN: it moves when ``W_l`` or any layer below it changes.

    Parameters
    ----------
    data : tuple
        ``(X_train, y_train, X_test, y_test)``, as :func:`bnref.data.load_digits` returns.
    depth, width, activation, norm, seed
        The network, see :func:`deep_mlp` (standard initialisation); ``seed`` also seeds the
        batch order.
    lr, steps, batch_size : SGD settings, see :func:`bnref.mlp.train`.
    every : int, default 50
        Steps between records; a last record is taken after the final update.
    xp : module, default numpy

    Returns
    -------
    dict
        ``step`` (T,): the number of updates before each record; for each site ``"preact"``,
        ``"normed"`` and (with BN) ``"x_hat"`` (see below) a dict with ``mean`` and ``std``
        (T, depth, width) and their :func:`drift_measures` ``mean_shift`` and
        ``log_std_change`` (T, depth), layer 1 first; ``test_acc`` (eval mode, after
        training) and ``diverged``. Sites: ``preact`` is ``z``; ``x_hat`` BN's normalised
        ``z``, before ``gamma`` and ``beta``; ``normed`` what enters the activation
        (``gamma x_hat + beta`` with BN, ``z`` itself without).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> r = input_drift(load_digits(), depth=3, norm="batch", width=8, steps=20, every=10)
    >>> r["step"].tolist(), r["preact"]["mean_shift"].shape
    ([0, 10, 20], (3, 3))
    >>> bool(r["x_hat"]["mean_shift"].max() < 1e-6)        # normalised: nothing to move
    True
    """
    depth, steps, every = (_positive_int(n, v) for n, v in
                           (("depth", depth), ("steps", steps), ("every", every)))
    net = deep_mlp(depth, width, activation, norm, seed=seed, xp=xp)
    X_probe = xp.asarray(data[2])
    record, probe_steps = {}, []

    def probe(t, net):
        if t % every == 0:
            probe_steps.append(t)
            _record_moments(net, X_probe, record)

    with np.errstate(over="ignore", invalid="ignore"):       # divergence is a result, not an error
        history = train(net, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                        callback=probe)
        if not history["diverged"]:
            probe_steps.append(steps)
            _record_moments(net, X_probe, record)
    out = {"step": np.array(probe_steps), "diverged": history["diverged"],
           "test_acc": net.accuracy(X_probe, xp.asarray(data[3]))}
    for site, (means, stds) in record.items():
        mean, std = np.stack(means), np.stack(stds)               # (T, depth, width)
        shift, scale = drift_measures(mean, std)
        out[site] = dict(mean=mean, std=std, mean_shift=shift, log_std_change=scale)
    return out


# ------------------------------------------------------------------ accuracy against depth and data

def _subset(data, n_train, seed):
    """``data`` with a random ``n_train`` of the training examples (all of them for None)."""
    X_train, y_train, X_test, y_test = data
    if n_train is None:
        return data
    n_train = _positive_int("n_train", n_train)
    if n_train > len(X_train):
        raise ValueError(f"n_train must be at most the {len(X_train)} training examples, "
                         f"got {n_train}")
    idx = np.random.default_rng(seed).choice(len(X_train), n_train, replace=False)
    return X_train[idx], y_train[idx], X_test, y_test


def trained_accuracy(data, depth, norm=None, activation="relu", width=32, lr=0.1, steps=300,
                  batch_size=64, n_train=None, seed=0, xp=np):
    """Test accuracy of a :func:`deep_mlp` trained with SGD for a fixed number of steps.

    Parameters
    ----------
    data : tuple
        ``(X_train, y_train, X_test, y_test)``.
    depth, width, activation, norm : the network, see :func:`deep_mlp`.
    lr, steps, batch_size : SGD settings, see :func:`bnref.mlp.train`.
    n_train : int, optional
        Train on a random ``n_train`` of the training examples (drawn with ``seed``), at least
        ``batch_size``; default all of them. The test set is always the whole of it.
    seed : int
        Seeds the weights, the batch order and the subset.
    xp : module, default numpy

    Returns
    -------
    float
        Fraction of the test set classified correctly (eval mode); NaN if the training loss
        became non-finite (diverged).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> acc = trained_accuracy(load_digits(), depth=2, norm="batch", width=16, steps=100)
    >>> 0.8 < acc <= 1.0
    True
    """
    depth = _positive_int("depth", depth)
    batch_size = _positive_int("batch_size", batch_size)
    data = _subset(data, n_train, seed)
    if batch_size > len(data[0]):
        raise ValueError(f"batch_size must be at most the {len(data[0])} training examples "
                         f"(n_train), got {batch_size}")
    net = deep_mlp(depth, width, activation, norm, seed=seed, xp=xp)
    with np.errstate(over="ignore", invalid="ignore"):       # divergence is a result, not an error
        history = train(net, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    if history["diverged"]:
        return float("nan")
    return net.accuracy(xp.asarray(data[2]), xp.asarray(data[3]))


def accuracy_grid(data, depths=(3,), n_trains=(None,), lrs=(0.1,), seeds=(0,),
                  norms=(None, "batch"), **kwargs):
    """:func:`trained_accuracy` for every norm, depth, training-set size, learning rate and seed.

    Parameters
    ----------
    data : tuple
    depths : sequence of int
    n_trains : sequence of int or None
        Training-set sizes (None: all training examples).
    lrs, seeds, norms : sequences
    **kwargs
        ``activation``, ``width``, ``steps``, ``batch_size``: see :func:`trained_accuracy`.

    Returns
    -------
    dict
        ``acc``: ndarray (norms, depths, n_trains, lrs, seeds) of test accuracies (NaN for a
        diverged run), and the five sequences it is indexed by, under their argument names.

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> g = accuracy_grid(load_digits(), depths=(1, 2), lrs=(0.1, 0.3), width=8, steps=20)
    >>> g["acc"].shape                             # 2 norms, 2 depths, 1 size, 2 lrs, 1 seed
    (2, 2, 1, 2, 1)
    """
    for name, seq in (("depths", depths), ("n_trains", n_trains), ("lrs", lrs),
                      ("seeds", seeds), ("norms", norms)):
        if isinstance(seq, (str, bytes)) or not hasattr(seq, "__len__") or len(seq) == 0:
            raise ValueError(f"{name} must be a non-empty sequence, got {seq!r}")
    axes = (norms, depths, n_trains, lrs, seeds)
    acc = np.array([trained_accuracy(data, d, norm=norm, lr=lr, n_train=n, seed=s, **kwargs)
                    for norm, d, n, lr, s in itertools.product(*axes)])
    acc = acc.reshape([len(a) for a in axes])                 # (norms, depths, n_trains, lrs, seeds)
    return dict(acc=acc, norms=tuple(norms), depths=tuple(depths), n_trains=tuple(n_trains),
                lrs=tuple(lrs), seeds=tuple(seeds))
