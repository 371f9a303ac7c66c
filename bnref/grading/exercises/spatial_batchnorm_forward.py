"""Exercise ``spatial_batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)`` on (N, C, H, W).

Problem set 3: one mean and variance per channel, over the batch and every position
(axes 0, 2, 3). Graded output: ``out``.
"""
import bnref

from .. import inputs
from ..exercise import Exercise, forward_call
from ..mistakes import eps_of, f64, forward_diagnoses, normalise

exercise = Exercise("spatial_batchnorm_forward", functions=("spatial_batchnorm_forward",),
                    signature="spatial_batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)")
AXES, CSHAPE = (0, 2, 3), (1, -1, 1, 1)


@exercise.plan
def plan(t, f):
    return [forward_call(t, f["spatial_batchnorm_forward"])]


@exercise.reference
def reference(t):
    t = f64(t)
    return {"out": bnref.batchnorm_forward(t["x"], t["gamma"], t["beta"], eps=eps_of(t), axis=1)[0]}


exercise.add(*forward_diagnoses(AXES, CSHAPE, m="m = N * H * W", right_axes="axis=(0, 2, 3)"))


@exercise.diagnosis("the statistics are computed over the batch axis only (one mean per channel AND "
                    "position). Spatial BN shares them over positions too: mean over axes (0, 2, 3).")
def stats_over_n_only(t):
    return {"out": normalise(t, 0, CSHAPE)}


@exercise.diagnosis("the statistics are computed per example over H and W (that is InstanceNorm). "
                    "Spatial BN computes them per channel over the batch and the positions: axes (0, 2, 3).")
def instance_norm(t):
    return {"out": normalise(t, (2, 3), CSHAPE)}


@exercise.diagnosis("the statistics are computed per example over (C, H, W) (that is LayerNorm). "
                    "Spatial BN computes them per channel over axes (0, 2, 3).")
def layer_norm(t):
    return {"out": normalise(t, (1, 2, 3), CSHAPE)}


@exercise.diagnosis("one mean and variance for the whole tensor; BN keeps one per channel: axes (0, 2, 3).")
def all_axes(t):
    return {"out": normalise(t, (0, 1, 2, 3), CSHAPE)}


@exercise.diagnosis("x.reshape(-1, C) mixes channels: in (N, C, H, W) memory order the last axis is W, "
                    "not C. Move the channel axis last first: x.transpose(0, 2, 3, 1).reshape(-1, C), and "
                    "undo it after; or reduce over axes (0, 2, 3) directly.")
def reshape_bug(t):
    t = f64(t)
    x = t["x"]
    rows = {**t, "x": x.reshape(-1, x.shape[1])}         # (N*C*H*W / C, C): rows mix channels
    return {"out": normalise(rows, 0).reshape(x.shape)}


F32 = inputs.F32
NEGLIGIBLE_EPS = ["no_eps", "eps_outside"]
exercise.case("axes", lambda r: [inputs.spatial(r, (2, 3, 4, 5), 50, unit=True)], ["out"],
              tolerate=["unbiased_var", *NEGLIGIBLE_EPS])
exercise.case("exact", lambda r: [inputs.spatial(r, (3, 4, 2, 3), 51, eps=1e-3)], ["out"])
exercise.case("one_example", lambda r: [inputs.spatial(r, (1, 2, 3, 3), 55)], ["out"], tolerate=NEGLIGIBLE_EPS)
exercise.case("shapes", lambda r: [inputs.spatial(r, (1, 2, 3, 3), 52), inputs.spatial(r, (4, 6, 5, 2), 53)],
              ["out"], tolerate=NEGLIGIBLE_EPS, hidden=True)
exercise.case("float32_dtype", lambda r: [inputs.spatial(r, (2, 3, 4, 4), 54, dtype=F32)], ["out"],
              keep_dtype=True)
exercise.case("float32", lambda r: [inputs.spatial(r, (3, 2, 5, 4), 56, dtype=F32)], ["out"], hidden=True,
              keep_dtype=True)
