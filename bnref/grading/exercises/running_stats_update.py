"""Exercise ``running_stats_update(running_mean, running_var, x, momentum=0.1)``.

Problem set 1. Returns the updated ``(running_mean, running_var)`` after one training batch
``x`` of shape (N, D), in PyTorch's convention: ``momentum`` weighs the new batch, and the
running variance averages the unbiased batch variance. Updating the arrays in place, as
PyTorch does, is allowed. A sequence case feeds each call's result into the next call.
"""
import numpy as np

import bnref

from .. import inputs
from ..exercise import Call, Exercise
from ..mistakes import f64

exercise = Exercise("running_stats_update", functions=("running_stats_update",),
                    signature="running_stats_update(running_mean, running_var, x, momentum=0.1) "
                              "-> (running_mean, running_var)")


@exercise.plan
def plan(t, f):
    kw = {"momentum": t["momentum"]} if "momentum" in t else {}
    calls, rm, rv = [], t["running_mean"], t["running_var"]
    for x in t["xs"]:
        c = Call(f["running_stats_update"], {"running_mean": rm, "running_var": rv, "x": x}, kw,
                 returns=("running_mean", "running_var"), mutable=("running_mean", "running_var"))
        calls.append(c)
        rm, rv = c["running_mean"], c["running_var"]       # the learner's result feeds the next batch
    return calls


def _sequence(t, update):
    """Stack the statistics after each batch (one batch: the statistics themselves)."""
    rm, rv = t["running_mean"], t["running_var"]
    means, variances = [], []
    for x in t["xs"]:
        rm, rv = update(rm, rv, x)
        means.append(rm)
        variances.append(rv)
    if len(means) == 1:
        return {"running_mean": means[0], "running_var": variances[0]}
    return {"running_mean": np.stack(means), "running_var": np.stack(variances)}


@exercise.reference
def reference(t):
    t = f64(t)
    m = t.get("momentum", 0.1)
    return _sequence(t, lambda rm, rv, x: bnref.running_stats_update(rm, rv, x, momentum=m, axis=1))


def _ema(t, w_new=None, ddof=1, std=False, blend=True):
    t = f64(t)
    w = t.get("momentum", 0.1) if w_new is None else w_new(t.get("momentum", 0.1))

    def update(rm, rv, x):
        v = x.std(axis=0, ddof=ddof) if std else x.var(axis=0, ddof=ddof)
        if not blend:
            return x.mean(axis=0), v
        return (1 - w) * rm + w * x.mean(axis=0), (1 - w) * rv + w * v
    return _sequence(t, update)


@exercise.diagnosis("the momentum convention is flipped: in PyTorch's convention momentum is the weight "
                    "of the NEW batch, new = (1 - momentum) * old + momentum * batch (CS231n's "
                    "momentum=0.9 weighs the old value instead).")
def momentum_flipped(t):
    return _ema(t, w_new=lambda m: 1 - m)


@exercise.diagnosis("the running variance averages the biased batch variance (divided by N). PyTorch "
                    "stores the unbiased one: var * N / (N - 1), or x.var(axis=0, ddof=1).")
def biased_running_var(t):
    return _ema(t, ddof=0)


@exercise.diagnosis("two mistakes: the momentum convention is flipped (momentum weighs the new batch: "
                    "(1 - momentum) * old + momentum * batch) and the running variance must use the "
                    "unbiased batch variance (ddof=1).")
def flipped_and_biased(t):
    return _ema(t, w_new=lambda m: 1 - m, ddof=0)


@exercise.diagnosis("the momentum argument is ignored (you always use 0.1). Use the momentum parameter.")
def momentum_ignored(t):
    return _ema(t, w_new=lambda m: 0.1)


@exercise.diagnosis("the running variance averages the standard deviation, not the (unbiased) variance.")
def running_std(t):
    return _ema(t, std=True)


@exercise.diagnosis("you return the batch statistics; the running statistics must be moving averages "
                    "that blend in the old values: (1 - momentum) * old + momentum * batch.")
def batch_only(t):
    return _ema(t, blend=False)


@exercise.diagnosis("the running statistics come back unchanged: the buffers are never updated (stale). "
                    "Blend in this batch: (1 - momentum) * old + momentum * batch.")
def not_updated(t):
    return _ema(t, w_new=lambda m: 0.0)


F32 = inputs.F32
BOTH = ["running_mean", "running_var"]
exercise.case("momentum", lambda r: [inputs.running(r, 5, 3, 10)], BOTH, tolerate=["biased_running_var"])
exercise.case("unbiased", lambda r: [inputs.running(r, 4, 3, 11, momentum=0.5)], BOTH)
exercise.case("two_steps", lambda r: [inputs.running(r, 6, 3, 15, momentum=0.2, steps=2, start="init")], BOTH)
exercise.case("sequence", lambda r: [inputs.running(r, 3, 4, 12, momentum=0.3, steps=4, start="init"),
                                     inputs.running(r, 20, 2, 13, momentum=0.05, steps=3)],
              BOTH, hidden=True)
exercise.case("float32_dtype", lambda r: [inputs.running(r, 8, 5, 14, dtype=F32)], BOTH, keep_dtype=True)
exercise.case("float32", lambda r: [inputs.running(r, 8, 5, 16, momentum=0.3, steps=2, dtype=F32)], BOTH,
              hidden=True, keep_dtype=True)
