"""Chapter 7: BN's flaws, small batches and batch dependence, against GroupNorm and LayerNorm.

- :func:`variance_noise` (the formula) and :func:`batch_stat_spread` (measured): how noisy
  batch means and variances are at batch size ``m``;
- :func:`small_batch_accuracy`: test accuracy against the batch size, for each norm;
- :func:`batch_dependence`: one example's BN output in many random batches;
- :func:`non_iid_accuracy`: training on class-pure batches against shuffled ones.
"""
import numpy as np

from ..functional import batchnorm_forward
from ..mlp import MLP, train
from ._util import _np

__all__ = ["variance_noise", "batch_stat_spread", "small_batch_accuracy", "batch_dependence",
           "non_iid_accuracy"]


def variance_noise(m, excess_kurtosis=0.0):
    """Relative standard deviation of the unbiased variance of ``m`` i.i.d. samples.

    For Gaussian data ``(m - 1) s^2 / sigma^2`` is chi-squared with ``m - 1`` degrees of
    freedom (variance ``2 (m - 1)``), so ``std(s^2) / sigma^2 = sqrt(2 / (m - 1))``. For any
    distribution with excess kurtosis ``k`` the exact value is ``sqrt(2 / (m - 1) + k / m)``:
    heavy tails make batch variances noisier.

    Parameters
    ----------
    m : int or array_like
        Batch size(s), at least 2.
    excess_kurtosis : float or array_like, default 0 (Gaussian)
        Broadcast against ``m``.

    Returns
    -------
    ndarray
        ``std(s^2) / sigma^2``.

    Examples
    --------
    >>> round(float(variance_noise(3)), 6)
    1.0
    >>> variance_noise([2, 33]).round(3).tolist()
    [1.414, 0.25]
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
    dict
        Arrays over ``batch_sizes`` (each the average over the columns): ``mean_spread`` =
        std(batch mean) / population std; ``var_spread`` = std(unbiased batch variance) /
        population variance; ``var_spread_predicted`` = :func:`variance_noise` with each
        column's excess kurtosis; plus ``means`` and ``variances``, the raw standardised
        batch statistics of the first column, one array per batch size, ``excess_kurtosis``
        per column and ``batch_size``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(1000, 4))
    >>> s = batch_stat_spread(x, [4, 64], n_batches=200)
    >>> bool(s["mean_spread"][0] > s["mean_spread"][1]), s["means"][0].shape
    (True, (200,))
    """
    x = xp.asarray(x)
    std_all = x.std(axis=0)
    keep = _np(std_all > 1e-12 * float(std_all.max()))            # relative: pixels of any scale
    x = x[:, xp.asarray(np.flatnonzero(keep))]
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    pop_mean, pop_std = x.mean(axis=0), x.std(axis=0)              # (C,): population
    kurt = _np(((x - pop_mean) ** 4).mean(axis=0) / pop_std ** 4 - 3.0)   # (C,): excess kurtosis
    out = dict(batch_size=np.asarray(batch_sizes), mean_spread=[], var_spread=[],
               var_spread_predicted=[], means=[], variances=[], excess_kurtosis=kurt)
    for m in batch_sizes:
        # m distinct rows per batch: the m smallest of n uniform keys (drawn on the CPU, so
        # that NumPy and CuPy see the same batches)
        idx = rng.random((n_batches, n)).argpartition(m, axis=1)[:, :m]   # (n_batches, m)
        b = x[xp.asarray(idx)]                                      # (n_batches, m, C)
        batch_mean = b.mean(axis=1)                                 # (n_batches, C)
        batch_var = b.var(axis=1) * m / (m - 1)                     # (n_batches, C): unbiased
        out["mean_spread"].append(float((batch_mean.std(axis=0) / pop_std).mean()))
        out["var_spread"].append(float((batch_var.std(axis=0) / pop_std ** 2).mean()))
        out["var_spread_predicted"].append(float(variance_noise(m, kurt).mean()))
        out["means"].append(_np((batch_mean[:, 0] - pop_mean[0]) / pop_std[0]))
        out["variances"].append(_np(batch_var[:, 0] / pop_std[0] ** 2))
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

    Returns
    -------
    dict
        ``{norm: ndarray of test accuracies over batch_sizes}`` (NaN where a run diverged).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> r = small_batch_accuracy(load_digits(), [64], norms=("layer",), epochs=1,
    ...                          sizes=(64, 16, 10))
    >>> r["layer"].shape, bool(0.0 <= r["layer"][0] <= 1.0)
    ((1,), True)
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

    Returns
    -------
    outputs : ndarray (n_trials, C)
        Row ``index``'s normalised value (gamma = 1, beta = 0) next to random batch-mates
        drawn from ``x``.
    x_hat_population : ndarray (C,)
        The value it would have with the whole set's statistics (what eval mode with
        perfect running statistics gives).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(100, 3))
    >>> outputs, x_hat_population = batch_dependence(x, batch_size=4, n_trials=10)
    >>> outputs.shape, x_hat_population.shape, bool(outputs.std(axis=0).min() > 0)
    ((10, 3), (3,), True)
    """
    x = xp.asarray(x)
    n, C = x.shape
    rng = np.random.default_rng(seed)
    others = np.delete(np.arange(n), index)
    outs = []
    for _ in range(n_trials):
        idx = np.concatenate([[index], rng.choice(others, batch_size - 1, replace=False)])
        y, _ = batchnorm_forward(x[xp.asarray(idx)], None, None)    # (batch_size, C); row 0 is ours
        outs.append(_np(y[0]))
    x_hat_population = _np((x[index] - x.mean(axis=0)) / xp.sqrt(x.var(axis=0) + 1e-5))
    return np.asarray(outs), x_hat_population


def non_iid_accuracy(data, norms=(None, "batch", "group", "layer"), steps=600, batch_size=32,
                     lr=0.1, sizes=(64, 64, 64, 10), activation="relu", num_groups=4, seed=0,
                     xp=np):
    """Test accuracy after training on class-pure batches versus shuffled (i.i.d.) batches.

    In the non-i.i.d. run every mini-batch holds examples of one class only (the classes take
    turns), as happens when data are sorted or a worker sees only part of the label space.
    BN then normalises each batch with its own class's statistics, which the eval-mode
    running averages (over all classes) do not match.

    Returns
    -------
    dict
        ``{norm: {"iid": accuracy, "non_iid": accuracy}}`` (eval mode, test set).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> r = non_iid_accuracy(load_digits(), norms=("batch",), steps=10, sizes=(64, 16, 10))
    >>> sorted(r["batch"])
    ['iid', 'non_iid']
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
