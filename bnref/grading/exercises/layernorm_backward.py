"""Exercise ``layernorm_backward(dy, cache) -> (dx, dgamma, dbeta)``, with the learner's own forward.

Problem set 5. The statistics are per row (axis 1), but gamma and beta are shared by every
example, so dgamma and dbeta sum over the batch (axis 0) and have shape (D,).
"""
import bnref

from .. import inputs
from ..exercise import Exercise, forward_backward_calls
from ..mistakes import backward_diagnoses, eps_of, f64, norm_backward

exercise = Exercise("layernorm_backward", functions=("layernorm_forward", "layernorm_backward"),
                    signature="layernorm_backward(dy, cache) -> (dx, dgamma, dbeta)")


@exercise.plan
def plan(t, f):
    return forward_backward_calls(t, f["layernorm_forward"], f["layernorm_backward"])


@exercise.reference
def reference(t):
    t = f64(t)
    out, cache = bnref.layernorm_forward(t["x"], t["gamma"], t["beta"], eps=eps_of(t))
    dx, dgamma, dbeta = bnref.layernorm_backward(t["dy"], cache)
    return {"out": out, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}


@exercise.diagnosis("dgamma and dbeta are summed over the features (axis 1); gamma and beta have one "
                    "entry per feature, so sum over the batch: axis=0, shape (D,).")
def summed_over_features(t):
    out = norm_backward(t, 1)
    x_hat = (out["out"] - f64(t)["beta"]) / f64(t)["gamma"]
    dy = f64(t)["dy"]
    return {**out, "dgamma": (dy * x_hat).sum(axis=1), "dbeta": dy.sum(axis=1)}


@exercise.diagnosis("dx is BatchNorm's backward pass (statistics over the batch); LayerNorm's statistics "
                    "are per row, so the means in dx are over axis=1.")
def bn_axes(t):
    if t["x"].shape[0] < 2:
        raise ValueError("one example")
    return {**norm_backward(t, 1), "dx": norm_backward(t, 0)["dx"]}


exercise.add(*backward_diagnoses(1, over="the batch (axis 0)", what_m="D",
                                 stats=("each row's mean (axis=1)", "each row's variance (axis=1)")))

F32 = inputs.F32
exercise.case("dgamma_dbeta", lambda r: [inputs.layernorm(r, 5, 6, 90, backward=True)], ["dgamma", "dbeta"])
exercise.case("dx", lambda r: [inputs.layernorm(r, 4, 5, 91, backward=True)], ["dx"])
exercise.case("one_example", lambda r: [inputs.layernorm(r, 1, 5, 94, backward=True)], ["dx", "dgamma", "dbeta"])
exercise.case("shapes", lambda r: [inputs.layernorm(r, 1, 7, 92, backward=True),
                                   inputs.layernorm(r, 12, 3, 93, backward=True)],
              ["dx", "dgamma", "dbeta"], hidden=True)
