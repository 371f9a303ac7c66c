"""Chapter 5: running statistics in the PyTorch, CS231n and Keras conventions.

:func:`convert_momentum` translates a momentum between the conventions; :func:`running_average`
tracks a running mean and variance over a sequence of batches the way one framework does, as
described by :data:`CONVENTIONS`.
"""
import numpy as np

from ._util import _np

__all__ = ["convert_momentum", "CONVENTIONS", "running_average"]


def convert_momentum(momentum, source, target):
    """Convert a momentum hyperparameter between the PyTorch, CS231n and Keras conventions.

    PyTorch's ``momentum`` is the weight of the *new* batch
    (``new = (1 - momentum) * old + momentum * batch``); CS231n's and Keras' is the weight of the
    *old* value (``new = momentum * old + (1 - momentum) * batch``). So 0.1 (PyTorch) is 0.9
    (CS231n, Keras); Keras' default 0.99 is PyTorch's 0.01.

    Parameters
    ----------
    momentum : float
        In ``source``'s meaning.
    source, target : {"pytorch", "cs231n", "keras"}

    Returns
    -------
    float
        The same averaging in ``target``'s meaning.

    Raises
    ------
    ValueError
        For an unknown convention.

    Examples
    --------
    >>> round(convert_momentum(0.99, "keras", "pytorch"), 4)
    0.01
    >>> convert_momentum(0.9, "cs231n", "keras")      # both weigh the old value
    0.9
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
    xp : module, default numpy
        The array module the batches are averaged with (``cupy`` on a GPU).

    Returns
    -------
    means, variances : ndarray (steps, C)
        The running estimates after each batch (NumPy arrays).

    Raises
    ------
    ValueError
        For an unknown convention.

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
    # one update rule for all three: w_new is the weight of the batch's statistic
    w_new = mom if c["weight_on"] == "new" else 1.0 - mom
    means, variances = [], []
    running_mean = running_var = None
    for b in batches:
        b = xp.asarray(b)
        m = b.shape[0]
        mean, var = b.mean(axis=0), b.var(axis=0)                   # (C,): biased variance
        if c["unbiased"]:
            var = var * m / (m - 1)
        if running_mean is None:                                    # shape and dtype from the first batch
            running_mean = xp.full(mean.shape, c["init_mean"], dtype=mean.dtype)
            running_var = xp.full(mean.shape, c["init_var"], dtype=mean.dtype)
        running_mean = (1 - w_new) * running_mean + w_new * mean
        running_var = (1 - w_new) * running_var + w_new * var
        means.append(_np(running_mean))
        variances.append(_np(running_var))
    return np.array(means), np.array(variances)
