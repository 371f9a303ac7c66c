"""Exercise ``groupnorm_forward(x, gamma, beta, G, eps=1e-5) -> (out, cache)`` on (N, C, H, W).

Problem set 5: the C channels split into G groups of C // G *consecutive* channels; each
example's group is normalised over its channels and positions. Every case has G != C // G.
"""
import numpy as np

import bnref

from .. import inputs
from ..exercise import Exercise, forward_call
from ..mistakes import EPS, eps_of, f64

exercise = Exercise("groupnorm_forward", functions=("groupnorm_forward",),
                    signature="groupnorm_forward(x, gamma, beta, G, eps=1e-5) -> (out, cache)")


@exercise.plan
def plan(t, f):
    return [forward_call(t, f["groupnorm_forward"], extra=("G",))]


@exercise.reference
def reference(t):
    t = f64(t)
    return {"out": bnref.groupnorm_forward(t["x"], t["gamma"], t["beta"], num_groups=int(t["G"]),
                                           eps=eps_of(t))[0]}


def _grouped(t, G=None, layout="consecutive", axes=(2, 3, 4), ddof=0, eps=None, affine=True):
    """GroupNorm with ``G`` groups, grouping ``layout`` and statistics over ``axes`` of (N, G, C//G, H, W)."""
    t = f64(t)
    x, G = t["x"], int(t["G"] if G is None else G)
    N, C, H, W = x.shape
    e = eps_of(t) if eps is None else eps
    if layout == "interleaved":
        xg = x.reshape(N, C // G, G, H, W)          # channels c, c + G, c + 2G, ... in one group
    else:
        xg = x.reshape(N, G, C // G, H, W)
    x_hat = ((xg - xg.mean(axis=axes, keepdims=True)) /
             np.sqrt(xg.var(axis=axes, keepdims=True, ddof=ddof) + e)).reshape(N, C, H, W)
    if not affine:
        return {"out": x_hat}
    return {"out": t["gamma"].reshape(1, C, 1, 1) * x_hat + t["beta"].reshape(1, C, 1, 1)}


@exercise.diagnosis("wrong grouping: x.reshape(N, C // G, G, H, W) puts channels c, c + G, c + 2G, ... in "
                    "one group. GroupNorm groups CONSECUTIVE channels: x.reshape(N, G, C // G, H, W), "
                    "statistics over axes (2, 3, 4).")
def interleaved(t):
    return _grouped(t, layout="interleaved", axes=(1, 3, 4))


@exercise.diagnosis("G and C // G are swapped: G is the number of groups, so reshape to "
                    "(N, G, C // G, H, W), i.e. groups of C // G channels each.")
def groups_and_size_swapped(t):
    return _grouped(t, G=t["x"].shape[1] // int(t["G"]))


@exercise.diagnosis("the statistics are per channel (that is InstanceNorm, G = C); each group has C // G "
                    "channels: x.reshape(N, G, C // G, H, W).")
def instance_norm(t):
    return _grouped(t, G=t["x"].shape[1])


@exercise.diagnosis("the statistics are over all channels of an example (that is LayerNorm, G = 1); use "
                    "the G argument: x.reshape(N, G, C // G, H, W).")
def layer_norm(t):
    return _grouped(t, G=1)


@exercise.diagnosis("the statistics include the batch axis; GroupNorm's are per example: reduce over axes "
                    "(2, 3, 4) of x.reshape(N, G, C // G, H, W), not over axis 0.")
def with_batch(t):
    return _grouped(t, axes=(0, 2, 3, 4))


@exercise.diagnosis("the statistics are over the channels of a group only; they must also cover H and W: "
                    "axes (2, 3, 4) of x.reshape(N, G, C // G, H, W).")
def no_spatial(t):
    return _grouped(t, axes=2)


@exercise.diagnosis("the variance looks unbiased; GroupNorm divides by the group size.")
def unbiased_var(t):
    return _grouped(t, ddof=1)


@exercise.diagnosis("eps is missing: np.sqrt(var + eps).")
def no_eps(t):
    return _grouped(t, eps=0.0)


@exercise.diagnosis("the eps argument is ignored (you always use 1e-5).")
def eps_ignored(t):
    return _grouped(t, eps=EPS)


@exercise.diagnosis("gamma and beta are not applied (reshape them to (1, C, 1, 1)).")
def x_hat_only(t):
    return _grouped(t, affine=False)


F32 = inputs.F32
exercise.case("groups", lambda r: [inputs.groupnorm(r, (2, 6, 3, 3), 3, 100, unit=True)], ["out"],
              tolerate=["unbiased_var", "no_eps"])
exercise.case("exact", lambda r: [inputs.groupnorm(r, (3, 6, 2, 2), 2, 101, eps=1e-3)], ["out"])
exercise.case("one_example", lambda r: [inputs.groupnorm(r, (1, 8, 2, 2), 2, 105),
                                        inputs.groupnorm(r, (2, 4, 2, 3), 4, 106, dtype=F32)],
              ["out"], tolerate=["no_eps"], keep_dtype=True)
exercise.case("shapes", lambda r: [inputs.groupnorm(r, (2, 4, 3, 3), 1, 102), inputs.groupnorm(r, (2, 4, 2, 3), 4, 103),
                                   inputs.groupnorm(r, (1, 8, 4, 4), 2, 104, dtype=F32),
                                   inputs.groupnorm(r, (2, 9, 2, 2), 1, 107)],
              ["out"], tolerate=["no_eps"], hidden=True, keep_dtype=True)
