"""Test inputs for the exercises: built so that the grade is decided by the mistake, not by chance.

Every builder takes ``rng`` (``rng(seed) -> np.random.Generator``, see
:func:`bnref.grading.exercise.evaluate`) and returns one *trial*: a dict of the learner's
function's inputs by parameter name (``x``, ``gamma``, ``beta``, ``eps``, ``dy``, ...).

Features have an exact batch standard deviation in [1.5, 3], so a missing ``eps`` changes an
output by less than the tolerance, except in the ``eps`` cases, which use nearly constant
features and a large eps. NumPy only; nothing here imports bnref.
"""
import numpy as np

F32 = np.float32


def standardised(g, shape, axes):
    """Normal values with exactly zero mean and unit (biased) variance over ``axes``."""
    z = g.standard_normal(shape)
    z -= z.mean(axis=axes, keepdims=True)
    z /= z.std(axis=axes, keepdims=True)
    return z


def bn_x(g, shape, axes, std=(1.5, 3.0), loc=(-3.0, 3.0)):
    """Input whose per-channel (axis 1) batch std lies in ``std`` and mean in ``loc``."""
    bshape = [1] * len(shape)
    bshape[1] = shape[1]
    s = g.uniform(*std, size=shape[1]).reshape(bshape)
    m = g.uniform(*loc, size=shape[1]).reshape(bshape)
    m *= g.choice([-1.0, 1.0], size=m.shape) if loc[0] > 0 else 1.0
    return standardised(g, shape, axes) * s + m


def affine(g, C, unit=False):
    """``(gamma, beta)``: ones and zeros, or scales of both signs and shifts."""
    if unit:
        return np.ones(C), np.zeros(C)
    return g.uniform(0.5, 2.0, C) * g.choice([-1.0, 1.0], C), g.normal(0.0, 1.0, C)


def cast(t, dtype):
    return {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in t.items()}


def _with(t, eps=None, **extra):
    if eps is not None:
        t["eps"] = eps
    t.update(extra)
    return t


def forward(rng, N, D, seed, unit=False, eps=None, std=(1.5, 3.0), loc=(-3.0, 3.0), dtype=np.float64):
    """BN on (N, D): ``x, gamma, beta[, eps]``."""
    g = rng(seed)
    x = bn_x(g, (N, D), 0, std=std, loc=loc)
    gamma, beta = affine(g, D, unit)
    return cast(_with({"x": x, "gamma": gamma, "beta": beta}, eps), dtype)


def running(rng, N, D, seed, momentum=None, steps=1, start=None, dtype=np.float64):
    """Running statistics: ``running_mean, running_var, xs (steps, N, D)[, momentum]``."""
    g = rng(seed)
    if start == "init":
        rm, rv = np.zeros(D), np.ones(D)
    else:
        rm, rv = g.normal(0, 1, D), g.uniform(0.5, 2.0, D)
    xs = np.stack([bn_x(g, (N, D), 0) for _ in range(steps)])     # (steps, N, D)
    t = {"running_mean": rm, "running_var": rv, "xs": xs}
    if momentum is not None:
        t["momentum"] = momentum
    return cast(t, dtype)


def inference(rng, N, D, seed, eps=None, small_var=False, dtype=np.float64):
    """BN at test time: ``x, gamma, beta, running_mean, running_var[, eps]``."""
    g = rng(seed)
    x = bn_x(g, (N, D), 0) if N > 1 else g.normal(0, 2, (N, D))
    gamma, beta = affine(g, D)
    # running statistics far from this batch's, so using the batch's is visible
    rm = g.uniform(-6, 6, D)
    rv = g.uniform(1e-4, 1e-3, D) if small_var else g.uniform(1.0, 4.0, D)
    t = {"x": x, "gamma": gamma, "beta": beta, "running_mean": rm, "running_var": rv}
    return cast(_with(t, eps), dtype)


def backward(rng, N, D, seed, dtype=np.float64):
    """BN forward then backward on (N, D): ``x, gamma, beta, dy``."""
    t = forward(rng, N, D, seed)
    t["dy"] = rng(seed + 1000).normal(0, 1, (N, D))
    return cast(t, dtype)


def spatial(rng, shape, seed, unit=False, eps=None, backward=False, dtype=np.float64):
    """Spatial BN on (N, C, H, W): ``x, gamma, beta[, eps][, dy]``."""
    g = rng(seed)
    x = bn_x(g, shape, (0, 2, 3))
    gamma, beta = affine(g, shape[1], unit)
    t = _with({"x": x, "gamma": gamma, "beta": beta}, eps)
    if backward:
        t["dy"] = g.normal(0, 1, shape)
    return cast(t, dtype)


def fold(rng, D, H, seed, bias=True, eps=None, dtype=np.float64):
    """Folding into ``x @ W + b``: ``W (D, H), b (H,) or None, gamma, beta, running_mean, running_var[, eps]``."""
    g = rng(seed)
    t = {"W": g.normal(0, 1, (D, H)), "b": g.normal(0, 1, H) if bias else None}
    t["gamma"], t["beta"] = affine(g, H)
    t["running_mean"] = g.uniform(-3, 3, H)
    t["running_var"] = g.uniform(0.5, 3.0, H)
    return cast(_with(t, eps), dtype)


def layernorm(rng, N, D, seed, unit=False, eps=None, backward=False, dtype=np.float64):
    """LayerNorm on (N, D), statistics per row: ``x, gamma, beta[, eps][, dy]``."""
    g = rng(seed)
    s = g.uniform(1.5, 3.0, (N, 1))
    m = g.uniform(-3, 3, (N, 1))
    x = standardised(g, (N, D), 1) * s + m                         # per-row stats controlled
    gamma, beta = affine(g, D, unit)
    t = _with({"x": x, "gamma": gamma, "beta": beta}, eps)
    if backward:
        t["dy"] = g.normal(0, 1, (N, D))
    return cast(t, dtype)


def groupnorm(rng, shape, G, seed, unit=False, eps=None, dtype=np.float64):
    """GroupNorm on (N, C, H, W) with G groups: ``x, gamma, beta, G[, eps]``.

    Every case has ``G != C // G``, so a learner who swaps the number of groups and the
    group size never passes by accident.
    """
    N, C, H, W = shape
    if C % G or (G == C // G and C > 1):
        raise ValueError(f"groupnorm input: G={G} for C={C} must divide C and differ from C // G")
    g = rng(seed)
    z = standardised(g, (N, G, C // G, H, W), (2, 3, 4))
    s = g.uniform(1.5, 3.0, (N, G, 1, 1, 1))
    # a different offset per channel, so wrong groupings see different statistics
    m = g.uniform(-4, 4, (N, G, C // G, 1, 1))
    x = (z * s + m).reshape(shape)
    gamma, beta = affine(g, C, unit)
    return cast(_with({"x": x, "gamma": gamma, "beta": beta}, eps, G=G), dtype)
