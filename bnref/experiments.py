"""The experiments that chapters 4 to 7 of the book run at build time.

Each function is small, seeded and fast on the CPU (seconds on the digits set); each takes
``xp=numpy`` so that a reader with a GPU can pass ``cupy`` (the MLP and the BN kernels then
run on the device; results come back as Python floats or NumPy arrays).

What is here:

- :func:`staged_backward`: BN's backward pass one graph node at a time (chapter 4);
- :func:`running_average`, :func:`convert_momentum`: running statistics in the PyTorch,
  CS231n and Keras conventions (chapter 5);
- :func:`lr_sweep`, :func:`init_scale_sweep`, :func:`train_curves`: with and without BN on the
  digits MLP; :func:`ics_gradient_change`, :func:`landscape_along_gradient` and their
  ``*_during_training`` drivers: Santurkar et al.'s measurements in miniature (chapter 6);
- :func:`batch_stat_spread`, :func:`variance_noise`, :func:`small_batch_accuracy`,
  :func:`batch_dependence`: the small-batch and batch-dependence experiments (chapter 7).
"""
import re

import numpy as np

from .functional import batchnorm_forward
from .mlp import MLP, nonstationary_noise, train

__all__ = [
    "staged_backward", "BN_STAGES",
    "running_average", "convert_momentum",
    "train_curves", "lr_sweep", "init_scale_sweep",
    "ics_gradient_change", "ics_during_training",
    "landscape_along_gradient", "landscape_during_training",
    "batch_stat_spread", "variance_noise", "small_batch_accuracy", "batch_dependence",
    "non_iid_accuracy",
    "nonstationary_noise", "centered_noise", "unit_percentiles",
]


def _np(a):
    """A NumPy copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _norm(a, xp):
    return float(xp.sqrt(xp.sum(a * a)))


# ------------------------------------------------------------------ chapter 4: the graph

#: The nodes of BN's computational graph in forward order: ``(name, inputs, forward formula,
#: local derivative)``. The formulas are LaTeX; ``m`` is the number of values per channel.
BN_STAGES = [
    ("mu", ("x",), r"\mu = \frac{1}{m}\sum_i x_i",
     r"\partial\mu/\partial x_i = 1/m"),
    ("xmu", ("x", "mu"), r"x_\mu = x - \mu",
     r"\partial x_\mu/\partial x = 1,\ \partial x_\mu/\partial\mu = -1"),
    ("sq", ("xmu",), r"s = x_\mu^2",
     r"\partial s/\partial x_\mu = 2x_\mu"),
    ("var", ("sq",), r"\sigma^2 = \frac{1}{m}\sum_i s_i",
     r"\partial\sigma^2/\partial s_i = 1/m"),
    ("std", ("var",), r"\sigma = \sqrt{\sigma^2 + \epsilon}",
     r"\partial\sigma/\partial\sigma^2 = \frac{1}{2\sqrt{\sigma^2+\epsilon}}"),
    ("ivar", ("std",), r"r = 1/\sigma",
     r"\partial r/\partial\sigma = -1/\sigma^2"),
    ("xhat", ("xmu", "ivar"), r"\hat x = x_\mu\, r",
     r"\partial\hat x/\partial x_\mu = r,\ \partial\hat x/\partial r = x_\mu"),
    ("gx", ("gamma", "xhat"), r"g = \gamma\,\hat x",
     r"\partial g/\partial\hat x = \gamma,\ \partial g/\partial\gamma = \hat x"),
    ("y", ("gx", "beta"), r"y = g + \beta",
     r"\partial y/\partial g = 1,\ \partial y/\partial\beta = 1"),
]


def staged_backward(x, gamma, beta, dy, eps=1e-5):
    """BN forward and backward for ``x`` (N, D), one node of the graph at a time.

    The loss is ``sum(y * dy)``, so ``dy`` is the upstream gradient that arrives at ``y``.

    Returns
    -------
    values : dict
        Each node's forward value, for every node of :data:`BN_STAGES` and the leaves ``x``,
        ``gamma`` and ``beta``.
    grads : dict
        ``grads[name]`` = dL/d(name): the *upstream* gradient that arrives at the node in the
        backward pass. Where a node feeds two others (``x`` and ``xmu``) the contributions of
        both paths are added, as the chain rule says.
    contribs : dict
        ``contribs[(node, input)]``: what ``node`` sends back to one of its inputs, its
        local derivative applied to its upstream gradient (summed over the batch where the
        input was broadcast, spread over the batch where the node is a mean).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, dy = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
    >>> values, grads, contribs = staged_backward(x, np.ones(3), np.zeros(3), dy)
    >>> np.allclose(grads["x"], contribs[("xmu", "x")] + contribs[("mu", "x")])
    True
    """
    m = x.shape[0]
    v = {"x": x, "gamma": gamma, "beta": beta}
    v["mu"] = x.sum(axis=0) / m                         # (D,): sum over the batch
    v["xmu"] = x - v["mu"]                              # (N, D)
    v["sq"] = v["xmu"] ** 2                             # (N, D)
    v["var"] = v["sq"].sum(axis=0) / m                  # (D,): biased
    v["std"] = np.sqrt(v["var"] + eps)                  # (D,)
    v["ivar"] = 1.0 / v["std"]                          # (D,)
    v["xhat"] = v["xmu"] * v["ivar"]                    # (N, D)
    v["gx"] = gamma * v["xhat"]                         # (N, D)
    v["y"] = v["gx"] + beta                             # (N, D)

    g, c = {"y": dy}, {}
    c["y", "gx"] = dy
    c["y", "beta"] = dy.sum(axis=0)                     # beta was broadcast over the batch
    g["gx"], g["beta"] = c["y", "gx"], c["y", "beta"]
    c["gx", "xhat"] = g["gx"] * gamma
    c["gx", "gamma"] = (g["gx"] * v["xhat"]).sum(axis=0)
    g["xhat"], g["gamma"] = c["gx", "xhat"], c["gx", "gamma"]
    c["xhat", "xmu"] = g["xhat"] * v["ivar"]
    c["xhat", "ivar"] = (g["xhat"] * v["xmu"]).sum(axis=0)  # ivar was broadcast over the batch
    g["ivar"] = c["xhat", "ivar"]
    c["ivar", "std"] = -g["ivar"] / v["std"] ** 2
    g["std"] = c["ivar", "std"]
    c["std", "var"] = g["std"] * 0.5 / np.sqrt(v["var"] + eps)
    g["var"] = c["std", "var"]
    c["var", "sq"] = np.ones_like(x) * g["var"] / m     # the mean spreads dvar over the m rows
    g["sq"] = c["var", "sq"]
    c["sq", "xmu"] = 2.0 * v["xmu"] * g["sq"]
    g["xmu"] = c["xhat", "xmu"] + c["sq", "xmu"]        # xmu feeds xhat and sq: add both paths
    c["xmu", "x"] = g["xmu"]
    c["xmu", "mu"] = -g["xmu"].sum(axis=0)
    g["mu"] = c["xmu", "mu"]
    c["mu", "x"] = np.ones_like(x) * g["mu"] / m
    g["x"] = c["xmu", "x"] + c["mu", "x"]               # x feeds xmu and mu: add both paths
    return v, g, c


# ------------------------------------------------------ chapter 5: running statistics

def convert_momentum(momentum, source, target):
    """Convert a momentum hyperparameter between the PyTorch, CS231n and Keras conventions.

    PyTorch's ``momentum`` is the weight of the *new* batch
    (``new = (1 - momentum) * old + momentum * batch``); CS231n's and Keras' is the weight of the
    *old* value (``new = momentum * old + (1 - momentum) * batch``). So 0.1 (PyTorch) is 0.9
    (CS231n, Keras); Keras' default 0.99 is PyTorch's 0.01.

    Examples
    --------
    >>> round(convert_momentum(0.99, "keras", "pytorch"), 4)
    0.01
    """
    kinds = {"pytorch": "new", "cs231n": "old", "keras": "old"}
    for name in (source, target):
        if name not in kinds:
            raise ValueError(f"convention must be one of {sorted(kinds)}, got {name!r}")
    return momentum if kinds[source] == kinds[target] else 1.0 - momentum


#: How each convention tracks running statistics: (momentum on, default momentum, initial mean,
#: initial variance, variance stored, default eps).
CONVENTIONS = {
    "pytorch": dict(weight_on="new", momentum=0.1, init_mean=0.0, init_var=1.0, unbiased=True, eps=1e-5),
    "cs231n": dict(weight_on="old", momentum=0.9, init_mean=0.0, init_var=0.0, unbiased=False, eps=1e-5),
    "keras": dict(weight_on="old", momentum=0.99, init_mean=0.0, init_var=1.0, unbiased=False, eps=1e-3),
}


def running_average(batches, convention="pytorch", momentum=None, xp=np):
    """Running mean and variance over a sequence of batches, in one framework's convention.

    Parameters
    ----------
    batches : iterable of ndarray (m, C)
    convention : {"pytorch", "cs231n", "keras"}
        See :data:`CONVENTIONS`: which value the momentum weighs, the initial values and
        whether the biased or the unbiased (``m / (m - 1)``) batch variance is averaged.
    momentum : float, optional
        In that convention's own meaning; defaults to the convention's default.

    Returns
    -------
    means, variances : ndarray (steps, C)
        The running estimates after each batch.

    Examples
    --------
    >>> import numpy as np
    >>> b = [np.array([[0.0], [2.0]])] * 2          # mean 1, biased var 1, unbiased var 2
    >>> means, variances = running_average(b, "pytorch", momentum=0.5)
    >>> means[:, 0].tolist(), variances[:, 0].tolist()
    ([0.5, 0.75], [1.5, 1.75])
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {sorted(CONVENTIONS)}, got {convention!r}")
    c = CONVENTIONS[convention]
    mom = c["momentum"] if momentum is None else momentum
    w_new = mom if c["weight_on"] == "new" else 1.0 - mom
    means, variances = [], []
    rm = rv = None
    for b in batches:
        b = xp.asarray(b)
        m = b.shape[0]
        mean, var = b.mean(axis=0), b.var(axis=0)                   # (C,): biased variance
        if c["unbiased"]:
            var = var * m / (m - 1)
        if rm is None:
            rm = xp.full(mean.shape, c["init_mean"], dtype=mean.dtype)
            rv = xp.full(mean.shape, c["init_var"], dtype=mean.dtype)
        rm = (1 - w_new) * rm + w_new * mean
        rv = (1 - w_new) * rv + w_new * var
        means.append(_np(rm))
        variances.append(_np(rv))
    return np.array(means), np.array(variances)


# ----------------------------------------------- chapter 6: training with and without BN

def _layer_of(name):
    """Layer index of a parameter name such as ``W0``, ``gamma2`` or ``b3``."""
    return int(re.search(r"(\d+)$", name).group(1))


def train_curves(data, sizes=(64, 64, 64, 64, 10), activation="sigmoid", norm=None, lr=0.1,
                 steps=300, batch_size=64, seed=0, init_scale=None, noise=None, eval_every=50,
                 callback=None, xp=np):
    """Train one digits MLP and return (net, history); a thin wrapper over :func:`bnref.mlp.train`."""
    net = MLP(list(sizes), activation=activation, norm=norm, init_scale=init_scale, seed=seed,
              noise=noise, xp=xp)
    with np.errstate(over="ignore", invalid="ignore"):
        history = train(net, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                        callback=callback, eval_every=eval_every)
    return net, history


def _summary(history, steps):
    loss = np.asarray(history["loss"], dtype=float)
    diverged = bool(history["diverged"]) or len(loss) < steps
    tail = loss[-20:] if len(loss) else np.array([np.nan])
    return dict(diverged=diverged, loss=loss,
                final_loss=float(np.nan if diverged else tail.mean()),
                test_acc=float(history["test_acc"][-1]) if history["test_acc"] and not diverged else float("nan"),
                train_acc=float(history["train_acc"][-1]) if history["train_acc"] and not diverged else float("nan"))


def lr_sweep(data, lrs, norms=(None, "batch"), steps=300, **kwargs):
    """Train the same MLP at each learning rate, with and without BN.

    Returns ``{norm: [summary per lr]}``; a summary holds ``diverged``, ``loss`` (per step),
    ``final_loss`` (mean of the last 20 steps), ``train_acc`` and ``test_acc`` (NaN if diverged).
    Other keyword arguments go to :func:`train_curves`.
    """
    return {norm: [_summary(train_curves(data, norm=norm, lr=lr, steps=steps, eval_every=steps,
                                         **kwargs)[1], steps) for lr in lrs]
            for norm in norms}


def init_scale_sweep(data, scales, norms=(None, "batch"), steps=300, **kwargs):
    """Like :func:`lr_sweep` over the standard deviation of the initial weights."""
    return {norm: [_summary(train_curves(data, norm=norm, init_scale=s, steps=steps, eval_every=steps,
                                         **kwargs)[1], steps) for s in scales]
            for norm in norms}


def centered_noise(strength=1.0):
    """Santurkar et al.'s "noisy BN" noise, centred so that eval mode (no noise) is its mean.

    Returns ``noise(l, H, rng, xp) -> (scale, shift)`` for :class:`bnref.mlp.MLP`: at every
    training step each hidden unit gets a fresh random scale ``1 + strength * U(-1/2, 1/2)``
    and shift ``strength * U(-1, 1)`` after its normalisation, so the distribution that the
    next layer sees has a non-zero mean and a non-unit variance that change at every step.
    Their averages over steps are 1 and 0: the noise-free eval-mode network is the average
    network. (:func:`bnref.mlp.nonstationary_noise` draws scales in ``[1, 1 + strength]``, whose
    mean is not 1, so its eval-mode network differs from what it was trained as.)
    """
    def noise(l, H, rng, xp):
        scale = 1.0 + strength * rng.uniform(-0.5, 0.5, size=H)
        shift = strength * rng.uniform(-1.0, 1.0, size=H)
        return xp.asarray(scale), xp.asarray(shift)
    return noise


class _FrozenNoise:
    """Within ``with``: the net's injected noise is drawn once per layer and then repeated, so
    two evaluations of the same batch see the same noise (and the net's own RNG is untouched)."""

    def __init__(self, net, seed=0):
        self.net, self.seed, self.cache = net, seed, {}

    def __enter__(self):
        self.original = self.net.noise
        if self.original is not None:
            rng = np.random.default_rng(self.seed)

            def frozen(l, H, _rng, xp):
                if l not in self.cache:
                    self.cache[l] = self.original(l, H, rng, xp)
                return self.cache[l]
            self.net.noise = frozen
        return self

    def __exit__(self, *exc):
        self.net.noise = self.original


def _snapshot(net):
    return {k: v.copy() for k, v in net.params.items()}


def _restore(net, saved):
    for k, v in saved.items():
        net.params[k][...] = v


def ics_gradient_change(net, X, y, lr):
    """Santurkar et al.'s internal covariate shift of every layer, on one batch.

    For each layer ``l >= 1``: ``G`` is the gradient of the loss with respect to ``W_l``;
    ``G'`` is the same gradient after every *earlier* layer took its SGD step (``lr``) on
    the same batch. ICS is how much the earlier updates changed what layer ``l`` should do:
    ``||G - G'||`` (also returned relative to ``||G||``) and the cosine between G and G'.
    The network is left as it was (parameters and BN running statistics).

    Returns
    -------
    list of dict, one per layer 1..L: ``layer``, ``l2``, ``rel``, ``cos``.
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
            out.append(dict(layer=l, l2=d, rel=d / max(nG, 1e-30),
                            cos=float(xp.sum(G * G2)) / max(nG * nG2, 1e-30)))
    return out


def _measurement_batch(data, t, batch_size, seed):
    """A fixed random training batch for the measurement at step ``t`` (independent of training's order)."""
    X_train, y_train = data[0], data[1]
    idx = np.random.default_rng(seed + t).choice(len(X_train), batch_size, replace=False)
    return X_train[idx], y_train[idx]


def ics_during_training(data, norm=None, lr=0.1, steps=300, every=30, batch_size=64,
                        sizes=(64, 64, 64, 64, 10), activation="sigmoid", noise=None, seed=0, xp=np):
    """Train an MLP and measure :func:`ics_gradient_change` every ``every`` steps.

    Returns ``dict(step, l2, rel, cos, loss, test_acc)``; ``l2``/``rel``/``cos`` have shape
    (measurements, layers 1..L).
    """
    rec = dict(step=[], l2=[], rel=[], cos=[])

    def callback(t, net):
        if t % every == 0:
            r = ics_gradient_change(net, *_measurement_batch(data, t, batch_size, seed), lr)
            rec["step"].append(t)
            for key in ("l2", "rel", "cos"):
                rec[key].append([d[key] for d in r])

    _, history = train_curves(data, sizes=sizes, activation=activation, norm=norm, lr=lr,
                              steps=steps, batch_size=batch_size, seed=seed, eval_every=steps,
                              callback=callback, noise=noise, xp=xp)
    out = {k: np.asarray(v) for k, v in rec.items()}
    out["loss"] = np.asarray(history["loss"])
    out["test_acc"] = history["test_acc"][-1] if history["test_acc"] else float("nan")
    return out


def unit_percentiles(data, layer=1, unit=0, q=(15, 50, 85), **kwargs):
    """Train an MLP and record percentiles of one hidden unit's activation input at every step.

    The recorded value is what enters the nonlinearity (``net.normed``: after BN and after any
    injected noise), over the training batch, as in Ioffe & Szegedy's Figure 1 and Santurkar
    et al.'s Figure 2. Keyword arguments go to :func:`train_curves`.

    Returns ``(percentiles, history)``: ``percentiles`` (steps, len(q)).
    """
    rec = []

    def callback(t, net):
        rec.append(np.percentile(_np(net.normed[layer][:, unit]), q))

    _, history = train_curves(data, callback=callback, **kwargs)
    return np.asarray(rec), history


def landscape_along_gradient(net, X, y, step_sizes):
    """Loss and gradient along the negative gradient direction, on one batch.

    From the current parameters ``theta`` with gradient ``g`` (all parameters together),
    evaluates ``loss(theta - eta * g)`` and ``grad(theta - eta * g)`` for each ``eta`` in
    ``step_sizes`` (Santurkar et al., Figure 4). The network is left as it was.

    Returns
    -------
    dict with ``loss`` (per eta), ``grad_change`` (``||grad(theta - eta g) - g||`` per eta),
    ``loss_range`` (max - min of the losses, the "variation of the loss"),
    ``max_grad_change`` (worst gradient change, i.e. poor "gradient predictiveness") and
    ``beta_smoothness`` (max over eta of ``grad_change / ||eta g||``, the effective
    beta-smoothness: a local Lipschitz constant of the gradient).
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
    dist = np.asarray(step_sizes, dtype=float) * max(gnorm, 1e-30)
    return dict(loss0=loss0, loss=losses, grad_change=changes, grad_norm=gnorm,
                loss_range=float(np.nanmax(losses) - np.nanmin(losses)),
                max_grad_change=float(np.nanmax(changes)),
                beta_smoothness=float(np.nanmax(changes / dist)))


def landscape_during_training(data, norm=None, lr=0.1, step_sizes=None, steps=300, every=30,
                              batch_size=64, sizes=(64, 64, 64, 64, 10), activation="sigmoid",
                              seed=0, xp=np):
    """Train an MLP; every ``every`` steps run :func:`landscape_along_gradient` on that batch.

    ``step_sizes`` defaults to ``lr * [0.25 ... 4]``. Returns ``dict(step, loss_min, loss_max,
    max_grad_change, beta_smoothness, loss, test_acc)`` (arrays over the measurements).
    """
    if step_sizes is None:
        step_sizes = lr * np.geomspace(0.25, 4.0, 5)
    rec = dict(step=[], loss_min=[], loss_max=[], max_grad_change=[], beta_smoothness=[])

    def callback(t, net):
        if t % every == 0:
            r = landscape_along_gradient(net, *_measurement_batch(data, t, batch_size, seed), step_sizes)
            rec["step"].append(t)
            rec["loss_min"].append(float(np.nanmin(r["loss"])))
            rec["loss_max"].append(float(np.nanmax(r["loss"])))
            rec["max_grad_change"].append(r["max_grad_change"])
            rec["beta_smoothness"].append(r["beta_smoothness"])

    _, history = train_curves(data, sizes=sizes, activation=activation, norm=norm, lr=lr,
                              steps=steps, batch_size=batch_size, seed=seed, eval_every=steps,
                              callback=callback, xp=xp)
    out = {k: np.asarray(v) for k, v in rec.items()}
    out["loss"] = np.asarray(history["loss"])
    out["test_acc"] = history["test_acc"][-1] if history["test_acc"] else float("nan")
    return out


# ------------------------------------------------------------ chapter 7: small batches

def variance_noise(m, excess_kurtosis=0.0):
    """Relative standard deviation of the unbiased variance of ``m`` i.i.d. samples.

    For Gaussian data ``(m - 1) s^2 / sigma^2`` is chi-squared with ``m - 1`` degrees of
    freedom (variance ``2 (m - 1)``), so ``std(s^2) / sigma^2 = sqrt(2 / (m - 1))``. For any
    distribution with excess kurtosis ``k`` the exact value is ``sqrt(2 / (m - 1) + k / m)``:
    heavy tails make batch variances noisier.

    Examples
    --------
    >>> round(float(variance_noise(3)), 6)
    1.0
    """
    m = np.asarray(m, dtype=float)
    return np.sqrt(2.0 / (m - 1.0) + np.asarray(excess_kurtosis, dtype=float) / m)


def batch_stat_spread(x, batch_sizes, n_batches=2000, seed=0, xp=np):
    """Spread of batch means and variances of the columns of ``x`` (n, C) over random batches.

    For each batch size ``m``, draws ``n_batches`` batches of ``m`` rows without replacement
    and compares their statistics with those of the whole of ``x`` (the "population").
    Columns with zero variance (constant pixels) are ignored.

    Returns
    -------
    dict with arrays over ``batch_sizes`` (each the average over the columns):
    ``mean_spread`` = std(batch mean) / population std; ``var_spread`` =
    std(unbiased batch variance) / population variance; ``var_spread_predicted`` =
    :func:`variance_noise` with each column's excess kurtosis; plus ``means`` and
    ``variances``, the raw standardised batch statistics of the first column, one array per
    batch size, and ``excess_kurtosis`` per column.
    """
    x = xp.asarray(x)
    sd_all = x.std(axis=0)
    keep = _np(sd_all > 1e-12 * float(sd_all.max()))
    x = x[:, xp.asarray(np.flatnonzero(keep))]
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    mu, sd = x.mean(axis=0), x.std(axis=0)                          # (C,): population
    kurt = _np(((x - mu) ** 4).mean(axis=0) / sd ** 4 - 3.0)       # (C,): excess kurtosis
    out = dict(batch_size=np.asarray(batch_sizes), mean_spread=[], var_spread=[],
               var_spread_predicted=[], means=[], variances=[], excess_kurtosis=kurt)
    for m in batch_sizes:
        idx = rng.random((n_batches, n)).argpartition(m, axis=1)[:, :m]   # (n_batches, m), no repeats
        b = x[xp.asarray(idx)]                                      # (n_batches, m, C)
        bm = b.mean(axis=1)                                         # (n_batches, C)
        bv = b.var(axis=1) * m / (m - 1)                            # unbiased
        out["mean_spread"].append(float((bm.std(axis=0) / sd).mean()))
        out["var_spread"].append(float((bv.std(axis=0) / sd ** 2).mean()))
        out["var_spread_predicted"].append(float(variance_noise(m, kurt).mean()))
        out["means"].append(_np((bm[:, 0] - mu[0]) / sd[0]))
        out["variances"].append(_np(bv[:, 0] / sd[0] ** 2))
    for key in ("mean_spread", "var_spread", "var_spread_predicted"):
        out[key] = np.asarray(out[key])
    return out


def small_batch_accuracy(data, batch_sizes, norms=("batch", "group", "layer"), epochs=5,
                         lr_per_example=0.1 / 32, sizes=(64, 64, 64, 10), activation="relu",
                         num_groups=4, seed=0, xp=np):
    """Test accuracy of the digits MLP trained at each batch size, for each normalisation.

    Every run sees the same number of examples (``epochs`` passes over the training set)
    with the linear scaling rule ``lr = lr_per_example * batch_size`` (as Wu & He do);
    accuracy is measured in eval mode (BN then uses its running statistics).

    Returns ``{norm: ndarray of test accuracies over batch_sizes}``.
    """
    n = len(data[0])
    out = {}
    for norm in norms:
        accs = []
        for B in batch_sizes:
            net = MLP(list(sizes), activation=activation, norm=norm, seed=seed, xp=xp,
                      num_groups=num_groups)
            steps = int(np.ceil(epochs * n / B))
            with np.errstate(over="ignore", invalid="ignore"):
                h = train(net, data, steps=steps, batch_size=B, lr=lr_per_example * B, seed=seed,
                          eval_every=steps)
            accs.append(float("nan") if h["diverged"] else h["test_acc"][-1])
        out[norm] = np.asarray(accs)
    return out


def batch_dependence(x, index=0, batch_size=8, n_trials=200, seed=0, xp=np):
    """BN's training-mode output for one example, placed in ``n_trials`` random batches.

    Returns ``(outputs, x_hat_population)``: ``outputs`` (n_trials, C) is row ``index``'s
    normalised value (gamma = 1, beta = 0) next to random batch-mates drawn from ``x``;
    ``x_hat_population`` (C,) is the value it would have with the whole set's statistics
    (what eval mode with perfect running statistics gives).
    """
    x = xp.asarray(x)
    n, C = x.shape
    rng = np.random.default_rng(seed)
    others = np.delete(np.arange(n), index)
    outs = []
    for _ in range(n_trials):
        idx = np.concatenate([[index], rng.choice(others, batch_size - 1, replace=False)])
        y, _ = batchnorm_forward(x[xp.asarray(idx)], None, None)
        outs.append(_np(y[0]))
    pop = _np((x[index] - x.mean(axis=0)) / xp.sqrt(x.var(axis=0) + 1e-5))
    return np.asarray(outs), pop


def non_iid_accuracy(data, norms=(None, "batch", "group", "layer"), steps=600, batch_size=32,
                     lr=0.1, sizes=(64, 64, 64, 10), activation="relu", num_groups=4, seed=0,
                     xp=np):
    """Test accuracy after training on class-pure batches versus shuffled (i.i.d.) batches.

    In the non-i.i.d. run every mini-batch holds examples of one class only (the classes take
    turns), as happens when data are sorted or a worker sees only part of the label space.
    BN then normalises each batch with its own class's statistics, which the eval-mode
    running averages (over all classes) do not match.

    Returns ``{norm: {"iid": accuracy, "non_iid": accuracy}}`` (eval mode, test set).
    """
    X_train, y_train, X_test, y_test = data
    by_class = [np.flatnonzero(y_train == c) for c in np.unique(y_train)]
    out = {}
    for norm in norms:
        res = {}
        for kind in ("iid", "non_iid"):
            net = MLP(list(sizes), activation=activation, norm=norm, seed=seed, xp=xp,
                      num_groups=num_groups)
            if kind == "iid":
                train(net, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
            else:
                rng = np.random.default_rng(seed)
                for t in range(steps):
                    idx = rng.choice(by_class[t % len(by_class)], batch_size, replace=False)
                    _, grads = net.loss_and_grads(xp.asarray(X_train[idx]), xp.asarray(y_train[idx]))
                    net.step(grads, lr)
            res[kind] = net.accuracy(xp.asarray(X_test), xp.asarray(y_test))
        out[norm] = res
    return out
