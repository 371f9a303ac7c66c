"""The normalisation formulas with a switch for each mistake learners make (used by diagnoses).

``normalise`` and ``norm_backward`` are the book's formulas in plain NumPy (float64), for
statistics over ``axes`` and gamma/beta broadcast as ``cshape``; each keyword turns on one
mistake. The exercise modules name their diagnoses after these switches, e.g.::

    @exercise.diagnosis("the variance looks unbiased (divided by N - 1) ...")
    def unbiased_var(t):
        return {"out": normalise(t, axes=0, ddof=1)}

:func:`forward_diagnoses` and :func:`backward_diagnoses` are the mistakes shared by every
forward (BN, spatial BN, LayerNorm, GroupNorm) and every backward exercise, worded for the
exercise's axes.
"""
import numpy as np

from .exercise import Diagnosis

EPS = 1e-5


def f64(t):
    return {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in t.items()}


def eps_of(t):
    return t.get("eps", EPS)


def normalise(t, axes, cshape=(1, -1), ddof=0, eps=None, eps_where="inside", centred=True,
              sqrt=True, one_pass=False, affine="ok"):
    """``gamma * (x - mean) / sqrt(var + eps) + beta`` over ``axes``, with one mistake switched on."""
    t = f64(t)
    x = t["x"]
    e = eps_of(t) if eps is None else eps
    mean = x.mean(axis=axes, keepdims=True)
    if one_pass:                                   # E[x^2] - E[x]^2: cancels when |mean| >> std
        m = np.prod([x.shape[a] for a in np.atleast_1d(axes)])
        var = ((x ** 2).mean(axis=axes, keepdims=True) - mean ** 2) * m / max(m - ddof, 1)
    else:
        var = x.var(axis=axes, keepdims=True, ddof=ddof)
    num = x - mean if centred else x
    if eps_where == "outside":
        x_hat = num / (np.sqrt(var) + e)
    elif eps_where == "none":
        x_hat = num / np.sqrt(var)
    elif not sqrt:
        x_hat = num / (var + e)
    else:
        x_hat = num / np.sqrt(var + e)
    gamma, beta = t["gamma"].reshape(cshape), t["beta"].reshape(cshape)
    return {"ok": lambda: gamma * x_hat + beta, "no_gamma": lambda: x_hat + beta,
            "no_beta": lambda: gamma * x_hat, "swapped": lambda: beta * x_hat + gamma,
            "x_hat_only": lambda: x_hat}[affine]()


def forward_diagnoses(axes, cshape=(1, -1), m="N", right_axes="axis=0"):
    """The mistakes every forward pass can make; ``m`` names the count the variance divides by."""
    def d(name, message, **mistake):
        return Diagnosis(name, message, lambda t: {"out": normalise(t, axes, cshape, **mistake)})
    return [
        d("unbiased_var", f"the variance looks unbiased (divided by {m} - 1). Normalisation uses the "
          f"biased variance: divide by {m}, e.g. x.var({right_axes}) or ((x - mean) ** 2).mean({right_axes}).",
          ddof=1),
        d("no_eps", "eps is missing: normalise with np.sqrt(var + eps), not np.sqrt(var).", eps_where="none"),
        d("eps_ignored", "the eps argument is ignored: you use 1e-5 whatever eps the caller passes. "
          "Use the eps parameter.", eps=EPS),
        d("eps_outside", "eps is added to the standard deviation, (x - mean) / (np.sqrt(var) + eps); it "
          "belongs inside the square root: np.sqrt(var + eps).", eps_where="outside"),
        d("var_not_sqrt", "you divide by the variance (var + eps) instead of the standard deviation "
          "np.sqrt(var + eps).", sqrt=False),
        d("not_centred", "the mean is not subtracted: x_hat = (x - mean) / np.sqrt(var + eps).", centred=False),
        d("no_gamma", "gamma is not applied: out = gamma * x_hat + beta.", affine="no_gamma"),
        d("no_beta", "beta is not added: out = gamma * x_hat + beta.", affine="no_beta"),
        d("swapped", "gamma and beta are swapped: out = gamma * x_hat + beta.", affine="swapped"),
        d("x_hat_only", "you return x_hat: the scale gamma and shift beta are missing "
          "(out = gamma * x_hat + beta).", affine="x_hat_only"),
        d("unbiased_no_eps", f"two mistakes: the variance is unbiased (divide by {m}, not {m} - 1) and eps "
          "is missing (np.sqrt(var + eps)).", ddof=1, eps_where="none"),
    ]


def norm_backward(t, axes, cshape=(1, -1), mistake="ok"):
    """Outputs and gradients of normalisation over ``axes`` (``out, dx, dgamma, dbeta``).

    ``axes`` are the statistics' axes; gamma's gradient sums over the axes *gamma is shared
    across* (``param_axes``: every axis where ``cshape`` is 1).
    """
    t = f64(t)
    x, dy = t["x"], t["dy"]
    axes = tuple(np.atleast_1d(axes))
    param_axes = tuple(i for i, s in enumerate(cshape) if s == 1)
    m = int(np.prod([x.shape[a] for a in axes]))
    mean = x.mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + eps_of(t))
    x_hat = (x - mean) * inv_std
    g = t["gamma"].reshape(cshape)
    dbeta = dy.sum(axis=param_axes)
    dgamma = (dy * x_hat).sum(axis=param_axes)
    dx_hat = dy * g
    mean_d = dx_hat.mean(axis=axes, keepdims=True)
    mean_dx = (dx_hat * x_hat).mean(axis=axes, keepdims=True)
    dx = inv_std * (dx_hat - mean_d - x_hat * mean_dx)
    out = {"out": g * x_hat + t["beta"].reshape(cshape), "dx": dx, "dgamma": dgamma, "dbeta": dbeta}
    if mistake == "not_summed":
        out.update(dgamma=dy * x_hat, dbeta=dy)
    elif mistake == "mean_not_sum":
        out.update(dgamma=(dy * x_hat).mean(axis=param_axes), dbeta=dy.mean(axis=param_axes))
    elif mistake == "dgamma_without_x_hat":
        out.update(dgamma=dbeta)
    elif mistake == "swapped":
        out.update(dgamma=dbeta, dbeta=dgamma)
    elif mistake == "no_mean_path":
        out.update(dx=inv_std * (dx_hat - x_hat * mean_dx))
    elif mistake == "no_var_path":
        out.update(dx=inv_std * (dx_hat - mean_d))
    elif mistake == "no_stats_path":
        out.update(dx=inv_std * dx_hat)
    elif mistake == "no_gamma":
        out.update(dx=inv_std * (dy - dy.mean(axis=axes, keepdims=True)
                                 - x_hat * (dy * x_hat).mean(axis=axes, keepdims=True)))
    elif mistake == "m_minus_1":
        if m < 2:
            raise ValueError("m - 1 = 0")
        k = m / (m - 1)
        out.update(dx=inv_std * (dx_hat - mean_d * k - x_hat * mean_dx * k))
    elif mistake == "var_sign":
        out.update(dx=inv_std * (dx_hat - mean_d + x_hat * mean_dx))
    return out


def backward_diagnoses(axes, cshape=(1, -1), over="the batch (axis 0)", what_m="m",
                       stats=("the batch mean", "the batch variance")):
    """The mistakes every backward pass can make, worded for statistics over ``over``."""
    def d(name, message):
        return Diagnosis(name, message, lambda t: norm_backward(t, axes, cshape, name))
    return [
        d("not_summed", f"dgamma and dbeta are not summed over {over}: gamma and beta are shared, so "
          "their gradients add up: dbeta = dy.sum(...), dgamma = (dy * x_hat).sum(...)."),
        d("mean_not_sum", f"dgamma and dbeta are averaged over {over}; they must be summed (gamma and "
          "beta are shared, so the gradients add up)."),
        d("dgamma_without_x_hat", "dgamma is missing the factor x_hat: out = gamma * x_hat + beta, so "
          "dgamma = sum(dy * x_hat)."),
        d("swapped", "dgamma and dbeta are swapped."),
        d("no_mean_path", f"dx is missing the gradient path through {stats[0]}: the mean depends on "
          "every x_i, which adds the term -mean(dy * gamma) (dx must sum to zero over the statistics' axes)."),
        d("no_var_path", f"dx is missing the gradient path through {stats[1]}: the term "
          "-x_hat * mean(dy * gamma * x_hat)."),
        d("no_stats_path", "dx treats the mean and variance as constants (dx = dy * gamma * inv_std); "
          "both depend on x, so two more terms appear: -mean(dx_hat) and -x_hat * mean(dx_hat * x_hat)."),
        d("no_gamma", "dx is missing the factor gamma (out = gamma * x_hat + beta, so dx_hat = dy * gamma)."),
        d("m_minus_1", f"dx uses {what_m} - 1 where the forward pass divides by {what_m} (the biased "
          "variance): use the same count."),
        d("var_sign", "the variance term of dx has the wrong sign: dx = gamma * inv_std * (dy - mean(dy) "
          "- x_hat * mean(dy * x_hat))."),
    ]
