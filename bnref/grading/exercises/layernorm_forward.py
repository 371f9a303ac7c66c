"""Exercise ``layernorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)`` on (N, D).

Problem set 5: LayerNorm normalises each example (row) over its D features, so it behaves
the same for any batch size. Graded output: ``out``.
"""
import bnref

from .. import inputs
from ..exercise import Exercise, forward_call
from ..mistakes import eps_of, f64, forward_diagnoses, normalise

exercise = Exercise("layernorm_forward", functions=("layernorm_forward",),
                    signature="layernorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)")


@exercise.plan
def plan(t, f):
    return [forward_call(t, f["layernorm_forward"])]


@exercise.reference
def reference(t):
    t = f64(t)
    return {"out": bnref.layernorm_forward(t["x"], t["gamma"], t["beta"], eps=eps_of(t))[0]}


@exercise.diagnosis("the statistics are computed over the batch (axis 0): that is BatchNorm. LayerNorm "
                    "normalises each example over its features: mean and var over axis=1 (keepdims=True).")
def batch_axis(t):
    if t["x"].shape[0] < 2:
        raise ValueError("one example: its batch statistics are degenerate")
    return {"out": normalise(t, 0)}


exercise.add(*forward_diagnoses(1, m="D", right_axes="axis=1, keepdims=True"))

F32 = inputs.F32
NEGLIGIBLE_EPS = ["no_eps", "eps_outside"]
exercise.case("rows", lambda r: [inputs.layernorm(r, 4, 6, 80, unit=True)], ["out"],
              tolerate=["unbiased_var", *NEGLIGIBLE_EPS])
exercise.case("exact", lambda r: [inputs.layernorm(r, 5, 8, 81, eps=1e-3)], ["out"])
exercise.case("one_example", lambda r: [inputs.layernorm(r, 1, 6, 85), inputs.layernorm(r, 3, 4, 86, dtype=F32)],
              ["out"], tolerate=NEGLIGIBLE_EPS, keep_dtype=True)
exercise.case("shapes", lambda r: [inputs.layernorm(r, 1, 10, 82), inputs.layernorm(r, 16, 3, 83),
                                   inputs.layernorm(r, 6, 5, 84, dtype=F32)], ["out"],
              tolerate=NEGLIGIBLE_EPS, hidden=True, keep_dtype=True)
