"""Exercise ``batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)``: BN in training mode.

Problem sets 1 and 2; (N, D) input, statistics over the batch axis. Graded output: ``out``.
"""
import bnref

from .. import inputs
from ..exercise import Exercise, forward_call
from ..mistakes import eps_of, f64, forward_diagnoses, normalise

exercise = Exercise("batchnorm_forward", functions=("batchnorm_forward",),
                    signature="batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)")


@exercise.plan
def plan(t, f):
    return [forward_call(t, f["batchnorm_forward"])]


@exercise.reference
def reference(t):
    t = f64(t)
    return {"out": bnref.batchnorm_forward(t["x"], t["gamma"], t["beta"], eps=eps_of(t))[0]}


exercise.add(*forward_diagnoses(axes=0))


@exercise.diagnosis("the statistics are computed over the wrong axis (over the features of each "
                    "example, axis=1). BN computes one mean and one variance per feature, over the "
                    "batch: axis=0.")
def wrong_axis(t):
    return {"out": normalise(t, axes=1, cshape=(1, -1))}


F32 = inputs.F32
NEGLIGIBLE_EPS = ["no_eps", "eps_outside"]     # eps is far below these cases' variances
exercise.case("normalise", lambda r: [inputs.forward(r, 4, 3, 0, unit=True)], ["out"],
              tolerate=NEGLIGIBLE_EPS)
exercise.case("scale_shift", lambda r: [inputs.forward(r, 8, 5, 1)], ["out"],
              tolerate=["unbiased_var", *NEGLIGIBLE_EPS])
exercise.case("eps", lambda r: [inputs.forward(r, 6, 4, 2, eps=0.01, std=(0.04, 0.08))], ["out"],
              tolerate=["unbiased_var"])
exercise.case("large_mean", lambda r: [inputs.forward(r, 16, 4, 7, loc=(1e6, 2e6))], ["out"],
              tolerate=["unbiased_var", *NEGLIGIBLE_EPS],
              hint="This batch's features have a mean of about 1e6 and a spread of about 2: a variance "
                   "computed as E[x**2] - E[x]**2 loses its digits here. Use ((x - mean) ** 2).mean(...).")
exercise.case("exact", lambda r: [inputs.forward(r, 10, 4, 20)], ["out"])
exercise.case("small_batch", lambda r: [inputs.forward(r, 2, 7, 4)], ["out"], tolerate=NEGLIGIBLE_EPS)
exercise.case("shapes", lambda r: [inputs.forward(r, 64, 10, 3), inputs.forward(r, 2, 7, 4),
                                   inputs.forward(r, 33, 1, 5, eps=1e-3)],
              ["out"], tolerate=NEGLIGIBLE_EPS, hidden=True)
exercise.case("float32_dtype", lambda r: [inputs.forward(r, 16, 6, 6, dtype=F32)], ["out"], keep_dtype=True)
exercise.case("float32", lambda r: [inputs.forward(r, 32, 8, 8, dtype=F32), inputs.forward(r, 5, 3, 9, dtype=F32)],
              ["out"], hidden=True, keep_dtype=True)
