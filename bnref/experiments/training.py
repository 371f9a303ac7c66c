"""Chapter 6: training the digits MLP with and without BN, and Santurkar et al. in miniature.

- :func:`train_curves`: one training run (a thin wrapper over :func:`bnref.mlp.train`);
- :func:`sweep`: the same run over the values of one hyperparameter, with and without BN;
  :func:`lr_sweep` (learning rate) and :func:`init_scale_sweep` (initial weight scale) are
  the two sweeps the chapter shows;
- :func:`unit_percentiles`: one hidden unit's input distribution during training;
- :func:`ics_gradient_change` (internal covariate shift as a change of gradient) and
  :func:`landscape_along_gradient` (loss and gradient along the gradient direction):
  measurements on one batch that leave the network as it was;
- :func:`measure_during_training`: train and, every ``every`` steps, apply a measurement to a
  fixed batch; :func:`ics_during_training` and :func:`landscape_during_training` are it with
  the two measurements above.
"""
import inspect
import re

import numpy as np

from ..mlp import MLP, train
from ._util import _norm, _np
from .noise import _FrozenNoise

__all__ = [
    "train_curves", "sweep", "lr_sweep", "init_scale_sweep", "unit_percentiles",
    "ics_gradient_change", "landscape_along_gradient",
    "measure_during_training", "ics_during_training", "landscape_during_training",
]

_SIZES = (64, 64, 64, 64, 10)            # the chapter's MLP: 64 pixels, three hidden layers of 64


def _layer_of(name):
    """Layer index of a parameter name such as ``W0``, ``gamma2`` or ``b3``."""
    return int(re.search(r"(\d+)$", name).group(1))


def train_curves(data, sizes=_SIZES, activation="sigmoid", norm=None, lr=0.1,
                 steps=300, batch_size=64, seed=0, init_scale=None, noise=None, eval_every=50,
                 callback=None, xp=np):
    """Train one digits MLP; a thin wrapper over :func:`bnref.mlp.train`.

    Parameters
    ----------
    data : tuple
        ``(X_train, y_train, X_test, y_test)``, as :func:`bnref.data.load_digits` returns.
    sizes, activation, norm, init_scale, noise
        The network, see :class:`bnref.mlp.MLP`.
    lr, steps, batch_size, eval_every, callback
        The training, see :func:`bnref.mlp.train`.
    seed : int
        Seeds both the initial weights and the batch order.
    xp : module, default numpy

    Returns
    -------
    net : MLP
        The trained network.
    history : dict
        As :func:`bnref.mlp.train` returns it. Overflow in a diverging run is not warned
        about: ``history["diverged"]`` says so.

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> net, history = train_curves(load_digits(), sizes=(64, 16, 10), norm="batch", steps=20,
    ...                             eval_every=10)
    >>> len(history["loss"]), history["eval_step"]
    (20, [10, 20])
    """
    net = MLP(list(sizes), activation=activation, norm=norm, init_scale=init_scale, seed=seed,
              noise=noise, xp=xp)
    with np.errstate(over="ignore", invalid="ignore"):       # divergence is a result, not an error
        history = train(net, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                        callback=callback, eval_every=eval_every)
    return net, history


def _summary(history, steps):
    """One run of a sweep in a few numbers (NaN accuracies and final loss where it diverged)."""
    loss = np.asarray(history["loss"], dtype=float)
    diverged = bool(history["diverged"]) or len(loss) < steps
    tail = loss[-20:] if len(loss) else np.array([np.nan])
    return dict(diverged=diverged, loss=loss,
                final_loss=float(np.nan if diverged else tail.mean()),
                test_acc=float(history["test_acc"][-1]) if history["test_acc"] and not diverged else float("nan"),
                train_acc=float(history["train_acc"][-1]) if history["train_acc"] and not diverged else float("nan"))


# what a sweep fixes itself: the outer loop (norm), the run length and the one evaluation at its end
_NOT_SWEPT = ("data", "norm", "steps", "eval_every")


def sweep(data, param, values, norms=(None, "batch"), steps=300, **kwargs):
    """Train the same MLP at each value of one hyperparameter, for each normalisation.

    Every run starts from the same initial weights and batch order (unless ``param`` is
    ``seed``) and is evaluated once, at its end.

    Parameters
    ----------
    data : tuple
        ``(X_train, y_train, X_test, y_test)``.
    param : str
        The keyword argument of :func:`train_curves` to sweep, e.g. ``"lr"``, ``"init_scale"``,
        ``"batch_size"`` or ``"seed"``.
    values : sequence
        The values ``param`` takes, one run each.
    norms : sequence, default (None, "batch")
        The normalisations to compare (``norm`` of :class:`bnref.mlp.MLP`).
    steps : int, default 300
    **kwargs
        Fixed for every run; they go to :func:`train_curves`.

    Returns
    -------
    dict
        ``{norm: [summary per value]}``; a summary holds ``diverged``, ``loss`` (per step),
        ``final_loss`` (mean of the last 20 steps), ``train_acc`` and ``test_acc`` (all
        three NaN if the run diverged).

    Raises
    ------
    ValueError
        If ``param`` is not a keyword of :func:`train_curves` that a sweep may vary.

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> r = sweep(load_digits(), "lr", [0.1, 1e3], norms=(None,), steps=10,
    ...           sizes=(64, 16, 16, 10), activation="linear")
    >>> [run["diverged"] for run in r[None]]             # lr = 1000 blows up
    [False, True]
    >>> [len(run["loss"]) for run in r[None]]             # ... and stops there
    [10, 7]
    """
    allowed = [p for p in inspect.signature(train_curves).parameters if p not in _NOT_SWEPT]
    if param not in allowed:
        raise ValueError(f"param must be one of {allowed}, got {param!r}")
    return {norm: [_summary(train_curves(data, norm=norm, steps=steps, eval_every=steps,
                                         **{param: value}, **kwargs)[1], steps)
                   for value in values]
            for norm in norms}


def lr_sweep(data, lrs, norms=(None, "batch"), steps=300, **kwargs):
    """Train the same MLP at each learning rate, with and without BN: ``sweep(data, "lr", lrs, ...)``.

    See :func:`sweep` for the arguments and the summaries returned (``{norm: [summary per lr]}``).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> r = lr_sweep(load_digits(), [0.1, 1.0], steps=10, sizes=(64, 16, 10))
    >>> list(r), len(r["batch"]), sorted(r["batch"][0])
    ([None, 'batch'], 2, ['diverged', 'final_loss', 'loss', 'test_acc', 'train_acc'])
    """
    return sweep(data, "lr", lrs, norms=norms, steps=steps, **kwargs)


def init_scale_sweep(data, scales, norms=(None, "batch"), steps=300, **kwargs):
    """Like :func:`lr_sweep` over the standard deviation of the initial weights: ``sweep(data, "init_scale", scales, ...)``.

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> r = init_scale_sweep(load_digits(), [0.01, 1.0], norms=("batch",), steps=10,
    ...                      sizes=(64, 16, 10))
    >>> [run["loss"].shape for run in r["batch"]]
    [(10,), (10,)]
    """
    return sweep(data, "init_scale", scales, norms=norms, steps=steps, **kwargs)


def unit_percentiles(data, layer=1, unit=0, q=(15, 50, 85), **kwargs):
    """Train an MLP and record percentiles of one hidden unit's activation input at every step.

    The recorded value is what enters the nonlinearity (``net.normed``: after BN and after any
    injected noise), over the training batch, as in Ioffe & Szegedy's Figure 1 and Santurkar
    et al.'s Figure 2. Keyword arguments go to :func:`train_curves`.

    Returns
    -------
    percentiles : ndarray (steps, len(q))
    history : dict
        As :func:`train_curves` returns it.

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> p, history = unit_percentiles(load_digits(), layer=0, sizes=(64, 16, 10), steps=5)
    >>> p.shape, bool((p[:, 0] <= p[:, 2]).all())
    ((5, 3), True)
    """
    rec = []

    def callback(t, net):
        rec.append(np.percentile(_np(net.normed[layer][:, unit]), q))   # (len(q),): over the batch

    _, history = train_curves(data, callback=callback, **kwargs)
    return np.asarray(rec), history


# ------------------------------------------------------------------ measurements on one batch

def _snapshot(net):
    return {k: v.copy() for k, v in net.params.items()}


def _restore(net, saved):
    for k, v in saved.items():
        net.params[k][...] = v           # in place: the BN layers share these arrays


def ics_gradient_change(net, X, y, lr):
    """Santurkar et al.'s internal covariate shift of every layer, on one batch.

    For each layer ``l >= 1``: ``G`` is the gradient of the loss with respect to ``W_l``;
    ``G'`` is the same gradient after every *earlier* layer took its SGD step (``lr``) on
    the same batch. ICS is how much the earlier updates changed what layer ``l`` should do:
    ``||G - G'||`` (also returned relative to ``||G||``) and the cosine between G and G'.
    The network is left as it was (parameters and BN running statistics); injected noise is
    drawn once, so that it does not count as ICS.

    Returns
    -------
    list of dict
        One per layer 1..L: ``layer``, ``l2``, ``rel``, ``cos``.

    Examples
    --------
    >>> import numpy as np
    >>> from bnref.mlp import MLP
    >>> net = MLP([4, 8, 8, 3], norm="batch", seed=0)
    >>> X, y = np.random.default_rng(0).normal(size=(16, 4)), np.arange(16) % 3
    >>> [d["layer"] for d in ics_gradient_change(net, X, y, lr=0.1)]
    [1, 2]
    >>> round(ics_gradient_change(net, X, y, lr=0.0)[0]["l2"], 12)   # nothing moved, no shift
    0.0
    """
    xp = net.xp
    X, y = xp.asarray(X), xp.asarray(y)
    saved = _snapshot(net)
    out = []
    n_layers = len(net.sizes) - 1
    with _FrozenNoise(net):
        _, grads = net.loss_and_grads(X, y, update_running_stats=False)
        for l in range(1, n_layers):
            for name, g in grads.items():
                if _layer_of(name) < l:
                    net.params[name] -= lr * g
            _, grads2 = net.loss_and_grads(X, y, update_running_stats=False)
            _restore(net, saved)
            G, G2 = grads[f"W{l}"], grads2[f"W{l}"]
            nG, nG2 = _norm(G, xp), _norm(G2, xp)
            d = _norm(G - G2, xp)
            out.append(dict(layer=l, l2=d, rel=d / max(nG, 1e-30),      # 1e-30: a zero gradient gives 0, not NaN
                            cos=float(xp.sum(G * G2)) / max(nG * nG2, 1e-30)))
    return out


def landscape_along_gradient(net, X, y, step_sizes):
    """Loss and gradient along the negative gradient direction, on one batch.

    From the current parameters ``theta`` with gradient ``g`` (all parameters together),
    evaluates ``loss(theta - eta * g)`` and ``grad(theta - eta * g)`` for each ``eta`` in
    ``step_sizes`` (Santurkar et al., Figure 4). The network is left as it was.

    Returns
    -------
    dict
        ``loss0`` and ``grad_norm`` (at ``theta``), ``loss`` (per eta), ``grad_change``
        (``||grad(theta - eta g) - g||`` per eta), ``loss_range`` (max - min of the losses,
        the "variation of the loss"), ``max_grad_change`` (worst gradient change, i.e. poor
        "gradient predictiveness") and ``beta_smoothness`` (max over eta of
        ``grad_change / ||eta g||``, the effective beta-smoothness: a local Lipschitz
        constant of the gradient).

    Examples
    --------
    >>> import numpy as np
    >>> from bnref.mlp import MLP
    >>> net = MLP([4, 8, 3], norm="batch", seed=0)
    >>> X, y = np.random.default_rng(0).normal(size=(16, 4)), np.arange(16) % 3
    >>> r = landscape_along_gradient(net, X, y, [1e-3, 1e-2])
    >>> bool((r["loss"] < r["loss0"]).all())             # small steps go downhill
    True
    """
    xp = net.xp
    X, y = xp.asarray(X), xp.asarray(y)
    saved = _snapshot(net)
    losses, changes = [], []
    with np.errstate(over="ignore", invalid="ignore"), _FrozenNoise(net):
        loss0, g = net.loss_and_grads(X, y, update_running_stats=False)
        gnorm = float(np.sqrt(sum(float(xp.sum(v * v)) for v in g.values())))
        for eta in step_sizes:
            for name, v in g.items():
                net.params[name] -= eta * v
            loss, g2 = net.loss_and_grads(X, y, update_running_stats=False)
            _restore(net, saved)
            losses.append(loss)
            changes.append(float(np.sqrt(sum(float(xp.sum((g2[k] - g[k]) ** 2)) for k in g))))
    losses, changes = np.asarray(losses), np.asarray(changes)
    dist = np.asarray(step_sizes, dtype=float) * max(gnorm, 1e-30)      # ||eta g|| per eta
    return dict(loss0=loss0, loss=losses, grad_change=changes, grad_norm=gnorm,
                loss_range=float(np.nanmax(losses) - np.nanmin(losses)),
                max_grad_change=float(np.nanmax(changes)),
                beta_smoothness=float(np.nanmax(changes / dist)))


# ------------------------------------------------------------------ measurements during training

def _measurement_batch(data, t, batch_size, seed):
    """A fixed random training batch for the measurement at step ``t`` (independent of training's order)."""
    X_train, y_train = data[0], data[1]
    idx = np.random.default_rng(seed + t).choice(len(X_train), batch_size, replace=False)
    return X_train[idx], y_train[idx]


def measure_during_training(data, measure, every=30, steps=300, batch_size=64, seed=0, **kwargs):
    """Train an MLP and, every ``every`` steps, apply ``measure(net, X, y)`` to a measurement batch.

    The measurement runs after the step's forward and backward pass and before its update
    (see ``callback`` in :func:`bnref.mlp.train`), on a batch of ``batch_size`` training
    examples drawn with the seed ``seed + step``: the same batch for every network trained
    with the same ``seed``, whatever its batch order. ``measure`` should leave the network as
    it was, as :func:`ics_gradient_change` and :func:`landscape_along_gradient` do.

    Parameters
    ----------
    data : tuple
        ``(X_train, y_train, X_test, y_test)``.
    measure : callable
        ``measure(net, X, y) -> result``; any result.
    every, steps, batch_size, seed : int
    **kwargs
        The network and the rest of the training, for :func:`train_curves` (``norm``, ``lr``,
        ``sizes``, ``activation``, ``noise``, ``xp``...).

    Returns
    -------
    dict
        ``step`` (ndarray of the steps measured), ``results`` (list of what ``measure``
        returned, one per step measured), ``loss`` (ndarray, per training step) and
        ``test_acc`` (at the end, eval mode).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> run = measure_during_training(load_digits(), lambda net, X, y: len(X), every=4, steps=10,
    ...                               batch_size=16, sizes=(64, 16, 10))
    >>> run["step"].tolist(), run["results"], run["loss"].shape
    ([0, 4, 8], [16, 16, 16], (10,))
    """
    step, results = [], []

    def callback(t, net):
        if t % every == 0:
            results.append(measure(net, *_measurement_batch(data, t, batch_size, seed)))
            step.append(t)

    _, history = train_curves(data, steps=steps, batch_size=batch_size, seed=seed, eval_every=steps,
                              callback=callback, **kwargs)
    return dict(step=np.asarray(step), results=results, loss=np.asarray(history["loss"]),
                test_acc=history["test_acc"][-1] if history["test_acc"] else float("nan"))


def ics_during_training(data, norm=None, lr=0.1, steps=300, every=30, batch_size=64,
                        sizes=_SIZES, activation="sigmoid", noise=None, seed=0, xp=np):
    """Train an MLP and measure :func:`ics_gradient_change` every ``every`` steps.

    The measurement uses the training learning rate ``lr``; see
    :func:`measure_during_training` for the measurement batch.

    Returns
    -------
    dict
        ``step`` (measurements,); ``l2``, ``rel`` and ``cos`` (measurements, layers 1..L);
        ``loss`` (per training step) and ``test_acc``.

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> r = ics_during_training(load_digits(), norm="batch", steps=10, every=5,
    ...                         sizes=(64, 16, 16, 10))
    >>> r["step"].tolist(), r["rel"].shape
    ([0, 5], (2, 2))
    """
    run = measure_during_training(
        data, lambda net, X, y: ics_gradient_change(net, X, y, lr), every=every, steps=steps,
        batch_size=batch_size, seed=seed, norm=norm, lr=lr, sizes=sizes, activation=activation,
        noise=noise, xp=xp)
    per_step = run["results"]                       # [measurement][layer] -> dict
    out = dict(step=run["step"])
    for key in ("l2", "rel", "cos"):
        out[key] = np.asarray([[d[key] for d in r] for r in per_step])   # (measurements, layers)
    out["loss"], out["test_acc"] = run["loss"], run["test_acc"]
    return out


def landscape_during_training(data, norm=None, lr=0.1, step_sizes=None, steps=300, every=30,
                              batch_size=64, sizes=_SIZES, activation="sigmoid",
                              seed=0, noise=None, xp=np):
    """Train an MLP; every ``every`` steps run :func:`landscape_along_gradient` on a measurement batch.

    ``step_sizes`` defaults to ``lr * [0.25 ... 4]`` (five, geometrically spaced); see
    :func:`measure_during_training` for the measurement batch.

    Returns
    -------
    dict
        Arrays over the measurements: ``step``, ``loss_min``, ``loss_max``,
        ``max_grad_change``, ``beta_smoothness``; and ``loss`` (per training step) and
        ``test_acc``.

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> r = landscape_during_training(load_digits(), norm="batch", steps=10, every=5,
    ...                               sizes=(64, 16, 10))
    >>> r["step"].tolist(), bool((r["loss_min"] <= r["loss_max"]).all())
    ([0, 5], True)
    """
    if step_sizes is None:
        step_sizes = lr * np.geomspace(0.25, 4.0, 5)
    run = measure_during_training(
        data, lambda net, X, y: landscape_along_gradient(net, X, y, step_sizes), every=every,
        steps=steps, batch_size=batch_size, seed=seed, norm=norm, lr=lr, sizes=sizes,
        activation=activation, noise=noise, xp=xp)
    per_step = run["results"]
    return dict(step=run["step"],
                loss_min=np.asarray([float(np.nanmin(r["loss"])) for r in per_step]),
                loss_max=np.asarray([float(np.nanmax(r["loss"])) for r in per_step]),
                max_grad_change=np.asarray([r["max_grad_change"] for r in per_step]),
                beta_smoothness=np.asarray([r["beta_smoothness"] for r in per_step]),
                loss=run["loss"], test_acc=run["test_acc"])
