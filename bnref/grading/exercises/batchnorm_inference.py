"""Exercise ``batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5) -> out``.

Problem set 1. At test time BN normalises with the running statistics, so an example is
normalised the same way whatever batch it comes in, and nothing is updated: the running
statistics must come back unchanged.
"""
import numpy as np

import bnref

from .. import inputs
from ..exercise import Call, Exercise
from ..mistakes import eps_of, f64

exercise = Exercise("batchnorm_inference", functions=("batchnorm_inference",),
                    signature="batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5) -> out")


@exercise.plan
def plan(t, f):
    kw = {"eps": t["eps"]} if "eps" in t else {}
    names = ("x", "gamma", "beta", "running_mean", "running_var")
    return [Call(f["batchnorm_inference"], {n: t[n] for n in names}, kw, returns=("out",), single=True)]


@exercise.reference
def reference(t):
    t = f64(t)
    return {"out": bnref.batchnorm_inference(t["x"], t["gamma"], t["beta"], t["running_mean"],
                                             t["running_var"], eps=eps_of(t))}


def _normalised(t, mean, var, eps=None, how="inside"):
    e = eps_of(t) if eps is None else eps
    x = t["x"]
    x_hat = {"inside": lambda: (x - mean) / np.sqrt(var + e), "none": lambda: (x - mean) / np.sqrt(var),
             "outside": lambda: (x - mean) / (np.sqrt(var) + e), "no_sqrt": lambda: (x - mean) / (var + e)}[how]()
    return {"out": t["gamma"] * x_hat + t["beta"]}


def _running(t, **kw):
    t = f64(t)
    return _normalised(t, t["running_mean"], t["running_var"], **kw)


@exercise.diagnosis("you normalise with the batch's own mean and variance. In inference mode BN uses the "
                    "running statistics (running_mean, running_var): the output of an example must not "
                    "depend on its batch-mates.")
def batch_stats(t):
    t = f64(t)
    return _normalised(t, t["x"].mean(axis=0), t["x"].var(axis=0))


@exercise.diagnosis("you normalise with the batch's own statistics; inference uses running_mean and "
                    "running_var.")
def batch_stats_unbiased(t):
    t = f64(t)
    if t["x"].shape[0] < 2:
        raise ValueError("no unbiased variance of one example")
    return _normalised(t, t["x"].mean(axis=0), t["x"].var(axis=0, ddof=1))


@exercise.diagnosis("the running statistics are updated with this batch before normalising (momentum "
                    "0.1). In inference mode nothing is learned or updated: normalise with running_mean "
                    "and running_var exactly as given.")
def updates_running_stats(t):
    t = f64(t)
    x, m = t["x"], 0.1
    if x.shape[0] < 2:
        raise ValueError("no unbiased variance of one example")
    mean = (1 - m) * t["running_mean"] + m * x.mean(axis=0)
    var = (1 - m) * t["running_var"] + m * x.var(axis=0, ddof=1)
    return _normalised(t, mean, var)


@exercise.diagnosis("eps is missing: use np.sqrt(running_var + eps).")
def no_eps(t):
    return _running(t, how="none")


@exercise.diagnosis("the eps argument is ignored (you always use 1e-5).")
def eps_ignored(t):
    return _running(t, eps=1e-5)


@exercise.diagnosis("eps is added to the standard deviation; it belongs inside the square root: "
                    "np.sqrt(running_var + eps).")
def eps_outside(t):
    return _running(t, how="outside")


@exercise.diagnosis("you divide by the running variance instead of its square root "
                    "np.sqrt(running_var + eps).")
def var_not_sqrt(t):
    return _running(t, how="no_sqrt")


F32 = inputs.F32
NEGLIGIBLE_EPS = ["no_eps", "eps_outside"]
exercise.case("running_stats", lambda r: [inputs.inference(r, 6, 4, 30)], ["out"], tolerate=NEGLIGIBLE_EPS)
exercise.case("eps", lambda r: [inputs.inference(r, 5, 3, 31, eps=0.05, small_var=True)], ["out"])
exercise.case("single_example_visible", lambda r: [inputs.inference(r, 1, 5, 34)], ["out"],
              tolerate=NEGLIGIBLE_EPS)
exercise.case("single_example", lambda r: [inputs.inference(r, 1, 5, 32), inputs.inference(r, 3, 4, 33, dtype=F32)],
              ["out"], tolerate=NEGLIGIBLE_EPS, hidden=True, keep_dtype=True)
