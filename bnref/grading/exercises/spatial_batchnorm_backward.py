"""Exercise ``spatial_batchnorm_backward(dy, cache) -> (dx, dgamma, dbeta)`` on (N, C, H, W).

Problem set 3, with the learner's own ``spatial_batchnorm_forward`` providing the cache.
Every channel has m = N * H * W values; dgamma and dbeta have shape (C,).
"""
import bnref

from .. import inputs
from ..exercise import Exercise, forward_backward_calls
from ..mistakes import backward_diagnoses, eps_of, f64, norm_backward

exercise = Exercise("spatial_batchnorm_backward",
                    functions=("spatial_batchnorm_forward", "spatial_batchnorm_backward"),
                    signature="spatial_batchnorm_backward(dy, cache) -> (dx, dgamma, dbeta)")
AXES, CSHAPE = (0, 2, 3), (1, -1, 1, 1)


@exercise.plan
def plan(t, f):
    return forward_backward_calls(t, f["spatial_batchnorm_forward"], f["spatial_batchnorm_backward"])


@exercise.reference
def reference(t):
    t = f64(t)
    out, cache = bnref.batchnorm_forward(t["x"], t["gamma"], t["beta"], eps=eps_of(t), axis=1)
    dx, dgamma, dbeta = bnref.batchnorm_backward(t["dy"], cache)
    return {"out": out, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}


@exercise.diagnosis("the reshape mixes channels: x.reshape(-1, C) on (N, C, H, W) data does not give one "
                    "column per channel. Transpose to (N, H, W, C) first, or reduce over axes (0, 2, 3).")
def reshape_bug(t):
    t = f64(t)
    shape, C = t["x"].shape, t["x"].shape[1]
    rows = {**t, "x": t["x"].reshape(-1, C), "dy": t["dy"].reshape(-1, C)}   # rows mix channels
    out = norm_backward(rows, 0)
    return {**out, "out": out["out"].reshape(shape), "dx": out["dx"].reshape(shape)}


@exercise.diagnosis("dgamma and dbeta are summed over the batch only (shape (C, H, W)); sum over axes "
                    "(0, 2, 3) to get shape (C,).")
def summed_over_n_only(t):
    out = norm_backward(t, AXES, CSHAPE)
    x_hat = (out["out"] - f64(t)["beta"].reshape(CSHAPE)) / f64(t)["gamma"].reshape(CSHAPE)
    return {**out, "dgamma": (f64(t)["dy"] * x_hat).sum(axis=0), "dbeta": f64(t)["dy"].sum(axis=0)}


@exercise.diagnosis("dx uses m = N; every channel has m = N * H * W values.")
def m_is_n(t):
    t64 = f64(t)
    out = norm_backward(t64, AXES, CSHAPE)
    x, dy, N = t64["x"], t64["dy"], t64["x"].shape[0]
    inv_std = 1 / (x.var(axis=AXES, keepdims=True) + eps_of(t64)) ** 0.5
    x_hat = (x - x.mean(axis=AXES, keepdims=True)) * inv_std
    dbeta = dy.sum(axis=AXES, keepdims=True)
    dgamma = (dy * x_hat).sum(axis=AXES, keepdims=True)
    return {**out, "dx": t64["gamma"].reshape(CSHAPE) * inv_std / N * (N * dy - dbeta - x_hat * dgamma)}


exercise.add(*backward_diagnoses(AXES, CSHAPE, over="the batch and the positions (axes (0, 2, 3))",
                                 what_m="m = N * H * W"))

exercise.case("dgamma_dbeta", lambda r: [inputs.spatial(r, (2, 3, 4, 4), 60, backward=True)], ["dgamma", "dbeta"])
exercise.case("dx", lambda r: [inputs.spatial(r, (3, 2, 3, 3), 61, backward=True)], ["dx"])
exercise.case("one_example", lambda r: [inputs.spatial(r, (1, 3, 2, 2), 64, backward=True)],
              ["dx", "dgamma", "dbeta"])
exercise.case("shapes", lambda r: [inputs.spatial(r, (1, 4, 3, 2), 62, backward=True),
                                   inputs.spatial(r, (5, 3, 2, 2), 63, backward=True)],
              ["dx", "dgamma", "dbeta"], hidden=True)
