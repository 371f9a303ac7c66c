"""Exercise ``fold_batchnorm(W, b, gamma, beta, running_mean, running_var, eps=1e-5)``.

Problem set 4: fold eval-mode BN into the linear layer ``z = x @ W + b`` before it, with
``W`` of shape (D, H) (inputs, outputs) and ``b`` of shape (H,) or None. Returns
``(W_folded, b_folded)`` in the same layout and dtype as ``W``.
"""
import numpy as np

import bnref

from .. import inputs
from ..exercise import Call, Exercise
from ..mistakes import eps_of, f64

exercise = Exercise("fold_batchnorm", functions=("fold_batchnorm",),
                    signature="fold_batchnorm(W, b, gamma, beta, running_mean, running_var, eps=1e-5) "
                              "-> (W_folded, b_folded)")
NAMES = ("W", "b", "gamma", "beta", "running_mean", "running_var")


@exercise.plan
def plan(t, f):
    kw = {"eps": t["eps"]} if "eps" in t else {}
    return [Call(f["fold_batchnorm"], {n: t[n] for n in NAMES}, kw, returns=("W_folded", "b_folded"))]


@exercise.reference
def reference(t):
    t = f64(t)
    # bnref.fold_linear takes PyTorch's (out, in) layout; this exercise's W is (in, out)
    W_f, b_f = bnref.fold_linear(t["W"].T, t["b"], t["gamma"], t["beta"], t["running_mean"],
                                 t["running_var"], eps=eps_of(t))
    return {"W_folded": W_f.T, "b_folded": b_f}


def _parts(t):
    """(W, b or zeros, gamma, beta, running_mean, running_var, eps) in float64."""
    t = f64(t)
    b = t["b"] if t["b"] is not None else np.zeros_like(t["running_mean"])
    return t["W"], b, t["gamma"], t["beta"], t["running_mean"], t["running_var"], eps_of(t)


def _folded(t, scale=None, W_f=None, b_f=None):
    """The right fold, with ``scale``, ``W_folded`` or ``b_folded`` replaced by a mistake's."""
    W, b, gamma, beta, mu, var, e = _parts(t)
    s = gamma / np.sqrt(var + e) if scale is None else scale(gamma, var, e)
    return {"W_folded": W * s if W_f is None else W_f(W, s),
            "b_folded": (b - mu) * s + beta if b_f is None else b_f(b, mu, s, beta)}


@exercise.diagnosis("W_folded is transposed: here the layer is z = x @ W + b with W of shape (D, H) "
                    "(inputs, outputs), not PyTorch's (out, in). Return W_folded in W's own shape.")
def torch_layout(t):
    return _folded(t, W_f=lambda W, s: (W * s).T)


ROWS = ("the scale multiplies the rows of W; BN scales each OUTPUT feature, i.e. each column of W "
        "(shape (D, H)): W_folded = W * scale (broadcast over rows).")


@exercise.diagnosis(ROWS)
def rows(t):
    # On a square W the mistake runs and gives these values; on a non-square W it raises
    # instead, and rows_broadcast_error below names it from the exception.
    W = t["W"]
    if W.shape[0] != W.shape[1]:
        raise ValueError("only visible on a square W")
    return _folded(t, W_f=lambda W, s: W * s[:, None])


@exercise.error_diagnosis(ROWS + " (scale has H entries, W has D rows, so W * scale[:, None] "
                          "cannot broadcast when D != H.)")
def rows_broadcast_error(t, kind, message):
    # NumPy names both shapes: scaling W's rows broadcasts W (D, H) against scale as a column
    # (H, 1), which fails exactly when D != H. The trusted side raises the same error itself and
    # compares the text, so another broadcast mistake (e.g. scale[:2]) is not named this way.
    if kind != "ValueError":
        return False
    W = t["W"]
    column = np.ones((W.shape[1], 1))                        # scale[:, None]: (H, 1)
    try:
        W * column
    except ValueError as own:
        return str(own).strip() in message
    return False


@exercise.diagnosis("the scale is inverted: BN multiplies by gamma / np.sqrt(running_var + eps), it does "
                    "not divide.")
def inverted(t):
    return _folded(t, scale=lambda g, v, e: np.sqrt(v + e) / g)


@exercise.diagnosis("the scale divides by the variance; it must divide by the standard deviation "
                    "np.sqrt(running_var + eps).")
def no_sqrt(t):
    return _folded(t, scale=lambda g, v, e: g / (v + e))


@exercise.diagnosis("gamma is missing from the scale: scale = gamma / np.sqrt(running_var + eps).")
def no_gamma(t):
    return _folded(t, scale=lambda g, v, e: 1 / np.sqrt(v + e))


@exercise.diagnosis("eps is missing: np.sqrt(running_var + eps).")
def no_eps(t):
    return _folded(t, scale=lambda g, v, e: g / np.sqrt(v))


@exercise.diagnosis("eps is added to the standard deviation; it belongs inside the square root: "
                    "np.sqrt(running_var + eps).")
def eps_outside(t):
    return _folded(t, scale=lambda g, v, e: g / (np.sqrt(v) + e))


@exercise.diagnosis("the running mean has the wrong sign in b_folded: BN computes (z - running_mean) * "
                    "scale + beta, so b_folded = (b - running_mean) * scale + beta.")
def mean_sign(t):
    return _folded(t, b_f=lambda b, mu, s, beta: (b + mu) * s + beta)


@exercise.diagnosis("b is not multiplied by the scale: z = x @ W + b goes through BN as a whole, so "
                    "b_folded = (b - running_mean) * scale + beta.")
def b_not_scaled(t):
    return _folded(t, b_f=lambda b, mu, s, beta: b - mu * s + beta)


@exercise.diagnosis("the layer's bias b is dropped from b_folded: b_folded = (b - running_mean) * scale + beta.")
def b_ignored(t):
    return _folded(t, b_f=lambda b, mu, s, beta: beta - mu * s)


@exercise.diagnosis("beta is multiplied by the scale; it is added after scaling: "
                    "(b - running_mean) * scale + beta.")
def beta_scaled(t):
    return _folded(t, b_f=lambda b, mu, s, beta: (b - mu + beta) * s)


@exercise.diagnosis("beta is missing from b_folded.")
def no_beta(t):
    return _folded(t, b_f=lambda b, mu, s, beta: (b - mu) * s)


@exercise.diagnosis("the running mean is subtracted after scaling; it must be scaled too: "
                    "b_folded = (b - running_mean) * scale + beta.")
def mean_not_scaled(t):
    return _folded(t, b_f=lambda b, mu, s, beta: b * s + beta - mu)


F32 = inputs.F32
NEGLIGIBLE_EPS = ["no_eps", "eps_outside"]
# Each case has a square W (D == H), where scaling W's rows instead of its columns runs and is
# named from its values, and most have a non-square one, where it raises a broadcast error and
# is named by rows_broadcast_error. The b_folded case grades b alone, on square Ws only, so that
# a mistake in W alone does not fail it by crashing (the hidden shapes case grades b on
# non-square Ws).
exercise.case("W_folded", lambda r: [inputs.fold(r, 3, 3, 78), inputs.fold(r, 4, 3, 70)], ["W_folded"],
              tolerate=NEGLIGIBLE_EPS)
exercise.case("b_folded", lambda r: [inputs.fold(r, 3, 3, 79), inputs.fold(r, 4, 4, 71)], ["b_folded"],
              tolerate=NEGLIGIBLE_EPS)
exercise.case("no_bias", lambda r: [inputs.fold(r, 2, 2, 80, bias=False), inputs.fold(r, 5, 2, 72, bias=False)],
              ["W_folded", "b_folded"], tolerate=NEGLIGIBLE_EPS)
exercise.case("float32_no_bias", lambda r: [inputs.fold(r, 4, 4, 81, bias=False, dtype=F32),
                                            inputs.fold(r, 3, 4, 76, bias=False, dtype=F32)],
              ["W_folded", "b_folded"], tolerate=NEGLIGIBLE_EPS, keep_dtype=True)
exercise.case("shapes", lambda r: [inputs.fold(r, 5, 5, 74), inputs.fold(r, 10, 7, 73, eps=1e-3),
                                   inputs.fold(r, 3, 6, 75, dtype=F32), inputs.fold(r, 6, 2, 77, bias=False, dtype=F32)],
              ["W_folded", "b_folded"], tolerate=NEGLIGIBLE_EPS, hidden=True, keep_dtype=True)
