"""The test cases: deterministic inputs for every (check, case), and what each case compares.

Imported by both sides: the notebook kernel builds the inputs it feeds to the learner's
function from here, and the judge process (:mod:`bnref.grading._judge`) rebuilds the *same*
inputs independently to compute the reference. NumPy only; nothing here imports bnref.

A case is a list of *trials* (one call of the learner's function(s) each) plus:

- ``compare``: the outputs this case grades (e.g. only ``dgamma`` and ``dbeta``), so a mistake
  in another output costs the points of the cases about that output, not of this one;
- ``tolerate``: known wrong variants accepted by this case because they are another case's
  subject (e.g. the unbiased variance is graded by ``normalise``, not by ``eps``);
- ``hidden``: shown to learners only as "hidden tests" (documentation; nbgrader hides them).

Data are built so the grading is decided by the mistake and not by chance: features have an
exact batch standard deviation in [1.5, 3] (so a missing ``eps`` changes outputs by less than
the tolerance, except in the ``eps`` cases, which use nearly constant features and a large eps).
"""
import numpy as np

__all__ = ["CASES", "trials", "spec", "OUTPUTS"]

# Output names returned by each check's function(s), in order.
OUTPUTS = {
    "batchnorm_forward": ("out",),
    "running_stats_update": ("running_mean", "running_var"),
    "batchnorm_inference": ("out",),
    "batchnorm_backward": ("out", "dx", "dgamma", "dbeta"),
    "spatial_batchnorm_forward": ("out",),
    "spatial_batchnorm_backward": ("out", "dx", "dgamma", "dbeta"),
    "fold_batchnorm": ("W_folded", "b_folded"),
    "layernorm_forward": ("out",),
    "layernorm_backward": ("out", "dx", "dgamma", "dbeta"),
    "groupnorm_forward": ("out",),
}


_NONCE = [0]    # set by trials(): 0 for visible cases, a fresh random number for hidden ones


def _rng(seed):
    return np.random.default_rng([seed, _NONCE[0]] if _NONCE[0] else seed)


def _standardised(rng, shape, axes):
    """Normal values with exactly zero mean and unit (biased) variance over ``axes``."""
    z = rng.standard_normal(shape)
    z -= z.mean(axis=axes, keepdims=True)
    z /= z.std(axis=axes, keepdims=True)
    return z


def _bn_x(rng, shape, axes, std=(1.5, 3.0), loc=(-3.0, 3.0)):
    """Input whose per-channel batch std lies in ``std`` and mean in ``loc`` (channel axis 1)."""
    C = shape[1]
    bshape = [1] * len(shape)
    bshape[1] = C
    s = rng.uniform(*std, size=C).reshape(bshape)
    m = rng.uniform(*loc, size=C).reshape(bshape)
    return _standardised(rng, shape, axes) * s + m


def _affine(rng, C, unit=False):
    if unit:
        return np.ones(C), np.zeros(C)
    return rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C), rng.normal(0.0, 1.0, C)


def _cast(t, dtype):
    return {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in t.items()}


# ---------------------------------------------------------------- trial builders

def _forward(N, D, seed, unit=False, eps=None, std=(1.5, 3.0), dtype=np.float64):
    rng = _rng(seed)
    x = _bn_x(rng, (N, D), 0, std=std)
    gamma, beta = _affine(rng, D, unit)
    t = {"x": x, "gamma": gamma, "beta": beta}
    if eps is not None:
        t["eps"] = eps
    return _cast(t, dtype)


def _running(N, D, seed, momentum=None, steps=1, dtype=np.float64, start=None):
    rng = _rng(seed)
    if start == "init":
        rm, rv = np.zeros(D), np.ones(D)
    else:
        rm, rv = rng.normal(0, 1, D), rng.uniform(0.5, 2.0, D)
    xs = np.stack([_bn_x(rng, (N, D), 0) for _ in range(steps)])     # (steps, N, D)
    t = {"running_mean": rm, "running_var": rv, "xs": xs}
    if momentum is not None:
        t["momentum"] = momentum
    return _cast(t, dtype)


def _inference(N, D, seed, eps=None, small_var=False, dtype=np.float64):
    rng = _rng(seed)
    x = _bn_x(rng, (N, D), 0) if N > 1 else rng.normal(0, 2, (N, D))
    gamma, beta = _affine(rng, D)
    # running statistics far from this batch's, so using the batch's is visible
    rm = rng.uniform(-6, 6, D)
    rv = rng.uniform(1e-4, 1e-3, D) if small_var else rng.uniform(1.0, 4.0, D)
    t = {"x": x, "gamma": gamma, "beta": beta, "running_mean": rm, "running_var": rv}
    if eps is not None:
        t["eps"] = eps
    return _cast(t, dtype)


def _backward(N, D, seed, dtype=np.float64):
    t = _forward(N, D, seed)
    t["dout"] = _rng(seed + 1000).normal(0, 1, (N, D))
    return _cast(t, dtype)


def _spatial(shape, seed, unit=False, eps=None, backward=False, dtype=np.float64):
    rng = _rng(seed)
    x = _bn_x(rng, shape, (0, 2, 3))
    gamma, beta = _affine(rng, shape[1], unit)
    t = {"x": x, "gamma": gamma, "beta": beta}
    if eps is not None:
        t["eps"] = eps
    if backward:
        t["dout"] = rng.normal(0, 1, shape)
    return _cast(t, dtype)


def _fold(D, H, seed, bias=True, eps=None, dtype=np.float64):
    rng = _rng(seed)
    t = {"W": rng.normal(0, 1, (D, H)), "b": rng.normal(0, 1, H) if bias else None}
    t["gamma"], t["beta"] = _affine(rng, H)
    t["running_mean"] = rng.uniform(-3, 3, H)
    t["running_var"] = rng.uniform(0.5, 3.0, H)
    if eps is not None:
        t["eps"] = eps
    return _cast(t, dtype)


def _layernorm(N, D, seed, unit=False, eps=None, backward=False, dtype=np.float64):
    rng = _rng(seed)
    s = rng.uniform(1.5, 3.0, (N, 1))
    m = rng.uniform(-3, 3, (N, 1))
    x = _standardised(rng, (N, D), 1) * s + m                         # per-row stats controlled
    gamma, beta = _affine(rng, D, unit)
    t = {"x": x, "gamma": gamma, "beta": beta}
    if eps is not None:
        t["eps"] = eps
    if backward:
        t["dout"] = rng.normal(0, 1, (N, D))
    return _cast(t, dtype)


def _groupnorm(shape, G, seed, unit=False, eps=None, dtype=np.float64):
    rng = _rng(seed)
    N, C, H, W = shape
    z = _standardised(rng, (N, G, C // G, H, W), (2, 3, 4))
    s = rng.uniform(1.5, 3.0, (N, G, 1, 1, 1))
    # a different offset per channel, so wrong groupings see different statistics
    m = rng.uniform(-4, 4, (N, G, C // G, 1, 1))
    x = (z * s + m).reshape(shape)
    gamma, beta = _affine(rng, C, unit)
    t = {"x": x, "gamma": gamma, "beta": beta, "G": G}
    if eps is not None:
        t["eps"] = eps
    return _cast(t, dtype)


def _case(build, compare, tolerate=(), hidden=False, dtype=None):
    return {"build": build, "compare": tuple(compare), "tolerate": tuple(tolerate),
            "hidden": hidden, "dtype": dtype}


F32 = np.float32

CASES = {
    "batchnorm_forward": {
        "normalise": _case(lambda: [_forward(4, 3, 0, unit=True)], ["out"], ["no_eps", "eps_outside"]),
        "scale_shift": _case(lambda: [_forward(8, 5, 1)], ["out"], ["unbiased_var", "no_eps", "eps_outside"]),
        "eps": _case(lambda: [_forward(6, 4, 2, eps=0.01, std=(0.04, 0.08))], ["out"],
                     ["unbiased_var"]),
        "exact": _case(lambda: [_forward(10, 4, 20)], ["out"]),
        "shapes": _case(lambda: [_forward(64, 10, 3), _forward(2, 7, 4), _forward(33, 1, 5, eps=1e-3)],
                        ["out"], ["no_eps", "eps_outside"], hidden=True),
        "float32": _case(lambda: [_forward(16, 6, 6, dtype=F32)], ["out"], hidden=True, dtype="float32"),
    },
    "running_stats_update": {
        "momentum": _case(lambda: [_running(5, 3, 10)], ["running_mean", "running_var"],
                          ["biased_running_var"]),
        "unbiased": _case(lambda: [_running(4, 3, 11, momentum=0.5)], ["running_mean", "running_var"]),
        "sequence": _case(lambda: [_running(3, 4, 12, momentum=0.3, steps=4, start="init"),
                                   _running(20, 2, 13, momentum=0.05, steps=3)],
                          ["running_mean", "running_var"], hidden=True),
        "float32": _case(lambda: [_running(8, 5, 14, dtype=F32)], ["running_mean", "running_var"],
                         hidden=True, dtype="float32"),
    },
    "batchnorm_inference": {
        "running_stats": _case(lambda: [_inference(6, 4, 30)], ["out"], ["no_eps", "eps_outside"]),
        "eps": _case(lambda: [_inference(5, 3, 31, eps=0.05, small_var=True)], ["out"]),
        "single_example": _case(lambda: [_inference(1, 5, 32), _inference(3, 4, 33, dtype=F32)],
                                ["out"], ["no_eps", "eps_outside"], hidden=True, dtype="float32"),
    },
    "batchnorm_backward": {
        "dgamma_dbeta": _case(lambda: [_backward(6, 4, 40)], ["dgamma", "dbeta"]),
        "dx": _case(lambda: [_backward(5, 3, 41)], ["dx"]),
        "shapes": _case(lambda: [_backward(32, 5, 42), _backward(2, 3, 43), _backward(9, 1, 44)],
                        ["dx", "dgamma", "dbeta"], hidden=True),
        "float32": _case(lambda: [_backward(16, 4, 45, dtype=F32)], ["dx", "dgamma", "dbeta"],
                         hidden=True, dtype="float32"),
    },
    "spatial_batchnorm_forward": {
        "axes": _case(lambda: [_spatial((2, 3, 4, 5), 50, unit=True)], ["out"], ["unbiased_var", "no_eps", "eps_outside"]),
        "exact": _case(lambda: [_spatial((3, 4, 2, 3), 51, eps=1e-3)], ["out"]),
        "shapes": _case(lambda: [_spatial((1, 2, 3, 3), 52), _spatial((4, 6, 5, 2), 53)],
                        ["out"], ["no_eps", "eps_outside"], hidden=True),
        "float32": _case(lambda: [_spatial((2, 3, 4, 4), 54, dtype=F32)], ["out"], hidden=True,
                         dtype="float32"),
    },
    "spatial_batchnorm_backward": {
        "dgamma_dbeta": _case(lambda: [_spatial((2, 3, 4, 4), 60, backward=True)], ["dgamma", "dbeta"]),
        "dx": _case(lambda: [_spatial((3, 2, 3, 3), 61, backward=True)], ["dx"]),
        "shapes": _case(lambda: [_spatial((1, 4, 3, 2), 62, backward=True),
                                 _spatial((5, 3, 2, 2), 63, backward=True)],
                        ["dx", "dgamma", "dbeta"], hidden=True),
    },
    "fold_batchnorm": {
        "W_folded": _case(lambda: [_fold(4, 3, 70)], ["W_folded"], ["no_eps", "eps_outside"]),
        "b_folded": _case(lambda: [_fold(4, 3, 71)], ["b_folded"], ["no_eps", "eps_outside"]),
        "no_bias": _case(lambda: [_fold(5, 2, 72, bias=False)], ["W_folded", "b_folded"], ["no_eps", "eps_outside"]),
        "shapes": _case(lambda: [_fold(5, 5, 74), _fold(10, 7, 73, eps=1e-3),
                                 _fold(3, 6, 75, dtype=F32)],
                        ["W_folded", "b_folded"], ["no_eps", "eps_outside"], hidden=True, dtype="float32"),
    },
    "layernorm_forward": {
        "rows": _case(lambda: [_layernorm(4, 6, 80, unit=True)], ["out"], ["unbiased_var", "no_eps", "eps_outside"]),
        "exact": _case(lambda: [_layernorm(5, 8, 81, eps=1e-3)], ["out"]),
        "shapes": _case(lambda: [_layernorm(1, 10, 82), _layernorm(16, 3, 83),
                                 _layernorm(6, 5, 84, dtype=F32)], ["out"], ["no_eps", "eps_outside"], hidden=True,
                        dtype="float32"),
    },
    "layernorm_backward": {
        "dgamma_dbeta": _case(lambda: [_layernorm(5, 6, 90, backward=True)], ["dgamma", "dbeta"]),
        "dx": _case(lambda: [_layernorm(4, 5, 91, backward=True)], ["dx"]),
        "shapes": _case(lambda: [_layernorm(1, 7, 92, backward=True), _layernorm(12, 3, 93, backward=True)],
                        ["dx", "dgamma", "dbeta"], hidden=True),
    },
    "groupnorm_forward": {
        "groups": _case(lambda: [_groupnorm((2, 6, 3, 3), 3, 100, unit=True)], ["out"],
                        ["unbiased_var", "no_eps", "eps_outside"]),
        "exact": _case(lambda: [_groupnorm((3, 4, 2, 2), 2, 101, eps=1e-3)], ["out"]),
        "shapes": _case(lambda: [_groupnorm((2, 4, 3, 3), 1, 102), _groupnorm((2, 4, 2, 3), 4, 103),
                                 _groupnorm((1, 8, 4, 4), 2, 104, dtype=F32)],
                        ["out"], ["no_eps", "eps_outside"], hidden=True, dtype="float32"),
    },
}
# The backward checks also grade nothing of the forward's output directly, but report it.


def trials(check, case, nonce=0):
    """The list of input dicts for ``(check, case)`` (fresh arrays on every call).

    ``nonce`` (hidden cases) is mixed into every seed: the kernel draws it at random for each
    check and sends it to the judge, so hidden inputs cannot be looked up in advance from this
    file. Shapes, dtypes and the controlled statistics do not depend on it.
    """
    _NONCE[0] = int(nonce)
    try:
        return CASES[check][case]["build"]()
    finally:
        _NONCE[0] = 0


def spec(check, case):
    """``(compare, tolerate, dtype)`` of a case."""
    c = CASES[check][case]
    return c["compare"], c["tolerate"], c["dtype"]
